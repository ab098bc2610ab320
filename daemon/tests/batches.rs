//! Event streams: batching destinations against the real `ffd` and a real
//! receiver on loopback — each format and envelope, each limit, poison
//! events isolated by splitting, `kill -9` mid-batch, compression decoded
//! by Python, status/dead/replay per event, and every refusal at ACK.

mod support;

use ffclient::Error;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{pipelined, status, wait_state, wait_until, Daemon, Recorded, Reply, Sink, FAST, T};

/// A config with one batching destination `ev` posting to `sink`'s
/// `/batch`: `dest` keys for the destination, `batch` for its batch table.
fn config(sink: &Sink, dest: &str, batch: &str) -> String {
    format!(
        "{FAST}[destinations.ev]\nurl = \"{}\"\n{dest}\n[destinations.ev.batch]\n{batch}\n",
        sink.url("/batch")
    )
}

/// `n` events `e{from}`.. to `ev`, each `{"n":i}` plus `extra` fields.
fn events(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{{\"dest\":\"ev\",\"id\":\"e{i}\",\"json\":{{\"n\":{i}}}}}\n"))
        .collect()
}

fn all_ok(answers: &[Value]) {
    for a in answers {
        assert_eq!(a["ok"], true, "{a}");
    }
}

/// The events of an ndjson body, parsed.
fn lines(r: &Recorded) -> Vec<Value> {
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(
        text.ends_with('\n'),
        "every event ends with a newline: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many times each event `n` arrived in a request answered 2xx.
fn delivered_counts(sink: &Sink, ok: impl Fn(&Recorded) -> bool) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for r in sink.requests().iter().filter(|r| ok(r)) {
        for e in lines(r) {
            *seen.entry(e["n"].as_u64().unwrap()).or_default() += 1;
        }
    }
    seen
}

#[test]
fn ndjson_and_json_array_with_an_envelope_are_laid_out_exactly() {
    let sink = Sink::start();
    let d = Daemon::start(&config(
        &sink,
        "headers = { x-api-key = \"k1\" }",
        "max_events = 3\nmax_wait_ms = 60000",
    ));
    let lines_in = "{\"dest\":\"ev\",\"json\":{ \"a\" : 1 }}\n\
                    {\"dest\":\"ev\",\"body\":\"plain text\"}\n\
                    {\"dest\":\"ev\",\"body\":\"{\\n \\\"b\\\": [1, 2]\\n}\"}\n";
    all_ok(&pipelined(&d.socket, lines_in));
    let got = sink.wait_for(1, T);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/batch");
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        "{\"a\":1}\nplain text\n{\"b\":[1,2]}\n"
    );
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("ffd-batch-size"), Some("3"));
    assert_eq!(
        r.header("x-api-key"),
        Some("k1"),
        "the destination's headers"
    );
    let id = r.header("ffd-id").expect("ffd-id: the batch id");
    assert_eq!(id.len(), 26, "{id}");

    // json_array inside a PostHog-style envelope.
    let sink = Sink::start();
    let d = Daemon::start(&config(
        &sink,
        "",
        "max_events = 2\nmax_wait_ms = 60000\nformat = \"json_array\"\n\
         prefix = '{\"api_key\":\"phc_x\",\"batch\":'\nsuffix = \"}\"",
    ));
    all_ok(&pipelined(
        &d.socket,
        "{\"dest\":\"ev\",\"json\":{\"event\":\"a\"}}\n{\"dest\":\"ev\",\"body\":\"[1, 2]\"}\n",
    ));
    let got = sink.wait_for(1, T);
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        "{\"api_key\":\"phc_x\",\"batch\":[{\"event\":\"a\"},[1,2]]}"
    );
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(got[0].header("ffd-batch-size"), Some("2"));

    // A destination without `batch` sends one request a send, no batch header.
    let plain = Sink::start();
    let d = Daemon::start(&format!(
        "[destinations.p]\nurl = \"{}\"\n",
        plain.url("/one")
    ));
    d.client()
        .send_line("{\"dest\":\"p\",\"json\":{\"a\":1}}")
        .unwrap();
    let got = plain.wait_for(1, T);
    assert_eq!(got[0].header("ffd-batch-size"), None);
}

