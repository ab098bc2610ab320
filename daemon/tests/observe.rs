//! Seeing what ffd does: the Prometheus metrics (parsed by the reference
//! Python parser, `prometheus_client`), the health endpoints.

mod support;

use ffclient::Request;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{wait_until, Daemon, Reply, Sink, T};

/// A free loopback port (bound, then released for ffd to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET; (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: ffd\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// The exposition parsed by `prometheus_client`'s OpenMetrics parser:
/// `{"name{label=value,...}": value}`.
fn parse_metrics(text: &str) -> Value {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the metrics do not parse (pip install prometheus-client): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_parse_and_agree_with_stats_after_delivered_dead_and_expired() {
    let sink = Sink::with(|r, _| match r.path.as_str() {
        "/ok" => Reply::status(200),
        "/gone" => Reply::status(404),
        _ => Reply::status(503).header("retry-after", "3600"),
    });
    let port = free_port();
    let d = Daemon::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[delivery]\nbreaker_threshold = 1000\n"
    ));
    // The start-up line says where to scrape.
    d.wait_log(
        &format!("metrics and health endpoint listening on http://127.0.0.1:{port}/metrics"),
        T,
    );
    let mut c = d.client();
    c.send(&Request::get(&sink.url("/ok"))).unwrap();
    c.send(&Request::get(&sink.url("/gone"))).unwrap();
    // A 503 asking for an hour, with a ttl of a minute: expired at once.
    c.send(&Request::get(&sink.url("/busy")).ttl_ms(60_000))
        .unwrap();
    assert!(c.send_line("{not json").is_err());
    let stats = d.wait_stats("three end states", T, |s| {
        s["delivered"] == 1 && s["dead"] == 1 && s["expired"] == 1
    });
    // Attempts are counted just after the lock that ends the request is
    // released: wait for the third.
    let m = wait_until(
        "three attempts counted",
        T,
        Duration::from_millis(20),
        || {
            let (status, text) = get(port, "/metrics");
            assert_eq!(status, 200, "{text}");
            let m = parse_metrics(&text);
            let n: f64 = ["2xx", "4xx", "5xx"]
                .iter()
                .filter_map(|r| m[format!("ffd_attempts_total{{result={r}}}")].as_f64())
                .sum();
            if n == 3.0 {
                Ok(m)
            } else {
                Err(format!("{m:#}"))
            }
        },
    );
    let v = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("no {k} in {m:#}"));
    assert_eq!(
        v("ffd_requests_accepted_total{}"),
        stats["accepted"].as_f64().unwrap()
    );
    assert_eq!(v("ffd_requests_finished_total{state=delivered}"), 1.0);
    assert_eq!(v("ffd_requests_finished_total{state=dead}"), 1.0);
    assert_eq!(v("ffd_requests_finished_total{state=expired}"), 1.0);
    assert_eq!(v("ffd_requests_rejected_total{code=bad_json}"), 1.0);
    assert_eq!(v("ffd_attempts_total{result=2xx}"), 1.0);
    assert_eq!(v("ffd_attempts_total{result=4xx}"), 1.0);
    assert_eq!(v("ffd_attempts_total{result=5xx}"), 1.0);
    assert_eq!(v("ffd_requests_pending{}"), 0.0);
    assert_eq!(
        v("ffd_dead_letters{}"),
        stats["dead_letters"].as_f64().unwrap()
    );
    assert_eq!(v("ffd_spool_max_bytes{}"), 1073741824.0);
    assert!(v("ffd_spool_bytes{}") > 0.0);
    assert_eq!(v("ffd_delivery_latency_seconds_count{}"), 1.0);
    assert_eq!(v("ffd_attempt_duration_seconds_count{}"), 3.0);
    assert_eq!(v("ffd_ack_duration_seconds_count{}"), 3.0);
    let host = format!("http://{}", sink.addr);
    assert_eq!(
        v(&format!(
            "ffd_host_attempts_total{{host={host},result=5xx}}"
        )),
        1.0,
        "{m:#}"
    );
    for state in ["ready", "backoff"] {
        v(&format!("ffd_oldest_pending_age_seconds{{state={state}}}"));
    }
}

