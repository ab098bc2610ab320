//! End to end: the real `ffd` binary, real clients, a real HTTP server.

mod support;

use ffclient::{Client, Request};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{bin, pipelined, wait_until, Daemon, Reply, Sink, FAST, T};

/// Writes raw bytes, closes the write side, returns every answer line.
fn raw_exchange(d: &Daemon, bytes: &[u8]) -> Vec<Value> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ten_thousand_pipelined_lines_are_acked_in_order_and_delivered() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let n = 10_000;
    let url = sink.url("/p");
    let mut buf = String::new();
    for i in 0..n {
        buf.push_str(&format!(
            "{{\"url\":\"{url}?i={i}\",\"id\":\"p-{i:05}\",\"body\":\"{i}\"}}\n"
        ));
    }
    let answers = pipelined(&d.socket, &buf);
    assert_eq!(answers.len(), n);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["id"], format!("p-{i:05}"), "answers in order");
    }
    let reqs = sink.wait_for(n, Duration::from_secs(60));
    let mut seen: Vec<_> = reqs
        .iter()
        .map(|r| r.header("ffd-id").unwrap().to_string())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n);
    let st = d.wait_stats("all delivered", T, |s| s["delivered"] == n);
    assert!(st["oldest_pending_age_ms"].is_null(), "{st}");
}

#[test]
fn retry_503_then_200_is_delivered() {
    let sink = Sink::with(|_, i| Reply::status(if i == 0 { 503 } else { 200 }));
    let d = Daemon::start(FAST);
    let id = d
        .client()
        .send(&Request::post(&sink.url("/r")).body("x"))
        .unwrap();
    let reqs = sink.wait_for(2, T);
    assert_eq!(
        reqs[0].header("ffd-id"),
        reqs[1].header("ffd-id"),
        "same id on retry"
    );
    let st = d.wait_stats("delivered", T, |s| s["delivered"] == 1);
    assert_eq!(st["retried"], 1);
    let status = d.client().status(&id).unwrap();
    assert_eq!(status["state"], "delivered");
    assert_eq!(status["attempts"], 2);
    assert_eq!(status["last_status"], 200);
}

#[test]
fn status_404_is_dead_after_one_attempt() {
    let sink = Sink::with(|_, _| Reply::status(404));
    let d = Daemon::start(FAST);
    let id = d.client().send(&Request::get(&sink.url("/nope"))).unwrap();
    d.wait_stats("dead", T, |s| s["dead"] == 1);
    assert_eq!(sink.count(), 1);
    let st = d.client().status(&id).unwrap();
    assert_eq!(st["state"], "dead");
    assert_eq!(st["attempts"], 1);
    assert_eq!(st["last_status"], 404);
    assert_eq!(st["response"], "sink says hi");
    let dead = d.client().dead(None).unwrap();
    assert_eq!(dead[0]["id"], id.as_str());
}

#[test]
fn status_429_with_retry_after_waits_about_a_second() {
    let sink = Sink::with(|_, i| {
        if i == 0 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::status(200)
        }
    });
    // Backoff alone would retry within 400 ms: only Retry-After explains a second.
    let d = Daemon::start(
        &FAST
            .replace("backoff_max_ms = 400", "backoff_max_ms = 5000")
            .replace("backoff_base_ms = 50", "backoff_base_ms = 10"),
    );
    d.client()
        .send(&Request::get(&sink.url("/slow-down")))
        .unwrap();
    let reqs = sink.wait_for(2, T);
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
}

#[test]
fn hanging_server_hits_the_attempt_timeout_and_is_retried() {
    let sink = Sink::with(|_, i| {
        if i == 0 {
            Reply::status(200).delay(Duration::from_secs(30))
        } else {
            Reply::status(200)
        }
    });
    let d = Daemon::start(FAST);
    let id = d
        .client()
        .send(&Request::get(&sink.url("/hang")).timeout_ms(300))
        .unwrap();
    d.wait_stats("delivered after a timeout", T, |s| s["delivered"] == 1);
    assert_eq!(sink.count(), 2);
    let st = d.client().status(&id).unwrap();
    assert_eq!(st["attempts"], 2);
}