#[test]
fn count_bytes_and_wait_each_close_a_batch() {
    // Count: 25 events, 10 a batch; the last 5 go when their wait ends.
    let sink = Sink::start();
    let d = Daemon::start(&config(&sink, "", "max_events = 10\nmax_wait_ms = 300"));
    all_ok(&pipelined(&d.socket, &events(0, 25)));
    sink.wait("25 events", T, |rs| {
        rs.iter().map(|r| lines(r).len()).sum::<usize>() == 25
    });
    let sizes: Vec<usize> = sink.requests().iter().map(|r| lines(r).len()).collect();
    assert!(sizes.iter().all(|n| *n <= 10), "{sizes:?}");
    assert_eq!(sizes.iter().filter(|n| **n == 10).count(), 2, "{sizes:?}");

    // Bytes: every event is `{"n":NN}` (8 bytes + newline); 36 bytes hold
    // four, and are full. The wait is a minute: only the byte limit can
    // send them.
    let sink = Sink::start();
    let d = Daemon::start(&config(&sink, "", "max_bytes = 36\nmax_wait_ms = 60000"));
    all_ok(&pipelined(&d.socket, &events(10, 12)));
    sink.wait("12 events by bytes", T, |rs| {
        rs.iter().map(|r| lines(r).len()).sum::<usize>() == 12
    });
    for r in sink.requests() {
        assert_eq!(r.body.len(), 36);
        assert_eq!(lines(&r).len(), 4);
    }

    // Wait: three events and room for 500: one batch, not before max_wait_ms.
    let sink = Sink::start();
    let d = Daemon::start(&config(&sink, "", "max_wait_ms = 700"));
    let sent = Instant::now();
    all_ok(&pipelined(&d.socket, &events(0, 3)));
    let got = sink.wait_for(1, T);
    assert!(
        got[0].at.duration_since(sent) >= Duration::from_millis(650),
        "sent after {:?}",
        got[0].at.duration_since(sent)
    );
    assert_eq!(lines(&got[0]).len(), 3);
    assert_eq!(sink.count(), 1);
}

/// 500 events, one of them poison: the receiver refuses any batch that
/// holds it with `code`. The other 499 arrive once each in accepted
/// batches, and the poison event alone is a dead letter with that status.
fn isolate_poison(code: u16) {
    let sink = Sink::with(move |r, _| {
        let poison = lines(r).iter().any(|e| e["n"] == 137);
        if poison {
            Reply::status(code)
        } else {
            Reply::status(200)
        }
    });
    let d = Daemon::start(&config(&sink, "", "max_wait_ms = 200"));
    all_ok(&pipelined(&d.socket, &events(0, 500)));
    let dead = wait_state(&d, "e137", "dead");
    assert_eq!(dead["last_status"], code);
    assert_eq!(dead["attempts"], 1, "split sends are not attempts: {dead}");
    let stats = d.wait_stats("499 delivered", T, |s| s["delivered"] == 499);
    assert_eq!(stats["dead"], 1);
    let counts = delivered_counts(&sink, |r| !lines(r).iter().any(|e| e["n"] == 137));
    assert_eq!(counts.len(), 499);
    assert!(counts.values().all(|n| *n == 1), "each delivered once");
    assert!(!counts.contains_key(&137));
    // The poison event's last request held it alone.
    let alone = sink
        .requests()
        .iter()
        .filter(|r| lines(r).len() == 1 && lines(r)[0]["n"] == 137)
        .count();
    assert_eq!(alone, 1);
    let dead_list = d.client().dead(None).unwrap();
    let ids: Vec<&str> = dead_list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e137"]);
}

#[test]
fn a_413_isolates_one_poison_event_among_500() {
    isolate_poison(413);
}

#[test]
fn a_400_isolates_one_poison_event_among_500() {
    isolate_poison(400);
}

