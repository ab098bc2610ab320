//! `ffclient`: a tiny synchronous client for the ffd relay.
//!
//! Std Unix sockets, no async runtime, one dependency besides the wire types.
//! Two speeds:
//!
//! - [`Client::send`] writes one request and waits for its acknowledgement
//!   (one round trip, tens of microseconds);
//! - [`Client::pipeline`] writes requests without waiting and collects the
//!   acknowledgements as they come and on [`Pipeline::finish`], so a hot
//!   caller pays well under a microsecond a request and still learns of
//!   every rejection.
//!
//! ```no_run
//! use ffclient::{Client, Request};
//! let mut c = Client::connect_default()?;
//! let id = c.send(&Request::post("http://127.0.0.1:8080/hook").json(r#"{"event":"signup"}"#))?;
//! println!("queued as {id}");
//! # Ok::<(), ffclient::Error>(())
//! ```

use ffd_proto::{ErrorCode, Response};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub use ffd_proto;

/// The README's Rust example, compiled by `cargo test` so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;

/// The Rust example of docs/languages.md, compiled too.
#[cfg(doctest)]
#[doc = include_str!("../../docs/languages.md")]
struct LanguagesExample;

/// Why a call failed.
#[derive(Debug)]
pub enum Error {
    /// No ffd answers on the socket (not running, wrong path, no permission).
    Unreachable {
        /// The socket path tried.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The connection broke while talking to ffd.
    Io(io::Error),
    /// ffd refused the request; nothing was accepted.
    Rejected {
        /// The stable code (`None` if this client does not know it).
        code: Option<ErrorCode>,
        /// The code as sent by ffd.
        code_str: String,
        /// ffd's explanation.
        message: String,
    },
    /// ffd answered something this client does not understand.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { path, source } => {
                write!(f, "cannot reach ffd at {}: {source}", path.display())
            }
            Error::Io(e) => write!(f, "connection to ffd failed: {e}"),
            Error::Rejected {
                code_str, message, ..
            } => write!(f, "rejected ({code_str}): {message}"),
            Error::Protocol(m) => write!(f, "unexpected answer from ffd: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unreachable { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// The socket path: `$FFD_SOCKET`, else `/run/ffd/ffd.sock` as root, else
/// your user's socket when it exists (`$XDG_RUNTIME_DIR/ffd.sock`, or
/// `/tmp/ffd-UID/ffd.sock` when `$XDG_RUNTIME_DIR` is unset: where a
/// user's ffd listens), else `/run/ffd/ffd.sock` when it exists (the system
/// service, for users in group `ffd`), else your user's socket: the
/// daemon's rule, so both find each other without flags.
pub fn default_socket() -> PathBuf {
    default_socket_choice().0
}

/// [`default_socket`] and how it was chosen, in words for an error message
/// (e.g. "from $FFD_SOCKET").
pub fn default_socket_choice() -> (PathBuf, &'static str) {
    if let Some(p) = std::env::var_os("FFD_SOCKET").filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), "from $FFD_SOCKET");
    }
    // /proc/self is owned by the effective uid: no libc needed to ask.
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let system = PathBuf::from("/run/ffd/ffd.sock");
    if uid == Some(0) {
        return (
            system,
            "the system socket, as root ($FFD_SOCKET is not set)",
        );
    }
    let (user, xdg) = match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => (Path::new(&dir).join("ffd.sock"), true),
        // As ffd does without $XDG_RUNTIME_DIR.
        None => (
            std::env::temp_dir()
                .join(format!("ffd-{}", uid.unwrap_or(0)))
                .join("ffd.sock"),
            false,
        ),
    };
    if user.exists() {
        return (
            user,
            if xdg {
                "your user's socket in $XDG_RUNTIME_DIR"
            } else {
                "your user's socket in the temp dir ($XDG_RUNTIME_DIR is not set)"
            },
        );
    }
    if system.exists() {
        return (
            system,
            if xdg {
                "the system socket: there is no ffd.sock in $XDG_RUNTIME_DIR"
            } else {
                "the system socket: there is no user socket in the temp dir ($XDG_RUNTIME_DIR is not set)"
            },
        );
    }
    (
        user,
        if xdg {
            "your user's socket in $XDG_RUNTIME_DIR (no system socket either)"
        } else {
            "your user's socket in the temp dir, as $XDG_RUNTIME_DIR is not set (no system socket either)"
        },
    )
}

