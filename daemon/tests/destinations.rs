//! Named destinations that hold the secrets: Standard Webhooks signatures
//! (checked by Python's standard library, not ffd's code), secret files and
//! `$CREDENTIALS_DIRECTORY`, rotation by SIGHUP, per-destination limits,
//! the destination policy, proxies and mutual TLS — against the real `ffd`
//! and real servers on loopback.

mod support;

use ffclient::{Error, Request};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{
    python_signature, status, wait_state, wait_until, Daemon, Proxy, Recorded, Reply, Sink, TestCa,
    Tripwire, FAST, T,
};

const SECRET_A: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const SECRET_B: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_C: &str = "whsec_3XTxZaQbFqG1pYkKo2UQ1w3zN0e5yJb7";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks a delivery's Standard Webhooks headers against `secrets`, in
/// order, with an independent implementation; returns the timestamp.
fn verify(r: &Recorded, id: &str, secrets: &[&str]) -> u64 {
    assert_eq!(r.header("webhook-id"), Some(id), "webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let t: u64 = ts.parse().expect("timestamp in seconds");
    assert!(t.abs_diff(now_s()) < 300, "timestamp {t} is now");
    let sig = r.header("webhook-signature").expect("webhook-signature");
    let got: Vec<&str> = sig.split(' ').collect();
    let want: Vec<String> = secrets
        .iter()
        .map(|s| python_signature(s, id, ts, &r.body))
        .collect();
    assert_eq!(got, want, "one signature per secret, in order");
    t
}

fn rejected(d: &Daemon, line: &str) -> (String, String) {
    match d.client().send_line(line) {
        Err(Error::Rejected {
            code_str, message, ..
        }) => (code_str, message),
        other => panic!("{line}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn signed_deliveries_verify_independently_with_one_and_two_secrets() {
    // The first attempt of /one/retry fails: the second is signed anew.
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let sink = Sink::with(move |r, _| {
        if r.path == "/one/retry" && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file_b = dir.path().join("b.secret");
    std::fs::write(&file_b, format!("{SECRET_B}\n")).unwrap();
    let cfg = format!(
        "{FAST}\n[destinations.one]\nurl = \"{}\"\nsigning_secrets = [\"{SECRET_A}\"]\n\
         [destinations.two]\nurl = \"{}\"\nsigning_secrets = [\"{SECRET_A}\"]\nsigning_secret_files = [\"{}\"]\n\
         [destinations.plain]\nurl = \"{}\"\n",
        sink.url("/one"),
        sink.url("/two"),
        file_b.display(),
        sink.url("/plain"),
    );
    let d = Daemon::start(&cfg);
    let mut c = d.client();
    // A caller cannot forge the signature headers of a signing destination.
    c.send(
        &Request::dest("POST", "one", "")
            .json(r#"{"email":"test@example.com","username":"test_user"}"#)
            .id("msg_1")
            .header("webhook-signature", "v1,forged"),
    )
    .unwrap();
    c.send(
        &Request::dest("POST", "two", "")
            .json(r#"{"n":2}"#)
            .id("msg_2"),
    )
    .unwrap();
    let made = c
        .send(&Request::dest("POST", "one", "/retry").body(vec![0u8, 159, 146, 150]))
        .unwrap();
    c.send(&Request::dest("POST", "plain", "").body("x").id("msg_3"))
        .unwrap();
    let reqs = sink.wait("three deliveries and two attempts", T, |r| r.len() >= 5);

    let one = reqs.iter().find(|r| r.path == "/one").unwrap();
    verify(one, "msg_1", &[SECRET_A]);
    let two = reqs.iter().find(|r| r.path == "/two").unwrap();
    verify(two, "msg_2", &[SECRET_A, SECRET_B]);
    let plain = reqs.iter().find(|r| r.path == "/plain").unwrap();
    assert!(
        plain.header("webhook-signature").is_none(),
        "no secret, no signature"
    );
    assert!(plain.header("webhook-id").is_none());
    // Binary bodies are signed over their exact bytes; every attempt
    // carries the same id (ffd's own, as it reported it) and a valid
    // signature of its own.
    let tries: Vec<&Recorded> = reqs.iter().filter(|r| r.path == "/one/retry").collect();
    assert!(tries.len() >= 2);
    for t in &tries {
        assert_eq!(t.body, [0u8, 159, 146, 150]);
        verify(t, &made, &[SECRET_A]);
    }

    // The secrets appear nowhere a user or a log reader can see.
    let mut seen = d.logs();
    seen.push_str(&d.stats().to_string());
    seen.push_str(&status(&d, "msg_1").to_string());
    seen.push_str(&status(&d, &made).to_string());
    seen.push_str(&d.client().dead(None).unwrap().to_string());
    for entry in std::fs::read_dir(&d.spool).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    for s in [SECRET_A, SECRET_B] {
        let b64 = s.trim_start_matches("whsec_");
        assert!(!seen.contains(b64), "secret leaked: {b64}");
    }
}

#[test]
fn secret_files_from_credentials_directory_rotate_by_sighup_without_a_gap() {
    let sink = Sink::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("hooks"), format!("{SECRET_A}\n")).unwrap();
    let cfg = |files: &str| {
        format!(
            "{FAST}\n[destinations.hooks]\nurl = \"{}\"\nsigning_secret_files = [{files}]\n",
            sink.url("/h")
        )
    };
    let creds_dir = creds.path().to_str().unwrap().to_string();
    let mut d = Daemon::start_env(
        &cfg("\"hooks\""),
        &[],
        &[("CREDENTIALS_DIRECTORY", &creds_dir)],
    );
    d.client()
        .send(&Request::dest("POST", "hooks", "").body("1").id("r1"))
        .unwrap();
    verify(&sink.wait_for(1, T)[0], "r1", &[SECRET_A]);

    // Step 1 of a rotation: sign with the old and the new secret.
    std::fs::write(creds.path().join("next"), format!("{SECRET_B}\n")).unwrap();
    std::fs::write(d.dir.join("ffd.toml"), cfg("\"hooks\", \"next\"")).unwrap();
    d.signal("HUP");
    d.wait_log("SIGHUP: config reloaded", T);
    d.client()
        .send(&Request::dest("POST", "hooks", "").body("2").id("r2"))
        .unwrap();
    verify(&sink.wait_for(2, T)[1], "r2", &[SECRET_A, SECRET_B]);

    // Step 2: the old secret goes; the file content changes in place too.
    std::fs::write(creds.path().join("next"), format!("{SECRET_C}\n")).unwrap();
    std::fs::write(d.dir.join("ffd.toml"), cfg("\"next\"")).unwrap();
    d.signal("HUP");
    wait_until("second reload", T, Duration::from_millis(20), || {
        let n = d.logs().matches("SIGHUP: config reloaded").count();
        if n >= 2 {
            Ok(())
        } else {
            Err(d.logs())
        }
    });
    d.client()
        .send(&Request::dest("POST", "hooks", "").body("3").id("r3"))
        .unwrap();
    verify(&sink.wait_for(3, T)[2], "r3", &[SECRET_C]);

    // A malformed secret is refused by name, not by value, and the running
    // secrets stay.
    std::fs::write(creds.path().join("next"), "whsec_not-base64!!\n").unwrap();
    d.signal("HUP");
    d.wait_log("config not reloaded", T);
    let logs = d.logs();
    assert!(
        logs.contains("destinations.hooks.signing_secret_files[0]"),
        "{logs}"
    );
    assert!(!logs.contains("not-base64!!"), "{logs}");
    d.client()
        .send(&Request::dest("POST", "hooks", "").body("4").id("r4"))
        .unwrap();
    verify(&sink.wait_for(4, T)[3], "r4", &[SECRET_C]);

    // --check-config says the same.
    let out = std::process::Command::new(support::bin("ffd"))
        .arg("--check-config")
        .arg("--config")
        .arg(d.dir.join("ffd.toml"))
        .env("CREDENTIALS_DIRECTORY", &creds_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("destinations.hooks.signing_secret_files[0]"),
        "{err}"
    );
    assert!(!err.contains("not-base64!!"), "{err}");
    d.stop();
}

#[test]
fn per_destination_settings_limits_and_rate() {
    let slow = Sink::with(|_, _| Reply::status(200).delay(Duration::from_millis(150)));
    let fast = Sink::start();
    let failing = Sink::with(|_, _| Reply::status(500));
    let cfg = format!(
        "{FAST}\n[destinations.one_at_a_time]\nurl = \"{}\"\nmax_in_flight = 1\n\
         [destinations.rated]\nurl = \"{}\"\nrate_per_s = 4\n\
         [destinations.brief]\nurl = \"{}\"\nmax_attempts = 2\nbackoff_base_ms = 10\nbackoff_max_ms = 20\n",
        slow.url("/s"),
        fast.url("/r"),
        failing.url("/f"),
    );
    let d = Daemon::start(&cfg);
    let mut c = d.client();
    for i in 0..4 {
        c.send(&Request::dest("POST", "one_at_a_time", "").body(format!("{i}")))
            .unwrap();
    }
    for i in 0..6 {
        c.send(&Request::dest("POST", "rated", "").body(format!("{i}")))
            .unwrap();
    }
    let brief = c
        .send(&Request::dest("POST", "brief", "").body("x"))
        .unwrap();
    // With max_in_flight = 1 a request arrives only after the previous one
    // was answered (150 ms each); the others wait queued, not failed.
    let reqs = slow.wait_for(4, T);
    for w in reqs.windows(2) {
        assert!(
            w[1].at.duration_since(w[0].at) >= Duration::from_millis(140),
            "one at a time"
        );
    }
    // Rate 4/s: a burst of 4, then one every 250 ms; none failed for it.
    let rated = fast.wait_for(6, T);
    let span = rated[5].at.duration_since(rated[0].at);
    assert!(span >= Duration::from_millis(400), "rate limited: {span:?}");
    let s = wait_state(&d, &brief, "dead");
    assert_eq!(s["attempts"], 2, "the destination's max_attempts");
    d.wait_stats("all delivered", T, |s| s["delivered"] == 10);
}

/// Sends `url` and says what came of it: refused at once (the code and
/// message), or its end state and error.
fn answer(d: &Daemon, url: &str) -> String {
    let line = format!("{{\"url\":\"{url}\",\"max_attempts\":3}}");
    match d.client().send_line(&line) {
        Err(Error::Rejected {
            code_str, message, ..
        }) => format!("refused {code_str}: {message}"),
        Ok(m) => {
            let id = m["id"].as_str().unwrap().to_string();
            let s = wait_until(
                &format!("{url} to end"),
                T,
                Duration::from_millis(20),
                || {
                    let s = status(d, &id);
                    match s["state"].as_str() {
                        Some("delivered" | "dead" | "expired") => Ok(s),
                        _ => Err(s.to_string()),
                    }
                },
            );
            format!(
                "{} after {} attempt(s): {}",
                s["state"].as_str().unwrap(),
                s["attempts"],
                s["last_error"].as_str().unwrap_or("-")
            )
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

#[test]
fn policy_refuses_denied_addresses_in_every_form_and_dials_nothing() {
    let wire = Tripwire::start();
    let p = wire.port();
    let sink = Sink::start();
    let d = Daemon::start(&format!(
        "{FAST}\n[policy]\ndeny = [\"loopback\", \"link-local\", \"metadata\", \"unspecified\", \"multicast\"]\nallow = [\"127.0.0.99/32\"]\n"
    ));
    let cases = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://[::1]:{p}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        "http://169.254.1.1/".to_string(),
        "http://0.0.0.0/".to_string(),
        "http://224.0.0.1/".to_string(),
    ];
    for url in &cases {
        let got = answer(&d, url);
        eprintln!("policy case {url} -> {got}");
        assert!(
            got.starts_with("refused denied_destination: address "),
            "{url}: {got}"
        );
    }
    assert!(answer(&d, "http://169.254.169.254/").contains("\"metadata\""));
    assert!(answer(&d, &format!("http://0x7f.1:{p}/")).contains("127.0.0.1"));
    // A name that resolves only to denied addresses: dead at its first
    // attempt, not retried, the address and rule named.
    let url = format!("http://localhost:{p}/");
    let got = answer(&d, &url);
    eprintln!("policy case {url} -> {got}");
    assert!(got.starts_with("dead after 1 attempt(s): localhost resolves only to addresses the destination policy denies: "), "{got}");
    assert!(got.contains("127.0.0.1 (deny rule \"loopback\")"), "{got}");
    // allow wins over deny: 127.0.0.99 is dialled (nothing listens there).
    let got = answer(&d, &format!("http://127.0.0.99:{p}/"));
    eprintln!("policy case http://127.0.0.99:{p}/ (allowed) -> {got}");
    assert!(
        !got.starts_with("refused") && !got.contains("policy"),
        "{got}"
    );
    assert_eq!(wire.hits(), 0, "nothing was dialled on loopback");
    let _ = sink;
}

#[test]
fn default_policy_allows_loopback_and_raw_urls_false_takes_names_only() {
    let sink = Sink::start();
    let d = Daemon::start(&format!(
        "{FAST}\n[policy]\nraw_urls = false\n[destinations.ok]\nurl = \"{}\"\n",
        sink.url("/named")
    ));
    let (code, msg) = rejected(&d, &format!("{{\"url\":\"{}\"}}", sink.url("/raw")));
    eprintln!("policy case raw url with raw_urls = false -> refused {code}: {msg}");
    assert_eq!(code, "denied_destination");
    assert!(msg.contains("raw_urls"), "{msg}");
    let id = d
        .client()
        .send(&Request::dest("POST", "ok", "/x").body("b"))
        .unwrap();
    assert_eq!(wait_state(&d, &id, "delivered")["attempts"], 1);
    assert_eq!(sink.wait_for(1, T)[0].path, "/named/x");
    let n = d.stats()["rejected"]["denied_destination"].clone();
    assert_eq!(n, 1, "counted by its code");

    // The default policy: loopback (a local relay's neighbours) allowed,
    // metadata denied.
    let d = Daemon::start(FAST);
    let got = answer(&d, &sink.url("/loop"));
    eprintln!("policy case default, {} -> {got}", sink.url("/loop"));
    assert!(got.starts_with("delivered"), "{got}");
    let got = answer(&d, "http://169.254.169.254/");
    eprintln!("policy case default, http://169.254.169.254/ -> {got}");
    assert!(
        got.contains("denied_destination") && got.contains("metadata"),
        "{got}"
    );
}

#[test]
fn proxies_see_absolute_form_and_connect_and_keep_their_credentials() {
    let proxy = Proxy::start();
    let plain = Sink::start();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["sink.invalid"]);
    let tls = Sink::tls(&leaf.cert_pem, &leaf.key_pem);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let purl = proxy.url(Some("ffd:s3cr3t-pw"));
    let d = Daemon::start_env(
        &format!("{FAST}ca_file = \"{}\"\n", ca_file.display()),
        &[],
        &[
            ("HTTP_PROXY", &purl),
            ("HTTPS_PROXY", &purl),
            ("NO_PROXY", "direct.localhost,127.0.0.1"),
        ],
    );
    // Names this machine cannot resolve: only the proxy can reach them.
    let http_url = format!("http://sink.invalid:{}/p?q=1", plain.addr.port());
    let https_url = format!("https://sink.invalid:{}/s", tls.addr.port());
    let mut c = d.client();
    c.send(&Request::post(&http_url).body("via proxy")).unwrap();
    c.send(&Request::post(&https_url).body("via tunnel"))
        .unwrap();
    // NO_PROXY: straight to the sink.
    c.send(&Request::post(&plain.url("/direct")).body("direct"))
        .unwrap();
    d.wait_stats("three delivered", T, |s| s["delivered"] == 3);
    let seen = proxy.seen();
    let lines: Vec<&str> = seen.iter().map(|p| p.line.as_str()).collect();
    assert!(
        lines.contains(&format!("POST {http_url} HTTP/1.1").as_str()),
        "absolute form: {lines:?}"
    );
    assert!(
        lines.contains(&format!("CONNECT sink.invalid:{} HTTP/1.1", tls.addr.port()).as_str()),
        "CONNECT: {lines:?}"
    );
    assert_eq!(seen.len(), 2, "NO_PROXY went direct: {lines:?}");
    for p in &seen {
        // base64("ffd:s3cr3t-pw")
        assert_eq!(p.auth.as_deref(), Some("Basic ZmZkOnMzY3IzdC1wdw=="));
    }
    let got = plain.wait_for(2, T);
    assert!(got
        .iter()
        .any(|r| r.path == "/p?q=1" && r.body == b"via proxy"));
    assert!(got
        .iter()
        .all(|r| r.header("proxy-authorization").is_none()));
    assert_eq!(tls.wait_for(1, T)[0].body, b"via tunnel");
    assert!(!d.logs().contains("s3cr3t"), "proxy credentials in the log");

    // A proxy that is down is a retryable connection error.
    let closed = Tripwire::start();
    let down = format!("http://{}", closed.addr);
    drop(closed);
    let d = Daemon::start(&format!("{FAST}proxy = \"{down}\"\n"));
    let id = d
        .client()
        .send(&Request::post(&http_url).body("x").max_attempts(2))
        .unwrap();
    let s = wait_state(&d, &id, "dead");
    eprintln!("proxy down -> {s}");
    assert_eq!(s["attempts"], 2, "retried");
    let err = s["last_error"].as_str().unwrap();
    assert!(
        err.contains(&format!("through proxy {}", &down[7..])),
        "{err}"
    );

    // The policy applies to the proxy's address: with loopback denied, a
    // proxy on 127.0.0.1 is not dialled.
    let d = Daemon::start(&format!(
        "{FAST}proxy = \"{}\"\n[policy]\ndeny = [\"loopback\"]\n",
        proxy.url(None)
    ));
    let before = proxy.seen().len();
    let got = answer(&d, &http_url);
    eprintln!("policy case proxy on loopback denied, {http_url} -> {got}");
    assert!(
        got.starts_with("dead after 1 attempt(s)") && got.contains("loopback"),
        "{got}"
    );
    // And to the URL's host by name: localhost is loopback.
    let got = answer(&d, "http://localhost:9/");
    eprintln!("policy case via proxy, http://localhost:9/ -> {got}");
    assert!(got.contains("denied"), "{got}");
    assert_eq!(proxy.seen().len(), before, "the proxy saw nothing");
}

#[test]
fn mutual_tls_with_a_client_certificate_from_an_rcgen_ca() {
    let ca = TestCa::new();
    let server = ca.leaf(&["localhost"]);
    let client = ca.leaf(&["ffd.client"]);
    let sink = Sink::mtls(&server.cert_pem, &server.key_pem, &ca.pem());
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca_f, cert_f, key_f) = (
        w("ca.pem", &ca.pem()),
        w("client.pem", &client.cert_pem),
        w("client.key", &client.key_pem),
    );
    let url = format!("https://localhost:{}", sink.addr.port());
    let d = Daemon::start(&format!(
        "{FAST}\n[destinations.mtls]\nurl = \"{url}\"\nca_file = \"{ca_f}\"\nclient_cert_file = \"{cert_f}\"\nclient_key_file = \"{key_f}\"\n\
         [destinations.anonymous]\nurl = \"{url}\"\nca_file = \"{ca_f}\"\nmax_attempts = 1\n"
    ));
    let ok = d
        .client()
        .send(&Request::dest("POST", "mtls", "/in").body("with a cert"))
        .unwrap();
    let no = d
        .client()
        .send(&Request::dest("POST", "anonymous", "/in").body("without"))
        .unwrap();
    wait_state(&d, &ok, "delivered");
    let s = wait_state(&d, &no, "dead");
    eprintln!("mtls without a client certificate -> {}", s["last_error"]);
    let got = sink.wait_for(1, T);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"with a cert");
}