#[test]
fn https_with_a_test_ca_from_ca_file() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let sink = Sink::tls(&cert.pem(), &key.serialize_pem());

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let cfg = format!("{FAST}ca_file = \"{}\"\n", ca_file.display());
    let d = Daemon::start(&cfg);
    let url = sink.url("/secure?x=1");
    assert!(url.starts_with("https://127.0.0.1:"));
    d.client().send(&Request::post(&url).body("tls")).unwrap();
    let reqs = sink.wait_for(1, T);
    assert_eq!(reqs[0].path, "/secure?x=1");
    assert_eq!(reqs[0].body, b"tls");
    assert_eq!(reqs[0].version, "HTTP/2.0", "h2 negotiated by ALPN");
    d.wait_stats("delivered", T, |s| s["delivered"] == 1);

    // Without the CA, the same server is not trusted: a retryable failure.
    let d2 = Daemon::start(FAST);
    let id = d2
        .client()
        .send(&Request::post(&url).body("tls").max_attempts(1))
        .unwrap();
    d2.wait_stats("dead", T, |s| s["dead"] == 1);
    let st = d2.client().status(&id).unwrap();
    let err = st["last_error"].as_str().unwrap().to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("unknown"),
        "{err}"
    );
}

#[test]
fn every_bad_input_gets_its_code_and_the_connection_keeps_working() {
    let sink = Sink::start();
    let d = Daemon::start(&format!("max_line_bytes = 4096\n{FAST}"));
    let good = format!("{{\"url\":\"{}\"}}\n", sink.url("/ok"));
    let long = format!(
        "{{\"url\":\"http://h/\",\"body\":\"{}\"}}\n",
        "x".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("invalid JSON", b"{\"url\": \n".to_vec(), "bad_json"),
        (
            "invalid UTF-8",
            b"{\"url\":\"http://h/\xff\"}\n".to_vec(),
            "bad_json",
        ),
        (
            "wrong type",
            b"{\"url\":\"http://h/\",\"timeout_ms\":\"5\"}\n".to_vec(),
            "bad_request",
        ),
        (
            "unknown field",
            b"{\"url\":\"http://h/\",\"tiemout_ms\":5}\n".to_vec(),
            "bad_request",
        ),
        (
            "missing url",
            b"{\"method\":\"POST\"}\n".to_vec(),
            "bad_request",
        ),
        (
            "bad scheme",
            b"{\"url\":\"file:///etc/passwd\"}\n".to_vec(),
            "bad_request",
        ),
        (
            "header CR/LF",
            b"{\"url\":\"http://h/\",\"headers\":{\"x\":\"a\\r\\nb: c\"}}\n".to_vec(),
            "bad_request",
        ),
        (
            "two bodies",
            b"{\"url\":\"http://h/\",\"body\":\"a\",\"json\":1}\n".to_vec(),
            "bad_request",
        ),
        (
            "bad base64",
            b"{\"url\":\"http://h/\",\"body_base64\":\"!!\"}\n".to_vec(),
            "bad_request",
        ),
        ("over-long line", long.into_bytes(), "line_too_long"),
        (
            "over-long line in one read",
            format!(
                "{{\"url\":\"http://h/\",\"body\":\"{}\"}}\n",
                "y".repeat(5000)
            )
            .into_bytes(),
            "line_too_long",
        ),
        (
            "delay past any ttl",
            b"{\"url\":\"http://h/\",\"delay_ms\":18446744073709551615}\n".to_vec(),
            "bad_request",
        ),
        (
            "unknown dest",
            b"{\"dest\":\"nowhere\"}\n".to_vec(),
            "unknown_dest",
        ),
        (
            "unknown op",
            b"{\"op\":\"explode\"}\n".to_vec(),
            "unknown_op",
        ),
    ];
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for (what, bad, code) in &cases {
        s.write_all(bad).unwrap();
        s.write_all(good.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{what}: {line}");
        assert_eq!(v["error"], *code, "{what}: {line}");
        assert!(!v["message"].as_str().unwrap().is_empty());
        line.clear();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "after {what}, the next line: {line}");
    }
    sink.wait_for(cases.len(), T);
    let st = d.stats();
    assert_eq!(st["rejected"]["bad_json"], 2);
    assert_eq!(st["rejected"]["line_too_long"], 2);
    assert_eq!(st["rejected"]["bad_request"], 8);
    d.client().ping().unwrap();
}

