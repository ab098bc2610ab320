//! Destinations that log in: OAuth2 client credentials against a real token
//! endpoint on loopback, header values from credential files, and retry
//! rules per destination.

mod support;

use base64::Engine as _;
use ffclient::Request;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{pipelined, wait_until, Daemon, Reply, Sink, FAST, T};

const SECRET: &str = "S3cr3t-client-secret-0042";
const ID: &str = "ffd-client";

/// A token endpoint answering `TOKEN-<n>` (n from 1) with `expires_in`.
fn token_sink(expires_in: u64) -> Sink {
    Sink::with(move |_, n| {
        Reply::json(
            200,
            &format!(
                r#"{{"access_token":"TOKEN-{}","token_type":"Bearer","expires_in":{expires_in}}}"#,
                n + 1
            ),
        )
    })
}

/// FAST, then `[destinations.api]` at `api` with `extra` keys, logging in
/// at `token_url` with `oauth` keys.
fn config(api: &Sink, token_url: &str, extra: &str, oauth: &str) -> String {
    format!(
        "{FAST}\n[destinations.api]\nurl = \"{}\"\nmax_attempts = 100\n{extra}\n[destinations.api.oauth2]\ntoken_url = \"{token_url}\"\nclient_id = \"{ID}\"\n{oauth}\n",
        api.url("/v1")
    )
}

fn inline_secret() -> String {
    format!(
        "client_secret = \"{SECRET}\"\nscope = \"events:write\"\naudience = \"https://api.test\""
    )
}

fn send(d: &Daemon, id: &str, path: &str) {
    d.client()
        .send(&Request::dest("POST", "api", path).id(id).json("{}"))
        .unwrap();
}

/// Waits until `id`'s status satisfies `pred`; returns it.
fn wait_status(d: &Daemon, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_until(
        &format!("status of {id}"),
        T,
        Duration::from_millis(20),
        || {
            let s = d.client().status(id).unwrap();
            if pred(&s) {
                Ok(s)
            } else {
                Err(format!("{s}\nlogs:\n{}", d.logs()))
            }
        },
    )
}

fn delivered(d: &Daemon, id: &str) -> Value {
    wait_status(d, id, |s| s["state"] == "delivered")
}

/// Waits until ffd's log holds `text` `n` times.
fn wait_log_n(d: &Daemon, text: &str, n: usize) {
    wait_until(
        &format!("{n} log lines {text:?}"),
        T,
        Duration::from_millis(20),
        || {
            let logs = d.logs();
            if logs.matches(text).count() >= n {
                Ok(())
            } else {
                Err(logs)
            }
        },
    )
}