/// Whether the group of the socket at `path` (or, when it cannot be seen,
/// of its directory) is `ffd`: the system service's, whose members may use
/// it. Read from `/etc/group`, without libc.
pub fn socket_group_is_ffd(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(path)
        .or_else(|_| std::fs::metadata(path.parent().unwrap_or(Path::new("/"))))
        .map(|m| m.gid());
    let Ok(gid) = gid else {
        return false;
    };
    std::fs::read_to_string("/etc/group").is_ok_and(|groups| {
        groups.lines().any(|l| {
            let mut f = l.split(':');
            f.next() == Some("ffd") && f.nth(1).and_then(|g| g.parse::<u32>().ok()) == Some(gid)
        })
    })
}

/// One request to relay, built like a curl command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    fields: Map<String, Value>,
    headers: Vec<Value>,
    /// JSON body text, spliced into the line as is (on one line).
    json: Option<String>,
}

impl Request {
    /// A request with an explicit method.
    pub fn new(method: &str, url: &str) -> Request {
        let mut r = Request::default();
        r.fields.insert("method".into(), method.into());
        r.fields.insert("url".into(), url.into());
        r
    }

    /// A `GET`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A `POST`.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// A request to a destination named in ffd's config.
    pub fn dest(method: &str, name: &str, path: &str) -> Request {
        let mut r = Request::default();
        r.fields.insert("method".into(), method.into());
        r.fields.insert("dest".into(), name.into());
        r.fields.insert("path".into(), path.into());
        r
    }

