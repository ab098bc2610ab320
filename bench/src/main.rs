//! `ffd-bench`: measures ffd against its floors, ceilings and peers, all in
//! one run on loopback, and writes a markdown table. Run through `bench/run`.
//!
//! Every ffd figure is printed beside the limit or peer it chases, measured
//! in the same run, with the ratio. Each figure is the median of `repeat`
//! runs. Latencies are measured with client and server pinned to the same
//! CPU (see the machine note in the output).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod streams;

struct Sizes {
    repeat: usize,
    ack_n: usize,
    ingest_n: usize,
    deliver_n: usize,
    recipe_n: usize,
    slow_n: usize,
    backlog_n: usize,
    /// The large backlog (paging from the spool).
    big_backlog_n: usize,
    /// Distinct hosts of the many-hosts row.
    hosts_n: usize,
    /// Requests delivered for the RSS-after-deliveries row.
    delivered_n: usize,
    /// Events of the batched-delivery row (event streams).
    events_n: usize,
    /// Events of its unbatched comparison (one request each).
    events_unbatched_n: usize,
    /// Events each Python client sends in each scenario.
    sdk_n: usize,
    /// Events of each compression row.
    compress_n: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            repeat: 3,
            ack_n: 20_000,
            ingest_n: 200_000,
            deliver_n: 50_000,
            recipe_n: 2_000,
            slow_n: 10_000,
            backlog_n: 1_000_000,
            big_backlog_n: 10_000_000,
            hosts_n: 100_000,
            delivered_n: 1_000_000,
            events_n: 200_000,
            events_unbatched_n: 50_000,
            sdk_n: 5_000,
            compress_n: 100_000,
        }
    }
    fn smoke() -> Sizes {
        Sizes {
            repeat: 1,
            ack_n: 500,
            ingest_n: 5_000,
            deliver_n: 2_000,
            recipe_n: 30,
            slow_n: 200,
            backlog_n: 20_000,
            big_backlog_n: 50_000,
            hosts_n: 2_000,
            delivered_n: 5_000,
            events_n: 5_000,
            events_unbatched_n: 2_000,
            sdk_n: 200,
            compress_n: 2_000,
        }
    }
}