#[test]
fn one_token_request_serves_200_deliveries_with_basic_auth() {
    // A slow token endpoint: every delivery is in flight while it answers.
    let token = Sink::with(|_, n| {
        Reply::json(
            200,
            &format!(r#"{{"access_token":"TOKEN-{}","expires_in":3600}}"#, n + 1),
        )
        .delay(Duration::from_millis(400))
    });
    let api = Sink::start();
    let d = Daemon::start(&config(&api, &token.url("/token"), "", &inline_secret()));
    let lines: String = (0..200)
        .map(|i| {
            format!("{{\"dest\":\"api\",\"path\":\"/e\",\"id\":\"e{i}\",\"json\":{{\"n\":{i}}}}}\n")
        })
        .collect();
    let answers = pipelined(&d.socket, &lines);
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    let reqs = api.wait_for(200, T);
    assert!(
        reqs.iter()
            .all(|r| r.header("authorization") == Some("Bearer TOKEN-1")),
        "{:?}",
        reqs.iter()
            .map(|r| r.header("authorization"))
            .collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(token.count(), 1, "one token request for 200 deliveries");
    let t = &token.requests()[0];
    assert_eq!(t.method, "POST");
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ID}:{SECRET}"));
    assert_eq!(t.header("authorization"), Some(&*format!("Basic {basic}")));
    let form = String::from_utf8(t.body.clone()).unwrap();
    let fields: Vec<&str> = form.split('&').collect();
    assert!(fields.contains(&"grant_type=client_credentials"), "{form}");
    assert!(fields.contains(&"scope=events%3Awrite"), "{form}");
    assert!(
        fields.contains(&"audience=https%3A%2F%2Fapi.test"),
        "{form}"
    );
    assert!(
        !form.contains("client_secret") && !form.contains(SECRET),
        "{form}"
    );
    for i in [0, 199] {
        assert_eq!(delivered(&d, &format!("e{i}"))["attempts"], 1);
    }
}

#[test]
fn the_token_is_refreshed_before_it_expires_with_post_auth() {
    // Lives 2 s, refreshed 1 s before: after 1 s a new one is fetched.
    let token = token_sink(2);
    let api = Sink::start();
    let oauth = format!(
        "{}\nauth_method = \"post\"\nrefresh_skew_ms = 1000",
        inline_secret()
    );
    let d = Daemon::start(&config(&api, &token.url("/token"), "", &oauth));
    send(&d, "a", "/a");
    send(&d, "b", "/b");
    delivered(&d, "a");
    delivered(&d, "b");
    let reqs = api.wait_for(2, T);
    assert!(reqs
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer TOKEN-1")));
    assert_eq!(token.count(), 1);
    std::thread::sleep(Duration::from_millis(1200));
    send(&d, "c", "/c");
    delivered(&d, "c");
    let reqs = api.wait_for(3, T);
    assert_eq!(reqs[2].header("authorization"), Some("Bearer TOKEN-2"));
    assert_eq!(token.count(), 2, "refreshed once, before expiry");
    // `post`: the credentials are in the form, not in a header.
    for t in token.requests() {
        assert_eq!(t.header("authorization"), None);
        let form = String::from_utf8(t.body.clone()).unwrap();
        let fields: Vec<&str> = form.split('&').collect();
        assert!(fields.contains(&"grant_type=client_credentials"), "{form}");
        assert!(fields.contains(&&*format!("client_id={ID}")), "{form}");
        assert!(
            fields.contains(&&*format!("client_secret={SECRET}")),
            "{form}"
        );
    }
}

#[test]
fn a_401_refreshes_the_token_once_and_counts_one_attempt() {
    let token = token_sink(3600);
    // The first token is refused (revoked early, as servers do).
    let api = Sink::with(|r, _| match r.header("authorization") {
        Some("Bearer TOKEN-1") => Reply::status(401),
        _ => Reply::status(200),
    });
    let d = Daemon::start(&config(&api, &token.url("/token"), "", &inline_secret()));
    send(&d, "x", "/x");
    let s = delivered(&d, "x");
    assert_eq!(
        s["attempts"], 1,
        "the retry after a refresh is no attempt: {s}"
    );
    assert_eq!(token.count(), 2);
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("authorization"), Some("Bearer TOKEN-2"));
    // A second 401 right after a refresh is an ordinary answer: final,
    // since `retry_on` does not list 401; one refresh only.
    api.set(|_, _| Reply::status(401));
    send(&d, "y", "/y");
    let s = wait_status(&d, "y", |s| s["state"] == "dead");
    assert_eq!(s["attempts"], 1, "{s}");
    assert_eq!(s["last_status"], 401, "{s}");
    assert_eq!(token.count(), 3);
    assert_eq!(api.count(), 4);
}

#[test]
fn a_token_endpoint_down_or_refusing_fails_attempts_until_it_is_back() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = Sink::start();
    let url = format!("http://127.0.0.1:{port}/token");
    let d = Daemon::start(&config(&api, &url, "", &inline_secret()));
    send(&d, "late", "/late");
    let s = wait_status(&d, "late", |s| s["attempts"].as_u64() >= Some(2));
    assert!(
        ["waiting", "queued", "in_flight"].contains(&s["state"].as_str().unwrap()),
        "{s}"
    );
    let err = s["last_error"].as_str().unwrap();
    assert!(err.starts_with("oauth2 token: "), "{err}");
    assert_eq!(api.count(), 0);
    // Back, but refusing the client at first: said plainly.
    let refuse = Arc::new(AtomicBool::new(true));
    let r2 = refuse.clone();
    let served = Arc::new(AtomicUsize::new(0));
    let s2 = served.clone();
    let _token = Sink::on_port(port, move |_, _| {
        if r2.load(Ordering::SeqCst) {
            Reply::json(
                400,
                r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
            )
        } else {
            let n = s2.fetch_add(1, Ordering::SeqCst);
            Reply::json(
                200,
                &format!(r#"{{"access_token":"TOKEN-{n}","expires_in":60}}"#),
            )
        }
    });
    let s = wait_status(&d, "late", |s| {
        s["last_error"].as_str()
            == Some("oauth2 token: HTTP 400 invalid_client: client authentication failed")
    });
    assert!(
        ["waiting", "queued", "in_flight"].contains(&s["state"].as_str().unwrap()),
        "{s}"
    );
    d.wait_log("invalid_client", T);
    refuse.store(false, Ordering::SeqCst);
    let s = delivered(&d, "late");
    assert!(s["attempts"].as_u64() >= Some(3), "{s}");
    assert_eq!(api.count(), 1);
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[test]
fn secrets_and_tokens_are_never_logged_shown_or_spooled() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("api-key"), "HDRFILE-value-77\n").unwrap();
    std::fs::write(creds.path().join("client-secret"), format!("{SECRET}\n")).unwrap();
    // The token endpoint first quotes the secret in its refusal.
    let token = Sink::with(|_, n| match n {
        0 => Reply::json(
            400,
            &format!(
                r#"{{"error":"invalid_client","error_description":"secret {SECRET} is wrong"}}"#
            ),
        ),
        _ => Reply::json(
            200,
            r#"{"access_token":"TOKEN-zz9-private","expires_in":3600}"#,
        ),
    });
    // Receivers that echo the request's credentials in their answers.
    let api = Sink::with(|r, _| {
        let echo = format!(
            "{} {}",
            r.header("authorization").unwrap_or(""),
            r.header("x-api-key").unwrap_or("")
        );
        let mut reply = match r.path.as_str() {
            "/v1/fail" => Reply::status(500),
            "/v1/gone" => Reply::status(404),
            _ => Reply::status(200),
        };
        reply.body = Some(echo.into_bytes());
        reply
    });
    let cfg = config(
        &api,
        &token.url("/token"),
        "header_files = { x-api-key = \"api-key\" }",
        "client_secret_file = \"client-secret\"",
    )
    .replace("max_attempts = 100", "max_attempts = 3");
    let cfg = format!("log_level = \"debug\"\n{cfg}");
    let d = Daemon::start_env(
        &cfg,
        &["--log-level", "debug"],
        &[
            ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    let tail = d.client().tail(serde_json::Map::new()).unwrap();
    send(&d, "ok", "/ok");
    send(&d, "fail", "/fail");
    send(&d, "gone", "/gone");
    delivered(&d, "ok");
    wait_status(&d, "fail", |s| s["state"] == "dead");
    let gone = wait_status(&d, "gone", |s| s["state"] == "dead");
    assert!(api
        .requests()
        .iter()
        .all(|r| r.header("x-api-key") == Some("HDRFILE-value-77")
            && r.header("authorization") == Some("Bearer TOKEN-zz9-private")));
    // Every answer.
    let mut answers = Vec::new();
    for id in ["ok", "fail", "gone"] {
        answers.push(d.client().status(id).unwrap().to_string());
    }
    answers.push(d.client().dead(None).unwrap().to_string());
    answers.push(d.stats().to_string());
    let mut events = Vec::new();
    for e in tail {
        let e = e.unwrap();
        let last = e["id"] == "gone" && e["event"] == "dead";
        events.push(e.to_string());
        if last {
            break;
        }
    }
    answers.extend(events);
    // The snippet is there, with the credentials taken out.
    assert!(gone.to_string().contains("<redacted>"), "{gone}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ID}:{SECRET}"));
    let forbidden = [
        SECRET,
        "TOKEN-zz9-private",
        "HDRFILE-value-77",
        basic.as_str(),
    ];
    let logs = d.logs();
    assert!(logs.contains("DEBUG"), "debug level is on");
    assert!(logs.contains("invalid_client"), "{logs}");
    for f in forbidden {
        for line in logs.lines() {
            assert!(!line.contains(f), "log line holds {f:?}: {line}");
        }
        for a in &answers {
            assert!(!a.contains(f), "answer holds {f:?}: {a}");
        }
    }
    // Every spool file, byte for byte.
    let mut files = 0;
    for entry in std::fs::read_dir(&d.spool).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        for f in forbidden {
            assert!(
                !bytes.windows(f.len()).any(|w| w == f.as_bytes()),
                "spool holds {f:?}"
            );
        }
    }
    assert!(files > 0);
}