    /// Adds a header (repeats are kept).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers
            .push(Value::Array(vec![name.into(), value.into()]));
        self
    }

    /// Sets the body: sent as text when it is UTF-8, else as base64.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.json = None;
        match String::from_utf8(body.into()) {
            Ok(text) => {
                self.fields.remove("body_base64");
                self.fields.insert("body".into(), text.into());
            }
            Err(e) => {
                self.fields.remove("body");
                self.fields
                    .insert("body_base64".into(), base64_encode(e.as_bytes()).into());
            }
        }
        self
    }

    /// Sets a JSON body from JSON text (sent verbatim; ffd adds
    /// `content-type: application/json` unless a header sets it).
    /// Invalid JSON text is refused by ffd with `bad_json`.
    pub fn json(mut self, json_text: &str) -> Request {
        self.fields.remove("body");
        self.fields.remove("body_base64");
        self.json = Some(if json_text.contains(['\n', '\r']) {
            // A line may not hold a newline: re-serialise valid JSON compactly;
            // invalid text stays invalid (ffd answers `bad_json`), minus newlines.
            match serde_json::from_str::<Value>(json_text) {
                Ok(v) => v.to_string(),
                Err(_) => json_text.replace(['\n', '\r'], " "),
            }
        } else {
            json_text.to_string()
        });
        self
    }

    /// The id (idempotency key); ffd makes one when none is set.
    pub fn id(mut self, id: &str) -> Request {
        self.fields.insert("id".into(), id.into());
        self
    }

    /// Per-attempt timeout.
    pub fn timeout_ms(mut self, ms: u64) -> Request {
        self.fields.insert("timeout_ms".into(), ms.into());
        self
    }

    /// Attempts before giving up.
    pub fn max_attempts(mut self, n: u32) -> Request {
        self.fields.insert("max_attempts".into(), n.into());
        self
    }

    /// Give up this long after acceptance.
    pub fn ttl_ms(mut self, ms: u64) -> Request {
        self.fields.insert("ttl_ms".into(), ms.into());
        self
    }

    /// Do not deliver before this long after acceptance.
    pub fn delay_ms(mut self, ms: u64) -> Request {
        self.fields.insert("delay_ms".into(), ms.into());
        self
    }

    /// The request as one protocol line, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut m = self.fields.clone();
        if !self.headers.is_empty() {
            m.insert("headers".into(), Value::Array(self.headers.clone()));
        }
        let mut s = Value::Object(m).to_string();
        if let Some(json) = &self.json {
            s.pop(); // the closing brace
            if s.len() > 1 {
                s.push(',');
            }
            s.push_str("\"json\":");
            s.push_str(json);
            s.push('}');
        }
        s.push('\n');
        s
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A connection to ffd.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: Vec<u8>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Unreachable {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
        Ok(Client {
            writer: stream,
            reader,
            line: Vec::with_capacity(256),
        })
    }

    /// Connects to [`default_socket`].
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(default_socket())
    }

    /// Sends one request and waits for the acknowledgement; returns its id.
    pub fn send(&mut self, req: &Request) -> Result<String, Error> {
        let resp = self.roundtrip(req.to_line().as_bytes())?;
        resp.id()
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol("acknowledgement without an id".into()))
    }

    /// Sends one raw protocol line (without `\n`) and returns the answer;
    /// an `ok:false` answer is an [`Error::Rejected`].
    pub fn send_line(&mut self, line: &str) -> Result<Map<String, Value>, Error> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.contains('\n') {
            return Err(Error::Protocol(
                "a request line must not contain a newline".into(),
            ));
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match self.roundtrip(&buf)? {
            Response::Ok(m) => Ok(m),
            Response::Err { .. } => unreachable!("roundtrip maps errors"),
        }
    }

    /// Starts a `tail` (`filter`: the op's fields, e.g.
    /// `{"events":["dead"]}`) and returns the event lines as they come,
    /// each a JSON object, until ffd closes the connection.
    pub fn tail(
        mut self,
        filter: Map<String, Value>,
    ) -> Result<impl Iterator<Item = Result<Value, Error>>, Error> {
        let mut op = filter;
        op.insert("op".into(), Value::from("tail"));
        self.send_line(&Value::Object(op).to_string())?;
        let mut reader = self.reader;
        Ok(std::iter::from_fn(move || {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => None,
                Ok(_) => {
                    Some(serde_json::from_str(&line).map_err(|e| Error::Protocol(e.to_string())))
                }
                Err(e) => Some(Err(Error::Io(e))),
            }
        }))
    }

    fn roundtrip(&mut self, line: &[u8]) -> Result<Response, Error> {
        self.writer.write_all(line)?;
        let resp = self.read_response()?;
        match resp {
            Response::Err {
                code,
                code_str,
                message,
            } => Err(Error::Rejected {
                code,
                code_str,
                message,
            }),
            ok => Ok(ok),
        }
    }

    fn read_response(&mut self) -> Result<Response, Error> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "ffd closed the connection",
            )));
        }
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        Response::parse(line).map_err(|e| Error::Protocol(e.message))
    }

    fn op(&mut self, line: &str, key: &str) -> Result<Value, Error> {
        let mut m = self.send_line(line)?;
        m.remove(key)
            .ok_or_else(|| Error::Protocol(format!("answer has no `{key}`")))
    }

    /// `ping`: version, protocol and pid of the daemon.
    pub fn ping(&mut self) -> Result<Value, Error> {
        self.op(r#"{"op":"ping"}"#, "pong")
    }

    /// `stats`: counters, queue depth, per-host state.
    pub fn stats(&mut self) -> Result<Value, Error> {
        self.op(r#"{"op":"stats"}"#, "stats")
    }

    /// `status` of one id.
    pub fn status(&mut self, id: &str) -> Result<Value, Error> {
        let line = serde_json::json!({"op": "status", "id": id}).to_string();
        self.op(&line, "status")
    }

    /// Dead letters, oldest first.
    pub fn dead(&mut self, limit: Option<usize>) -> Result<Value, Error> {
        let mut m = Map::new();
        m.insert("op".into(), "dead".into());
        if let Some(l) = limit {
            m.insert("limit".into(), l.into());
        }
        self.op(&Value::Object(m).to_string(), "dead")
    }

    /// `cancel` of one id (an admin may write `uid:id`): how many requests
    /// it ended or stopped from retrying (0 for one already finished).
    pub fn cancel(&mut self, id: &str) -> Result<u64, Error> {
        let line = serde_json::json!({"op": "cancel", "id": id}).to_string();
        Ok(self.op(&line, "cancelled")?.as_u64().unwrap_or(0))
    }

    /// `cancel` of every pending request of yours (an admin's: everyone's),
    /// only those to `host` (as `status` shows it) or to the destination
    /// `dest` when given: how many it ended or stopped from retrying.
    pub fn cancel_all(&mut self, host: Option<&str>, dest: Option<&str>) -> Result<u64, Error> {
        let mut m = Map::new();
        m.insert("op".into(), "cancel".into());
        m.insert("all".into(), true.into());
        if let Some(h) = host {
            m.insert("host".into(), h.into());
        }
        if let Some(d) = dest {
            m.insert("dest".into(), d.into());
        }
        Ok(self
            .op(&Value::Object(m).to_string(), "cancelled")?
            .as_u64()
            .unwrap_or(0))
    }

    /// Starts pipelined sending on this connection.
    pub fn pipeline(&mut self) -> Pipeline<'_> {
        Pipeline {
            client: self,
            buf: Vec::with_capacity(64 * 1024),
            sent: 0,
            answered: 0,
            ids: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

/// Requests written without waiting; answers are collected as they arrive.
pub struct Pipeline<'a> {
    client: &'a mut Client,
    buf: Vec<u8>,
    sent: usize,
    answered: usize,
    ids: Vec<String>,
    rejected: Vec<Rejection>,
}

/// A request of a pipeline that ffd refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Position of the request in the pipeline (0-based).
    pub index: usize,
    /// The stable code, if known to this client.
    pub code: Option<ErrorCode>,
    /// The code as sent.
    pub code_str: String,
    /// ffd's explanation.
    pub message: String,
}

/// What a finished pipeline came to.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Ids of the accepted requests, in order.
    pub ids: Vec<String>,
    /// Refused requests, in order.
    pub rejected: Vec<Rejection>,
}

