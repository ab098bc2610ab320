//! `ffclient`: hand requests to ffd from a shell, with curl's habits.
//!
//! Arguments are parsed by hand to keep the crate free of dependencies.

use ffclient::{Client, Error, Request};
use std::io::{BufRead, Read};
use std::process::ExitCode;

const USAGE: &str = "\
usage: ffclient [--socket PATH] COMMAND

commands:
  send [METHOD] URL [options]   queue one request; prints its id
      -X, --request METHOD      method (default POST with a body, else GET)
      -H, --header 'Name: value'
      -d, --data DATA           body (@FILE reads a file); sets form content-type
          --data-binary DATA    body sent as is (@FILE reads a file, @- stdin)
          --json DATA           JSON body (@FILE reads a file); sets content-type
          --id ID               idempotency key (default: ffd makes one)
          --timeout MS          per-attempt timeout
          --max-attempts N
          --ttl MS              give up this long after acceptance
          --delay MS            do not deliver before this long
  send -                        NDJSON requests from stdin, pipelined; prints ids
  ping                          check that ffd answers
  stats                         counters, queue depth, hosts
  status ID                     state of one request
  dead [--limit N]              dead letters
  replay ID|--all               send dead letters again
  purge ID|--all                forget dead letters

The socket is --socket, else $FFD_SOCKET, else ffd's default path.

exit codes: 0 ok, 2 usage error, 3 rejected by ffd, 4 ffd unreachable,
5 other error (I/O, unexpected answer)";

const EXIT_USAGE: u8 = 2;
const EXIT_REJECTED: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;
const EXIT_OTHER: u8 = 5;

enum Failure {
    Usage(String),
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
        Err(Failure::Usage(m)) => {
            eprintln!("ffclient: {m}\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
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
    let connect = || -> Result<Client, Error> {
        match &socket {
            Some(p) => Client::connect(p),
            None => Client::connect_default(),
        }
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
            no_more(&args)?;
            print(connect()?.stats()?);
            Ok(ExitCode::SUCCESS)
        }
        "status" => {
            let [id] = args.as_slice() else {
                return Err(Failure::Usage("status takes one ID".into()));
            };
            print(connect()?.status(id)?);
            Ok(ExitCode::SUCCESS)
        }
        "dead" => {
            let limit =
                match args.as_slice() {
                    [] => None,
                    [flag, n] if flag == "--limit" => Some(n.parse().map_err(|_| {
                        Failure::Usage(format!("--limit needs a number, got {n:?}"))
                    })?),
                    _ => return Err(Failure::Usage("dead takes only --limit N".into())),
                };
            print(connect()?.dead(limit)?);
            Ok(ExitCode::SUCCESS)
        }
        "replay" | "purge" => {
            let line = match args.as_slice() {
                [all] if all == "--all" => serde_json::json!({"op": cmd, "all": true}),
                [id] if !id.starts_with('-') => serde_json::json!({"op": cmd, "id": id}),
                _ => return Err(Failure::Usage(format!("{cmd} takes one ID or --all"))),
            };
            let m = connect()?.send_line(&line.to_string())?;
            print(serde_json::Value::Object(m));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    }
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
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| Failure::Usage(format!("{name} needs a value")))
        };
        match a.as_str() {
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
                json = Some(
                    String::from_utf8(d)
                        .map_err(|_| Failure::Usage("--json data is not UTF-8".into()))?,
                );
            }
            "--id" => id = Some(value(&a)?),
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
    let url = match positional.as_slice() {
        [url] => url.clone(),
        [m, url] => {
            if method.is_some() {
                return Err(Failure::Usage(
                    "give the method once (-X or positional)".into(),
                ));
            }
            method = Some(m.clone());
            url.clone()
        }
        [] => return Err(Failure::Usage("send needs a URL".into())),
        _ => return Err(Failure::Usage("send takes [METHOD] URL".into())),
    };
    if body.is_some() && json.is_some() {
        return Err(Failure::Usage(
            "give one of -d/--data-binary and --json".into(),
        ));
    }
    let has_body = body.is_some() || json.is_some();
    let method = method.unwrap_or_else(|| if has_body { "POST" } else { "GET" }.into());
    let mut req = Request::new(&method, &url);
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
            "ffclient: {} of {count} requests rejected",
            report.rejected.len()
        );
        Ok(ExitCode::from(EXIT_REJECTED))
    }
}
