//! `ffclient`: hand requests to ffd from a shell, with curl's habits.
//!
//! Arguments are parsed by hand to keep the crate free of dependencies.

mod text;

use ffclient::{Client, Error, Request};
use std::io::{BufRead, Read};
use std::process::ExitCode;
use text::{event_line, now_ms, stats_text, status_text};

/// `ffclient --help`; also the source of the man page ffclient(1) and the
/// shell completions (daemon/examples/package-assets.rs).
const USAGE: &str = include_str!("usage.txt");

const EXIT_USAGE: u8 = 2;
const EXIT_REJECTED: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;
const EXIT_OTHER: u8 = 5;

enum Failure {
    /// `--help` among the arguments: print the usage, exit 0.
    Help,
    Usage(String),
    /// ffd did not answer on the socket: the message says where and why.
    Unreachable(String),
    Client(Error),
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(code) => code,
        Err(Failure::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(m)) => {
            // One line: the mistake, and where the whole usage is.
            eprintln!("ffclient: {m} (usage: ffclient --help)");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("ffclient: {m}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(Failure::Client(e)) => {
            eprintln!("ffclient: {e}");
            ExitCode::from(match e {
                Error::Rejected { .. } => EXIT_REJECTED,
                Error::Unreachable { .. } => EXIT_UNREACHABLE,
                _ => EXIT_OTHER,
            })
        }
        Err(Failure::Other(m)) => {
            eprintln!("ffclient: {m}");
            ExitCode::from(EXIT_OTHER)
        }
    }
}

fn run(mut args: Vec<String>) -> Result<ExitCode, Failure> {
    let mut socket = None;
    while let Some(first) = args.first() {
        match first.as_str() {
            "--socket" | "-s" => {
                args.remove(0);
                if args.is_empty() {
                    return Err(Failure::Usage("--socket needs a path".into()));
                }
                socket = Some(args.remove(0));
            }
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            "-V" | "--version" => {
                println!("ffclient {}", env!("CARGO_PKG_VERSION"));
                return Ok(ExitCode::SUCCESS);
            }
            _ => break,
        }
    }
    if args.is_empty() {
        return Err(Failure::Usage("no command given".into()));
    }
    let cmd = args.remove(0);
    if args.iter().any(|a| a == "--help" || a == "-h") && cmd != "send" {
        return Err(Failure::Help);
    }
    let connect = || -> Result<Client, Failure> {
        let (path, how) = match &socket {
            Some(p) => (std::path::PathBuf::from(p), "given with --socket"),
            None => ffclient::default_socket_choice(),
        };
        Client::connect(&path).map_err(|e| match e {
            Error::Unreachable { path, source } => {
                Failure::Unreachable(unreachable_message(&path, how, &source))
            }
            e => Failure::Client(e),
        })
    };
    let print = |v: serde_json::Value| {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    };
    match cmd.as_str() {
        "send" if args.first().map(String::as_str) == Some("-") => send_stdin(connect()?),
        "send" => {
            let req = parse_send(args)?;
            let id = connect()?.send(&req)?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        "ping" => {
            no_more(&args)?;
            print(connect()?.ping()?);
            Ok(ExitCode::SUCCESS)
        }
        "stats" => {
            let json = json_flag(&mut args);
            no_more(&args)?;
            let st = connect()?.stats()?;
            if json {
                print(st);
            } else {
                print!("{}", stats_text(&st));
            }
            Ok(ExitCode::SUCCESS)
        }
        "status" => {
            let json = json_flag(&mut args);
            let [id] = args.as_slice() else {
                return Err(Failure::Usage("status takes one ID".into()));
            };
            let st = connect()?.status(id)?;
            if json {
                print(st);
            } else {
                print!("{}", status_text(&st));
            }
            Ok(ExitCode::SUCCESS)
        }
        "dead" => {
            let json = json_flag(&mut args);
            let limit =
                match args.as_slice() {
                    [] => None,
                    [flag, n] if flag == "--limit" => Some(n.parse().map_err(|_| {
                        Failure::Usage(format!("--limit needs a number, got {n:?}"))
                    })?),
                    _ => return Err(Failure::Usage("dead takes only --limit N".into())),
                };
            let list = connect()?.dead(limit)?;
            if json {
                print(list);
            } else {
                print!("{}", text::dead_text(&list));
            }
            Ok(ExitCode::SUCCESS)
        }
        "replay" | "purge" => {
            let json = json_flag(&mut args);
            let line = match args.as_slice() {
                [all] if all == "--all" => serde_json::json!({"op": cmd, "all": true}),
                [id] if !id.starts_with('-') => serde_json::json!({"op": cmd, "id": id}),
                _ => return Err(Failure::Usage(format!("{cmd} takes one ID or --all"))),
            };
            let m = connect()?.send_line(&line.to_string())?;
            if json {
                print(serde_json::Value::Object(m));
            } else {
                let (key, verb) = if cmd == "replay" {
                    ("replayed", "replayed (queued again)")
                } else {
                    ("purged", "purged")
                };
                let n = m.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
                println!("{verb}: {n} {}", plural(n, "dead letter", "dead letters"));
            }
            Ok(ExitCode::SUCCESS)
        }
        "cancel" => {
            let json = json_flag(&mut args);
            let sel = parse_cancel(&args)?;
            let mut client = connect()?;
            let n = match sel {
                Cancel::Id(id) => client.cancel(id)?,
                Cancel::All { host, dest } => client.cancel_all(host, dest)?,
            };
            if json {
                print(serde_json::json!({"ok": true, "cancelled": n}));
            } else {
                println!("cancelled {n} {}", plural(n, "request", "requests"));
            }
            Ok(ExitCode::SUCCESS)
        }
        "tail" => tail(connect()?, args),
        "top" => {
            let once = match args.as_slice() {
                [] => false,
                [o] if o == "--once" => true,
                _ => return Err(Failure::Usage("top takes only --once".into())),
            };
            // Redrawing every second is for a screen; a file or a pipe
            // gets one table, without escape codes.
            use std::io::IsTerminal;
            top(&connect, once || !std::io::stdout().is_terminal())
        }
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    }
}

/// What `ffclient cancel` names.
enum Cancel<'a> {
    Id(&'a str),
    All {
        host: Option<&'a str>,
        dest: Option<&'a str>,
    },
}

/// `cancel ID | --all [--host H | --dest D]`.
fn parse_cancel(args: &[String]) -> Result<Cancel<'_>, Failure> {
    let usage = || Failure::Usage("cancel takes one ID, or --all [--host H | --dest D]".into());
    match args {
        [id] if !id.starts_with('-') => return Ok(Cancel::Id(id)),
        [] => return Err(usage()),
        _ => {}
    }
    let (mut all, mut host, mut dest) = (false, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--all" => all = true,
            "--host" => host = Some(it.next().ok_or_else(usage)?.as_str()),
            "--dest" => dest = Some(it.next().ok_or_else(usage)?.as_str()),
            _ => return Err(usage()),
        }
    }
    if !all || (host.is_some() && dest.is_some()) {
        return Err(usage());
    }
    Ok(Cancel::All { host, dest })
}