/// Answers outstanding before the pipeline stops writing to read some: small
/// enough that they fit in the socket buffer (answers are at most a few
/// hundred bytes; ffd cuts quoted values short), so neither side can block
/// the other forever.
const WINDOW: usize = 256;
/// Bytes buffered before a write.
const WRITE_CHUNK: usize = 64 * 1024;

impl Pipeline<'_> {
    /// Queues one request; writes when the buffer is full.
    pub fn send(&mut self, req: &Request) -> Result<(), Error> {
        self.send_line(&req.to_line())
    }

    /// Queues one raw protocol line (a `\n` is added if missing). A line
    /// holding a newline inside would be two requests to ffd and put every
    /// later answer out of step, so it is refused here.
    pub fn send_line(&mut self, line: &str) -> Result<(), Error> {
        let body = line.strip_suffix('\n').unwrap_or(line);
        if body.contains('\n') {
            return Err(Error::Protocol(
                "a request line must not contain a newline".into(),
            ));
        }
        self.buf.extend_from_slice(body.as_bytes());
        self.buf.push(b'\n');
        self.sent += 1;
        if self.buf.len() >= WRITE_CHUNK {
            self.write_out()?;
        }
        if self.sent - self.answered >= WINDOW {
            self.write_out()?;
            while self.sent - self.answered > WINDOW / 2 {
                self.read_one()?;
            }
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.client.writer.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn read_one(&mut self) -> Result<(), Error> {
        let index = self.answered;
        match self.client.read_response()? {
            Response::Ok(m) => {
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    self.ids.push(id.to_string());
                }
            }
            Response::Err {
                code,
                code_str,
                message,
            } => self.rejected.push(Rejection {
                index,
                code,
                code_str,
                message,
            }),
        }
        self.answered += 1;
        Ok(())
    }

    /// Writes what is buffered and waits for every answer.
    pub fn finish(mut self) -> Result<Report, Error> {
        self.write_out()?;
        while self.answered < self.sent {
            self.read_one()?;
        }
        Ok(Report {
            ids: std::mem::take(&mut self.ids),
            rejected: std::mem::take(&mut self.rejected),
        })
    }
}

impl Drop for Pipeline<'_> {
    /// A pipeline dropped without `finish` (an early `?`, a panic) still
    /// sends what it buffered and reads its answers, so the connection is
    /// in step for the next call. Errors here have nowhere to go.
    fn drop(&mut self) {
        if self.write_out().is_err() {
            return;
        }
        while self.answered < self.sent {
            if self.read_one().is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn request_line_parses_as_protocol() {
        let line = Request::post("http://h/x")
            .header("X-A", "1")
            .header("X-A", "2")
            .body(vec![0xff, 0x00])
            .id("abc")
            .to_line();
        match ffd_proto::parse_line(line.trim_end().as_bytes()).unwrap() {
            ffd_proto::Line::Send(s) => {
                assert_eq!(s.body, vec![0xff, 0x00]);
                assert_eq!(s.headers.len(), 2);
                assert_eq!(s.id.as_deref(), Some("abc"));
            }
            other => panic!("{other:?}"),
        }
    }
}
