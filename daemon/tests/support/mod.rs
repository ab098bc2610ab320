//! Shared test helpers: a real `ffd` process on a temp socket and spool, and
//! a real HTTP server on 127.0.0.1 that records what it receives.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The one time limit for anything a test waits on: generous, since the
/// machines are shared and noisy; a pass never waits for it.
pub const T: Duration = Duration::from_secs(30);

/// Calls `check` until it returns `Some`, every `every`; panics after
/// `timeout` with `what` and the last word of `check` (`Err`).
pub fn wait_until<R>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<R, String>,
) -> R {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(r) => return r,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// `status` of `id`, as the test's own user.
pub fn status(d: &Daemon, id: &str) -> Value {
    d.client().status(id).unwrap()
}

/// Waits until `id` is in `state`; its status then.
pub fn wait_state(d: &Daemon, id: &str, state: &str) -> Value {
    wait_until(
        &format!("{id} to be {state}"),
        T,
        Duration::from_millis(20),
        || {
            let s = status(d, id);
            if s["state"] == state {
                Ok(s)
            } else {
                Err(format!("{s}\n{}", d.logs()))
            }
        },
    )
}

/// The proxy variables ffd reads; removed from its environment unless a
/// test sets them.
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Retries fast, never trips the breaker: for tests that count attempts.
pub const FAST: &str = "[delivery]\nbackoff_base_ms = 50\nbackoff_multiplier = 2\nbackoff_max_ms = 400\nbreaker_threshold = 1000\ntimeout_ms = 5000\n";

/// What the sink received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    pub version: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the sink answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    /// The body; `None`: "sink says hi".
    pub body: Option<Vec<u8>>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: None,
        }
    }
    /// A JSON body (and its content-type).
    pub fn json(status: u16, body: &str) -> Reply {
        let mut r = Reply::status(status).header("content-type", "application/json");
        r.body = Some(body.as_bytes().to_vec());
        r
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Behavior = Box<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

struct SinkInner {
    reqs: Mutex<Vec<Recorded>>,
    cv: Condvar,
    behavior: Mutex<Arc<Behavior>>,
    completed: AtomicUsize,
    arrived: AtomicUsize,
}

/// A real HTTP server (HTTP/1.1 and HTTP/2) on 127.0.0.1.
pub struct Sink {
    pub addr: SocketAddr,
    inner: Arc<SinkInner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub tls: bool,
}

impl Sink {
    /// Answers 200 to everything.
    pub fn start() -> Sink {
        Sink::with(|_, _| Reply::status(200))
    }

    /// Answers with `f(request, index)`; index counts requests from 0.
    pub fn with(f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Sink {
        Sink::serve(0, None, Box::new(f))
    }

    /// On a given port (to bring a "down" server back).
    pub fn on_port(
        port: u16,
        f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Sink {
        Sink::serve(port, None, Box::new(f))
    }

    /// HTTPS with the given certificate chain and key (PEM).
    pub fn tls(cert_pem: &str, key_pem: &str) -> Sink {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut s = Sink::serve(0, Some(Arc::new(cfg)), Box::new(|_, _| Reply::status(200)));
        s.tls = true;
        s
    }

    fn serve(port: u16, tls: Option<Arc<rustls::ServerConfig>>, f: Behavior) -> Sink {
        let inner = Arc::new(SinkInner {
            reqs: Mutex::new(Vec::new()),
            cv: Condvar::new(),
            behavior: Mutex::new(Arc::new(f)),
            completed: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
        });
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind sink");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let inner2 = inner.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                loop {
                    let (tcp, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                        _ = &mut stop_rx => return,
                    };
                    let inner = inner2.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let inner = inner.clone();
                            async move { handle(inner, req).await }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(a) => {
                                if let Ok(tls) = a.accept(tcp).await {
                                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                                }
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                            }
                        }
                    });
                }
            });
        });
        Sink {
            addr,
            inner,
            stop: Some(stop_tx),
            thread: Some(thread),
            tls: false,
        }
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Changes how later requests are answered.
    pub fn set(&self, f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) {
        *self.inner.behavior.lock().unwrap() = Arc::new(Box::new(f));
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.reqs.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.inner.reqs.lock().unwrap().len()
    }

    /// Responses fully sent.
    pub fn completed(&self) -> usize {
        self.inner.completed.load(Ordering::SeqCst)
    }

    /// Waits until `pred` holds for the received requests; panics on timeout.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.inner.reqs.lock().unwrap();
        loop {
            if pred(&reqs) {
                return reqs.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; sink has {} requests",
                    reqs.len()
                );
            }
            reqs = self.inner.cv.wait_timeout(reqs, deadline - now).unwrap().0;
        }
    }

    /// Waits for at least `n` requests.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait(&format!("{n} requests"), timeout, |r| r.len() >= n)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    inner: Arc<SinkInner>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
        version: format!("{:?}", parts.version),
    };
    let behavior = inner.behavior.lock().unwrap().clone();
    // The behavior runs before the request is visible to waiters, so what it
    // records is there when a waiter wakes.
    let index = inner.arrived.fetch_add(1, Ordering::SeqCst);
    let reply = behavior(&rec, index);
    {
        let mut reqs = inner.reqs.lock().unwrap();
        reqs.push(rec.clone());
        inner.cv.notify_all();
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = match reply.body {
        Some(b) => Bytes::from(b),
        None => Bytes::from_static(b"sink says hi"),
    };
    let mut resp = hyper::Response::new(Full::new(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    inner.completed.fetch_add(1, Ordering::SeqCst);
    Ok(resp)
}

/// Path of a binary of the workspace, next to `ffd`.
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ffd")).with_file_name(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo test --workspace`",
        p.display()
    );
    p
}