/// `one` or `many`, as `n` says.
fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `ffclient tail`: events as readable lines (or raw with --json).
fn tail(client: Client, args: Vec<String>) -> Result<ExitCode, Failure> {
    let mut filter = serde_json::Map::new();
    let mut events = Vec::new();
    let mut json = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))
        };
        match a.as_str() {
            "--host" => {
                filter.insert("host".into(), value("--host")?.into());
            }
            "--dest" => {
                filter.insert("dest".into(), value("--dest")?.into());
            }
            "--event" => events.push(serde_json::Value::from(value("--event")?)),
            "--json" => json = true,
            other => return Err(Failure::Usage(format!("tail: unknown option {other:?}"))),
        }
    }
    if !events.is_empty() {
        filter.insert("events".into(), events.into());
    }
    let stdout = std::io::stdout();
    for ev in client.tail(filter)? {
        let ev = ev?;
        let line = if json {
            ev.to_string()
        } else {
            event_line(&ev)
        };
        use std::io::Write;
        if writeln!(stdout.lock(), "{line}").is_err() {
            break; // the reader went away (| head)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ffclient top`: a row per host from `stats`, every second.
fn top(connect: &dyn Fn() -> Result<Client, Failure>, once: bool) -> Result<ExitCode, Failure> {
    let mut client = connect()?;
    loop {
        let st = client.stats()?;
        print!("{}", text::top_text(&st, now_ms().unwrap_or(0), !once));
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
/// Why the socket did not answer, which path was tried and how it was chosen,
/// and what to do next.
fn unreachable_message(path: &std::path::Path, how: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let hint = match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::NotADirectory => {
            "ffd seems not to be running (nothing listens there): start it with `ffd`, \
             or give its socket with --socket PATH or $FFD_SOCKET"
        }
        // Joining group ffd helps only where the socket is the system
        // service's: a root-run foreground ffd serves root alone.
        ErrorKind::PermissionDenied if ffclient::socket_group_is_ffd(path) => {
            "ffd may be running, but this user may not use its socket \
             (the system socket is for group ffd: sudo usermod -aG ffd \"$USER\", then log in again)"
        }
        ErrorKind::PermissionDenied => {
            "ffd may be running, but this user may not use its socket: it belongs to \
             another user (an ffd run as root in the foreground serves root only). \
             Run your own ffd as this user, or use the system service (group ffd)"
        }
        _ => "ffd may not be running",
    };
    format!(
        "cannot reach ffd at {} ({how}): {e}\nffclient: {hint}",
        path.display()
    )
}

/// Takes `--json` out of the arguments; whether it was there.
fn json_flag(args: &mut Vec<String>) -> bool {
    let before = args.len();
    args.retain(|a| a != "--json");
    args.len() != before
}

fn no_more(args: &[String]) -> Result<(), Failure> {
    match args.first() {
        None => Ok(()),
        Some(a) => Err(Failure::Usage(format!("unexpected argument {a:?}"))),
    }
}

/// Reads `@file` (or `@-` for stdin), else the argument itself.
fn data_arg(v: &str, strip_newlines: bool) -> Result<Vec<u8>, Failure> {
    let mut data = match v.strip_prefix('@') {
        Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| Failure::Other(format!("cannot read stdin: {e}")))?;
            b
        }
        Some(path) => {
            std::fs::read(path).map_err(|e| Failure::Other(format!("cannot read {path}: {e}")))?
        }
        None => return Ok(v.as_bytes().to_vec()),
    };
    if strip_newlines {
        // As curl -d does with files.
        data.retain(|b| *b != b'\n' && *b != b'\r');
    }
    Ok(data)
}

fn parse_send(args: Vec<String>) -> Result<Request, Failure> {
    let mut positional = Vec::new();
    let mut method: Option<String> = None;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut body: Option<Vec<u8>> = None;
    let mut json: Option<String> = None;
    let mut form = false;
    let mut opts: Vec<(&str, u64)> = Vec::new();
    let mut id = None;
    let mut dest: Option<String> = None;
    let mut path: Option<String> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| Failure::Usage(format!("{name} needs a value")))
        };
        match a.as_str() {
            "-h" | "--help" => return Err(Failure::Help),
            "-X" | "--request" => method = Some(value(&a)?),
            "-H" | "--header" => {
                let h = value(&a)?;
                let (k, v) = h.split_once(':').ok_or_else(|| {
                    Failure::Usage(format!("header must be 'Name: value', got {h:?}"))
                })?;
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            "-d" | "--data" => {
                body = Some(data_arg(&value(&a)?, true)?);
                form = true;
            }
            "--data-binary" => body = Some(data_arg(&value(&a)?, false)?),
            "--json" => {
                let d = data_arg(&value(&a)?, false)?;
                let text = String::from_utf8(d)
                    .map_err(|_| Failure::Usage("--json data is not UTF-8".into()))?;
                check_json(&text)?;
                json = Some(text);
            }
            "--id" => id = Some(value(&a)?),
            "--dest" => dest = Some(value(&a)?),
            "--path" => path = Some(value(&a)?),
            "--timeout" | "--max-attempts" | "--ttl" | "--delay" => {
                let v = value(&a)?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| Failure::Usage(format!("{a} needs a number, got {v:?}")))?;
                let key = match a.as_str() {
                    "--timeout" => "timeout_ms",
                    "--max-attempts" => "max_attempts",
                    "--ttl" => "ttl_ms",
                    _ => "delay_ms",
                };
                opts.push((key, n));
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(Failure::Usage(format!("unknown option {s:?}")))
            }
            _ => positional.push(a),
        }
    }
    if dest.is_none() && path.is_some() {
        return Err(Failure::Usage("--path goes with --dest NAME".into()));
    }
    if let Some(m) = &method {
        method = Some(standard_method(m));
    }
    if let Some(name) = dest {
        let m = match positional.as_slice() {
            [] => None,
            [m] if method.is_none() => Some(standard_method(m)),
            _ => {
                return Err(Failure::Usage(
                    "with --dest, send takes no URL: [METHOD] --dest NAME [--path P]".into(),
                ))
            }
        };
        return finish_send(
            Target::Dest(name, path.unwrap_or_default()),
            method.or(m),
            Parts {
                headers,
                body,
                json,
                form,
                opts,
                id,
            },
        );
    }
    let url = match positional.as_slice() {
        [m] if is_standard_method(m) => {
            return Err(Failure::Usage(format!(
                "send {m}: the URL is missing (send [METHOD] URL, e.g. send {} http://127.0.0.1:8080/hook)",
                m.to_ascii_uppercase()
            )))
        }
        [url] => url.clone(),
        [m, url] => {
            if method.is_some() {
                return Err(Failure::Usage(
                    "give the method once (-X or positional)".into(),
                ));
            }
            method = Some(standard_method(m));
            url.clone()
        }
        [] => return Err(Failure::Usage("send needs a URL".into())),
        _ => return Err(Failure::Usage("send takes [METHOD] URL".into())),
    };
    if !url.contains("://") {
        // curl would guess http://; a relay that queues for hours had better not guess.
        return Err(Failure::Usage(format!(
            "URL {url:?} has no scheme: add http:// (or https://), e.g. http://{url}"
        )));
    }
    finish_send(
        Target::Url(url),
        method,
        Parts {
            headers,
            body,
            json,
            form,
            opts,
            id,
        },
    )
}

