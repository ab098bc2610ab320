//! systemd citizenship without systemd as PID 1: unit files verified by
//! systemd-analyze, socket activation by systemd-socket-activate and by a
//! listener the test holds, sd_notify on a datagram socket the test binds,
//! peer checks with a client run as another user.

mod support;

use ffclient::{Client, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{bin, exchange_as, is_root, spawn_on, Daemon, Sink, FAST, T};

fn units_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd"))
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let ffd = bin("ffd");
    for (sub, files) in [
        ("", ["ffd.socket", "ffd.service"]),
        ("user", ["ffd.socket", "ffd.service"]),
    ] {
        let dir = tmp.path().join(if sub.is_empty() { "system" } else { sub });
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            // ExecStart must name an existing binary: point it at the one built.
            let text = std::fs::read_to_string(units_dir().join(sub).join(f))
                .unwrap()
                .replace("/usr/local/bin/ffd", ffd.to_str().unwrap())
                .replace("%h/.local/bin/ffd", ffd.to_str().unwrap());
            std::fs::write(dir.join(f), text).unwrap();
        }
        let mut cmd = Command::new("systemd-analyze");
        if sub == "user" {
            let rt = tmp.path().join("runtime");
            std::fs::create_dir_all(&rt).unwrap();
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &rt);
        }
        let out = cmd
            .arg("verify")
            .arg(dir.join("ffd.socket"))
            .arg(dir.join("ffd.service"))
            .output()
            .expect("systemd-analyze (apt-get install systemd)");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{sub} units: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The hardening claim of the README.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(tmp.path().join("system/ffd.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("ffd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(score <= 1.5, "exposure {score}");
    // sysusers: the entry creates user and group ffd in a scratch root.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(units_dir().join("ffd.sysusers"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("ffd:")), "{group}");
}

#[test]
fn socket_activation_accepts_lines_written_before_ffd_started() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("act.sock");
    let cfg = tmp.path().join("ffd.toml");
    std::fs::write(&cfg, FAST).unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg("--fdname=ffd")
        .arg(bin("ffd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--spool")
        .arg(tmp.path().join("spool"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (apt-get install systemd)");
    // Wait for the activator to listen (it says so on stderr).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + T;
    while !sock.exists() {
        line.clear();
        err.read_line(&mut line).unwrap();
        assert!(Instant::now() < deadline, "activator did not listen");
    }
    // Keep draining ffd's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || err.lines().for_each(drop));
    // Connect and write before ffd exists: the activator starts it now.
    let mut s = UnixStream::connect(&sock).unwrap();
    for i in 0..3 {
        writeln!(s, "{{\"url\":\"{}\"}}", sink.url(&format!("/act{i}"))).unwrap();
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..3 {
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        assert!(a.contains("\"ok\":true"), "{a}");
    }
    sink.wait_for(3, T);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

#[test]
fn restart_under_the_same_listener_refuses_no_connection() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ffd.toml"), FAST).unwrap();
    let sock = tmp.path().join("held.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut first = spawn_on(&listener, tmp.path());
    let mut c = Client::connect(&sock).unwrap();
    c.send(&Request::get(&sink.url("/before"))).unwrap();
    drop(c);
    let _ = Command::new("kill").arg(first.id().to_string()).status();
    assert!(first.wait().unwrap().success());
    assert!(!tmp.path().join("unused.sock").exists());
    assert!(sock.exists(), "ffd leaves an inherited socket in place");

    // ffd is down: connections made now wait in the backlog.
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let (sock, url) = (sock.clone(), sink.url(&format!("/during{i}")));
            std::thread::spawn(move || {
                let mut c = Client::connect(&sock).expect("connection refused during restart");
                c.send(&Request::get(&url))
                    .expect("acknowledged after restart")
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut second = spawn_on(&listener, tmp.path());
    for c in clients {
        assert_eq!(c.join().unwrap().len(), 26);
    }
    sink.wait_for(6, T);
    let _ = Command::new("kill").arg(second.id().to_string()).status();
    assert!(second.wait().unwrap().success());
}

#[test]
fn sd_notify_ready_after_ping_answers_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let nsock = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&nsock).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();
    let mut d = Daemon::start_env(
        FAST,
        &[],
        &[
            ("NOTIFY_SOCKET", nsock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut buf = [0u8; 4096];
    let recv = |buf: &mut [u8]| {
        let n = notify.recv(buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(&mut buf);
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    // READY means the socket answers.
    d.client().ping().unwrap();
    // The watchdog is fed (WATCHDOG_USEC/2 = 200 ms).
    let deadline = Instant::now() + T;
    loop {
        let m = recv(&mut buf);
        if m.contains("WATCHDOG=1") {
            assert!(m.contains("STATUS="), "{m}");
            break;
        }
        assert!(Instant::now() < deadline);
    }
    d.signal("TERM");
    loop {
        let m = recv(&mut buf);
        if m.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        assert!(Instant::now() < deadline, "no STOPPING=1");
    }
    assert!(d.wait_exit(T).success());
}

#[test]
fn sighup_reloads_limits_and_names_what_needs_a_restart() {
    let d = Daemon::start(FAST);
    std::fs::write(
        d.dir.join("ffd.toml"),
        format!(
            "log_level = \"debug\"\nmax_line_bytes = 9999\n{}",
            FAST.replace("breaker_threshold = 1000", "breaker_threshold = 7")
        ),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_log("only take effect after a restart", T);
    let logs = d.logs();
    assert!(logs.contains("delivery.breaker_threshold"), "{logs}");
    assert!(logs.contains("log_level"), "{logs}");
    assert!(logs.contains("max_line_bytes"), "{logs}");
    d.client().ping().unwrap();
    // A broken file is refused and the running config kept.
    std::fs::write(d.dir.join("ffd.toml"), "[delivery]\nmax_in_flight = -1\n").unwrap();
    d.signal("HUP");
    d.wait_log("config not reloaded", T);
    d.client().ping().unwrap();
}

#[test]
fn peers_outside_allowed_uids_and_gids_are_forbidden() {
    if !is_root() {
        eprintln!("skipped: running a client as another user needs root (CI runs as root)");
        return;
    }
    let cfg =
        format!("socket_mode = \"0660\"\nallowed_uids = [4243]\nallowed_gids = [4242]\n{FAST}");
    let d = Daemon::start(&cfg);
    // Let group 0 (the socket's group) traverse the temp dir; the socket
    // mode lets it connect, so the refusal is ffd's own check.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let ping = r#"{"op":"ping"}"#;

    let refused = exchange_as(65534, 0, "", &d.socket, ping);
    assert!(refused.contains("\"error\":\"forbidden\""), "{refused}");
    let allowed_by_uid = exchange_as(4243, 0, "", &d.socket, ping);
    assert!(allowed_by_uid.contains("\"ok\":true"), "{allowed_by_uid}");
    let allowed_by_group = exchange_as(65534, 0, "4242", &d.socket, ping);
    assert!(
        allowed_by_group.contains("\"ok\":true"),
        "{allowed_by_group}"
    );
    // Allowed to send, but admin ops are for ffd's own user or root.
    let purge = exchange_as(65534, 0, "4242", &d.socket, r#"{"op":"purge","all":true}"#);
    assert!(purge.contains("\"error\":\"forbidden\""), "{purge}");
    // Root is served.
    d.client().ping().unwrap();
    assert_eq!(d.stats()["rejected"]["forbidden"], 2);
}

/// Every `file://` page a unit's `Documentation=` names is one the install
/// steps of docs/operations.md put there (a link to nothing helps no one).
#[test]
fn the_units_documentation_is_installed_by_the_docs() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{repo}/docs/operations.md")).unwrap();
    let mut checked = 0;
    for unit in [
        "systemd/ffd.service",
        "systemd/ffd.socket",
        "systemd/user/ffd.service",
        "systemd/user/ffd.socket",
    ] {
        let text = std::fs::read_to_string(format!("{repo}/{unit}")).unwrap();
        for doc in text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation="))
            .flat_map(str::split_whitespace)
        {
            if let Some(path) = doc.strip_prefix("file://") {
                let installed = readme.lines().any(|l| {
                    l.trim_start().starts_with("sudo install")
                        && l.split_whitespace().any(|w| w == path)
                });
                assert!(
                    installed,
                    "{unit}: Documentation={doc} is not installed by docs/operations.md"
                );
                checked += 1;
            } else {
                assert!(
                    doc.starts_with("https://") || doc.starts_with("man:"),
                    "{unit}: {doc}"
                );
            }
        }
    }
    assert!(checked > 0, "the system unit names its installed README");
}