#[test]
fn a_client_that_writes_and_closes_at_once_is_served() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let lines = format!(
        "{{\"url\":\"{0}\"}}\n{{\"url\":\"{0}\",\"method\":\"PUT\"}}",
        sink.url("/bye")
    );
    // The second line has no trailing newline: at end of input it counts.
    let answers = raw_exchange(&d, lines.as_bytes());
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a["ok"] == true));
    let reqs = sink.wait_for(2, T);
    let mut methods: Vec<_> = reqs.iter().map(|r| r.method.clone()).collect();
    methods.sort();
    assert_eq!(methods, ["GET", "PUT"]);
}

#[test]
fn sigterm_lets_deliveries_in_flight_finish() {
    let sink = Sink::with(|_, _| Reply::status(200).delay(Duration::from_millis(700)));
    let mut d = Daemon::start(&format!("shutdown_timeout_ms = 10000\n{FAST}"));
    for i in 0..3 {
        d.client()
            .send(&Request::get(&sink.url(&format!("/inflight/{i}"))))
            .unwrap();
    }
    sink.wait_for(3, T);
    assert_eq!(sink.completed(), 0, "still in flight");
    let started = Instant::now();
    let status = d.stop();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    assert_eq!(
        sink.completed(),
        3,
        "in-flight deliveries finished before exit"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    d.wait_log("stopped", T);
    // The outcome was recorded: a restart does not send them again.
    d.restart();
    let st = d.stats();
    assert_eq!(st["queued"], 0, "{st}");
    assert_eq!(st["in_flight"], 0, "{st}");
}

#[test]
fn memory_mode_says_what_a_stop_loses() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let mut d = Daemon::start_with(FAST, &["--memory"]);
    d.client()
        .send(&Request::get(&sink.url("/x")).delay_ms(60_000))
        .unwrap();
    assert!(d.stop().success());
    let logs = d.logs();
    assert!(logs.contains("NOT delivered and are lost"), "{logs}");
    assert!(!d.spool.exists(), "memory mode writes no spool");
}

#[test]
fn sends_while_shutting_down_are_refused_and_ops_answer() {
    let sink = Sink::with(|_, _| Reply::status(200).delay(Duration::from_millis(1500)));
    let mut d = Daemon::start(FAST);
    let mut c = d.client();
    c.send(&Request::get(&sink.url("/slow"))).unwrap();
    sink.wait_for(1, T);
    d.signal("TERM");
    // The connection opened before the signal is still served while draining.
    wait_until("a refusal", T, Duration::from_millis(10), || {
        match c.send(&Request::get(&sink.url("/late"))) {
            Err(ffclient::Error::Rejected { code_str, .. }) => {
                assert_eq!(code_str, "shutting_down");
                Ok(())
            }
            Ok(_) => Err("still accepted".into()),
            Err(e) => panic!("{e}"),
        }
    });
    assert!(d.wait_exit(T).success());
}