#[test]
fn health_says_live_ready_and_why_it_is_yellow() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let port = free_port();
    let d = Daemon::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[delivery]\nbreaker_threshold = 1\nbreaker_cooldown_ms = 60000\n"
    ));
    assert_eq!(get(port, "/livez").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);
    let (status, body) = get(port, "/healthz");
    assert_eq!(status, 200);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "green", "{h}");
    // A receiver that is down makes ffd yellow, never not ready.
    d.client().send(&Request::get(&sink.url("/down"))).unwrap();
    d.wait_stats("paused", T, |s| s["hosts"][0]["paused"] == true);
    assert_eq!(get(port, "/readyz").0, 200);
    let (status, body) = get(port, "/healthz");
    assert_eq!(status, 200);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "yellow", "{h}");
    assert!(h["reasons"][0].as_str().unwrap().contains("paused"), "{h}");
    assert_eq!(get(port, "/nope").0, 404);
}

#[test]
fn tail_streams_events_and_filters_them() {
    let sink = Sink::with(|r, _| match r.path.as_str() {
        "/gone" => Reply::status(404),
        _ => Reply::status(200),
    });
    let d = Daemon::start(support::FAST);
    let all = d.client().tail(serde_json::Map::new()).unwrap();
    let mut filter = serde_json::Map::new();
    filter.insert("events".into(), serde_json::json!(["dead"]));
    let dead_only = d.client().tail(filter).unwrap();
    let ok = d
        .client()
        .send(&Request::get(&sink.url("/ok")).id("tail-ok"))
        .unwrap();
    d.client()
        .send(&Request::get(&sink.url("/gone")).id("tail-gone"))
        .unwrap();
    // Every step of the first request, in order.
    let steps: Vec<Value> = all
        .map(|e| e.unwrap())
        .filter(|e| e["id"] == ok.as_str())
        .take(3)
        .collect();
    let names: Vec<&str> = steps.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["accepted", "attempt", "delivered"], "{steps:?}");
    assert_eq!(steps[1]["status"], 200);
    assert!(steps[1]["duration_ms"].is_u64());
    // The filtered stream has the dead one only.
    // (Host events are for root and ffd's user, which this test runs as.)
    let first = dead_only.map(|e| e.unwrap()).next().unwrap();
    assert_eq!(first["event"], "dead", "{first}");
    assert_eq!(first["id"], "tail-gone");
    assert_eq!(first["status"], 404);
}

#[test]
fn a_tail_that_never_reads_slows_nothing_and_is_told_what_it_missed() {
    let sink = Sink::start();
    let d = Daemon::start(support::FAST);
    // Asks for a tail, then reads nothing while ffd works.
    let mut stalled = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    stalled.write_all(b"{\"op\":\"tail\"}\n").unwrap();
    let n = 20_000;
    {
        let mut c = d.client();
        let mut p = c.pipeline();
        for i in 0..n {
            p.send(&Request::get(&sink.url(&format!("/t/{i}"))))
                .unwrap();
        }
        p.finish().unwrap();
    }
    d.wait_stats("all delivered", T, |s| s["delivered"] == n);
    // Now it reads: among the lines, the count of what it missed.
    stalled.set_read_timeout(Some(T)).unwrap();
    let mut reader = std::io::BufReader::new(stalled);
    let mut line = String::new();
    let mut dropped = 0;
    for _ in 0..(3 * n + 10) {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        if line.contains("\"overflow\"") {
            let v: Value = serde_json::from_str(&line).unwrap();
            dropped = v["dropped"].as_u64().unwrap();
            break;
        }
    }
    assert!(dropped > 0, "no overflow reported");
}

