//! Bounded memory. Paging (`spool.memory_window`): a backlog past the
//! window stays in the spool only, is still a duplicate and still has a
//! `status`, and comes back in order, once each, also after `kill -9`.
//! Idle hosts are dropped.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{pipelined, Daemon, Reply, Sink, FAST, T};

/// A window of 8 (4 read back at a time), one delivery at a time so the
/// order they arrive in is the order ffd took them in.
const SMALL_WINDOW: &str = "[spool]\nmemory_window = 8\n[delivery]\nmax_in_flight_per_host = 1\nbackoff_base_ms = 50\nbackoff_max_ms = 400\ntimeout_ms = 5000\n";

/// Sends `n` requests `q-00000`, ... pipelined on one connection, each
/// due `delay_ms` from now; returns the answers.
fn send_backlog(d: &Daemon, url: &str, n: usize, delay_ms: u64) -> Vec<Value> {
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"url\":\"{url}\",\"id\":\"q-{i:05}\",\"body\":\"{i}\",\"delay_ms\":{delay_ms}}}\n"
            )
        })
        .collect();
    pipelined(&d.socket, &lines)
}

/// A sink whose first request (the blocker) hangs for `hold`: with one
/// delivery at a time, the lane's backlog waits behind it.
fn blocked_sink(hold: Duration) -> Sink {
    Sink::with(move |r, _| {
        if r.path == "/blocker" {
            Reply::status(200).delay(hold)
        } else {
            Reply::status(200)
        }
    })
}

/// Sends the blocker, and waits until it is in flight.
fn block(d: &Daemon, sink: &Sink) {
    d.client()
        .send(&ffclient::Request::get(&sink.url("/blocker")).id("blocker"))
        .unwrap();
    sink.wait_for(1, T);
}

/// The `q-` ids the sink received, in the order received.
fn received(sink: &Sink) -> Vec<String> {
    sink.requests()
        .iter()
        .map(|r| r.header("ffd-id").unwrap().to_string())
        .filter(|id| id.starts_with("q-"))
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("q-{i:05}")).collect()
}

#[test]
fn a_backlog_past_the_window_waits_in_the_spool_and_comes_back_in_order_once() {
    let sink = blocked_sink(Duration::from_secs(4));
    let d = Daemon::start(SMALL_WINDOW);
    block(&d, &sink);
    let n = 300;
    let answers = send_backlog(&d, &sink.url("/page"), n, 0);
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    let st = d.stats();
    assert_eq!(st["queued"], n, "{st}");
    // The window holds the blocker and 7 more; the rest stay on disk.
    assert_eq!(st["paged_out"], n - 7, "{st}");

    // A repeat of a paged-out id is a duplicate, not a second request.
    let mut c = d.client();
    let again = c
        .send_line(&format!(
            "{{\"url\":\"{}\",\"id\":\"q-00250\"}}",
            sink.url("/page")
        ))
        .unwrap();
    assert_eq!(
        again.get("duplicate"),
        Some(&Value::Bool(true)),
        "{again:?}"
    );
    // Its status is read from the spool.
    let s = c.status("q-00250").unwrap();
    assert_eq!(s["state"], "queued", "{s}");
    assert_eq!(s["id"], "q-00250", "{s}");
    assert!(
        s["url"].as_str().is_some_and(|u| u.ends_with("/page")),
        "{s}"
    );
    // Unknown ids are still unknown.
    assert!(c.status("q-99999").is_err());

    sink.wait_for(n + 1, Duration::from_secs(60));
    let st = d.wait_stats("all delivered", T, |s| s["delivered"] == n + 1);
    assert_eq!(st["paged_out"], 0, "{st}");
    assert_eq!(st["queued"], 0, "{st}");
    assert_eq!(received(&sink), expected(n), "each once, in order");
}

#[test]
fn kill_9_with_a_paged_out_backlog_loses_nothing_and_delivers_once() {
    let sink = blocked_sink(Duration::from_secs(3));
    let mut d = Daemon::start(SMALL_WINDOW);
    block(&d, &sink);
    let n = 300;
    let answers = send_backlog(&d, &sink.url("/crash"), n, 0);
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    assert_eq!(d.stats()["paged_out"], n - 7);
    d.kill9();
    d.restart();
    // Replay keeps the window too: the rest is read back as the lane
    // drains. The blocker was in flight: it is sent again (at least once).
    let pending = |s: &Value| s["queued"].as_u64().unwrap() + s["in_flight"].as_u64().unwrap();
    let st = d.wait_stats("replayed", T, |s| pending(s) == n as u64 + 1);
    assert!(st["paged_out"].as_u64().unwrap() > 0, "{st}");
    sink.wait(
        &format!("{n} after the crash"),
        Duration::from_secs(60),
        |r| {
            r.iter()
                .filter(|r| r.header("ffd-id").is_some_and(|i| i.starts_with("q-")))
                .count()
                >= n
        },
    );
    d.wait_stats("all delivered", T, |s| s["delivered"] == n + 1);
    assert_eq!(received(&sink), expected(n), "each once, in order");
}

#[test]
fn delayed_sends_stay_in_memory_and_hold_back_no_send_due_now() {
    let sink = Sink::start();
    let d = Daemon::start(SMALL_WINDOW);
    // Twice the window, due in a minute.
    let answers = send_backlog(&d, &sink.url("/later"), 16, 60_000);
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    let mut c = d.client();
    for i in 0..5 {
        c.send(&ffclient::Request::get(&sink.url("/now")).id(&format!("now-{i}")))
            .unwrap();
    }
    let got = sink.wait_for(5, T);
    assert!(got.iter().all(|r| r.path == "/now"), "{got:?}");
    let st = d.stats();
    assert_eq!(st["paged_out"], 0, "{st}");
    assert_eq!(st["queued"], 16, "{st}");
}

#[test]
fn idle_hosts_are_dropped_and_come_back_afresh_but_a_dead_letter_keeps_its_host() {
    let sinks: Vec<Sink> = (0..3).map(|_| Sink::start()).collect();
    let gone = Sink::with(|_, _| Reply::status(404));
    let d = Daemon::start(FAST);
    let mut c = d.client();
    for s in &sinks {
        c.send(&ffclient::Request::get(&s.url("/h"))).unwrap();
    }
    c.send(&ffclient::Request::get(&gone.url("/dead"))).unwrap();
    let hosts = |st: &Value| st["hosts"].as_array().map_or(0, |h| h.len());
    let st = d.wait_stats("delivered and dead", T, |s| {
        s["delivered"] == 3 && s["dead_letters"] == 1
    });
    assert_eq!(hosts(&st), 4, "{st}");
    // 30 s after their last attempt the three delivered-to hosts go; the
    // one with a dead letter stays (its dead letter names it).
    let st = d.wait_stats("idle hosts dropped", Duration::from_secs(60), |s| {
        hosts(s) == 1
    });
    assert_eq!(
        st["hosts"][0]["host"],
        format!("http://{}", gone.addr),
        "{st}"
    );
    let dead = c.dead(None).unwrap();
    assert!(
        dead.to_string().contains(&format!("http://{}", gone.addr)),
        "{dead}"
    );
    // A dropped host comes back on its next request.
    c.send(&ffclient::Request::get(&sinks[0].url("/again")))
        .unwrap();
    sinks[0].wait_for(2, T);
    d.wait_stats("delivered again", T, |s| {
        s["delivered"] == 4 && hosts(s) == 2
    });
}