/// The metrics endpoint's text.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: ffd\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_retryable_status_listed_in_split_on_splits_too() {
    let sink = Sink::with(|r, _| {
        if lines(r).iter().any(|e| e["n"] == 7) {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let d = Daemon::start(&config(
        &sink,
        "",
        "max_events = 20\nmax_wait_ms = 60000\nsplit_on = [503]",
    ));
    all_ok(&pipelined(&d.socket, &events(0, 20)));
    d.wait_stats("19 delivered", T, |s| s["delivered"] == 19);
    let counts = delivered_counts(&sink, |r| !lines(r).iter().any(|e| e["n"] == 7));
    assert_eq!(counts.len(), 19);
    assert!(counts.values().all(|n| *n == 1));
    // Alone, a 503 is what it always is: retried.
    let s = wait_until("e7 retried", T, Duration::from_millis(20), || {
        let s = status(&d, "e7");
        if s["attempts"].as_u64() >= Some(1) && s["state"] != "dead" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(s["last_status"], 503);
}

#[test]
fn a_final_status_not_in_split_on_kills_the_batch_and_a_retryable_one_sends_it_again_whole() {
    let sink = Sink::with(|r, i| match (r.path.as_str(), i) {
        (_, 0) => Reply::status(503),
        _ if lines(r).iter().any(|e| e["n"] == 3) => Reply::status(404),
        _ => Reply::status(200),
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Daemon::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}",
        config(&sink, "", "max_events = 3\nmax_wait_ms = 60000")
    ));
    // A tail (as root: an admin, who sees batch events) from the start.
    let mut tail = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    tail.write_all(b"{\"op\":\"tail\"}\n").unwrap();
    let mut tail = std::io::BufReader::new(tail);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut tail, &mut first).unwrap();
    all_ok(&pipelined(&d.socket, &events(0, 3)));
    d.wait_stats("3 delivered", T, |s| s["delivered"] == 3);
    let rs = sink.requests();
    assert_eq!(rs.len(), 2, "one 503, then the same batch again");
    assert_eq!(rs[0].body, rs[1].body);
    assert_eq!(
        rs[0].header("ffd-id"),
        rs[1].header("ffd-id"),
        "same batch id"
    );
    let s = status(&d, "e0");
    assert_eq!(s["attempts"], 2, "{s}");
    assert_eq!(s["batch"]["state"], "delivered", "{s}");
    assert_eq!(s["batch"]["events"], 3, "{s}");
    assert_eq!(s["batch"]["id"], rs[1].header("ffd-id").unwrap(), "{s}");

    // 404 is final and not in split_on: each event of the batch is dead.
    all_ok(&pipelined(&d.socket, &events(3, 3)));
    for id in ["e3", "e4", "e5"] {
        let s = wait_state(&d, id, "dead");
        assert_eq!(s["last_status"], 404);
    }
    // The tail told each batch request, and each event's end.
    let mut batches = Vec::new();
    let mut ends = 0;
    while batches.len() < 3 || ends < 6 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut tail, &mut line).unwrap();
        let ev: Value = serde_json::from_str(&line).unwrap();
        match ev["event"].as_str() {
            Some("batch") => batches.push(ev),
            Some("delivered" | "dead") => ends += 1,
            _ => {}
        }
    }
    let results: Vec<&str> = batches
        .iter()
        .map(|b| b["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["retry", "delivered", "dead"]);
    assert_eq!(batches[0]["events"], 3);
    assert_eq!(batches[0]["status"], 503);
    assert_eq!(batches[1]["batch"], rs[1].header("ffd-id").unwrap());
    assert_eq!(batches[1]["bytes"], rs[1].body.len());
    assert_eq!(batches[1]["sent_bytes"], rs[1].body.len());
    // The metrics count batch requests by result, and events per request.
    let m = scrape(port);
    for want in [
        "ffd_batches_total{result=\"retry\"} 1",
        "ffd_batches_total{result=\"delivered\"} 1",
        "ffd_batches_total{result=\"dead\"} 1",
        "ffd_batches_total{result=\"split\"} 0",
        "ffd_batch_events_count 3",
        "ffd_batch_events_sum 9.0",
        "ffd_requests_finished_total{state=\"delivered\"} 3",
        "ffd_requests_finished_total{state=\"dead\"} 3",
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
}

#[test]
fn kill_9_mid_batch_loses_no_acknowledged_event() {
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = held.clone();
    let sink = Sink::with(move |_, _| {
        if h.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::status(200).delay(Duration::from_secs(60))
        } else {
            Reply::status(200)
        }
    });
    let mut d = Daemon::start(&config(
        &sink,
        "timeout_ms = 120000",
        "max_events = 50\nmax_wait_ms = 100",
    ));
    all_ok(&pipelined(&d.socket, &events(0, 120)));
    // Batches are on the wire, unanswered: kill ffd.
    wait_until("a batch in flight", T, Duration::from_millis(10), || {
        if sink.count() > 0 {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    d.kill9();
    held.store(false, std::sync::atomic::Ordering::SeqCst);
    d.restart();
    let n_before = sink.count();
    wait_until("all 120 delivered", T, Duration::from_millis(50), || {
        let counts = delivered_counts(&sink, |_| true);
        let answered: usize = sink.requests()[n_before..].len();
        if (0..120).all(|i| counts.contains_key(&i)) && answered > 0 {
            Ok(())
        } else {
            Err(format!("{} of 120 seen\n{}", counts.len(), d.logs()))
        }
    });
    let stats = d.wait_stats("nothing pending", T, |s| {
        s["queued"] == 0 && s["in_flight"] == 0
    });
    assert_eq!(stats["dead"], 0, "{stats}");
}

/// Decompresses `body` with Python's own modules (`gzip`, `zstandard`).
fn python_decode(codec: &str, body: &[u8]) -> Vec<u8> {
    let script = match codec {
        "gzip" => "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
        _ => "import zstandard,sys; sys.stdout.buffer.write(zstandard.ZstdDecompressor().decompressobj().decompress(sys.stdin.buffer.read()))",
    };
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let st = child.wait_with_output().unwrap();
    assert!(
        st.status.success(),
        "python3 could not decode {codec} (pip install zstandard): {}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

#[test]
fn compressed_bodies_decode_with_python_gzip_and_zstandard() {
    for codec in ["gzip", "zstd"] {
        let sink = Sink::start();
        let d = Daemon::start(&config(
            &sink,
            &format!("compression = \"{codec}\""),
            "max_events = 40\nmax_wait_ms = 60000",
        ));
        all_ok(&pipelined(&d.socket, &events(0, 40)));
        let got = sink.wait_for(1, T);
        assert_eq!(got[0].header("content-encoding"), Some(codec));
        let plain = python_decode(codec, &got[0].body);
        assert!(plain.len() > got[0].body.len(), "{codec} made it smaller");
        let text = String::from_utf8(plain).unwrap();
        assert_eq!(text.lines().count(), 40);
        assert_eq!(text.lines().next(), Some("{\"n\":0}"));
    }
    // Any destination, batching or not.
    let sink = Sink::start();
    let d = Daemon::start(&format!(
        "[destinations.p]\nurl = \"{}\"\ncompression = \"gzip\"\ncompression_level = 9\n",
        sink.url("/one")
    ));
    d.client()
        .send_line("{\"dest\":\"p\",\"body\":\"hello hello hello hello\"}")
        .unwrap();
    let got = sink.wait_for(1, T);
    assert_eq!(got[0].header("content-encoding"), Some("gzip"));
    assert_eq!(
        python_decode("gzip", &got[0].body),
        b"hello hello hello hello"
    );
}

#[test]
fn status_dead_and_replay_work_per_event() {
    let sink = Sink::with(|r, _| {
        if lines(r).iter().any(|e| e["n"] == 1) {
            Reply::status(422)
        } else {
            Reply::status(200)
        }
    });
    let d = Daemon::start(&config(&sink, "", "max_events = 3\nmax_wait_ms = 60000"));
    // One event alone: it waits for a batch.
    all_ok(&pipelined(&d.socket, &events(0, 1)));
    let s = status(&d, "e0");
    assert_eq!(s["state"], "queued", "{s}");
    assert_eq!(s["batch"]["state"], "waiting", "{s}");
    all_ok(&pipelined(&d.socket, &events(1, 2)));
    let dead = wait_state(&d, "e1", "dead");
    assert_eq!(dead["last_status"], 422);
    wait_state(&d, "e0", "delivered");
    let s = wait_state(&d, "e2", "delivered");
    assert_eq!(s["batch"]["state"], "delivered", "{s}");
    assert_eq!(s["batch"]["events"], 1, "delivered in a half of one: {s}");
    // Replay the dead event: it joins a new batch once the receiver takes it.
    sink.set(|_, _| Reply::status(200));
    let answer = d
        .client()
        .send_line(&json!({"op":"replay","id":"e1"}).to_string())
        .unwrap();
    assert_eq!(answer["replayed"], 1, "{answer:?}");
    all_ok(&pipelined(&d.socket, &events(3, 2)));
    let s = wait_state(&d, "e1", "delivered");
    assert_eq!(s["batch"]["events"], 3, "{s}");
    let last = sink.requests().pop().unwrap();
    let ns: Vec<u64> = lines(&last)
        .iter()
        .map(|e| e["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 3, 4]);
    // The words: delivered in a batch.
    let out = Command::new(support::bin("ffclient"))
        .args(["status", "e1"])
        .env("FFD_SOCKET", &d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in a batch of 3"), "{text}");
}

#[test]
fn refusals_at_ack_name_the_destination() {
    let sink = Sink::start();
    let d = Daemon::start(&config(
        &sink,
        "",
        "max_bytes = 64\nformat = \"json_array\"\nprefix = '{\"batch\":'\nsuffix = \"}\"",
    ));
    let refused = [
        r#"{"dest":"ev","method":"PUT","json":{}}"#,
        r#"{"dest":"ev","path":"/x","json":{}}"#,
        r#"{"dest":"ev","headers":{"x-a":"b"},"json":{}}"#,
        r#"{"dest":"ev","timeout_ms":100,"json":{}}"#,
        r#"{"dest":"ev","max_attempts":3,"json":{}}"#,
        r#"{"dest":"ev","url":"http://127.0.0.1:9/","json":{}}"#,
        r#"{"dest":"ev","body":"not json"}"#,
        r#"{"dest":"ev","body_base64":"bm90IGpzb24="}"#,
        // 64 bytes: `{"batch":` + `[` + `]` + `}` leave 52 for the event
        // (51 digits and their quotes are 53).
        r#"{"dest":"ev","body":"\"012345678901234567890123456789012345678901234567890\""}"#,
    ];
    for line in refused {
        match d.client().send_line(line) {
            Err(Error::Rejected {
                code_str, message, ..
            }) => {
                assert_eq!(code_str, "bad_request", "{line}");
                assert!(message.contains("\"ev\""), "{line}: {message}");
            }
            other => panic!("{line}: expected bad_request, got {other:?}"),
        }
    }
    // What a send may carry, and the largest event that fits.
    for line in [
        r#"{"dest":"ev","id":"ok1","json":{"a":1},"ttl_ms":60000,"delay_ms":1}"#,
        r#"{"dest":"ev","body":"\"01234567890123456789012345678901234567890123456789\""}"#,
    ] {
        d.client().send_line(line).unwrap();
    }
    // ndjson: a non-JSON body with a newline is refused, one without is not.
    let sink = Sink::start();
    let d = Daemon::start(&config(&sink, "", "max_wait_ms = 60000"));
    let (code, msg) = match d.client().send_line(r#"{"dest":"ev","body":"two\nlines"}"#) {
        Err(Error::Rejected {
            code_str, message, ..
        }) => (code_str, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, "bad_request");
    assert!(msg.contains("newline"), "{msg}");
    d.client()
        .send_line(r#"{"dest":"ev","body":"one line"}"#)
        .unwrap();
    // And the connection kept working after each refusal.
    assert_eq!(d.client().ping().unwrap()["protocol"], 1);
}

#[test]
fn a_signing_destination_signs_the_batch_body_as_sent_with_the_batch_id() {
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let sink = Sink::start();
    let d = Daemon::start(&config(
        &sink,
        &format!("signing_secrets = [\"{SECRET}\"]\ncompression = \"gzip\""),
        "max_events = 2\nmax_wait_ms = 60000",
    ));
    all_ok(&pipelined(&d.socket, &events(0, 2)));
    let r = &sink.wait_for(1, T)[0];
    let id = r.header("webhook-id").expect("webhook-id");
    assert_eq!(Some(id), r.header("ffd-id"), "the batch's own id");
    assert_ne!(id, "e0");
    let ts = r.header("webhook-timestamp").unwrap();
    // Over the exact bytes sent: the compressed body.
    let want = support::python_signature(SECRET, id, ts, &r.body);
    assert_eq!(r.header("webhook-signature"), Some(want.as_str()));
}

#[test]
fn sighup_reloads_batch_settings_but_batching_itself_takes_a_restart() {
    let sink = Sink::start();
    let d = Daemon::start(&config(&sink, "", "max_events = 2\nmax_wait_ms = 60000"));
    let file = d.dir.join("ffd.toml");
    // The batch table goes: the destination keeps batching until a restart.
    std::fs::write(
        &file,
        format!(
            "{FAST}[destinations.ev]\nurl = \"{}\"\n",
            sink.url("/batch")
        ),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_log("takes a restart", T);
    all_ok(&pipelined(&d.socket, &events(0, 2)));
    let r = &sink.wait_for(1, T)[0];
    assert_eq!(r.header("ffd-batch-size"), Some("2"));
    // Its settings do reload: batches of three now.
    std::fs::write(
        &file,
        config(&sink, "", "max_events = 3\nmax_wait_ms = 60000"),
    )
    .unwrap();
    let reloads = d.logs().matches("SIGHUP: config reloaded").count();
    d.signal("HUP");
    wait_until("a second reload", T, Duration::from_millis(10), || {
        if d.logs().matches("SIGHUP: config reloaded").count() > reloads {
            Ok(())
        } else {
            Err(d.logs())
        }
    });
    all_ok(&pipelined(&d.socket, &events(2, 3)));
    let got = sink.wait_for(2, T);
    assert_eq!(got[1].header("ffd-batch-size"), Some("3"));
}
