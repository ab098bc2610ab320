//! Durability: what ffd acknowledged survives ffd.

mod support;

use ffclient::{Client, Request};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{bin, wait_until, Daemon, Reply, Sink, FAST, T};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Several times over: clients stream requests, ffd is SIGKILLed at an
/// arbitrary moment and restarted. Every id that got `ok` must arrive.
#[test]
fn crash_loop_loses_no_acknowledged_request() {
    // A third of first attempts fail, so retries are pending at each kill.
    let oks: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let failed_once: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (oks2, failed2) = (oks.clone(), failed_once.clone());
    let sink = Sink::with(move |r, _| {
        let id = r.header("ffd-id").unwrap_or("").to_string();
        if id.ends_with(['0', '3', '6']) && failed2.lock().unwrap().insert(id.clone()) {
            return Reply::status(503);
        }
        *oks2.lock().unwrap().entry(id).or_default() += 1;
        Reply::status(200)
    });
    let mut d = Daemon::start(FAST);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut rng = fastrand::Rng::with_seed(42);
    let rounds = 5;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for t in 0..2 {
            let (acked, stop, socket, url) = (
                acked.clone(),
                stop.clone(),
                d.socket.clone(),
                sink.url("/crash"),
            );
            clients.push(std::thread::spawn(move || {
                let Ok(mut c) = Client::connect(&socket) else {
                    return;
                };
                // Bounded: at most 20,000 sends per client per round.
                for i in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let id = format!("r{round}-c{t}-{i}");
                    match c.send(&Request::post(&url).id(&id).body("x")) {
                        Ok(got) => {
                            assert_eq!(got, id);
                            acked.lock().unwrap().insert(id);
                        }
                        Err(_) => return, // ffd died mid-request: not acknowledged
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(50..400)));
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        d.restart();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the clients got going: {}", acked.len());
    sink.wait(
        &format!("all {} acknowledged ids", acked.len()),
        Duration::from_secs(90),
        |_| {
            let oks = oks.lock().unwrap();
            acked.iter().all(|id| oks.contains_key(id))
        },
    );
    let ok_count = oks.lock().unwrap().clone();
    let dups = ok_count.values().filter(|n| **n > 1).count();
    eprintln!(
        "crash loop: {rounds} kills, {} acknowledged, all delivered; {dups} delivered more than once",
        acked.len()
    );
}

#[test]
fn server_down_across_a_restart_is_delivered_once_back() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut d = Daemon::start(FAST);
    let mut c = d.client();
    for i in 0..50 {
        c.send(&Request::post(&format!("http://127.0.0.1:{port}/down/{i}")).body("b"))
            .unwrap();
    }
    d.wait_stats("failed attempts", T, |s| s["retried"].as_u64() >= Some(50));
    assert!(d.stop().success());
    let sink = Sink::on_port(port, |_, _| Reply::status(200));
    d.restart();
    let reqs = sink.wait_for(50, T);
    let paths: HashSet<_> = reqs.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 50);
    d.wait_stats("all delivered", T, |s| {
        s["delivered"] == 50 && s["queued"] == 0
    });
}

#[test]
fn spool_full_then_room_again() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let cfg = format!("[spool]\nmax_bytes = 65536\nsegment_bytes = 8192\n{FAST}");
    let d = Daemon::start(&cfg);
    let mut c = d.client();
    let body = "x".repeat(1000);
    let mut accepted = 0;
    let mut full = None;
    for _ in 0..1000 {
        match c.send(&Request::post(&sink.url("/full")).body(body.clone())) {
            Ok(_) => accepted += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    match full {
        Some(ffclient::Error::Rejected {
            code_str, message, ..
        }) => {
            assert_eq!(code_str, "spool_full", "{message}");
        }
        other => panic!("expected spool_full, got {other:?} after {accepted}"),
    }
    assert!(accepted > 20, "{accepted}");
    assert_eq!(d.stats()["rejected"]["spool_full"], 1);
    // The connection still works for ops.
    c.ping().unwrap();

    // The server recovers; deliveries finish, segments go, room comes back.
    sink.set(|_, _| Reply::status(200));
    d.wait_stats("room again", T, |s| {
        s["delivered"] == accepted && s["spool"]["bytes"].as_u64().unwrap() < 16384
    });
    assert!(segments(&d.spool).len() <= 2, "{:?}", segments(&d.spool));
    c.send(&Request::post(&sink.url("/full")).body(body))
        .unwrap();
}

#[test]
fn torn_tail_is_cut_and_corrupt_record_skipped_rest_recovered() {
    let mut d = Daemon::start(FAST);
    let mut c = d.client();
    for i in 0..20 {
        c.send(
            &Request::post("http://127.0.0.1:9/never")
                .id(&format!("t-{i:02}"))
                .delay_ms(3_600_000),
        )
        .unwrap();
    }
    assert!(d.stop().success());
    let segs = segments(&d.spool);
    let seg = segs.first().unwrap().clone();
    let mut data = std::fs::read(&seg).unwrap();
    // Corrupt one byte inside the record of t-05.
    let at = data.windows(4).position(|w| w == b"t-05").unwrap();
    data[at + 10] ^= 0xff;
    // A torn record at the end: a header promising more than is there.
    data.extend_from_slice(&1000u32.to_le_bytes());
    data.extend_from_slice(&[0xaa; 14]);
    std::fs::write(&seg, &data).unwrap();

    let check = |dir: &Path| {
        let out = Command::new(bin("ffd"))
            .args(["spool", "check", "--json"])
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        )
    };
    let before = std::fs::read(&seg).unwrap();
    let (code, report) = check(&d.spool);
    assert_eq!(code, Some(2), "damage found: {report}");
    assert_eq!(report["pending"], 19, "{report}");
    assert_eq!(report["corrupt_records"], 1, "{report}");
    assert_eq!(report["torn_bytes"], 18, "{report}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "check changes nothing"
    );

    d.restart();
    d.wait_stats("replayed", T, |s| s["queued"] == 19);
    let st = d.stats();
    assert_eq!(st["spool"]["corrupt_records"], 1, "{st}");
    let mut c = d.client();
    for i in 0..20 {
        let id = format!("t-{i:02}");
        match c.status(&id) {
            Ok(s) => {
                assert_ne!(i, 5, "the corrupt record cannot come back");
                assert_eq!(s["state"], "waiting");
            }
            Err(ffclient::Error::Rejected { code_str, .. }) => {
                assert_eq!(i, 5);
                assert_eq!(code_str, "not_found");
            }
            Err(e) => panic!("{e}"),
        }
    }
    let logs = d.logs();
    assert!(logs.contains("corrupt spool record"), "{logs}");
    assert!(!logs.contains("set aside"), "{logs}");
    assert!(logs.contains("torn record"), "{logs}");
    assert_eq!(
        std::fs::read(&seg).unwrap().len(),
        before.len() - 18,
        "tail cut off"
    );
}

#[test]
fn dead_letters_and_retry_schedules_survive_restarts() {
    let sink = Sink::with(|r, _| Reply::status(if r.path == "/dead" { 404 } else { 503 }));
    let cfg = FAST
        .replace("backoff_base_ms = 50", "backoff_base_ms = 60000")
        .replace("backoff_max_ms = 400", "backoff_max_ms = 60000");
    let mut d = Daemon::start(&cfg);
    let mut c = d.client();
    let dead = c.send(&Request::get(&sink.url("/dead"))).unwrap();
    let dead2 = c.send(&Request::get(&sink.url("/dead"))).unwrap();
    let retry = c.send(&Request::get(&sink.url("/retry"))).unwrap();
    d.wait_stats("two dead, one retrying", T, |s| {
        s["dead"] == 2 && s["retried"] == 1
    });
    let before = d.client().status(&retry).unwrap();
    // A clean stop: outcome records written in the last instant before a
    // SIGKILL may be lost (that costs an early retry, never a request; the
    // crash loop covers it).
    assert!(d.stop().success());
    d.restart();
    d.wait_stats("replayed", T, |s| s["dead_letters"] == 2);
    let mut c = d.client();
    let dl = c.dead(None).unwrap();
    let ids: Vec<_> = dl
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&dead.as_str()) && ids.contains(&dead2.as_str()),
        "{dl}"
    );
    assert_eq!(c.status(&dead).unwrap()["last_status"], 404);
    let after = c.status(&retry).unwrap();
    assert_eq!(after["attempts"], 1, "{after}");
    assert_eq!(after["state"], "waiting");
    assert_eq!(
        after["next_attempt_ms"], before["next_attempt_ms"],
        "schedule kept"
    );
    assert_eq!(sink.count(), 3, "nothing re-sent early");

    // Replay one (now answered 200), purge the other; both stick across a restart.
    sink.set(|_, _| Reply::status(200));
    let r = c
        .send_line(&format!(r#"{{"op":"replay","id":"{dead}"}}"#))
        .unwrap();
    assert_eq!(r["replayed"], 1);
    d.wait_stats("replayed one delivered", T, |s| s["delivered"] == 1);
    let p = c.send_line(r#"{"op":"purge","all":true}"#).unwrap();
    assert_eq!(p["purged"], 1);
    assert_eq!(c.dead(None).unwrap().as_array().unwrap().len(), 0);
    d.stop();
    d.restart();
    let st = d.wait_stats("replayed", T, |s| s["queued"] == 1);
    assert_eq!(st["dead_letters"], 0, "{st}");
    assert!(matches!(
        d.client().status(&dead2),
        Err(ffclient::Error::Rejected { .. })
    ));
}

#[test]
fn fsync_always_acknowledges_and_delivers() {
    let sink = Sink::start();
    let d = Daemon::start_with(FAST, &["--fsync", "always"]);
    let mut c = d.client();
    let mut p = c.pipeline();
    for i in 0..500 {
        p.send(&Request::post(&sink.url(&format!("/s{i}"))).body("x"))
            .unwrap();
    }
    assert_eq!(p.finish().unwrap().ids.len(), 500);
    sink.wait_for(500, T);
    assert_eq!(d.stats()["spool"]["fsync"], "always");
}

#[test]
fn finished_segments_are_removed_and_dead_letters_compacted() {
    let sink = Sink::with(|r, _| Reply::status(if r.path == "/dead" { 400 } else { 200 }));
    let cfg = format!("[spool]\nsegment_bytes = 4096\n{FAST}");
    let d = Daemon::start(&cfg);
    let mut c = d.client();
    // One dead letter early on would pin every later segment without compaction.
    c.send(&Request::get(&sink.url("/dead"))).unwrap();
    let mut p = c.pipeline();
    for i in 0..400 {
        p.send(&Request::post(&sink.url(&format!("/ok{i}"))).body("y".repeat(100)))
            .unwrap();
    }
    p.finish().unwrap();
    d.wait_stats("all finished", T, |s| {
        s["delivered"] == 400 && s["dead"] == 1
    });
    wait_until(
        "finished segments removed",
        T,
        Duration::from_millis(50),
        || {
            let segs = segments(&d.spool);
            if segs.len() <= 3 {
                Ok(())
            } else {
                Err(format!("segments stay: {segs:?}"))
            }
        },
    );
    assert_eq!(c.dead(None).unwrap().as_array().unwrap().len(), 1);
}

#[test]
fn an_unreadable_segment_is_set_aside_never_deleted() {
    let mut d = Daemon::start(FAST);
    d.client()
        .send(
            &Request::get("http://127.0.0.1:9/x")
                .id("keep-me")
                .delay_ms(3_600_000),
        )
        .unwrap();
    assert!(d.stop().success());
    // An older segment whose header is not ours (a future format, or damage).
    let alien = d.spool.join("0000000000000000.seg");
    std::fs::write(
        &alien,
        b"FFDSPOOL\x09\x00\x00\x00\x00\x00\x00\x00some future records",
    )
    .unwrap();
    let out = Command::new(bin("ffd"))
        .args(["spool", "check"])
        .arg(&d.spool)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("format version 9"));
    d.restart();
    d.wait_stats("replayed", T, |s| s["queued"] == 1);
    // Set aside once replay has read every segment, which may be just
    // after the request it streamed is queued.
    d.wait_log("set aside", T);
    assert!(!alien.exists());
    assert_eq!(
        std::fs::read(d.spool.join("0000000000000000.seg.bad"))
            .unwrap()
            .len(),
        35,
        "set aside intact"
    );
    // The log line is read from ffd's stderr by another thread: wait for it.
    d.wait_log("set aside", T);
    assert_eq!(d.client().status("keep-me").unwrap()["state"], "waiting");
}

#[test]
fn status_of_a_delivered_id_survives_a_restart() {
    let sink = Sink::start();
    let mut d = Daemon::start(FAST);
    let id = d
        .client()
        .send(&Request::post(&sink.url("/done")).body("x"))
        .unwrap();
    d.wait_stats("delivered", T, |s| s["delivered"] == 1);
    assert!(d.stop().success());
    d.restart();
    let st = wait_until("status after restart", T, Duration::from_millis(20), || {
        d.client().status(&id).map_err(|e| e.to_string())
    });
    assert_eq!(st["state"], "delivered", "{st}");
    assert_eq!(st["last_status"], 200);
    assert_eq!(st["attempts"], 1);
    assert_eq!(sink.count(), 1, "not sent again");
}

/// Unmounts a test file system however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_answers_spool_full_and_loses_nothing_acknowledged() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let mut d = Daemon::prepare(FAST, &[], &[]);
    std::fs::create_dir_all(&d.spool).unwrap();
    // A 256 KiB file system under the spool; ffd's own limit stays at 1 GiB.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&d.spool)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let _mount = Mount(d.spool.clone());
    d.restart();
    let mut c = d.client();
    let body = "z".repeat(2000);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        match c.send(
            &Request::post(&sink.url("/full"))
                .id(&format!("f-{i}"))
                .body(body.clone()),
        ) {
            Ok(id) => acked.push(id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    match refused {
        Some(ffclient::Error::Rejected {
            code_str, message, ..
        }) => {
            assert_eq!(code_str, "spool_full", "{message}");
            assert!(message.contains("disk"), "{message}");
        }
        other => panic!(
            "expected spool_full after {} sends, got {other:?}",
            acked.len()
        ),
    }
    assert!(acked.len() > 20, "{}", acked.len());
    c.ping().unwrap();
    // Every acknowledged request is on the disk: a restart finds them all.
    assert!(d.stop().success());
    d.restart();
    d.wait_stats("replayed", T, |s| {
        s["queued"].as_u64().unwrap() + s["in_flight"].as_u64().unwrap() >= acked.len() as u64
    });
    let mut c = d.client();
    for id in &acked {
        assert!(c.status(id).is_ok(), "{id} lost");
    }
    // It started on a full disk; delivering the backlog frees its segment,
    // and then it accepts again without anyone making room.
    sink.set(|_, _| Reply::status(200));
    d.wait_stats("backlog delivered", T, |s| s["delivered"] == acked.len());
    wait_until("room again", T, Duration::from_millis(50), || {
        match c.send(&Request::post(&sink.url("/after")).body("room again")) {
            Ok(_) => Ok(()),
            Err(ffclient::Error::Rejected { code_str, .. }) if code_str == "spool_full" => {
                Err(format!("still full: {}", d.stats()))
            }
            Err(e) => panic!("{e}"),
        }
    });
    sink.wait("the new request", T, |r| {
        r.iter().any(|r| r.path == "/after")
    });
}
