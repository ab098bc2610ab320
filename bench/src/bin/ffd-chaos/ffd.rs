//! The ffd under test: its config, its process (started, killed, reloaded),
//! what its stderr says, and its control socket and metrics.

use crate::sender::now_ms;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What ffd's log said, for the fault driver to aim at.
#[derive(Default)]
pub struct Seen {
    /// This instance has logged "spool replayed".
    pub replayed: AtomicBool,
    /// Unix ms of the last "compacted spool segment".
    pub last_compaction_ms: AtomicU64,
    pub compactions: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_refused: AtomicU64,
    /// Lines that say something went wrong inside ffd (panics, damage).
    pub alarming: Mutex<Vec<String>>,
}

pub struct Ffd {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics: String,
    pub log: Arc<Mutex<std::fs::File>>,
    pub seen: Arc<Seen>,
    pub child: Option<Child>,
    pub pid: Arc<AtomicU64>,
}

impl Ffd {
    pub fn start(&mut self) {
        self.seen.replayed.store(false, Ordering::Relaxed);
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ffd");
        self.pid.store(child.id() as u64, Ordering::Relaxed);
        let err = child.stderr.take().unwrap();
        let log = self.log.clone();
        let seen = self.seen.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(log.lock().unwrap(), "{} [{pid}] {line}", now_ms());
                if line.contains("spool replayed") {
                    seen.replayed.store(true, Ordering::Relaxed);
                }
                if line.contains("compacted spool segment") {
                    seen.last_compaction_ms.store(now_ms(), Ordering::Relaxed);
                    seen.compactions.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("SIGHUP: config reloaded") {
                    seen.reloads.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("config not reloaded")
                    || line.contains("only take effect after a restart")
                {
                    seen.reload_refused.fetch_add(1, Ordering::Relaxed);
                }
                let expected = line.contains("No space left on device");
                if line.contains("panicked")
                    || (line.contains("ERROR") && !expected)
                    || line.contains("left in place")
                {
                    let mut a = seen.alarming.lock().unwrap();
                    if a.len() < 50 {
                        a.push(line.clone());
                    }
                }
            }
        });
        self.child = Some(child);
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.pid.store(0, Ordering::Relaxed);
    }

    /// SIGTERM, and the exit status once it is out (None: it did not stop
    /// within `limit` and was killed).
    pub fn term(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take()?;
        let started = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = c.try_wait() {
                break Some(s);
            }
            if started.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.pid.store(0, Ordering::Relaxed);
        status
    }

    /// One control op as root; None if ffd does not answer.
    pub fn op(&self, line: &str) -> Option<serde_json::Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).ok()?;
        serde_json::from_str(&answer).ok()
    }

    /// Takes the dead letters out: lists them into `into` (owner and id →
    /// state, and whether it has a reason), then purges each by its key, so
    /// a long run's dead letters do not pile up in ffd. Returns how many.
    pub fn harvest(&self, into: &mut HashMap<(u32, String), (String, bool)>) -> usize {
        let Some(list) = self.op(r#"{"op":"dead"}"#) else {
            return 0;
        };
        let keys: Vec<String> = list["dead"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let (o, id) = dead_entry(d, into);
                format!("{o}:{id}")
            })
            .collect();
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return 0;
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut r = BufReader::new(s.try_clone().unwrap());
        for chunk in keys.chunks(200) {
            let text: String = chunk
                .iter()
                .map(|k| serde_json::json!({"op": "purge", "id": k}).to_string() + "\n")
                .collect();
            if s.write_all(text.as_bytes()).is_err() {
                break;
            }
            let mut line = String::new();
            for _ in chunk {
                line.clear();
                if !matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    return keys.len();
                }
            }
        }
        keys.len()
    }

    /// Waits until ffd answers `stats` (bounded).
    pub fn wait_ready(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.op(r#"{"op":"ping"}"#).is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// `/metrics`, as `name{labels}` → value.
    pub fn metrics(&self) -> Option<Vec<(String, f64)>> {
        let mut s = TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }
}

/// Notes one entry of the `dead` op's list; returns its owner and id.
pub fn dead_entry(
    d: &serde_json::Value,
    into: &mut HashMap<(u32, String), (String, bool)>,
) -> (u32, String) {
    let o = d["owner"].as_u64().unwrap_or(u64::MAX) as u32;
    let id = d["id"].as_str().unwrap_or("").to_string();
    let reason = !d["last_status"].is_null() || !d["last_error"].is_null();
    into.insert(
        (o, id.clone()),
        (d["state"].as_str().unwrap_or("").to_string(), reason),
    );
    (o, id)
}

pub fn metric(m: &[(String, f64)], key: &str) -> f64 {
    m.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or(-1.0)
}

/// The config, in one of its variants (SIGHUP switches between them:
/// limits, backoff, the signing secrets and the batch settings change).
#[allow(clippy::too_many_arguments)]
pub fn config(
    dir: &Path,
    spool: &Path,
    max_bytes: u64,
    uids: &[u32],
    ports: [u16; 2],
    metrics: &str,
    secrets: &[String],
    variant: u64,
) -> String {
    let v = variant % 3;
    let secrets: Vec<String> = match v {
        0 => vec![secrets[0].clone()],
        1 => vec![secrets[0].clone(), secrets[1].clone()],
        _ => vec![secrets[1].clone()],
    }
    .into_iter()
    .map(|s| format!("\"{s}\""))
    .collect();
    let uids: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
    format!(
        r#"# ffd-chaos, variant {v}
socket = "{sock}"
socket_mode = "0660"
allowed_uids = [{uids}]
shutdown_timeout_ms = 4000
log_level = "info,ffd::scheduler::compact=debug"

[spool]
dir = "{spool}"
segment_bytes = 262144
max_bytes = {max_bytes}

[delivery]
max_in_flight = 64
max_in_flight_per_host = {per_host}
timeout_ms = 1500
connect_timeout_ms = 1000
max_attempts = 6
backoff_base_ms = {base}
backoff_multiplier = 2
backoff_max_ms = 1500
breaker_threshold = 8
breaker_cooldown_ms = 300
breaker_cooldown_max_ms = 1500

[metrics]
listen = "{metrics}"

[destinations.signed]
url = "http://127.0.0.1:{p0}/hook"
headers = {{ "x-dest" = "signed" }}
signing_secrets = [{secrets}]
max_in_flight = {dest_limit}

[destinations.events]
url = "http://127.0.0.1:{p1}/events"
compression = "gzip"
[destinations.events.batch]
max_events = {events}
max_wait_ms = {wait}
"#,
        sock = dir.join("ffd.sock").display(),
        uids = uids.join(", "),
        spool = spool.display(),
        per_host = [16, 8, 24][v as usize],
        base = [100, 200, 50][v as usize],
        metrics = metrics,
        p0 = ports[0],
        p1 = ports[1],
        secrets = secrets.join(", "),
        dest_limit = [8, 4, 16][v as usize],
        events = [100, 25, 250][v as usize],
        wait = [200, 100, 400][v as usize],
    )
}