#[test]
fn bad_config_stops_ffd_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[delivery]\nmax_in_flight = 0\n", "delivery.max_in_flight"),
        ("[delivery]\ntimeout_ms = \"soon\"\n", "timeout_ms"),
        ("sockt = \"/tmp/x\"\n", "sockt"),
        ("[spool]\nfsync = \"sometimes\"\n", "fsync"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(bin("ffd"))
            .arg("--config")
            .arg(&path)
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{toml}: {err}");
        assert!(err.contains("bad.toml"), "names the file: {err}");
        assert!(err.contains(key), "names the key {key}: {err}");
        assert!(!dir.path().join("s.sock").exists());
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ffd.example.toml");
    let out = Command::new(bin("ffd"))
        .args(["--check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `--check-config FILE`, as the package's docs write it, checks FILE.
    let out = Command::new(bin("ffd"))
        .args(["--check-config", example])
        .env_remove("FFD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ffd.example.toml: ok"));
    let bad = dir.path().join("typo.toml");
    std::fs::write(&bad, "max_conections = 1\n").unwrap();
    let out = Command::new(bin("ffd"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo.toml"));
}

#[test]
fn stale_socket_is_replaced_but_a_live_ffd_is_not() {
    let mut d = Daemon::start(FAST);
    // A second ffd on the same socket refuses to start.
    let out = Command::new(bin("ffd"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--spool")
        .arg(d.dir.join("spool2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listening on"));
    d.client().ping().unwrap();
    // SIGKILL leaves the socket file behind; the next start replaces it.
    d.kill9();
    assert!(d.socket.exists());
    d.restart();
    d.client().ping().unwrap();
}

#[test]
fn socket_and_spool_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(FAST);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(&d.spool), 0o700);
    let segs: Vec<_> = std::fs::read_dir(&d.spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!segs.is_empty());
    for s in segs {
        assert_eq!(mode(&s), 0o600, "{}", s.display());
    }
}

#[test]
fn named_destination_adds_base_url_and_headers() {
    let sink = Sink::start();
    let cfg = format!(
        "[destinations.hooks]\nurl = \"{}\"\nheaders = {{ \"x-api-key\" = \"k1\" }}\n{FAST}",
        sink.url("/base")
    );
    let d = Daemon::start(&cfg);
    let line = r#"{"dest":"hooks","path":"/evt?a=1","json":{"k":1}}"#;
    d.client().send_line(line).unwrap();
    let reqs = sink.wait_for(1, T);
    assert_eq!(reqs[0].path, "/base/evt?a=1");
    assert_eq!(reqs[0].header("x-api-key"), Some("k1"));
}

#[test]
fn duplicate_ids_are_acknowledged_once_delivered_once() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let mut c = d.client();
    let req = Request::post(&sink.url("/once")).id("order-17").body("x");
    assert_eq!(c.send(&req).unwrap(), "order-17");
    sink.wait_for(1, T);
    d.wait_stats("delivered", T, |s| s["delivered"] == 1);
    assert_eq!(c.send(&req).unwrap(), "order-17");
    assert_eq!(d.stats()["duplicates"], 1);
    assert_eq!(d.stats()["accepted"], 1);
    // Twice in one pipelined batch: both acknowledged, queued once.
    let line = format!(
        "{{\"url\":\"{}\",\"id\":\"order-18\"}}\n",
        sink.url("/once")
    );
    let answers = raw_exchange(&d, format!("{line}{line}").as_bytes());
    assert!(
        answers
            .iter()
            .all(|a| a["ok"] == true && a["id"] == "order-18"),
        "{answers:?}"
    );
    d.wait_stats("delivered", T, |s| s["delivered"] == 2);
    assert_eq!(d.stats()["accepted"], 2);
    assert_eq!(sink.count(), 2);
}

#[test]
fn a_dead_host_does_not_hold_back_another() {
    let hanging = Sink::with(|_, _| Reply::status(200).delay(Duration::from_secs(30)));
    let good = Sink::start();
    let d = Daemon::start(&FAST.replace("timeout_ms = 5000", "timeout_ms = 20000"));
    let mut c = d.client();
    let mut p = c.pipeline();
    for i in 0..300 {
        p.send(&Request::get(&hanging.url(&format!("/stuck/{i}"))))
            .unwrap();
    }
    p.finish().unwrap();
    hanging.wait_for(32, T);
    let t = Instant::now();
    c.send(&Request::get(&good.url("/fine"))).unwrap();
    good.wait_for(1, T);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let st = d.stats();
    let stuck = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == format!("http://{}", hanging.addr))
        .unwrap();
    assert_eq!(stuck["in_flight"], 32, "per-host limit: {st}");
}

#[test]
fn a_failing_host_is_paused_instead_of_burning_attempts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = "[delivery]\nbackoff_base_ms = 10\nbackoff_max_ms = 50\nmax_in_flight_per_host = 1\nbreaker_threshold = 3\nbreaker_cooldown_ms = 60000\n";
    let d = Daemon::start(cfg);
    let mut c = d.client();
    for i in 0..10 {
        c.send(&Request::get(&format!("http://127.0.0.1:{port}/x{i}")))
            .unwrap();
    }
    let st = d.wait_stats("paused", T, |s| s["hosts"][0]["paused"] == true);
    let failed = st["retried"].as_u64().unwrap();
    assert_eq!(failed, 3, "{st}");
    // Without the breaker, 50 ms backoffs would have spent many more by now.
    std::thread::sleep(Duration::from_millis(500));
    let st = d.stats();
    assert_eq!(st["retried"].as_u64().unwrap(), failed, "{st}");
    assert_eq!(st["queued"], 10);
    assert!(st["oldest_pending_age_ms"].as_u64().unwrap() >= 500, "{st}");
    assert!(
        st["hosts"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("onnect"),
        "{st}"
    );
}

#[test]
fn ffclient_exit_codes() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let sock = d.socket.to_str().unwrap().to_string();
    let run = |args: &[&str]| Command::new(bin("ffclient")).args(args).output().unwrap();
    assert_eq!(run(&["--socket", &sock, "send"]).status.code(), Some(2));
    assert_eq!(
        run(&["--socket", &sock, "send", "ftp://x/"]).status.code(),
        Some(3)
    );
    assert_eq!(
        run(&["--socket", "/nonexistent/ffd.sock", "ping"])
            .status
            .code(),
        Some(4)
    );
    let out = run(&["--socket", &sock, "send", &sink.url("/cli"), "-d", "a=1"]);
    assert_eq!(out.status.code(), Some(0));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let reqs = sink.wait_for(1, T);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let out = run(&["--socket", &sock, "status", &id]);
    assert_eq!(out.status.code(), Some(0));
    let out = run(&["--socket", &sock, "status", "no-such-id"]);
    assert_eq!(out.status.code(), Some(3));

    // send -: one answer line per input line, exit 3 when one was refused.
    let mut child = Command::new(bin("ffclient"))
        .args(["--socket", &sock, "send", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        // Checked below, not left to stray into the test output.
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!(
        "{{\"url\":\"{0}\"}}\nnot json\n{{\"url\":\"{0}\"}}\n",
        sink.url("/stdin")
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "ffclient: 1 of 3 requests rejected"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].starts_with("error bad_json"), "{text}");
    assert_eq!(lines[0].len(), 26);
}

#[test]
fn library_pipeline_reports_each_rejection() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let mut c = Client::connect(&d.socket).unwrap();
    let mut p = c.pipeline();
    for i in 0..3000 {
        if i % 1000 == 7 {
            p.send_line("{\"url\":\"gopher://x\"}").unwrap();
        } else {
            p.send(&Request::get(&sink.url(&format!("/p{i}")))).unwrap();
        }
    }
    let report = p.finish().unwrap();
    assert_eq!(report.ids.len(), 2997);
    let idx: Vec<_> = report.rejected.iter().map(|r| r.index).collect();
    assert_eq!(idx, [7, 1007, 2007]);
    sink.wait_for(2997, Duration::from_secs(60));
}