fn ffclient(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(support::bin("ffclient"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_reads_as_words_keeps_a_delivered_request_and_tells_a_pause() {
    let sink = Sink::with(|r, _| match r.path.starts_with("/ok") {
        true => Reply::status(200),
        false => Reply::status(503),
    });
    let d = Daemon::start(
        "[delivery]\nbreaker_threshold = 1\nbreaker_cooldown_ms = 60000\nbackoff_base_ms = 60000\n",
    );
    let ok = d
        .client()
        .send(&Request::get(&sink.url("/ok?token=secret")))
        .unwrap();
    d.wait_stats("delivered", T, |s| s["delivered"] == 1);
    let text = ffclient(&d, &["status", &ok]);
    assert!(
        text.starts_with("delivered: HTTP 200 OK after 1 attempt"),
        "{text}"
    );
    assert!(text.contains(&format!("GET {}", sink.url("/ok"))), "{text}");
    assert!(!text.contains("secret"), "the query stays out: {text}");
    let raw: Value = serde_json::from_str(&ffclient(&d, &["status", &ok, "--json"])).unwrap();
    assert_eq!(raw["state"], "delivered");
    // A request behind a paused host says so, and until when.
    let first = d.client().send(&Request::get(&sink.url("/down"))).unwrap();
    d.wait_stats("paused", T, |s| s["hosts"][0]["paused"] == true);
    let text = ffclient(&d, &["status", &first]);
    // The summary says first that its host is paused, and until when.
    let summary = text.lines().next().unwrap();
    assert!(
        summary.starts_with("held: host paused until ") && summary.contains("after 1 failure;"),
        "{text}"
    );
    assert!(summary.contains("retrying: HTTP 503"), "{text}");
    assert!(text.contains("last attempts"), "{text}");
    let raw: Value = serde_json::from_str(&ffclient(&d, &["status", &first, "--json"])).unwrap();
    assert_eq!(raw["last_attempts"][0]["status"], 503, "{raw}");
    assert!(raw["last_attempts"][0]["duration_ms"].is_u64(), "{raw}");
    let stats = ffclient(&d, &["stats"]);
    assert!(stats.contains("PAUSED"), "{stats}");
    // Per host: breaker state, limit, success rate and p95 of the last attempts.
    let s = d.stats();
    let h = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["paused"] == true)
        .unwrap();
    assert_eq!(h["breaker"], "open", "{h}");
    assert!(h["paused_until_ms"].is_u64(), "{h}");
    assert_eq!(h["success_rate"], 0.5, "one 200, one 503: {h}");
    assert!(h["p95_attempt_ms"].is_u64(), "{h}");
    let top = ffclient(&d, &["top", "--once"]);
    assert!(top.contains("open"), "{top}");
}

#[test]
fn tail_tells_when_a_host_starts_failing_is_paused_and_recovers() {
    let sink = Sink::with(|r, _| match r.path.as_str() {
        "/ok" => Reply::status(200),
        _ => Reply::status(503),
    });
    let d = Daemon::start(
        "[delivery]\nbreaker_threshold = 1\nbreaker_cooldown_ms = 300\nbackoff_base_ms = 60000\n",
    );
    let mut filter = serde_json::Map::new();
    filter.insert(
        "events".into(),
        serde_json::json!(["host_failing", "host_paused", "host_recovered"]),
    );
    let events = d.client().tail(filter).unwrap();
    d.client().send(&Request::get(&sink.url("/down"))).unwrap();
    d.wait_stats("paused", T, |s| s["hosts"][0]["paused"] == true);
    // After the pause, the next request is the probe; it succeeds.
    d.client().send(&Request::get(&sink.url("/ok"))).unwrap();
    let got: Vec<Value> = events.map(|e| e.unwrap()).take(3).collect();
    let names: Vec<&str> = got.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["host_failing", "host_paused", "host_recovered"],
        "{got:?}"
    );
    assert_eq!(got[0]["host"], format!("http://{}", sink.addr));
    assert!(got[1]["wait_ms"].is_u64(), "{got:?}");
}
