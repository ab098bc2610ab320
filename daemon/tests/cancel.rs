//! `cancel`: a waiting, a queued, a paged-out and an in-flight request,
//! across a restart, by owner and by admin, and refused for another user's
//! request. A real ffd, a real HTTP sink, real peers of other uids.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;
use support::{bin, exchange_as, is_root, pipelined, wait_until, Daemon, Reply, Sink, FAST, T};

/// How long the sink holds an answer the test cancels meanwhile: long
/// enough for a cancel on a loaded machine, short enough to wait for.
const HOLD: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of one GET to 127.0.0.1:`port`.
fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: ffd\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

/// One line, one answer, as a JSON object.
fn ask(d: &Daemon, line: &str) -> Value {
    let mut c = d.client();
    match c.send_line(line) {
        Ok(m) => Value::Object(m),
        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
    }
}

fn state(d: &Daemon, id: &str) -> String {
    d.client().status(id).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `status` of `id` says `want` (after a restart, replay
/// runs beside the listener).
fn wait_state(d: &Daemon, id: &str, want: &str) {
    wait_until(
        &format!("{id} {want}"),
        T,
        Duration::from_millis(20),
        || match d.client().status(id) {
            Ok(st) if st["state"] == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

fn send(d: &Daemon, line: &str) {
    let a = ask(d, line);
    assert_eq!(a["ok"], true, "{line}: {a}");
}

/// `ffd spool check --json` of a stopped daemon's spool.
fn spool_check(d: &Daemon) -> Value {
    let out = Command::new(bin("ffd"))
        .args(["spool", "check", "--json"])
        .arg(&d.spool)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_waiting_request_cancelled_ends_cancelled_is_never_sent_and_stays_so_after_a_restart() {
    let sink = Sink::start();
    let port = free_port();
    let mut d = Daemon::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n{FAST}"));
    // Waiting for its delay: cancelled before it is due.
    send(
        &d,
        &format!(
            r#"{{"id":"w-1","url":"{}","delay_ms":300}}"#,
            sink.url("/cancelled")
        ),
    );
    assert_eq!(state(&d, "w-1"), "waiting");
    let a = ask(&d, r#"{"op":"cancel","id":"w-1"}"#);
    assert_eq!(a, serde_json::json!({"ok": true, "cancelled": 1}));
    assert_eq!(state(&d, "w-1"), "cancelled");
    // A finished request is not counted again.
    let a = ask(&d, r#"{"op":"cancel","id":"w-1"}"#);
    assert_eq!(a, serde_json::json!({"ok": true, "cancelled": 0}));
    // A later request, due after it, arrives: the cancelled one, due
    // first, would have been sent before it.
    send(
        &d,
        &format!(
            r#"{{"id":"w-2","url":"{}","delay_ms":350}}"#,
            sink.url("/kept")
        ),
    );
    sink.wait_for(1, T);
    d.wait_stats("w-2 delivered", T, |s| s["delivered"] == 1);
    let paths: Vec<String> = sink.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/kept"]);
    // Counted: stats, and the metric.
    assert_eq!(d.stats()["cancelled"], 1);
    let m = get(port, "/metrics");
    assert!(
        m.contains("ffd_requests_finished_total{state=\"cancelled\"} 1"),
        "{m}"
    );
    // Durable: after a restart it is still cancelled, and still not sent.
    assert!(d.stop().success());
    let report = spool_check(&d);
    assert_eq!(report["pending"], 0, "{report}");
    assert_eq!(report["cancelled"], 1, "{report}");
    d.restart();
    wait_state(&d, "w-1", "cancelled");
    assert_eq!(d.stats()["queued"], 0);
    // A repeat of the id is the same request: acknowledged, not queued.
    let again = ask(
        &d,
        &format!(r#"{{"id":"w-1","url":"{}"}}"#, sink.url("/cancelled")),
    );
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(sink.count(), 1);
}

#[test]
fn in_flight_a_cancelled_request_that_fails_is_not_retried_and_one_that_succeeds_is_delivered() {
    // Each answer is held long enough for the test to cancel meanwhile.
    let sink = Sink::with(move |r, _| {
        let status = if r.path == "/fails" { 503 } else { 200 };
        Reply::status(status).delay(HOLD)
    });
    let d = Daemon::start(FAST);
    let mut tail = d.client().tail(serde_json::Map::new()).expect("tail");
    send(
        &d,
        &format!(r#"{{"id":"f-1","url":"{}"}}"#, sink.url("/fails")),
    );
    sink.wait_for(1, T);
    assert_eq!(state(&d, "f-1"), "in_flight");
    // Counted: stopped from retrying.
    let a = ask(&d, r#"{"op":"cancel","id":"f-1"}"#);
    assert_eq!(a, serde_json::json!({"ok": true, "cancelled": 1}));
    let st = wait_until("f-1 ends", T, Duration::from_millis(20), || {
        let st = d.client().status("f-1").unwrap();
        if st["state"] == "cancelled" {
            Ok(st)
        } else {
            Err(st.to_string())
        }
    });
    assert_eq!(st["attempts"], 1, "{st}");
    assert_eq!(st["last_status"], 503, "{st}");
    // `tail` saw it end cancelled.
    let ended = tail
        .find(|ev| {
            let ev = ev.as_ref().unwrap();
            ev["id"] == "f-1" && ev["event"] != "accepted" && ev["event"] != "attempt"
        })
        .unwrap()
        .unwrap();
    assert_eq!(ended["event"], "cancelled", "{ended}");
    // Nothing pending: no retry will come.
    let s = d.stats();
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["in_flight"], 0, "{s}");
    assert_eq!(s["retried"], 0, "{s}");

    // One whose attempt succeeds is delivered.
    send(
        &d,
        &format!(r#"{{"id":"s-1","url":"{}"}}"#, sink.url("/ok")),
    );
    sink.wait_for(2, T);
    let a = ask(&d, r#"{"op":"cancel","id":"s-1"}"#);
    assert_eq!(a["cancelled"], 1, "{a}");
    d.wait_stats("s-1 delivered", T, |s| s["delivered"] == 1);
    assert_eq!(state(&d, "s-1"), "delivered");
    assert_eq!(sink.count(), 2);
}

#[test]
fn cancel_all_stops_queued_requests_of_one_host_and_leaves_the_others() {
    let slow = Sink::with(move |r, _| {
        if r.path == "/blocker" {
            Reply::status(200).delay(HOLD)
        } else {
            Reply::status(200)
        }
    });
    let other = Sink::start();
    let d = Daemon::start(&format!("{FAST}max_in_flight_per_host = 1\n"));
    send(
        &d,
        &format!(r#"{{"id":"blocker","url":"{}"}}"#, slow.url("/blocker")),
    );
    slow.wait_for(1, T);
    for i in 0..3 {
        send(
            &d,
            &format!(r#"{{"id":"q-{i}","url":"{}"}}"#, slow.url("/q")),
        );
    }
    assert_eq!(state(&d, "q-0"), "queued");
    // Another host's request, delayed: not named by the filter.
    send(
        &d,
        &format!(
            r#"{{"id":"o-1","url":"{}","delay_ms":200}}"#,
            other.url("/o")
        ),
    );
    let host = format!("http://127.0.0.1:{}", slow.addr.port());
    let nobody = ask(
        &d,
        r#"{"op":"cancel","all":true,"host":"http://127.0.0.1:1"}"#,
    );
    assert_eq!(nobody["cancelled"], 0, "{nobody}");
    let a = ask(
        &d,
        &format!(r#"{{"op":"cancel","all":true,"host":"{host}"}}"#),
    );
    // The three queued, and the blocker in flight (stopped from retrying).
    assert_eq!(a, serde_json::json!({"ok": true, "cancelled": 4}));
    for i in 0..3 {
        assert_eq!(state(&d, &format!("q-{i}")), "cancelled");
    }
    other.wait_for(1, T);
    d.wait_stats("blocker and o-1 delivered", T, |s| s["delivered"] == 2);
    assert_eq!(state(&d, "blocker"), "delivered");
    assert_eq!(slow.count(), 1, "only the blocker reached the slow host");
    let unknown = ask(&d, r#"{"op":"cancel","all":true,"dest":"nope"}"#);
    assert!(unknown.to_string().contains("unknown_dest"), "{unknown}");
}

#[test]
fn a_paged_out_request_is_cancelled_from_the_spool_and_never_sent() {
    let sink = Sink::with(move |r, _| {
        if r.path == "/blocker" {
            Reply::status(200).delay(HOLD)
        } else {
            Reply::status(200)
        }
    });
    // A short drain: the blocker stays in flight across the restart.
    let mut d = Daemon::start(
        "shutdown_timeout_ms = 200\n[spool]\nmemory_window = 8\n[delivery]\nmax_in_flight_per_host = 1\nbackoff_base_ms = 50\nbackoff_max_ms = 400\n",
    );
    send(
        &d,
        &format!(r#"{{"id":"blocker","url":"{}"}}"#, sink.url("/blocker")),
    );
    sink.wait_for(1, T);
    let n = 40;
    let lines: String = (0..n)
        .map(|i| format!("{{\"url\":\"{}\",\"id\":\"p-{i:02}\"}}\n", sink.url("/p")))
        .collect();
    let answers = pipelined(&d.socket, &lines);
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    let paged = d.stats()["paged_out"].as_u64().unwrap();
    assert!(
        paged > 20,
        "most of the backlog is in the spool only: {paged}"
    );
    // The last one is surely paged out: cancelled by id.
    let a = ask(&d, r#"{"op":"cancel","id":"p-39"}"#);
    assert_eq!(a, serde_json::json!({"ok": true, "cancelled": 1}));
    assert_eq!(state(&d, "p-39"), "cancelled");
    assert_eq!(
        d.stats()["paged_out"].as_u64().unwrap(),
        paged - 1,
        "it left the spool's backlog"
    );
    // Kept across a restart before it was ever read back.
    assert!(d.stop().success());
    d.restart();
    wait_state(&d, "p-39", "cancelled");
    // The blocker is sent again after the restart (it was in flight),
    // then the rest follow, all but the cancelled one.
    d.wait_stats("the backlog delivered", T, |s| {
        s["queued"] == 0 && s["in_flight"] == 0 && s["delivered"] == n
    });
    let got: Vec<String> = sink
        .requests()
        .iter()
        .filter(|r| r.path == "/p")
        .map(|r| r.header("ffd-id").unwrap().to_string())
        .collect();
    assert_eq!(got.len(), (n - 1) as usize, "{got:?}");
    assert!(!got.contains(&"p-39".to_string()));
    assert_eq!(state(&d, "p-39"), "cancelled");
}

#[test]
fn cancel_all_reaches_paged_out_requests_too() {
    let sink = Sink::with(move |r, _| {
        if r.path == "/blocker" {
            Reply::status(200).delay(HOLD)
        } else {
            Reply::status(200)
        }
    });
    let d = Daemon::start("[spool]\nmemory_window = 8\n[delivery]\nmax_in_flight_per_host = 1\n");
    send(
        &d,
        &format!(r#"{{"id":"blocker","url":"{}"}}"#, sink.url("/blocker")),
    );
    sink.wait_for(1, T);
    let n = 30;
    let lines: String = (0..n)
        .map(|i| format!("{{\"url\":\"{}\",\"id\":\"p-{i:02}\"}}\n", sink.url("/p")))
        .collect();
    assert!(pipelined(&d.socket, &lines).iter().all(|a| a["ok"] == true));
    assert!(d.stats()["paged_out"].as_u64().unwrap() > 10);
    let a = ask(&d, r#"{"op":"cancel","all":true}"#);
    // Every queued and paged-out one, and the blocker in flight.
    assert_eq!(a, serde_json::json!({"ok": true, "cancelled": n + 1}));
    assert_eq!(d.stats()["paged_out"], 0);
    d.wait_stats("nothing left", T, |s| {
        s["queued"] == 0 && s["in_flight"] == 0
    });
    assert_eq!(sink.count(), 1, "only the blocker was sent");
    assert_eq!(state(&d, "p-00"), "cancelled");
    assert_eq!(state(&d, "p-29"), "cancelled");
}

/// Users the test acts as; gid 0 reaches the 0660 socket (group root).
const ALICE: u32 = 60001;
const BOB: u32 = 60002;

#[test]
fn a_user_cancels_only_their_own_requests_and_an_admin_names_any_as_uid_id() {
    if !is_root() {
        eprintln!("skipped: running clients as other users needs root (CI runs as root)");
        return;
    }
    let sink = Sink::start();
    let d = Daemon::start(&format!("socket_mode = \"0660\"\n{FAST}"));
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let as_user =
        |uid: u32, line: &str| exchange_as(uid, 0, "", &d.socket, line).trim().to_string();
    let send_as = |uid: u32, id: &str| {
        let line = format!(
            r#"{{"id":"{id}","url":"{}","delay_ms":60000}}"#,
            sink.url("/later")
        );
        let a = as_user(uid, &line);
        assert!(a.contains(r#""ok":true"#), "{a}");
    };
    send_as(ALICE, "a-1");
    send_as(ALICE, "a-2");
    send_as(ALICE, "a-3");
    send_as(BOB, "b-1");
    // Bob cannot reach Alice's request: it does not exist for him.
    let refused = as_user(BOB, r#"{"op":"cancel","id":"a-1"}"#);
    assert!(refused.contains(r#""error":"not_found""#), "{refused}");
    let refused = as_user(BOB, r#"{"op":"cancel","id":"60001:a-1"}"#);
    assert!(refused.contains(r#""error":"not_found""#), "{refused}");
    // Bob's "all" is his own only.
    let mine = as_user(BOB, r#"{"op":"cancel","all":true}"#);
    assert_eq!(mine, r#"{"ok":true,"cancelled":1}"#);
    // Alice cancels her own by id.
    let own = as_user(ALICE, r#"{"op":"cancel","id":"a-1"}"#);
    assert_eq!(own, r#"{"ok":true,"cancelled":1}"#);
    // Root names Alice's request as uid:id.
    let admin = ask(&d, r#"{"op":"cancel","id":"60001:a-2"}"#);
    assert_eq!(admin, serde_json::json!({"ok": true, "cancelled": 1}));
    let st = as_user(ALICE, r#"{"op":"status","id":"a-2"}"#);
    assert!(st.contains(r#""state":"cancelled""#), "{st}");
    let st = as_user(ALICE, r#"{"op":"status","id":"a-3"}"#);
    assert!(st.contains(r#""state":"waiting""#), "{st}");
    let st = as_user(BOB, r#"{"op":"status","id":"b-1"}"#);
    assert!(st.contains(r#""state":"cancelled""#), "{st}");
    // An admin's "all" is everyone's.
    let all = ask(&d, r#"{"op":"cancel","all":true}"#);
    assert_eq!(all["cancelled"], 1, "{all}");
    assert_eq!(d.stats()["queued"], 0);
}

#[test]
fn ffclient_cancel_prints_how_many_requests_were_cancelled() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    for id in ["c-1", "c-2", "c-3"] {
        send(
            &d,
            &format!(
                r#"{{"id":"{id}","url":"{}","delay_ms":60000}}"#,
                sink.url("/c")
            ),
        );
    }
    let ffclient = |args: &[&str]| {
        let out = Command::new(bin("ffclient"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    assert_eq!(
        ffclient(&["cancel", "c-1"]),
        (Some(0), "cancelled 1 request".into(), String::new())
    );
    let host = format!("http://127.0.0.1:{}", sink.addr.port());
    assert_eq!(
        ffclient(&["cancel", "--all", "--host", "http://127.0.0.1:1"]).1,
        "cancelled 0 requests"
    );
    assert_eq!(
        ffclient(&["cancel", "--all", "--host", &host]),
        (Some(0), "cancelled 2 requests".into(), String::new())
    );
    assert_eq!(state(&d, "c-3"), "cancelled");
    let (code, _, err) = ffclient(&["cancel", "nope"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not_found"), "{err}");
    for bad in [
        &["cancel"][..],
        &["cancel", "--host", "h"],
        &["cancel", "--all", "--host", "h", "--dest", "d"],
    ] {
        let (code, _, err) = ffclient(bad);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
    }
}

#[test]
fn a_request_cancelled_in_flight_is_not_sent_again_after_a_restart_mid_attempt() {
    let sink = Sink::with(|_, _| Reply::status(503).delay(HOLD));
    // A short drain: ffd stops while the attempt still runs.
    let mut d = Daemon::start(&format!("shutdown_timeout_ms = 100\n{FAST}"));
    send(&d, &format!(r#"{{"id":"r-1","url":"{}"}}"#, sink.url("/r")));
    sink.wait_for(1, T);
    let a = ask(&d, r#"{"op":"cancel","id":"r-1"}"#);
    assert_eq!(a["cancelled"], 1, "{a}");
    assert!(d.stop().success());
    d.restart();
    wait_state(&d, "r-1", "cancelled");
    let s = d.stats();
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["in_flight"], 0, "{s}");
    assert_eq!(sink.count(), 1, "not sent again");
}