#[test]
fn ttl_ends_retries_as_expired_and_keeps_a_dead_letter() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let d = Daemon::start(FAST);
    let id = d
        .client()
        .send(&Request::post(&sink.url("/ttl")).body("x").ttl_ms(300))
        .unwrap();
    d.wait_stats("expired", T, |s| s["expired"] == 1);
    let st = d.client().status(&id).unwrap();
    assert_eq!(st["state"], "expired", "{st}");
    assert!(st["attempts"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["last_status"], 503);
    let dead = d.client().dead(None).unwrap();
    assert_eq!(dead[0]["id"], id.as_str());
    // The request was given up within its ttl, not long after.
    let finished = st["finished_ms"].as_u64().unwrap();
    let accepted = st["accepted_ms"].as_u64().unwrap();
    assert!(finished - accepted < 2_000, "{st}");
}

#[test]
fn a_recovered_host_gets_its_full_concurrency_back() {
    let sink = Sink::with(|_, i| {
        if i < 8 {
            Reply::status(503)
        } else {
            Reply::status(200).delay(Duration::from_millis(300))
        }
    });
    // Failed requests retry only in a minute and the pause lasts a minute:
    // what ends the pause is a request that was already in flight when the
    // breaker tripped and then succeeds.
    let cfg = "[delivery]\nmax_in_flight_per_host = 8\nbreaker_threshold = 2\nbreaker_cooldown_ms = 60000\nbreaker_cooldown_max_ms = 60000\nbackoff_base_ms = 60000\nbackoff_max_ms = 60000\n";
    let d = Daemon::start(cfg);
    let mut c = d.client();
    let mut p = c.pipeline();
    for i in 0..40 {
        p.send(&Request::get(&sink.url(&format!("/r{i}")))).unwrap();
    }
    p.finish().unwrap();
    d.wait_stats("paused", T, |s| s["hosts"][0]["paused"] == true);
    // Once a request succeeds, the host is healthy: 8 run at once again.
    wait_until("8 in flight", T, Duration::from_millis(5), || {
        let running = sink.count() - sink.completed();
        if running >= 8 {
            Ok(())
        } else {
            Err(format!("stuck at {running} in flight: {}", d.stats()))
        }
    });
}