/// A running `ffd` on a temp socket and spool.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub spool: PathBuf,
    config: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A command ffd runs under (e.g. `unshare --user`), empty for none.
    wrapper: Vec<String>,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts ffd with `config` (TOML) in a new temp dir.
    pub fn start(config: &str) -> Daemon {
        Daemon::start_with(config, &[])
    }

    /// Starts ffd with `config` and extra flags.
    pub fn start_with(config: &str, args: &[&str]) -> Daemon {
        Daemon::start_env(config, args, &[])
    }

    /// Starts ffd with `config`, extra flags and extra environment.
    pub fn start_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::prepare(config, args, env);
        d.spawn();
        d
    }

    /// Sets up the temp dir and config without starting ffd (`restart` starts it).
    pub fn prepare(config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        Daemon {
            dir: tmp.path().to_path_buf(),
            socket: tmp.path().join("ffd.sock"),
            spool: tmp.path().join("spool"),
            config: config.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: Vec::new(),
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
            _tmp: Some(tmp),
        }
    }

    fn spawn(&mut self) {
        let cfg = self.dir.join("ffd.toml");
        std::fs::write(&cfg, &self.config).unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("ffd"));
                c
            }
            None => Command::new(bin("ffd")),
        };
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--spool")
            .arg(&self.spool)
            .args(&self.args)
            .env("RUST_LOG", "ffd=debug")
            .env_remove("FFD_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY");
        // ffd honours proxy variables: only the ones a test gives.
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let mut child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ffd");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ffd ready") {
                    let _ = tx.send(());
                }
                logs.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("ffd did not become ready:\n{}", self.logs());
        }
    }

    /// Starts ffd under `wrapper` (a command and its arguments, ffd's path
    /// and flags follow), with `config`.
    pub fn start_under(wrapper: &[&str], config: &str) -> Daemon {
        let mut d = Daemon::prepare(config, &[], &[]);
        d.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        d.spawn();
        d
    }

    /// Everything ffd wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn client(&self) -> ffclient::Client {
        ffclient::Client::connect(&self.socket).expect("connect to ffd")
    }

    pub fn stats(&self) -> Value {
        self.client().stats().expect("stats")
    }

    /// Polls `stats` until `pred` holds; panics with the last stats on timeout.
    pub fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(what, timeout, Duration::from_millis(20), || {
            let s = self.stats();
            if pred(&s) {
                Ok(s)
            } else {
                Err(format!("stats: {s:#}\nlogs:\n{}", self.logs()))
            }
        })
    }

    /// Waits until ffd's log holds `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        wait_until(
            &format!("log line {text:?}"),
            timeout,
            Duration::from_millis(20),
            || {
                if self.logs().contains(text) {
                    Ok(())
                } else {
                    Err(self.logs())
                }
            },
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit (after a signal), with a timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until("ffd to exit", timeout, Duration::from_millis(10), || {
                child.try_wait().unwrap().ok_or_else(|| self.logs())
            })
        }));
        match status {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                std::panic::resume_unwind(e)
            }
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }

    /// Starts again on the same socket, spool and config.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn();
    }

    /// Changes the config used by the next restart.
    pub fn set_config(&mut self, config: &str) {
        self.config = config.to_string();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns ffd on a listener the test holds, as systemd would pass it.
pub fn spawn_on(listener: &UnixListener, dir: &Path) -> std::process::Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=ffd exec "$0" "$@""#)
        .arg(bin("ffd"))
        .arg("--config")
        .arg(dir.join("ffd.toml"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--socket")
        .arg(dir.join("unused.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// Runs a one-line exchange as another user (setpriv), returns the answer.
pub fn exchange_as(uid: u32, gid: u32, groups: &str, sock: &Path, line: &str) -> String {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={groups}"));
    }
    // socat from /usr/bin: a tool any user can run (the test's own binaries
    // may sit in a directory other users cannot read).
    let mut child = cmd
        .arg("/usr/bin/socat")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) and socat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Not the exit status: a refused peer's socat may fail writing to a
    // connection ffd already closed after its one `forbidden` line.
    format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// True when the tests run as root (needed to run clients as other users).
/// Writes `lines` (one request a line) on one connection without waiting,
/// and returns the answers, read meanwhile on another thread.
pub fn pipelined(socket: &Path, lines: &str) -> Vec<Value> {
    let n = lines.lines().count();
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let reader = BufReader::new(s.try_clone().unwrap());
    let collector = std::thread::spawn(move || {
        reader
            .lines()
            .take(n)
            .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    s.write_all(lines.as_bytes()).unwrap();
    collector.join().unwrap()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A test CA and what it signs (PEM).
pub struct TestCa {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        TestCa { ca, key }
    }

    pub fn pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Sink {
    /// HTTPS that requires a client certificate issued by `client_ca_pem`.
    pub fn mtls(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> Sink {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut s = Sink::serve(0, Some(Arc::new(cfg)), Box::new(|_, _| Reply::status(200)));
        s.tls = true;
        s
    }
}

/// A TCP listener on 127.0.0.1 that counts the connections made to it:
/// proof that nothing was dialled.
pub struct Tripwire {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    pub fn start() -> Tripwire {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if conn.is_ok() {
                    h.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Tripwire {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; that connection is not counted.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a test proxy saw: each request line or CONNECT, with its
/// `proxy-authorization` header.
#[derive(Debug, Clone)]
pub struct Proxied {
    pub line: String,
    pub auth: Option<String>,
}

/// A loopback HTTP proxy: absolute-form requests are forwarded (in origin
/// form) and `CONNECT` tunnels spliced, to 127.0.0.1 at the port asked,
/// whatever the host name (names like `sink.invalid` never resolve).
pub struct Proxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Proxied>>>,
}

impl Proxy {
    pub fn start() -> Proxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        // Ends with the test process (the listener lives in this thread).
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || proxy_conn(conn, s));
            }
        });
        Proxy { addr, seen }
    }

    /// `http://user:pass@127.0.0.1:PORT` or without credentials.
    pub fn url(&self, creds: Option<&str>) -> String {
        match creds {
            Some(c) => format!("http://{c}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn seen(&self) -> Vec<Proxied> {
        self.seen.lock().unwrap().clone()
    }
}

fn proxy_conn(client: std::net::TcpStream, seen: Arc<Mutex<Vec<Proxied>>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = line == "\r\n" || line == "\n";
        head.push(line);
        if end || head.len() > 100 {
            break;
        }
    }
    let first = head[0].trim_end().to_string();
    let auth = head.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.eq_ignore_ascii_case("proxy-authorization")
            .then(|| v.trim().to_string())
    });
    seen.lock().unwrap().push(Proxied {
        line: first.clone(),
        auth,
    });
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authority = if method == "CONNECT" {
        target.to_string()
    } else {
        let rest = target.split_once("://").map(|x| x.1).unwrap_or("");
        rest.split('/').next().unwrap_or("").to_string()
    };
    let port: u16 = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(80);
    let Ok(mut upstream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        let _ = (&client).write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    let mut client = client;
    if method == "CONNECT" {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap();
    } else {
        // Origin form upstream, the other headers as they came.
        let path = target
            .split_once("://")
            .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_string()))
            .unwrap_or_else(|| "/".into());
        let mut out = format!("{method} {path} HTTP/1.1\r\n");
        for h in &head[1..] {
            // The proxy's credentials stop here, as with a real proxy.
            if !h.to_ascii_lowercase().starts_with("proxy-authorization:") {
                out.push_str(h);
            }
        }
        upstream.write_all(out.as_bytes()).unwrap();
        // Bytes the reader buffered past the head (the body) go too.
        let buffered = reader.buffer().to_vec();
        upstream.write_all(&buffered).unwrap();
    }
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// The Standard Webhooks signature of `id.timestamp.body` with `secret`
/// (`whsec_...`), computed by Python's standard library: an implementation
/// independent of ffd's.
pub fn python_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.removeprefix("whsec_"))
mac = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256)
print("v1," + base64.b64encode(mac.digest()).decode())
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(secret)
        .arg(id)
        .arg(timestamp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
