//! The `ffclient` binary against a real ffd and a real HTTP sink: sends to
//! named destinations, lower-case methods, dead letters in words, `top` to
//! a file, and the `status` lines for a paused host and a 501.

mod support;

use serde_json::Value;
use std::process::{Command, Stdio};
use support::{bin, Daemon, Reply, Sink, FAST, T};

/// Runs `ffclient --socket SOCK ARGS`, its output not a terminal:
/// (exit code, stdout, stderr).
fn ffclient(d: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("ffclient"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ffclient ARGS` that must succeed: its stdout.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = ffclient(d, args);
    assert_eq!(code, Some(0), "ffclient {args:?}: {err}");
    out
}

#[test]
fn send_dest_goes_to_the_named_destination_with_its_path() {
    let sink = Sink::start();
    let d = Daemon::start(&format!(
        "{FAST}\n[destinations.hooks]\nurl = \"{}\"\n",
        sink.url("/base")
    ));
    let id = ok(
        &d,
        &[
            "send",
            "--dest",
            "hooks",
            "--path",
            "/x?y=1",
            "--json",
            r#"{"a":1}"#,
        ],
    );
    assert!(!id.trim().is_empty());
    ok(&d, &["send", "put", "--dest", "hooks", "-d", "b"]);
    let got = sink.wait_for(2, T);
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("POST".to_string(), "/base/x?y=1".to_string()),
            ("PUT".to_string(), "/base".to_string())
        ]
    );
    let (code, _, err) = ffclient(&d, &["send", "--dest", "nope"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("unknown_dest"), "{err}");
    let (code, _, err) = ffclient(&d, &["send", "--path", "/x", "http://127.0.0.1:1/"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn lower_case_standard_methods_are_sent_in_upper_case() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    ok(&d, &["send", "post", &sink.url("/p"), "-d", "x"]);
    ok(&d, &["send", "-X", "delete", &sink.url("/d")]);
    let got = sink.wait_for(2, T);
    let mut methods: Vec<&str> = got.iter().map(|r| r.method.as_str()).collect();
    methods.sort();
    assert_eq!(methods, ["DELETE", "POST"]);
}

#[test]
fn dead_replay_and_purge_print_words_and_json_on_request() {
    let sink = Sink::with(|_, _| Reply::status(404));
    let d = Daemon::start(FAST);
    ok(&d, &["send", "--id", "gone-1", &sink.url("/gone")]);
    d.wait_stats("a dead letter", T, |s| s["dead_letters"] == 1);
    let text = ok(&d, &["dead"]);
    assert!(text.starts_with("1 dead letter, oldest first:\n"), "{text}");
    // ffd's own user sees everyone's: the owner is named.
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert!(
        text.contains(&format!(
            "gone-1 (uid {uid})  dead: HTTP 404 Not Found after 1 attempt"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("GET {}", sink.url("/gone"))),
        "{text}"
    );
    let raw: Value = serde_json::from_str(&ok(&d, &["dead", "--json"])).unwrap();
    assert_eq!(raw[0]["id"], "gone-1", "{raw}");

    let text = ok(&d, &["replay", "gone-1"]);
    assert_eq!(text, "replayed (queued again): 1 dead letter\n");
    sink.wait_for(2, T);
    d.wait_stats("dead again", T, |s| {
        s["dead_letters"] == 1 && s["dead"] == 2
    });
    let raw: Value = serde_json::from_str(&ok(&d, &["purge", "--all", "--json"])).unwrap();
    assert_eq!(raw, serde_json::json!({"ok": true, "purged": 1}));
    assert_eq!(ok(&d, &["purge", "--all"]), "purged: 0 dead letters\n");
    assert_eq!(ok(&d, &["dead"]), "no dead letters\n");
}

#[test]
fn top_to_a_file_prints_one_table_without_escape_codes() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    ok(&d, &["send", &sink.url("/t")]);
    sink.wait_for(1, T);
    // stdout is a pipe here: `top` must end by itself.
    let out = ok(&d, &["top"]);
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(out.contains("127.0.0.1"), "{out}");
}

#[test]
fn status_says_first_that_the_host_is_paused_and_until_when() {
    let sink = Sink::with(|_, _| Reply::status(503));
    let d = Daemon::start(
        "[delivery]\nbreaker_threshold = 1\nbreaker_cooldown_ms = 60000\nbackoff_base_ms = 60000\n",
    );
    ok(&d, &["send", "--id", "first", &sink.url("/a")]);
    d.wait_stats("the host paused", T, |s| s["hosts"][0]["paused"] == true);
    ok(&d, &["send", "--id", "second", &sink.url("/b")]);
    let text = ok(&d, &["status", "second"]);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("held: host paused until ") && first.contains(" UTC after 1 failure;"),
        "{text}"
    );
    assert!(first.ends_with("queued: not sent yet"), "{text}");
}

#[test]
fn the_501_hint_names_the_method_that_was_sent() {
    let sink = Sink::with(|_, _| Reply::status(501));
    let d = Daemon::start("[delivery]\nbreaker_threshold = 1000\nbackoff_base_ms = 60000\n");
    ok(&d, &["send", "--id", "g", &sink.url("/g")]);
    ok(&d, &["send", "--id", "p", &sink.url("/p"), "-d", "x"]);
    d.wait_stats("two retries", T, |s| s["retried"] == 2);
    let get = ok(&d, &["status", "g"]);
    let first = get.lines().next().unwrap();
    assert!(first.contains("does not take GET"), "{get}");
    assert!(!first.contains("http.server"), "{get}");
    let post = ok(&d, &["status", "p"]);
    assert!(
        post.lines()
            .next()
            .unwrap()
            .contains("does not take POST: python3 -m http.server answers POST with 501"),
        "{post}"
    );
}