#[test]
fn sigterm_closes_idle_connections_and_every_task_lets_go() {
    let mut d = Daemon::start(FAST);
    // An idle client, and one holding half a line.
    let idle = UnixStream::connect(&d.socket).unwrap();
    let mut partial = UnixStream::connect(&d.socket).unwrap();
    partial.write_all(b"{\"op\":\"pi").unwrap();
    d.client().ping().unwrap();
    let status = d.stop();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    for mut s in [idle, partial] {
        s.set_read_timeout(Some(T)).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "half a line is not answered: {rest:?}");
    }
    // The last line ffd writes; every earlier one has been read by then.
    d.wait_log("stopped", T);
    let logs = d.logs();
    assert!(!logs.contains("still busy"), "{logs}");
}

#[test]
fn ttl_expires_on_time_behind_a_paused_host() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let d = Daemon::start(
        "[delivery]\nbreaker_threshold = 1\nbreaker_cooldown_ms = 6000\nbackoff_base_ms = 60000\n",
    );
    d.client().send(&Request::get(&sink.url("/trip"))).unwrap();
    d.wait_stats("the host paused", T, |s| s["hosts"][0]["paused"] == true);
    // Queued behind the pause, with a ttl far shorter than it.
    let id = d
        .client()
        .send(&Request::get(&sink.url("/short")).ttl_ms(1000))
        .unwrap();
    d.wait_stats("expired", T, |s| s["expired"] == 1);
    let st = d.client().status(&id).unwrap();
    assert_eq!(st["state"], "expired", "{st}");
    let lived = st["finished_ms"].as_u64().unwrap() - st["accepted_ms"].as_u64().unwrap();
    // Before this fix it expired when the 6 s pause ended.
    assert!(lived < 4000, "expired {lived} ms after acceptance: {st}");
    assert_eq!(sink.count(), 1, "the expired request was never sent");
}

#[test]
fn a_2xx_with_a_slow_body_is_delivered_once() {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        // At most a few connections: a retry would be one more.
        for stream in listener.incoming().take(5) {
            let Ok(mut s) = stream else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                // Status and headers at once, then the body a byte at a time.
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n");
                for b in b"slowbody" {
                    std::thread::sleep(Duration::from_millis(400));
                    if s.write_all(&[*b]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let d = Daemon::start(FAST);
    let id = d
        .client()
        .send(&Request::get(&format!("http://127.0.0.1:{port}/slow")).timeout_ms(300))
        .unwrap();
    d.wait_stats("delivered", T, |s| s["delivered"] == 1);
    let st = d.client().status(&id).unwrap();
    assert_eq!(st["state"], "delivered", "{st}");
    assert_eq!(st["attempts"], 1, "{st}");
    assert_eq!(st["last_status"], 200, "{st}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}