/// Where `send` goes.
enum Target {
    Url(String),
    /// A destination's name and the path appended to its URL.
    Dest(String, String),
}

/// What `send` parsed besides its target and method.
struct Parts {
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    json: Option<String>,
    form: bool,
    opts: Vec<(&'static str, u64)>,
    id: Option<String>,
}

/// The standard methods, which ffclient takes in any case.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn is_standard_method(m: &str) -> bool {
    STANDARD_METHODS.iter().any(|s| s.eq_ignore_ascii_case(m))
}

/// A standard method in upper case (`post` is surely meant as POST: HTTP
/// methods are case-sensitive, and no server knows `post`); any other
/// method as given.
fn standard_method(m: &str) -> String {
    if is_standard_method(m) {
        m.to_ascii_uppercase()
    } else {
        m.to_string()
    }
}

/// Checks `--json` data here: ffd would name a column of the whole
/// protocol line, not of what the user typed.
fn check_json(text: &str) -> Result<(), Failure> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Usage(format!(
            "--json is not valid JSON: {e} of the --json data"
        ))),
    }
}

fn finish_send(target: Target, method: Option<String>, p: Parts) -> Result<Request, Failure> {
    let Parts {
        headers,
        body,
        json,
        form,
        opts,
        id,
    } = p;
    if body.is_some() && json.is_some() {
        return Err(Failure::Usage(
            "give one of -d/--data-binary and --json".into(),
        ));
    }
    let has_body = body.is_some() || json.is_some();
    let method = method.unwrap_or_else(|| if has_body { "POST" } else { "GET" }.into());
    let mut req = match &target {
        Target::Url(url) => Request::new(&method, url),
        Target::Dest(name, path) => Request::dest(&method, name, path),
    };
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if form && !has("content-type") {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    if json.is_some() && !has("accept") {
        req = req.header("accept", "application/json");
    }
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    if let Some(j) = json {
        req = req.json(&j);
    }
    if let Some(id) = id {
        req = req.id(&id);
    }
    for (key, n) in opts {
        req = match key {
            "timeout_ms" => req.timeout_ms(n),
            "max_attempts" => req.max_attempts(n.min(u32::MAX as u64) as u32),
            "ttl_ms" => req.ttl_ms(n),
            _ => req.delay_ms(n),
        };
    }
    Ok(req)
}

/// `send -`: every stdin line is a protocol line, pipelined on one connection.
fn send_stdin(mut client: Client) -> Result<ExitCode, Failure> {
    let stdin = std::io::stdin();
    let mut pipe = client.pipeline();
    let mut count = 0usize;
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Failure::Other(format!("cannot read stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        pipe.send_line(&line)?;
        count += 1;
    }
    let report = pipe.finish()?;
    // One output line per input line, in order: the id, or the error.
    let mut ids = report.ids.iter();
    let mut rejected = report.rejected.iter().peekable();
    for i in 0..count {
        match rejected.peek() {
            Some(r) if r.index == i => {
                println!("error {} {}", r.code_str, r.message);
                rejected.next();
            }
            _ => println!("{}", ids.next().map(String::as_str).unwrap_or("")),
        }
    }
    if report.rejected.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "ffclient: {} of {count} {} rejected",
            report.rejected.len(),
            plural(count as u64, "request", "requests")
        );
        Ok(ExitCode::from(EXIT_REJECTED))
    }
}
