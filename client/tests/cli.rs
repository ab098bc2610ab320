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
