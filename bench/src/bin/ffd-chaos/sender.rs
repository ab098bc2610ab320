//! A sender: a child process under its own uid, writing requests to ffd as
//! fast as its kind allows (pipelined bursts, or one line at a time) and
//! logging every line it wrote with what came back. It outlives every ffd
//! it talks to: a broken connection is reopened, and a line written without
//! an answer is logged as unanswered (it may or may not have been stored).

use crate::gen::{self, Rng};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub struct Args {
    pub index: usize,
    pub seed: u64,
    pub socket: String,
    pub ports: [u16; 2],
    /// Unix ms after which it stops whatever its stdin says.
    pub deadline_ms: u64,
}

/// Log line kinds: `A` acknowledged, `D` acknowledged as a duplicate,
/// `E:code` refused, `N` written without an answer, `X` an answer that does
/// not belong to its line.
pub fn run(a: Args) {
    let stop = Arc::new(AtomicBool::new(false));
    {
        // The parent closes our stdin to stop us.
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let pipelined = gen::pipelined(a.index);
    let mut rng = Rng::new(&[a.seed, a.index as u64, 0x5e0d]);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut conn: Option<(UnixStream, BufReader<UnixStream>)> = None;
    let mut seq: u32 = 0;
    // Recent requests with an id, to send again (a client retrying).
    let mut with_id: Vec<u32> = Vec::new();
    let mut connect_failures = 0u64;
    while !stop.load(Ordering::Relaxed) && now_ms() < a.deadline_ms {
        if conn.is_none() {
            match UnixStream::connect(&a.socket) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
                    let r = BufReader::new(s.try_clone().expect("clone"));
                    conn = Some((s, r));
                }
                Err(_) => {
                    connect_failures += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let n = if pipelined { rng.range(1, 48) } else { 1 };
        let mut batch: Vec<(u32, gen::Req)> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let s = if !with_id.is_empty() && rng.chance(6) {
                with_id[rng.below(with_id.len() as u64) as usize]
            } else {
                seq += 1;
                seq
            };
            let req = gen::make(a.seed, a.index, s, a.ports);
            if req.id.is_some() && s == seq {
                if with_id.len() >= 1000 {
                    let i = rng.below(1000) as usize;
                    with_id[i] = s;
                } else {
                    with_id.push(s);
                }
            }
            batch.push((s, req));
        }
        let mut text = String::new();
        for (_, r) in &batch {
            text.push_str(&r.line);
            text.push('\n');
        }
        let (w, r) = conn.as_mut().unwrap();
        let mut broken = w.write_all(text.as_bytes()).is_err();
        for (s, req) in &batch {
            let mut answer = String::new();
            if !broken {
                broken = !matches!(r.read_line(&mut answer), Ok(n) if n > 0);
            }
            let t = now_ms();
            if broken {
                let _ = writeln!(out, "{s} N - {t}");
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            if v["ok"] == true {
                let id = v["id"].as_str().unwrap_or("?");
                if req.id.as_deref().is_some_and(|mine| mine != id) {
                    let _ = writeln!(out, "{s} X {id} {t}");
                    continue;
                }
                let kind = if v["duplicate"] == true { "D" } else { "A" };
                let _ = writeln!(out, "{s} {kind} {id} {t}");
            } else {
                let code = v["error"].as_str().unwrap_or("garbled");
                let _ = writeln!(out, "{s} E:{code} - {t}");
            }
        }
        if broken {
            conn = None;
        }
        let pause = if pipelined {
            rng.range(80, 200)
        } else {
            rng.range(4, 14)
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
    let _ = writeln!(out, "# connect_failures {connect_failures}");
    let _ = out.flush();
}
