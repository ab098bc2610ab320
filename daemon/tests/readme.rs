//! The README as a new user runs it: its receiver, its `ffclient` line, its
//! Python (module and standard library) and bash snippets, against the real
//! `ffd` — as root with `$FFD_SOCKET`, and as an ordinary user who has only
//! `$XDG_RUNTIME_DIR` (the snippets must find the socket as `ffclient` does).

mod support;

use ffclient::Request;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{bin, Daemon, Sink, FAST, T};

/// The pages a snippet may live in: the README and every page of `docs/`.
fn doc_pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The code block after `<!-- test: TAG -->`, wherever the docs put it (the
/// README or a page of `docs/`). A snippet quoted on several pages must be
/// the same everywhere.
fn readme_block(tag: &str) -> String {
    let marker = format!("<!-- test: {tag} -->");
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    for page in doc_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (start, _) in text.match_indices(&marker) {
            let rest = &text[start..];
            let open = rest.find("```").unwrap();
            let body_start = open + rest[open..].find('\n').unwrap() + 1;
            let close = body_start + rest[body_start..].find("```").unwrap();
            found.push((page.clone(), rest[body_start..close].to_string()));
        }
    }
    let (_, first) = found
        .first()
        .unwrap_or_else(|| panic!("no page of README.md or docs/ has {marker}"));
    for (page, body) in &found {
        assert_eq!(body, first, "{}: {marker} differs", page.display());
    }
    first.clone()
}

/// The snippets that send the README's request: (tag, program, flag).
const SNIPPETS: [(&str, &str, &str); 5] = [
    ("python", "python3", "-c"),
    ("python-module", "python3", "-c"),
    ("bash-socat", "bash", "-c"),
    ("bash-nc", "bash", "-c"),
    ("ffclient", "bash", "-c"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

/// Checks that `n` requests arrived, all the README's request, all distinct.
fn assert_identical(sink: &Sink, n: usize) {
    let reqs = sink.wait_for(n, T);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook?src=readme");
        assert_eq!(r.header("x-event"), Some("signup"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, br#"{"user":42}"#);
        assert!(r.header("ffd-id").is_some());
    }
    let mut ids: Vec<_> = reqs
        .iter()
        .map(|r| r.header("ffd-id").unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "{n} distinct requests");
}

fn check_output(tag: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{tag}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("\"ok\":false"), "{tag}: {stdout}");
}

#[test]
fn same_request_from_library_cli_python_and_bash_arrives_identical() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let base = format!("http://{}", sink.addr);
    let url = format!("{base}/hook?src=readme");

    // Library.
    let id = d
        .client()
        .send(
            &Request::post(&url)
                .header("x-event", "signup")
                .json(r#"{"user":42}"#),
        )
        .unwrap();
    assert_eq!(id.len(), 26);

    // The README's own snippets, ffclient's line included (on PATH, as
    // after the README's set-up).
    let path = format!(
        "{}:{}",
        bin("ffclient").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (tag, prog, flag) in SNIPPETS {
        let code = readme_block(tag).replace("http://127.0.0.1:8080", &base);
        let out = Command::new(prog)
            .args([flag, &code])
            .env("FFD_SOCKET", &d.socket)
            .env("PATH", &path)
            .env("PYTHONPATH", repo().join("python"))
            .output()
            .unwrap();
        check_output(tag, &out);
    }
    assert_identical(&sink, 1 + SNIPPETS.len());
}

/// As an ordinary user with no `$FFD_SOCKET`: ffd's socket is
/// `$XDG_RUNTIME_DIR/ffd.sock`. Run as root, the snippets run as `nobody`
/// through setpriv, with programs from /usr/bin and the module copied
/// where that user can read it.
#[test]
fn readme_snippets_find_the_socket_as_an_ordinary_user() {
    snippets_as_an_ordinary_user(true);
}

/// As an ordinary user whose `$XDG_RUNTIME_DIR` is unset (a `su` or `ssh`
/// session without a login manager): ffd's socket is then
/// `$TMPDIR/ffd-UID/ffd.sock` (`/tmp` without `$TMPDIR`), and every
/// snippet must find it there.
#[test]
fn readme_snippets_find_the_socket_with_xdg_runtime_dir_unset() {
    snippets_as_an_ordinary_user(false);
}

/// The snippets as `nobody` (as root) or as this user: with
/// `$XDG_RUNTIME_DIR` the test's dir (`xdg`), or unset, with `$TMPDIR` the
/// test's `tmp` (where `TMPDIR/ffd-UID/ffd.sock` leads to the socket).
fn snippets_as_an_ordinary_user(xdg: bool) {
    let sink = Sink::start();
    let root = is_root();
    // The test's temp dir is the user's runtime dir: the socket is DIR/ffd.sock.
    let d = Daemon::start(FAST);
    let base = format!("http://{}", sink.addr);
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        // The socket is that user's own, as a user service's would be.
        std::os::unix::fs::chown(&d.socket, Some(65534), Some(65534)).unwrap();
    }
    // The module and ffclient where any user can read them.
    let lib = d.dir.join("pylib");
    copy_dir(&repo().join("python/ffd"), &lib.join("ffd"));
    let bindir = d.dir.join("bin");
    std::fs::create_dir_all(&bindir).unwrap();
    std::fs::copy(bin("ffclient"), bindir.join("ffclient")).unwrap();
    open_to_all(&[&lib, &bindir]);
    let uid = if root {
        65534
    } else {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    };
    let tmp = d.dir.join("tmp");
    if !xdg {
        // Where ffd run by that user without $XDG_RUNTIME_DIR listens.
        let own = tmp.join(format!("ffd-{uid}"));
        std::fs::create_dir_all(&own).unwrap();
        std::os::unix::fs::symlink(&d.socket, own.join("ffd.sock")).unwrap();
        open_to_all(&[&tmp]);
    }

    for (tag, prog, flag) in SNIPPETS {
        let code = readme_block(tag).replace("http://127.0.0.1:8080", &base);
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &format!("/usr/bin/{prog}"),
            ]);
            c
        } else {
            Command::new(prog)
        };
        cmd.args([flag, &code])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bindir.display()))
            .env("HOME", "/tmp")
            .env("PYTHONPATH", &lib)
            .current_dir("/");
        if xdg {
            cmd.env("XDG_RUNTIME_DIR", &d.dir);
        } else {
            cmd.env("TMPDIR", &tmp);
        }
        let out = cmd
            .output()
            .expect("setpriv (util-linux), python3, socat, nc");
        check_output(tag, &out);
    }
    assert_identical(&sink, SNIPPETS.len());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if e.file_type().unwrap().is_file() && !name.to_string_lossy().ends_with(".pyc") {
            std::fs::copy(e.path(), to.join(name)).unwrap();
        }
    }
}

