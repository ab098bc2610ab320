//! The `ffclient` binary without a daemon: usage errors and an unreachable
//! socket have their own exit codes. (Tests with a daemon live in
//! `daemon/tests/`; this file also makes `cargo test` build the binary they use.)

use std::process::Command;

fn ffclient(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ffclient"))
        .args(args)
        .env_remove("FFD_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_2_with_the_usage() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["send"],
        &["status"],
        &["send", "-H", "no-colon", "http://h/"],
    ] {
        let out = ffclient(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}"
        );
    }
}

#[test]
fn unreachable_daemon_exits_4_and_names_the_socket() {
    let out = ffclient(&["--socket", "/nonexistent/dir/ffd.sock", "ping"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir/ffd.sock"));
}

#[test]
fn help_exits_0() {
    let out = ffclient(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exit codes"));
}

#[test]
fn a_usage_error_is_one_line_that_says_where_to_look() {
    let out = ffclient(&["send"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("send needs a URL"), "{err}");
    assert!(err.contains("ffclient --help"), "{err}");
}

#[test]
fn help_and_send_help_print_the_usage_and_exit_0() {
    for args in [
        &["help"][..],
        &["send", "--help"],
        &["send", "-h"],
        &["status", "--help"],
    ] {
        let out = ffclient(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("send [METHOD] URL"), "{args:?}: {text}");
        // --json adds an accept header, as curl does: the help says so.
        assert!(text.contains("accept: application/json"), "{text}");
    }
}

#[test]
fn a_url_without_scheme_is_a_usage_error_that_says_add_http() {
    let out = ffclient(&["send", "127.0.0.1:8080/hook", "-d", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add http://"), "{err}");
    assert!(err.contains("http://127.0.0.1:8080/hook"), "{err}");
}

#[test]
fn unreachable_daemon_says_which_path_how_it_was_chosen_and_not_running() {
    let out = Command::new(env!("CARGO_BIN_EXE_ffclient"))
        .args(["ping"])
        .env("FFD_SOCKET", "/nonexistent/env/ffd.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/env/ffd.sock"), "{err}");
    assert!(err.contains("from $FFD_SOCKET"), "{err}");
    assert!(err.contains("seems not to be running"), "{err}");

    let out = ffclient(&["--socket", "/nonexistent/flag.sock", "ping"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("given with --socket"), "{err}");
}

#[test]
fn invalid_json_is_refused_here_with_its_place_in_the_users_text() {
    let out = ffclient(&[
        "--socket",
        "/nonexistent/ffd.sock",
        "send",
        "http://127.0.0.1:8080/",
        "--json",
        "{bad",
    ]);
    // Exit 2 before any connection (the socket does not exist: 4 otherwise).
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--json is not valid JSON"), "{err}");
    assert!(err.contains("line 1 column 2 of the --json data"), "{err}");
}

#[test]
fn send_with_a_method_and_no_url_says_the_url_is_missing() {
    for m in ["POST", "post"] {
        let out = ffclient(&["send", m]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the URL is missing"), "{err}");
        assert!(!err.contains("no scheme"), "{err}");
    }
}

#[test]
fn help_names_the_fallback_socket_and_top_once() {
    let out = ffclient(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/tmp/ffd-UID/ffd.sock"), "{text}");
    assert!(text.contains("--once"), "{text}");
    assert!(
        text.contains("send [METHOD] --dest NAME [--path P]"),
        "{text}"
    );
}
