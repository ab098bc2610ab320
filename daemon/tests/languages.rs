//! The snippets of docs/languages.md for Node, Go, Ruby and PHP (the files
//! under `examples/`), run with their real interpreters against the real
//! `ffd` and a real receiver: as root with `$FFD_SOCKET`, and as an ordinary
//! user who has only `$XDG_RUNTIME_DIR`, or not even that (the
//! `$TMPDIR/ffd-UID` fallback). The page must quote each file as it is.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{Daemon, Sink, FAST, T};

/// (file under examples/, interpreter, requests it sends).
const EXAMPLES: [(&str, &str, usize); 8] = [
    ("node/send.js", "node", 1),
    ("node/batch.js", "node", 3),
    ("go/send/main.go", "go", 1),
    ("go/batch/main.go", "go", 3),
    ("ruby/send.rb", "ruby", 1),
    ("ruby/batch.rb", "ruby", 3),
    ("php/send.php", "php", 1),
    ("php/batch.php", "php", 3),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn the_languages_page_quotes_every_example_as_it_is() {
    let page = std::fs::read_to_string(repo().join("docs/languages.md")).unwrap();
    for (file, _, _) in EXAMPLES {
        let text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
        let marker = format!("<!-- file: examples/{file} -->\n");
        let start = page
            .find(&marker)
            .unwrap_or_else(|| panic!("docs/languages.md does not quote examples/{file}"));
        let rest = &page[start + marker.len()..];
        let body = &rest[rest.find('\n').unwrap() + 1..];
        let body = &body[..body.find("\n```").unwrap() + 1];
        assert_eq!(
            body, text,
            "docs/languages.md quotes examples/{file} differently"
        );
    }
    // And every file under examples/ is one of them.
    let mut stack = vec![repo().join("examples")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(repo().join("examples")).unwrap();
                assert!(
                    EXAMPLES.iter().any(|(f, _, _)| Path::new(f) == rel),
                    "examples/{} is not tested",
                    rel.display()
                );
            }
        }
    }
}

/// The examples with the receiver's address in place of 127.0.0.1:8080,
/// where any user can read them; the Go ones built once (with the real
/// `go`, into the test's cache), the others run from source.
fn prepare(dir: &Path, base: &str) -> Vec<(String, Vec<String>, usize)> {
    let src = dir.join("examples");
    let mut runs = Vec::new();
    for (file, prog, n) in EXAMPLES {
        let text = std::fs::read_to_string(repo().join("examples").join(file))
            .unwrap()
            .replace("http://127.0.0.1:8080", base);
        let path = src.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        let argv = if prog == "go" {
            let exe = path.with_extension("");
            let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache");
            let out = Command::new("go")
                .args(["build", "-o"])
                .arg(&exe)
                .arg(&path)
                .env("GOCACHE", &cache)
                .env("GOPATH", cache.join("path"))
                .env("GOTOOLCHAIN", "local")
                .output()
                .expect("go (Debian package golang-go; .ci/test installs it)");
            assert!(
                out.status.success(),
                "go build {file}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            vec![exe.to_string_lossy().into_owned()]
        } else {
            vec![
                format!("/usr/bin/{prog}"),
                path.to_string_lossy().into_owned(),
            ]
        };
        runs.push((file.to_string(), argv, n));
    }
    open_to_all(&src);
    runs
}

fn open_to_all(dir: &Path) {
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

/// Every request arrived as the snippets wrote it: the README's request,
/// with user 42 once per send snippet and 42, 43, 44 once per batch.
fn assert_arrived(sink: &Sink, runs: &[(String, Vec<String>, usize)]) {
    let n: usize = runs.iter().map(|r| r.2).sum();
    let reqs = sink.wait_for(n, T);
    let mut bodies: Vec<String> = Vec::new();
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook?src=readme");
        assert_eq!(r.header("x-event"), Some("signup"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    bodies.sort();
    let mut want: Vec<String> = Vec::new();
    for (_, _, k) in runs {
        for user in [42, 43, 44].iter().take(*k) {
            want.push(format!(r#"{{"user":{user}}}"#));
        }
    }
    want.sort();
    assert_eq!(bodies, want);
}

fn check(file: &str, out: &std::process::Output, n: usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{file}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<&str> = stdout.lines().collect();
    assert_eq!(ids.len(), n, "{file} prints one id a request: {stdout}");
    assert!(ids.iter().all(|id| id.len() == 26), "{file}: {stdout}");
}

#[test]
fn every_language_sends_the_readme_request_with_ffd_socket() {
    let sink = Sink::start();
    let d = Daemon::start(FAST);
    let runs = prepare(&d.dir, &format!("http://{}", sink.addr));
    for (file, argv, n) in &runs {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .env("FFD_SOCKET", &d.socket)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (.ci/test installs it)", argv[0]));
        check(file, &out, *n);
    }
    assert_arrived(&sink, &runs);
}

#[test]
fn every_language_finds_the_socket_as_an_ordinary_user() {
    as_an_ordinary_user(true);
}

#[test]
fn every_language_finds_the_socket_with_xdg_runtime_dir_unset() {
    as_an_ordinary_user(false);
}

/// As `nobody` (when root) or as this user, with no `$FFD_SOCKET`: with
/// `$XDG_RUNTIME_DIR` the daemon's dir, or unset with `$TMPDIR` leading to
/// `TMPDIR/ffd-UID/ffd.sock`.
fn as_an_ordinary_user(xdg: bool) {
    let sink = Sink::start();
    let root = is_root();
    let d = Daemon::start(FAST);
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        std::os::unix::fs::chown(&d.socket, Some(65534), Some(65534)).unwrap();
    }
    let runs = prepare(&d.dir, &format!("http://{}", sink.addr));
    let user = if root { 65534 } else { uid() };
    let tmp = d.dir.join("tmp");
    if !xdg {
        let own = tmp.join(format!("ffd-{user}"));
        std::fs::create_dir_all(&own).unwrap();
        std::os::unix::fs::symlink(&d.socket, own.join("ffd.sock")).unwrap();
        open_to_all(&tmp);
    }
    for (file, argv, n) in &runs {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.args(argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/tmp")
            .current_dir("/");
        if xdg {
            cmd.env("XDG_RUNTIME_DIR", &d.dir);
        } else {
            cmd.env("TMPDIR", &tmp);
        }
        let out = cmd.output().expect("setpriv (util-linux)");
        check(file, &out, *n);
    }
    assert_arrived(&sink, &runs);
}