/// Makes `dirs` and everything in them readable and searchable by all.
fn open_to_all(dirs: &[&Path]) {
    for dir in dirs {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            let meta = std::fs::metadata(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            if meta.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
        }
    }
}

/// The README's first try: its receiver (a POST-accepting server on a free
/// port), its ffclient line, and `ffclient status` saying "delivered"; and
/// against a receiver that answers POST with 501 (python3 -m http.server),
/// `ffclient status` says "retrying: HTTP 501 Not Implemented".
#[test]
fn first_try_receiver_prints_the_post_and_status_says_how_it_went() {
    let d = Daemon::start(FAST);
    let sock = d.socket.to_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = readme_block("receiver").replace("8080", &port.to_string());
    let mut rx = KillOnDrop(
        Command::new("bash")
            .args(["-c", &receiver])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let rx_out = rx.0.stdout.take().unwrap();
    let mut lines = BufReader::new(rx_out).lines();
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the README's receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let send = readme_block("ffclient").replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let out = Command::new("bash")
        .args(["-c", &send])
        .env("FFD_SOCKET", &sock)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin("ffclient").parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    check_output("ffclient", &out);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let printed = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(printed, r#"POST /hook?src=readme {"user":42}"#);
    // It prints before it answers: stop it only once ffd has the answer.
    let status = wait_status(&sock, &id, "delivered");
    assert!(
        status.starts_with("delivered: HTTP 204 No Content after 1 attempt"),
        "{status}"
    );
    // A send without a body goes out as GET: the receiver takes it too.
    let out = Command::new(bin("ffclient"))
        .args([
            "--socket",
            &sock,
            "send",
            &format!("http://127.0.0.1:{port}/ping?src=readme"),
        ])
        .output()
        .unwrap();
    check_output("ffclient send (GET)", &out);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let printed = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(printed, "GET /ping?src=readme ");
    let status = wait_status(&sock, &id, "delivered");
    drop(rx);
    assert!(
        status.starts_with("delivered: HTTP 204 No Content after 1 attempt"),
        "{status}"
    );

    // A receiver that answers 501, as python3 -m http.server does to POST.
    let sink = Sink::with(|_, _| support::Reply::status(501));
    let out = Command::new(bin("ffclient"))
        .args(["--socket", &sock, "send", &sink.url("/hook"), "-d", "x"])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    sink.wait_for(1, T);
    let status = wait_status(&sock, &id, "retrying");
    assert!(
        status.starts_with("retrying: HTTP 501 Not Implemented (attempt "),
        "{status}"
    );
}

/// A child process stopped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ffclient status ID` until its summary (the first line) starts
/// with `prefix`; returns that line.
fn wait_status(sock: &str, id: &str, prefix: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let out = Command::new(bin("ffclient"))
            .args(["--socket", sock, "status", id])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let summary = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if summary.starts_with(prefix) {
            return summary;
        }
        assert!(Instant::now() < deadline, "status stayed {summary:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The README's webhook receiver (Python standard library) verifies what
/// ffd signs: with the receiver's secret among ffd's two (mid-rotation),
/// it answers 204; signed with another secret only, 401, and the request
/// is a dead letter after that one attempt.
#[test]
fn readme_webhook_receiver_verifies_a_signed_delivery() {
    use std::sync::mpsc;
    const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut receiver = Command::new("python3")
        .arg("-c")
        .arg(readme_block("webhook-receiver"))
        .env("WEBHOOK_SECRET", NEW)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let (tx, rx) = mpsc::channel();
    let out = receiver.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(T).expect("the receiver starts");
    let port = first.trim_start_matches("listening on ").to_string();
    let url = format!("http://127.0.0.1:{port}/hook");
    let d = Daemon::start(&format!(
        "{FAST}\n[destinations.rotating]\nurl = \"{url}\"\nsigning_secrets = [\"{OLD}\", \"{NEW}\"]\n\
         [destinations.stale]\nurl = \"{url}\"\nsigning_secrets = [\"{OLD}\"]\n"
    ));
    d.client()
        .send(
            &Request::dest("POST", "rotating", "")
                .json(r#"{"user":42}"#)
                .id("readme-1"),
        )
        .unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), "verified readme-1");
    d.client()
        .send(
            &Request::dest("POST", "stale", "")
                .json(r#"{"user":43}"#)
                .id("readme-2"),
        )
        .unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), "refused readme-2");
    d.wait_stats("one delivered, one dead", T, |s| {
        s["delivered"] == 1 && s["dead"] == 1
    });
    let _ = receiver.kill();
    let _ = receiver.wait();
}

/// The fallback socket without `$XDG_RUNTIME_DIR` is said where a user
/// looks: `ffd --help`, `ffclient --help` and the README.
#[test]
fn the_temp_dir_socket_fallback_is_documented() {
    for b in ["ffd", "ffclient"] {
        let out = Command::new(bin(b)).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("/tmp/ffd-UID/ffd.sock"), "{b} --help: {text}");
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains("`/tmp/ffd-UID/ffd.sock` when `$XDG_RUNTIME_DIR` is unset"));
}

/// docs/configuration.md quotes `daemon/ffd.example.toml` whole, so the page
/// names every key.
#[test]
fn the_configuration_page_quotes_the_example_config_whole() {
    let page = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let example = std::fs::read_to_string(repo().join("daemon/ffd.example.toml")).unwrap();
    let start = page
        .find("<!-- example: ffd.example.toml -->\n```toml\n")
        .expect("the page marks the example");
    let body = &page[start..];
    let body = &body[body.find("```toml\n").unwrap() + 8..];
    let body = &body[..body.find("```").unwrap()];
    assert_eq!(
        body, example,
        "docs/configuration.md differs from ffd.example.toml"
    );
}

/// Every relative link of the README and `docs/` names a file that exists.
#[test]
fn the_docs_links_lead_somewhere() {
    for page in doc_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            let file = target.split('#').next().unwrap();
            if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
                continue;
            }
            assert!(
                dir.join(file).exists(),
                "{}: link to {target} leads nowhere",
                page.display()
            );
        }
    }
}