#[test]
fn header_files_are_read_again_on_sighup_and_kept_when_gone() {
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("hooks-auth");
    std::fs::write(&file, "Bearer file-v1\n").unwrap();
    let api = Sink::start();
    let cfg = format!(
        "{FAST}\n[destinations.hooks]\nurl = \"{}\"\nheader_files = {{ authorization = \"hooks-auth\" }}\n",
        api.url("/h")
    );
    let d = Daemon::start_env(
        &cfg,
        &[],
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    let hook = |id: &str| {
        d.client()
            .send(&Request::dest("POST", "hooks", "/x").id(id).json("{}"))
            .unwrap();
        delivered(&d, id);
        api.requests()
            .last()
            .unwrap()
            .header("authorization")
            .map(String::from)
    };
    assert_eq!(hook("one").as_deref(), Some("Bearer file-v1"));
    // A send may not set the credential header.
    let refused = d
        .client()
        .send(&Request::dest("POST", "hooks", "/x").header("Authorization", "Bearer mine"))
        .unwrap_err();
    match refused {
        ffclient::Error::Rejected {
            code_str, message, ..
        } => {
            assert_eq!(code_str, "bad_request");
            assert!(message.contains("authorization"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    std::fs::write(&file, "Bearer file-v2\n").unwrap();
    d.signal("HUP");
    wait_log_n(&d, "SIGHUP: config reloaded", 1);
    assert_eq!(hook("two").as_deref(), Some("Bearer file-v2"));
    // Gone at the next SIGHUP: the last good value stays; the key is logged.
    std::fs::remove_file(&file).unwrap();
    d.signal("HUP");
    wait_log_n(&d, "SIGHUP: config reloaded", 2);
    let logs = d.logs();
    assert!(
        logs.contains("destinations.hooks.header_files.authorization"),
        "{logs}"
    );
    assert!(
        !logs.contains("file-v1") && !logs.contains("file-v2"),
        "{logs}"
    );
    assert_eq!(hook("three").as_deref(), Some("Bearer file-v2"));
}

#[test]
fn sighup_drops_the_cached_token_only_when_the_oauth2_settings_change() {
    let creds = tempfile::tempdir().unwrap();
    let secret_file = creds.path().join("secret");
    std::fs::write(&secret_file, "first-secret-aaaa\n").unwrap();
    let token = token_sink(3600);
    let api = Sink::start();
    let cfg = config(
        &api,
        &token.url("/token"),
        "",
        "client_secret_file = \"secret\"\nauth_method = \"post\"",
    );
    let d = Daemon::start_env(
        &cfg,
        &[],
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    send(&d, "a", "/a");
    delivered(&d, "a");
    d.signal("HUP");
    wait_log_n(&d, "SIGHUP: config reloaded", 1);
    send(&d, "b", "/b");
    delivered(&d, "b");
    assert_eq!(token.count(), 1, "nothing changed: the token is kept");
    std::fs::write(&secret_file, "second-secret-bbbb\n").unwrap();
    d.signal("HUP");
    wait_log_n(&d, "SIGHUP: config reloaded", 2);
    send(&d, "c", "/c");
    delivered(&d, "c");
    assert_eq!(token.count(), 2, "a new secret: a new token");
    let form = String::from_utf8(token.requests()[1].body.clone()).unwrap();
    assert!(form.contains("client_secret=second-secret-bbbb"), "{form}");
    assert_eq!(
        api.requests().last().unwrap().header("authorization"),
        Some("Bearer TOKEN-2")
    );
}

#[test]
fn retry_on_retries_a_404_and_makes_a_503_final() {
    // The first two answers to /v1/soon are 404, with a Retry-After of an
    // hour that `retry_after_max_ms` cuts down.
    let soon = AtomicUsize::new(0);
    let flaky = AtomicUsize::new(0);
    let api = Sink::with(move |r, _| match r.path.as_str() {
        "/v1/down" => Reply::status(503),
        "/v1/soon" if soon.fetch_add(1, Ordering::SeqCst) < 2 => {
            Reply::status(404).header("retry-after", "3600")
        }
        "/raw-flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 1 => Reply::status(503),
        _ => Reply::status(200),
    });
    let cfg = format!(
        "{FAST}retry_on = [\"5xx\"]\n[destinations.api]\nurl = \"{}\"\nretry_on = [404, 429]\nretry_after_max_ms = 100\n",
        api.url("/v1")
    );
    let d = Daemon::start(&cfg);
    send(&d, "soon", "/soon");
    send(&d, "down", "/down");
    let s = delivered(&d, "soon");
    assert_eq!(s["attempts"], 3, "{s}");
    let s = wait_status(&d, "down", |s| s["state"] == "dead");
    assert_eq!(s["attempts"], 1, "503 is final here: {s}");
    assert_eq!(s["last_status"], 503);
    // A raw URL follows `[delivery]`'s rules: 503 retried.
    let id = d
        .client()
        .send(&Request::get(&api.url("/raw-flaky")))
        .unwrap();
    let s = delivered(&d, &id);
    assert!(s["attempts"].as_u64() >= Some(2), "{s}");
}

#[test]
fn batches_log_in_and_follow_retry_on() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("key"), "batch-key-1\n").unwrap();
    let token = token_sink(3600);
    let api = Sink::with(|_, n| {
        if n == 0 {
            Reply::status(404)
        } else {
            Reply::status(200)
        }
    });
    let cfg = format!(
        "{FAST}\n[destinations.ev]\nurl = \"{}\"\nretry_on = [404]\nheader_files = {{ x-api-key = \"key\" }}\n[destinations.ev.batch]\nmax_events = 5\nmax_wait_ms = 50\n[destinations.ev.oauth2]\ntoken_url = \"{}\"\nclient_id = \"c\"\nclient_secret = \"{SECRET}\"\n",
        api.url("/ingest"),
        token.url("/token")
    );
    let d = Daemon::start_env(
        &cfg,
        &[],
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    let lines: String = (0..5)
        .map(|i| format!("{{\"dest\":\"ev\",\"id\":\"ev{i}\",\"json\":{{\"n\":{i}}}}}\n"))
        .collect();
    let answers = pipelined(&d.socket, &lines);
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    for i in 0..5 {
        let s = delivered(&d, &format!("ev{i}"));
        assert_eq!(s["attempts"], 2, "the 404 was retried: {s}");
    }
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some("Bearer TOKEN-1"));
        assert_eq!(r.header("x-api-key"), Some("batch-key-1"));
        assert_eq!(
            r.body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            5
        );
    }
    assert_eq!(token.count(), 1);
}

#[test]
fn check_config_explains_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[destinations.a]\nurl = \"https://a.example/\"\n";
    let oauth = "[destinations.a.oauth2]\nclient_id = \"c\"\n";
    let cases: &[(&str, &str)] = &[
        ("[delivery]\nretry_on = [408, 600]\n", "key `delivery.retry_on[1]`"),
        ("[delivery]\nretry_on = [\"3xx\"]\n", "key `delivery.retry_on[0]`"),
        (
            &format!("{base}retry_on = [true]\n"),
            "key `destinations.a.retry_on[0]`",
        ),
        (
            &format!("{base}header_files = {{ authorization = \"/nonexistent/f\" }}\n"),
            "key `destinations.a.header_files.authorization`",
        ),
        (
            &format!("{base}header_files = {{ authorization = \"bare\" }}\n"),
            "CREDENTIALS_DIRECTORY",
        ),
        (
            &format!("{base}{oauth}token_url = \"http://auth.example/t\"\nclient_secret = \"s\"\n"),
            "key `destinations.a.oauth2.token_url`: must be https",
        ),
        (
            &format!("{base}{oauth}token_url = \"https://auth.example/t\"\n"),
            "key `destinations.a.oauth2.client_secret`",
        ),
        (
            &format!("{base}{oauth}token_url = \"https://auth.example/t\"\nclient_secret_file = \"/nonexistent/s\"\n"),
            "key `destinations.a.oauth2.client_secret_file`",
        ),
        (
            &format!("{base}{oauth}token_url = \"https://169.254.169.254/t\"\nclient_secret = \"s\"\n"),
            "key `destinations.a.oauth2.token_url`",
        ),
        (
            &format!("{base}headers = {{ authorization = \"x\" }}\n{oauth}token_url = \"https://a.example/t\"\nclient_secret = \"s\"\n"),
            "key `destinations.a.oauth2`",
        ),
    ];
    for (i, (toml, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(support::bin("ffd"))
            .arg("--check-config")
            .arg("--config")
            .arg(&path)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}: accepted");
        assert!(err.contains(needle), "{toml}: {err}");
        assert!(
            err.contains(&*path.to_string_lossy()),
            "names the file: {err}"
        );
    }
}

#[test]
fn the_docs_login_examples_parse() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let start = readme.find("### Logging in: OAuth2").unwrap();
    let end = readme[start..].find("### Destination policy").unwrap() + start;
    let mut blocks = 0;
    for part in readme[start..end].split("```toml\n").skip(1) {
        let toml = &part[..part.find("```").unwrap()];
        toml::from_str::<ffd::config::Config>(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        blocks += 1;
    }
    assert_eq!(blocks, 3);
}

#[test]
fn token_endpoint_failures_count_toward_the_breaker() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = Sink::start();
    let cfg = format!(
        "[delivery]\nbackoff_base_ms = 20\nbackoff_max_ms = 50\nbreaker_threshold = 2\nbreaker_cooldown_ms = 200\nbreaker_cooldown_max_ms = 200\n[destinations.api]\nurl = \"{}\"\nmax_attempts = 100\n[destinations.api.oauth2]\ntoken_url = \"http://localhost:{port}/token\"\nclient_id = \"c\"\nclient_secret = \"{SECRET}\"\n",
        api.url("/v1")
    );
    let d = Daemon::start(&cfg);
    send(&d, "p", "/p");
    d.wait_log("host keeps failing; pausing deliveries to it", T);
    let token = Sink::on_port(port, |_, _| {
        Reply::json(200, r#"{"access_token":"TOKEN-1","expires_in":60}"#)
    });
    delivered(&d, "p");
    assert_eq!(token.count(), 1);
}