struct Opts {
    smoke: bool,
    /// Run only these sections (1-8); empty: all.
    only: Vec<u32>,
    ffd: PathBuf,
    ffclient: PathBuf,
    out: PathBuf,
    dir: PathBuf,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        smoke: false,
        only: Vec::new(),
        ffd: "target/release/ffd".into(),
        ffclient: "target/release/ffclient".into(),
        out: "bench/RESULTS.md".into(),
        dir: std::env::temp_dir().join(format!("ffd-bench-{}", std::process::id())),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("flag needs a value");
        match a.as_str() {
            "--smoke" => o.smoke = true,
            "--ffd" => o.ffd = val().into(),
            "--ffclient" => o.ffclient = val().into(),
            "--out" => o.out = val().into(),
            "--only" => {
                o.only = val()
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .expect("--only takes section numbers, e.g. 1,3")
                    })
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

// ---------------------------------------------------------------- the sink

/// A minimal hyper HTTP/1.1 server on 127.0.0.1 that counts requests; paths
/// starting with `/slow` are answered after 200 ms.
struct Sink {
    port: u16,
    count: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl Sink {
    fn start() -> Sink {
        Sink::bind("127.0.0.1:0")
    }

    /// A sink reached at every address of 127.0.0.0/8 (one port, many
    /// hosts): it listens on all addresses and closes at once any
    /// connection that does not come from this machine's loopback.
    fn start_loopback_wide() -> Sink {
        Sink::bind("0.0.0.0:0")
    }

    fn bind(addr: &str) -> Sink {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let std_l = std::net::TcpListener::bind(addr).unwrap();
        std_l.set_nonblocking(true).unwrap();
        let port = std_l.local_addr().unwrap().port();
        let c = count.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_l).unwrap();
            loop {
                let Ok((tcp, peer)) = l.accept().await else {
                    continue;
                };
                if !peer.ip().is_loopback() {
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            let slow = req.uri().path().starts_with("/slow");
                            let _ = req.into_body().collect().await;
                            if slow {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            c.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Sink {
            port,
            count,
            _rt: rt,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the count reaches `target`; the time it took from `since`.
    fn wait_until(&self, target: u64, since: Instant, limit: Duration) -> Option<Duration> {
        while self.count() < target {
            if since.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Some(since.elapsed())
    }
}

// ---------------------------------------------------------------- ffd

struct Ffd {
    child: Child,
    socket: PathBuf,
    ready: Duration,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

/// User + system CPU time of the process whose `stat` file this is, in µs
/// (clock ticks of 10 ms: read over a second or more).
fn cpu_us_of(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // The command name may hold spaces: fields count from after its ')'.
    let after = text.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e6 / hz
}

fn start_ffd(o: &Opts, name: &str, config: &str, args: &[&str], cpu: Option<usize>) -> Ffd {
    let dir = o.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    start_ffd_in(o, &dir, config, args, cpu)
}

fn start_ffd_in(o: &Opts, dir: &Path, config: &str, args: &[&str], cpu: Option<usize>) -> Ffd {
    let cfg = dir.join("ffd.toml");
    std::fs::write(&cfg, config).unwrap();
    let socket = dir.join("ffd.sock");
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c.to_string()).arg(&o.ffd);
            t
        }
        None => Command::new(&o.ffd),
    };
    let started = Instant::now();
    let mut child = cmd
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&socket)
        .arg("--spool")
        .arg(dir.join("spool"))
        .args(args)
        .env("RUST_LOG", "ffd=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ffd (build it with bench/run)");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l2 = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("ffd ready") {
                let _ = tx.send(());
            }
            l2.lock().unwrap().push(line);
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("ffd ready");
    Ffd {
        child,
        socket,
        ready: started.elapsed(),
        logs,
    }
}

impl Ffd {
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Context switches of all of ffd's threads so far.
    fn switches(&self) -> u64 {
        let mut n = 0;
        let dir = format!("/proc/{}/task", self.child.id());
        for t in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in status.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    n += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        n
    }

    /// CPU time ffd has used (user + system), in µs.
    fn cpu_us(&self) -> f64 {
        cpu_us_of(&format!("/proc/{}/stat", self.child.id()))
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Ffd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- helpers

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn unpin() {
    // SAFETY: as in pin_to.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

fn send_line(url: &str, extra: &str) -> String {
    format!(
        "{{\"url\":\"{url}\",\"headers\":{{\"x-bench\":\"1\"}},\"body\":\"{}\"{extra}}}\n",
        "b".repeat(120)
    )
}

/// Sequential round trips of `line` on one connection; latencies in µs.
fn pingpong(socket: &Path, line: &str, n: usize) -> Vec<f64> {
    let mut s = UnixStream::connect(socket).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answer = String::new();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(line.as_bytes()).unwrap();
        answer.clear();
        r.read_line(&mut answer).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        debug_assert!(answer.contains("\"ok\":true"), "{answer}");
    }
    assert!(answer.contains("\"ok\":true"), "{answer}");
    lat
}

/// `conns` connections each write their share of `n` lines pipelined and
/// read the answers; returns lines per second (all answered).
fn ingest(socket: &Path, line: &str, n: usize, conns: usize) -> f64 {
    let per = n / conns;
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (socket, line) = (socket.to_path_buf(), line.to_string());
            std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).unwrap();
                let mut w = s.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    let chunk: String = line.repeat(256);
                    let mut left = per;
                    while left > 0 {
                        let k = left.min(256);
                        w.write_all(&chunk.as_bytes()[..line.len() * k]).unwrap();
                        left -= k;
                    }
                });
                let mut r = BufReader::with_capacity(1 << 16, s);
                let mut buf = Vec::new();
                let mut got = 0;
                while got < per {
                    buf.clear();
                    r.read_until(b'\n', &mut buf).unwrap();
                    assert!(
                        buf.starts_with(b"{\"ok\":true"),
                        "{}",
                        String::from_utf8_lossy(&buf)
                    );
                    got += 1;
                }
                writer.join().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (per * conns) as f64 / start.elapsed().as_secs_f64()
}

/// The floor: a bare Unix-socket server that parses each line as JSON and
/// answers one line, batched per read like ffd. No validation, no spool.
fn floor_server(path: &Path, cpu: Option<usize>) {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        if let Some(c) = cpu {
            pin_to(c);
        }
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                if let Some(c) = cpu {
                    pin_to(c);
                }
                let mut buf = vec![0u8; 64 * 1024];
                let mut partial = Vec::new();
                let mut out = Vec::new();
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    partial.extend_from_slice(&buf[..n]);
                    out.clear();
                    let mut start = 0;
                    while let Some(p) = partial[start..].iter().position(|b| *b == b'\n') {
                        let line = &partial[start..start + p];
                        let ok = serde_json::from_slice::<Value>(line).is_ok();
                        out.extend_from_slice(if ok {
                            b"{\"ok\":true,\"id\":\"01M89PSGMXW0BG8QVJT4S8AGQE\"}\n"
                        } else {
                            b"{\"ok\":false,\"error\":\"bad_json\"}\n"
                        });
                        start += p + 1;
                    }
                    partial.drain(..start);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------- rows

struct Row {
    section: &'static str,
    what: String,
    ffd: String,
    peer: String,
    ratio: String,
    goal: String,
}

fn row(
    section: &'static str,
    what: impl Into<String>,
    ffd: impl Into<String>,
    peer: impl Into<String>,
    ratio: impl Into<String>,
    goal: impl Into<String>,
) -> Row {
    let r = Row {
        section,
        what: what.into(),
        ffd: ffd.into(),
        peer: peer.into(),
        ratio: ratio.into(),
        goal: goal.into(),
    };
    eprintln!(
        "  {:<58} {:>16} | {:<28} | {:>8} | {}",
        r.what, r.ffd, r.peer, r.ratio, r.goal
    );
    r
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.1} µs")
    }
}

/// Per-run ratios, as `0.81×, 0.79×, 0.84×`.
fn ratios(each: &[f64]) -> String {
    let v: Vec<String> = each.iter().map(|r| format!("{r:.2}×")).collect();
    v.join(", ")
}

fn rate(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k/s", v / 1000.0)
    } else {
        format!("{v:.0}/s")
    }
}

fn secs(v: f64) -> String {
    format!("{v:.2} s")
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn main() {
    let o = parse_args();
    let sizes = if o.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    std::fs::create_dir_all(&o.dir).unwrap();
    let sink = Sink::start();
    let mut rows = Vec::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "ffd-bench: {} (dir {})",
        if o.smoke { "smoke" } else { "full" },
        o.dir.display()
    );

    let hold = ",\"delay_ms\":3600000";
    let line = send_line(&sink.url("/ack"), hold);
    let conc = 64;
    let dcfg = format!("[delivery]\nmax_in_flight = 256\nmax_in_flight_per_host = {conc}\n");
    let mut delivered = f64::NAN;

    // 1. ACK round trip, same CPU for both ends.
    let run = |n: u32| o.only.is_empty() || o.only.contains(&n);
    if run(1) {
        eprintln!("1. ACK round trip (client and server on CPU 0)");
        let floor_path = o.dir.join("floor.sock");
        floor_server(&floor_path, Some(0));
        pin_to(0);
        let mut floor_p = (vec![], vec![], vec![]);
        for _ in 0..sizes.repeat {
            let mut l = pingpong(&floor_path, &line, sizes.ack_n);
            floor_p.0.push(pct(&mut l, 0.5));
            floor_p.1.push(pct(&mut l, 0.99));
            floor_p.2.push(pct(&mut l, 0.999));
        }
        let floor_p99s = floor_p.1.clone();
        let floor = (median(floor_p.0), median(floor_p.1), median(floor_p.2));
        rows.push(row(
            "ack",
            "floor: bare socket ping-pong + JSON parse, p50 / p99 / p999",
            format!("{} / {} / {}", us(floor.0), us(floor.1), us(floor.2)),
            "",
            "",
            "",
        ));
        for (mode, args) in [
            ("never", &["--fsync", "never"][..]),
            ("always", &["--fsync", "always"][..]),
            ("memory", &["--memory"][..]),
        ] {
            let mut p = (vec![], vec![], vec![]);
            for r in 0..sizes.repeat {
                let f = start_ffd(&o, &format!("ack-{mode}-{r}"), "", args, Some(0));
                let _ = pingpong(&f.socket, &line, 200); // warm up
                let mut l = pingpong(&f.socket, &line, sizes.ack_n);
                p.0.push(pct(&mut l, 0.5));
                p.1.push(pct(&mut l, 0.99));
                p.2.push(pct(&mut l, 0.999));
                f.stop();
            }
            // Each run beside the floor's run of the same number.
            let each: Vec<f64> = p.1.iter().zip(&floor_p99s).map(|(a, b)| a / b).collect();
            let m = (median(p.0), median(p.1), median(p.2));
            let goal = if mode == "never" {
                format!(
                    "p99 ≤ 2× floor in each run ({}): {}",
                    ratios(&each),
                    met(each.iter().all(|r| *r <= 2.0))
                )
            } else {
                String::new()
            };
            rows.push(row(
                "ack",
                format!("ffd ACK, spool {mode}, p50 / p99 / p999"),
                format!("{} / {} / {}", us(m.0), us(m.1), us(m.2)),
                format!("floor {} / {} / {}", us(floor.0), us(floor.1), us(floor.2)),
                format!("{:.2}× / {:.2}×", m.0 / floor.0, m.1 / floor.1),
                goal,
            ));
        }
        unpin();
    }

    // 2. Ingest, pipelined.
    let run = |n: u32| o.only.is_empty() || o.only.contains(&n);
    if run(2) {
        eprintln!("2. ingest, pipelined");
        let floor_ingest = o.dir.join("floor-ingest.sock");
        floor_server(&floor_ingest, None);
        for conns in [1, 8] {
            let fl = median(
                (0..sizes.repeat)
                    .map(|_| ingest(&floor_ingest, &line, sizes.ingest_n, conns))
                    .collect(),
            );
            let modes: &[(&str, &[&str])] = if conns == 8 {
                &[
                    ("never", &["--fsync", "never"]),
                    ("always", &["--fsync", "always"]),
                    ("memory", &["--memory"]),
                ]
            } else {
                &[("never", &["--fsync", "never"]), ("memory", &["--memory"])]
            };
            for &(mode, args) in modes {
                let v = median(
                    (0..sizes.repeat)
                        .map(|r| {
                            let f = start_ffd(
                                &o,
                                &format!("ingest-{mode}-{conns}-{r}"),
                                "[spool]\nmax_bytes = 4294967296\n",
                                args,
                                None,
                            );
                            let v = ingest(&f.socket, &line, sizes.ingest_n, conns);
                            f.stop();
                            v
                        })
                        .collect(),
                );
                rows.push(row(
                    "ingest",
                    format!("ingest, {conns} connection(s), spool {mode}"),
                    rate(v),
                    format!("floor {}", rate(fl)),
                    format!("{:.2}×", v / fl),
                    match mode {
                        "never" => format!("≥ 0.5× floor: {}", met(v >= 0.5 * fl)),
                        "always" => format!("≥ 0.35× floor: {}", met(v >= 0.35 * fl)),
                        _ => String::new(),
                    },
                ));
            }
        }
    }

    // 3. Delivered rate.
    let run = |n: u32| o.only.is_empty() || o.only.contains(&n);
    if run(3) {
        eprintln!("3. delivered requests per second");
        let nginx = Nginx::start(&o.dir);
        let mut targets: Vec<(&str, String)> = vec![("a minimal hyper server", sink.url(""))];
        if let Some(n) = &nginx {
            targets.push(("nginx", n.url()));
        }
        for (ti, (name, base)) in targets.iter().enumerate() {
            let own0 = cpu_us_of("/proc/self/stat");
            let ceilings: Vec<f64> = (0..sizes.repeat)
                .map(|_| plain_hyper(&format!("{base}/plain"), sizes.deliver_n, conc))
                .collect();
            // Client and server both live in this process for the plain pool
            // (nginx's own CPU is not counted: the sink's row is the one to read).
            let plain_cpu =
                (cpu_us_of("/proc/self/stat") - own0) / (sizes.repeat * sizes.deliver_n) as f64;
            let ceiling = median(ceilings.clone());
            let mut deliver_runs = Vec::new();
            for r in 0..sizes.repeat {
                let f = start_ffd(&o, &format!("deliver-{ti}-{r}"), &dcfg, &[], None);
                let line = send_line(&format!("{base}/deliver"), "");
                let t = Instant::now();
                ingest(&f.socket, &line, sizes.deliver_n, 1);
                let d = wait_delivered(&f, sizes.deliver_n as u64, t, Duration::from_secs(300))
                    .expect("delivered");
                deliver_runs.push(sizes.deliver_n as f64 / d.as_secs_f64());
                f.stop();
            }
            let each: Vec<f64> = deliver_runs
                .iter()
                .zip(&ceilings)
                .map(|(a, b)| a / b)
                .collect();
            let v = median(deliver_runs);
            if ti == 0 {
                delivered = v;
            }
            rows.push(row(
                "deliver",
                format!("delivered to {name}, {conc} in flight"),
                rate(v),
                format!("plain hyper-util pool {}", rate(ceiling)),
                format!("{:.2}×", v / ceiling),
                format!(
                    "≥ 0.8× ceiling in each run ({}): {}",
                    ratios(&each),
                    met(each.iter().all(|r| *r >= 0.8))
                ),
            ));
            if ti == 0 {
                // The same, with the handing over done first: what ffd's
                // delivery path alone does beside the plain pool (the row
                // above also pays for reading and storing every send).
                let mut drain_runs = Vec::new();
                let (mut ffd_cpu, mut sink_cpu, mut ffd_cs) = (Vec::new(), Vec::new(), Vec::new());
                for r in 0..sizes.repeat {
                    let f = start_ffd(&o, &format!("drain-{r}"), &dcfg, &[], None);
                    let line = send_line(&format!("{base}/drain"), ",\"delay_ms\":1500");
                    let base_count = sink.count();
                    ingest(&f.socket, &line, sizes.deliver_n, 1);
                    let t = Instant::now();
                    while sink.count() == base_count && t.elapsed() < Duration::from_secs(30) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    let t0 = Instant::now();
                    let first = sink.count();
                    let (f0, s0, c0) = (f.cpu_us(), cpu_us_of("/proc/self/stat"), f.switches());
                    if let Some(d) = sink.wait_until(
                        base_count + sizes.deliver_n as u64,
                        t0,
                        Duration::from_secs(300),
                    ) {
                        let n = base_count + sizes.deliver_n as u64 - first;
                        drain_runs.push(n as f64 / d.as_secs_f64());
                        ffd_cpu.push((f.cpu_us() - f0) / n as f64);
                        sink_cpu.push((cpu_us_of("/proc/self/stat") - s0) / n as f64);
                        ffd_cs.push((f.switches() - c0) as f64 / n as f64);
                    }
                    f.stop();
                }
                if !drain_runs.is_empty() {
                    let v = median(drain_runs);
                    rows.push(row(
                        "deliver",
                        format!("delivered from a queued backlog to {name}, {conc} in flight"),
                        rate(v),
                        format!("plain hyper-util pool {}", rate(ceiling)),
                        format!("{:.2}×", v / ceiling),
                        format!(
                            "≥ 0.9× ceiling (delivery path alone): {}",
                            met(v >= 0.9 * ceiling)
                        ),
                    ));
                    // Where the time goes: CPU per request, against the
                    // plain pool's (its client and this server together).
                    if !ffd_cpu.is_empty() {
                        let (fc, sc) = (median(ffd_cpu), median(sink_cpu));
                        rows.push(row(
                            "deliver",
                            "CPU per request, delivered from a queued backlog: ffd + server",
                            format!("{:.1} µs + {:.1} µs", fc, sc),
                            format!("plain pool client + server {plain_cpu:.1} µs"),
                            format!("{:.2}×", plain_cpu / (fc + sc)),
                            format!(
                                "cores busy while draining: {:.2} of {}; ffd's context switches per request: {:.2}",
                                (fc + sc) * v / 1e6,
                                cpus,
                                median(ffd_cs)
                            ),
                        ));
                    }
                }
            }
            if let Some(w) = wrk(&format!("{base}/wrk"), conc, o.smoke) {
                rows.push(row(
                    "deliver",
                    format!("wrk on {name}, {conc} connections"),
                    rate(v),
                    format!("wrk {}", rate(w)),
                    format!("{:.2}×", v / w),
                    "",
                ));
            }
        }
        drop(nginx);
    }

    // 4. The recipes ffd replaces.
    let run = |n: u32| o.only.is_empty() || o.only.contains(&n);
    if run(4) {
        eprintln!("4. recipes, {} requests each", sizes.recipe_n);
        let f = start_ffd(&o, "recipes", &dcfg, &[], None);
        let mut recipe_rows = recipes(&o, &sink, &f, sizes.recipe_n);
        f.stop();
        let fastest_python = recipe_rows
            .iter()
            .filter(|r| r.0.starts_with("python") || r.0.starts_with("bash"))
            .map(|r| sizes.recipe_n as f64 / r.3)
            .fold(0.0, f64::max);
        let min_blocked_peer = recipe_rows
            .iter()
            .filter(|r| !r.0.starts_with("ffd"))
            .map(|r| r.1)
            .fold(f64::INFINITY, f64::min);
        // The Python module's pipeline against aiohttp's create_task, the
        // cheapest hand-off Python has (issue 20's goal).
        let p50_of = |name: &str| recipe_rows.iter().find(|r| r.0 == name).map(|r| r.1);
        let pipeline_vs_aiohttp = p50_of("ffd, Python module, Client.pipeline()")
            .zip(p50_of("python: aiohttp tasks on one session"));
        for (name, p50, p99, total) in recipe_rows.drain(..) {
            let is_ffd = name.starts_with("ffd");
            let goal = if is_ffd {
                format!(
                    "blocked p50 < every recipe's ({}): {}",
                    us(min_blocked_peer),
                    met(p50 < min_blocked_peer)
                )
            } else {
                String::new()
            };
            rows.push(row(
                "recipes",
                name,
                format!("{} / {}", us(p50), us(p99)),
                secs(total),
                rate(sizes.recipe_n as f64 / total),
                goal,
            ));
        }
        if let Some((ours, theirs)) = pipeline_vs_aiohttp {
            rows.push(row(
                "recipes",
                "Python Client.pipeline() vs aiohttp create_task, caller blocked p50",
                us(ours),
                us(theirs),
                format!("{:.2}×", ours / theirs),
                format!("≤ aiohttp's create_task: {}", met(ours <= theirs)),
            ));
        }
        if delivered.is_finite() {
            rows.push(row(
                "recipes",
                "ffd delivered rate vs fastest Python/bash recipe",
                rate(delivered),
                rate(fastest_python),
                format!("{:.1}×", delivered / fastest_python),
                format!("≥ 10×: {}", met(delivered >= 10.0 * fastest_python)),
            ));
        }
    }

    // 5. Slow server.
    let run = |n: u32| o.only.is_empty() || o.only.contains(&n);
    if run(5) {
        eprintln!("5. slow server (200 ms per response)");
        let f = start_ffd(
            &o,
            "slow",
            "[delivery]\nmax_in_flight = 512\nmax_in_flight_per_host = 256\n",
            &[],
            None,
        );
        let base = sink.count();
        let t = Instant::now();
        let mut c = ffclient::Client::connect(&f.socket).unwrap();
        let mut p = c.pipeline();
        let url = sink.url("/slow");
        for _ in 0..sizes.slow_n {
            p.send_line(&send_line(&url, "")).unwrap();
        }
        p.finish().unwrap();
        let handed = t.elapsed();
        let all = sink
            .wait_until(base + sizes.slow_n as u64, t, Duration::from_secs(600))
            .expect("slow delivered");
        rows.push(row(
            "slow",
            format!("hand over {} requests (pipelined)", sizes.slow_n),
            secs(handed.as_secs_f64()),
            "",
            "",
            "",
        ));
        rows.push(row(
            "slow",
            format!("all {} delivered, 256 in flight", sizes.slow_n),
            secs(all.as_secs_f64()),
            format!(
                "ideal {} (n × 0.2 s / 256)",
                secs(sizes.slow_n as f64 * 0.2 / 256.0)
            ),
            format!(
                "{:.2}×",
                all.as_secs_f64() / (sizes.slow_n as f64 * 0.2 / 256.0)
            ),
            "",
        ));
        f.stop();
    }

    // 6. Memory and disk.
    let run = |n: u32| o.only.is_empty() || o.only.contains(&n);
    if run(6) {
        eprintln!("6. memory and disk");
        let f = start_ffd(&o, "idle", "", &[], None);
        let _ = ffclient::Client::connect(&f.socket).unwrap().ping();
        std::thread::sleep(Duration::from_millis(300));
        let (idle, _) = f.rss_kib();
        rows.push(row(
            "memory",
            "idle RSS",
            format!("{:.1} MiB", idle as f64 / 1024.0),
            "",
            "",
            format!("≤ 5 MiB: {}", met(idle <= 5 * 1024)),
        ));
        f.stop();
        backlog(&o, &sink, sizes.backlog_n, 100, &mut rows);
        backlog(&o, &sink, sizes.big_backlog_n, 256, &mut rows);
        many_hosts(&o, sizes.hosts_n, &mut rows);
    }
    let _ = cpus;

    // 7. Storage candidates for the spool.
    if o.only.is_empty() || o.only.contains(&7) {
        eprintln!("7. storage candidates: append a batch, make it durable as the mode says");
        storage_candidates(&o, &sizes, &mut rows);
    }

    // 8. Event streams: batching destinations, the Python SDKs, compression.
    if o.only.is_empty() || o.only.contains(&8) {
        eprintln!("8. event streams");
        streams::event_streams(&o, &sizes, &mut rows);
    }

    // 9. Memory after deliveries.
    if o.only.is_empty() || o.only.contains(&9) {
        eprintln!("9. memory after deliveries");
        after_deliveries(&o, &sink, sizes.delivered_n, &mut rows);
    }

    write_results(&o, &sizes, &rows);
    let _ = std::fs::remove_dir_all(&o.dir);
}

/// The spool's job, done by each candidate store: append batches of
/// ~300-byte records, each batch durable to the level of the mode before it
/// would be acknowledged. Our log is a plain `write` (+ `fdatasync`).
fn storage_candidates(o: &Opts, sizes: &Sizes, rows: &mut Vec<Row>) {
    use redb::{Database, Durability, TableDefinition};
    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
    let record = vec![0xabu8; 300];
    let dir = o.dir.join("storage");
    std::fs::create_dir_all(&dir).unwrap();
    for (batch, durable) in [(1usize, false), (64, false), (1, true), (64, true)] {
        let n = if durable {
            sizes.ack_n / 10
        } else {
            sizes.ack_n * 5
        };
        let batches = (n / batch).max(1);
        let mode = if durable {
            "fsync always"
        } else {
            "fsync never"
        };
        // Our log: one write per batch, fdatasync when durable.
        let path = dir.join(format!("log-{batch}-{durable}"));
        let mut f = std::fs::File::create(&path).unwrap();
        let mut buf = Vec::new();
        let mut lat = Vec::with_capacity(batches);
        let t = Instant::now();
        for _ in 0..batches {
            let s = Instant::now();
            buf.clear();
            for _ in 0..batch {
                buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
                buf.extend_from_slice(&[0; 4]);
                buf.extend_from_slice(&record);
            }
            f.write_all(&buf).unwrap();
            if durable {
                f.sync_data().unwrap();
            }
            lat.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let log_rate = (batches * batch) as f64 / t.elapsed().as_secs_f64();
        let log_p50 = pct(&mut lat, 0.5);
        let log_p99 = pct(&mut lat, 0.99);
        // redb: one write transaction per batch.
        let db = Database::create(dir.join(format!("redb-{batch}-{durable}"))).unwrap();
        let mut lat = Vec::with_capacity(batches);
        let mut key = 0u64;
        let t = Instant::now();
        for _ in 0..batches {
            let s = Instant::now();
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .unwrap();
            {
                let mut table = txn.open_table(TABLE).unwrap();
                for _ in 0..batch {
                    table.insert(key, record.as_slice()).unwrap();
                    key += 1;
                }
            }
            txn.commit().unwrap();
            lat.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let redb_rate = (batches * batch) as f64 / t.elapsed().as_secs_f64();
        let redb_p50 = pct(&mut lat, 0.5);
        let redb_p99 = pct(&mut lat, 0.99);
        rows.push(row(
            "storage",
            format!("batch of {batch}, {mode}: commit p50 / p99, records/s"),
            format!("log {} / {}, {}", us(log_p50), us(log_p99), rate(log_rate)),
            format!(
                "redb {} / {}, {}",
                us(redb_p50),
                us(redb_p99),
                rate(redb_rate)
            ),
            format!("{:.1}× (redb ÷ log, p50)", redb_p50 / log_p50),
            "",
        ));
    }
}

/// Section 6, one backlog: `n` requests to a closed port (all stay
/// pending), RSS with them held, then a restart with them all on disk.
/// `goal_mib` is the RSS goal for this many.
fn backlog(o: &Opts, sink: &Sink, n: usize, goal_mib: u64, rows: &mut Vec<Row>) {
    eprintln!("   backlog of {n}");
    let dir = o.dir.join(format!("backlog-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = "[spool]\nmax_bytes = 34359738368\n";
    let f = start_ffd_in(o, &dir, cfg, &[], None);
    let down = send_line("http://127.0.0.1:1/down", "");
    let t = Instant::now();
    ingest(&f.socket, &down, n, 4);
    let ingest_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = f.rss_kib();
    let spool_bytes = dir_bytes(&dir.join("spool"));
    let big = n >= 1_000_000 && !o.smoke;
    let goal = |kib: u64| {
        if big {
            format!("≤ {goal_mib} MiB: {}", met(kib <= goal_mib * 1024))
        } else {
            String::new()
        }
    };
    rows.push(row(
        "memory",
        format!("{n} pending (server down): RSS / peak"),
        format!(
            "{:.0} / {:.0} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        format!(
            "ingested in {}; {:.0} B/request",
            secs(ingest_s),
            rss as f64 * 1024.0 / n as f64
        ),
        "",
        goal(rss),
    ));
    rows.push(row(
        "memory",
        format!("{n} pending: spool on disk"),
        format!("{:.0} MiB", spool_bytes as f64 / 1048576.0),
        format!("{:.0} B/request", spool_bytes as f64 / n as f64),
        "",
        "",
    ));
    f.stop();
    let t = Instant::now();
    let f = start_ffd_in(o, &dir, cfg, &[], None);
    let mut c = ffclient::Client::connect(&f.socket).unwrap();
    c.send(&ffclient::Request::get(&sink.url("/after-restart")))
        .unwrap();
    let first_ack = t.elapsed();
    let replayed = wait_log(&f, "spool replayed", Duration::from_secs(600));
    let (rss2, hwm2) = f.rss_kib();
    rows.push(row(
        "memory",
        format!("restart with {n} pending: first ACK after spawn"),
        secs(first_ack.as_secs_f64()),
        format!("ready after {}", secs(f.ready.as_secs_f64())),
        "",
        format!("≤ 100 ms: {}", met(first_ack <= Duration::from_millis(100))),
    ));
    rows.push(row(
        "memory",
        format!("restart with {n} pending: replay done / RSS after / peak"),
        format!(
            "{} / {:.0} / {:.0} MiB",
            replayed
                .map(|d| secs(d.as_secs_f64()))
                .unwrap_or("-".into()),
            rss2 as f64 / 1024.0,
            hwm2 as f64 / 1024.0
        ),
        "",
        "",
        if big {
            format!(
                "≤ 30 s, peak ≤ {goal_mib} MiB: {}",
                met(replayed.is_some_and(|d| d <= Duration::from_secs(30))
                    && hwm2 <= goal_mib * 1024)
            )
        } else {
            String::new()
        },
    ));
    f.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Section 6, many hosts: one request to each of `n` distinct hosts
/// (127.a.b.c, one sink listening on them all), RSS while they are
/// delivered and once their hosts have been idle long enough to be dropped.
fn many_hosts(o: &Opts, n: usize, rows: &mut Vec<Row>) {
    eprintln!("   {n} distinct hosts");
    let sink = Sink::start_loopback_wide();
    // No idle connection kept: a hundred thousand open sockets (past the
    // fd limit) are not what this row measures.
    let cfg = "[delivery]\npool_idle_per_host = 0\n";
    let f = start_ffd(o, "hosts", cfg, &[], None);
    let (idle, _) = f.rss_kib();
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (a, b, c) = (1 + i / (254 * 254), 1 + (i / 254) % 254, 1 + i % 254);
            send_line(&format!("http://127.{a}.{b}.{c}:{}/h", sink.port), "")
        })
        .collect();
    let t = Instant::now();
    let mut client = ffclient::Client::connect(&f.socket).unwrap();
    let mut p = client.pipeline();
    for l in &lines {
        p.send_line(l).unwrap();
    }
    p.finish().unwrap();
    let done = sink.wait_until(n as u64, t, Duration::from_secs(600));
    let (during, peak) = f.rss_kib();
    // Hosts go once idle for 30 s (checked every 5 s).
    let dropped_at = Instant::now();
    let mut after = during;
    let mut left = usize::MAX;
    while dropped_at.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        left = ffclient::Client::connect(&f.socket)
            .and_then(|mut c| c.stats())
            .map(|s| s["hosts"].as_array().map_or(0, |h| h.len()))
            .unwrap_or(usize::MAX);
        after = f.rss_kib().0;
        if left == 0 {
            break;
        }
    }
    rows.push(row(
        "memory",
        format!("{n} distinct hosts, one request each: RSS delivered / peak"),
        format!(
            "{:.0} / {:.0} MiB",
            during as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
        format!(
            "idle {:.1} MiB; all delivered in {}",
            idle as f64 / 1024.0,
            done.map(|d| secs(d.as_secs_f64())).unwrap_or("-".into())
        ),
        "",
        "",
    ));
    rows.push(row(
        "memory",
        format!("{n} distinct hosts: RSS once idle and dropped (after 30 s)"),
        format!("{:.1} MiB", after as f64 / 1024.0),
        format!(
            "{} hosts left in `stats`; `status` keeps the last {} delivered",
            if left == usize::MAX {
                "?".into()
            } else {
                left.to_string()
            },
            n.min(100_000)
        ),
        "",
        format!("hosts dropped: {}", met(left == 0)),
    ));
    f.stop();
}

fn wait_log(f: &Ffd, needle: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if let Some(line) = f.logs.lock().unwrap().iter().find(|l| l.contains(needle)) {
            // The log line carries the replay's own duration.
            let ms = line
                .split("ms=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok());
            return ms.map(Duration::from_millis).or(Some(t.elapsed()));
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The ceiling: a plain hyper-util pooled client, `conc` tasks, same body.
fn plain_hyper(url: &str, n: usize, conc: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url: hyper::Uri = url.parse().unwrap();
    let t = Instant::now();
    let done = rt.block_on(async {
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(conc)
                .build_http();
        let body = Bytes::from("b".repeat(120));
        let tasks: Vec<_> = (0..conc)
            .map(|_| {
                let (client, url, body) = (client.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    let mut ok = 0usize;
                    for _ in 0..n / conc {
                        let req = hyper::Request::post(url.clone())
                            .header("x-bench", "1")
                            .body(Full::new(body.clone()))
                            .unwrap();
                        let resp = client.request(req).await.unwrap();
                        ok += resp.status().is_success() as usize;
                        let _ = resp.into_body().collect().await;
                    }
                    ok
                })
            })
            .collect();
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        done
    });
    done as f64 / t.elapsed().as_secs_f64()
}

/// Waits until ffd counts `n` delivered; the time since `since`.
fn wait_delivered(f: &Ffd, n: u64, since: Instant, limit: Duration) -> Option<Duration> {
    let mut c = ffclient::Client::connect(&f.socket).ok()?;
    loop {
        let s = c.stats().ok()?;
        if s["delivered"].as_u64() >= Some(n) {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// nginx on a loopback port answering 200 to everything, when installed.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\"; }} }} }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).ok()?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nginx { child, port })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too (SIGKILL would orphan it).
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn wrk(url: &str, conc: usize, smoke: bool) -> Option<f64> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conc}"),
            if smoke { "-d1s" } else { "-d5s" },
            url,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// How long each of `n` calls of `f` took, in µs.
fn timed(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// (name, blocked p50 µs, blocked p99 µs, seconds until all delivered)
fn recipes(o: &Opts, sink: &Sink, f: &Ffd, n: usize) -> Vec<(String, f64, f64, f64)> {
    let mut out = Vec::new();
    // ffd through the Rust library: one round trip per request.
    let url = sink.url("/recipe/ffd-lib");
    let base = sink.count();
    let t = Instant::now();
    let mut c = ffclient::Client::connect(&f.socket).unwrap();
    let mut lat = timed(n, || {
        c.send(&ffclient::Request::post(&url).body("b".repeat(120)))
            .unwrap();
    });
    let total = sink
        .wait_until(base + n as u64, t, Duration::from_secs(120))
        .unwrap();
    out.push((
        "ffd, Rust library, send (waits for ACK)".into(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        total.as_secs_f64(),
    ));
    // ffd through the Rust library, pipelined.
    let base = sink.count();
    let t = Instant::now();
    let mut p = c.pipeline();
    let mut lat = timed(n, || {
        p.send(&ffclient::Request::post(&url).body("b".repeat(120)))
            .unwrap();
    });
    let report = p.finish().unwrap();
    assert!(report.rejected.is_empty());
    let total = sink
        .wait_until(base + n as u64, t, Duration::from_secs(120))
        .unwrap();
    out.push((
        "ffd, Rust library, pipeline".into(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        total.as_secs_f64(),
    ));
    // ffd through the ffclient process.
    let base = sink.count();
    let t = Instant::now();
    let mut lat = Vec::new();
    let url = sink.url("/recipe/ffclient");
    for _ in 0..n.min(500) {
        let s = Instant::now();
        let st = Command::new(&o.ffclient)
            .arg("--socket")
            .arg(&f.socket)
            .args(["send", &url, "--data-binary", &"b".repeat(120)])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        lat.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let m = n.min(500);
    let total = sink
        .wait_until(base + m as u64, t, Duration::from_secs(120))
        .unwrap();
    out.push((
        format!("ffd, ffclient process per request ({m})"),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        total.as_secs_f64() * n as f64 / m as f64,
    ));
    // The Python and bash recipes, run by bench/recipes.py.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes.py");
    let res = Command::new("python3")
        .arg(&script)
        .arg(sink.url("/recipe"))
        .arg(n.to_string())
        .env("FFD_SOCKET", &f.socket)
        .stderr(Stdio::inherit())
        .output()
        .expect("python3");
    for line in String::from_utf8_lossy(&res.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        out.push((
            v["name"].as_str().unwrap_or("?").to_string(),
            v["p50_us"].as_f64().unwrap_or(f64::NAN),
            v["p99_us"].as_f64().unwrap_or(f64::NAN),
            v["total_s"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

fn write_results(o: &Opts, sizes: &Sizes, rows: &[Row]) {
    let mut s = String::new();
    s.push_str("# ffd benchmark results\n\n");
    s.push_str(&format!(
        "Machine: {}. Run: `bench/run{}`{}; each figure is the median of {} run(s).\n\n",
        machine(),
        if o.smoke { " --smoke" } else { "" },
        if o.smoke {
            " (smoke sizes: a check that the bench works, not figures to quote)"
        } else {
            ""
        },
        sizes.repeat
    ));
    let sections = [
        ("ack", "1. ACK round trip on one connection", "Client, ffd and the floor server pinned to CPU 0 (`taskset`). Requests carry `delay_ms` so that only the ACK path runs. Floor: a bare Unix-socket server that parses the same line as JSON and answers one line.", ["what", "ffd", "limit", "ratio (p50 / p99)", "goal"]),
        ("ingest", "2. Ingest rate, pipelined", "Lines of ~200 bytes written without waiting, all answers read. Floor: the same bare parse-and-answer server.", ["what", "ffd", "limit", "ratio", "goal"]),
        ("deliver", "3. Delivered requests per second", "To a minimal hyper HTTP/1.1 server on 127.0.0.1, from the first line written to the last request received. The queued-backlog row hands every request over first (`delay_ms` 1.5 s) and times the deliveries alone, from the first received to the last.", ["what", "ffd", "ceiling", "ratio", "goal"]),
        ("recipes", "4. Against the recipes ffd replaces", "Each sends the same requests to the same server. Caller blocked: the time one `send` (or `submit`, `create_task`, `&`) keeps the caller. Total: until all were delivered.", ["recipe", "caller blocked p50 / p99", "all delivered", "rate", "goal"]),
        ("slow", "5. A slow server (200 ms per response)", "", ["what", "ffd", "reference", "ratio", "goal"]),
        ("memory", "6. Memory and disk", "Backlog: requests to a closed port (server down), so all stay pending; each lane keeps `spool.memory_window` (16,384) of them in memory and the rest in the spool. Many hosts: one request to each of N addresses of 127.0.0.0/8 (one sink listening on them all, no idle connection kept), then the hosts are left idle until ffd drops them.", ["what", "ffd", "context", "", "goal"]),
        ("storage", "7. Storage candidates for the spool", "The spool's job done by each store: append a batch of ~300-byte records and make it as durable as the mode promises before the ACK. `log`: the segmented log ffd uses (one `write`, plus `fdatasync` in `always` mode); `redb`: one write transaction per batch (`Durability::None` / `Immediate`).", ["what", "our log", "redb", "ratio", ""]),
        ("streams", "8. Event streams: batched delivery", "A destination with `[destinations.ev.batch]` (`max_events` 500, ndjson) to a loopback receiver that counts the events in each batch; distinct ~300-byte analytics events, written pipelined on one connection. Rate: events from the first line written to the last event received. Ingest alone: the same events held (`delay_ms`, nothing delivered), first line written to last ACK, in a fresh ffd of the same run; ingest while delivering: the last ACK of the delivered run. Unbatched: the same events sent with `url`, one request each, to the same receiver.", ["what", "ffd", "reference", "ratio", "goal"]),
        ("streams-sdk", "8. Event streams: Python clients against the analytics SDKs", "The same receiver emulates Segment's `POST /v1/batch` and PostHog's `POST /batch/` (each SDK's `host` points at it; default settings otherwise: Segment 100 events or 0.5 s a batch, PostHog 100 events or 5 s). ffd: batching destinations, 500 events or 0.5 s. Blocked: the time one `track`/`capture`/`send` keeps the caller. Delivered: events received per second, from the first call until the receiver has all (the SDKs' `flush()` called after the last). Lost at exit: a process sends N events and returns at once (interpreter exit, atexit handlers run); events received after it exited, within the settle time. Lost after fork: the parent makes the client and sends one event, forks, and the child sends N and exits.", ["client", "caller blocked p50 / p99", "delivered", "lost at exit", "lost when a forked child sends"]),
        ("streams-compress", "8. Event streams: compression", "Batches of 500 distinct ~300-byte analytics events (ndjson) with the destination's `compression` at its default level (gzip 6, zstd 3). Wire bytes: request bodies as received, per event. CPU: ffd's utime + stime (`/proc/PID/stat`) per event, ingest included, from the first line written to the last event received.", ["compression", "wire bytes / event", "ffd CPU / event", "against none", ""]),
    ];
    for (key, title, note, head) in sections {
        s.push_str(&format!("## {title}\n\n"));
        if !note.is_empty() {
            s.push_str(&format!("{note}\n\n"));
        }
        s.push_str(&format!(
            "| {} |\n|{}\n",
            head.join(" | "),
            " --- |".repeat(head.len())
        ));
        for r in rows.iter().filter(|r| r.section == key) {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.what, r.ffd, r.peer, r.ratio, r.goal
            ));
        }
        s.push('\n');
    }
    if !o.smoke {
        let notes = Path::new(env!("CARGO_MANIFEST_DIR")).join("NOTES.md");
        if let Ok(n) = std::fs::read_to_string(notes) {
            s.push_str(&n);
        }
    }
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&o.out, s).unwrap();
    eprintln!("wrote {}", o.out.display());
}

/// RSS while `n` requests are delivered with default settings, to
/// distinct URLs (so no `METHOD url` text is shared), sent steadily: at
/// every fifth of the way, and once idle. What `status` remembers of delivered requests,
/// and what the allocator keeps of a burst, must not grow with what went
/// through.
fn after_deliveries(o: &Opts, sink: &Sink, n: usize, rows: &mut Vec<Row>) {
    eprintln!("   {n} delivered, RSS along the way");
    let f = start_ffd(o, "delivered", "", &[], None);
    let mut c = ffclient::Client::connect(&f.socket).unwrap();
    let step = (n / 5).max(1);
    let mut marks = Vec::new();
    let mut unsettled = Vec::new();
    let mut paused = Duration::ZERO;
    let t = Instant::now();
    // A service sending steadily, not a backlog: 10,000 at a time, each
    // lot delivered before the next (the backlog rows measure a backlog).
    let lot = step.min(10_000);
    let mut sent = 0;
    for k in 0..5 {
        while sent < (k + 1) * step {
            let mut p = c.pipeline();
            for i in sent..(sent + lot).min((k + 1) * step) {
                p.send(&ffclient::Request::post(&sink.url(&format!("/d/{i}"))).body("{}"))
                    .unwrap();
            }
            p.finish().unwrap();
            sent = (sent + lot).min((k + 1) * step);
            wait_delivered(&f, sent as u64, t, Duration::from_secs(900))
                .expect("deliveries within 15 min");
        }
        let at_once = f.rss_kib().0;
        // Settled: once the housekeeping tick (5 s) gave back what the
        // last lots freed.
        let busy = t.elapsed();
        std::thread::sleep(Duration::from_secs(6));
        paused += t.elapsed() - busy;
        marks.push(f.rss_kib().0);
        unsettled.push(at_once);
    }
    let delivered_s = (t.elapsed() - paused).as_secs_f64();
    // The housekeeping tick (5 s) gives a burst's memory back.
    std::thread::sleep(Duration::from_secs(7));
    let idle = f.rss_kib().0;
    f.stop();
    let mib = |k: u64| k as f64 / 1024.0;
    let (first, last) = (marks[0], marks[4]);
    let flat = last <= first + first / 10 + 2048;
    rows.push(row(
        "memory",
        format!("{n} delivered (distinct URLs): RSS at 1/5 / at the end / idle after"),
        format!(
            "{:.0} / {:.0} / {:.0} MiB",
            mib(first),
            mib(last),
            mib(idle)
        ),
        format!(
            "each fifth, settled: {} MiB (at once: {}); {:.0}/s",
            marks
                .iter()
                .map(|m| format!("{:.0}", mib(*m)))
                .collect::<Vec<_>>()
                .join(", "),
            unsettled
                .iter()
                .map(|m| format!("{:.0}", mib(*m)))
                .collect::<Vec<_>>()
                .join(", "),
            n as f64 / delivered_s
        ),
        "",
        if n >= 1_000_000 {
            format!(
                "≤ 64 MiB and flat: {}",
                met(last <= 64 * 1024 && idle <= 64 * 1024 && flat)
            )
        } else {
            String::new()
        },
    ));
}
