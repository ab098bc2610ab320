//! Parsing and validation of one request line.
//!
//! A line is parsed in two steps: serde turns it into [`RawLine`], a flat bag
//! of every field protocol version 1 knows (`deny_unknown_fields` makes typos
//! surface), then [`validate`] checks the combination and turns it into a
//! [`Line`]. Keeping the checks out of serde keeps the error messages ours.

use crate::error::{ErrorCode, ProtoError};
use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Longest caller-supplied `id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest accepted `timeout_ms` (one hour): a longer attempt is a hung one.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Largest accepted `max_attempts`.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Headers that describe one connection, not the message: a relay that
/// forwarded them would lie to the next hop, so they are refused outright.
/// `content-length` is refused because ffd computes it from the body.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "content-length",
];

/// One parsed and validated line.
// Sends are nearly every line and ops are rare: boxing the big variant would
// cost an allocation per send to save stack space nobody misses.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A request to deliver.
    Send(SendRequest),
    /// A control op.
    Op(ControlOp),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An absolute `http` or `https` URL, parsed once here.
    Url(http::Uri),
    /// A destination named in the daemon's config, plus a path appended to its base URL.
    Dest {
        /// The destination's name.
        name: String,
        /// Path (and query) appended to the destination's URL; may be empty.
        path: String,
    },
}

/// A validated send: everything the daemon needs to deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// The caller's id (idempotency key), if given.
    pub id: Option<String>,
    /// HTTP method, as given (methods are case-sensitive).
    pub method: http::Method,
    /// Where to deliver.
    pub target: Target,
    /// Header names (lower-cased) and values, in order; repeats allowed.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The body bytes (empty when none was given).
    pub body: Vec<u8>,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Attempts before the request is dead.
    pub max_attempts: Option<u32>,
    /// Give up this long after acceptance.
    pub ttl_ms: Option<u64>,
    /// Do not deliver before this long after acceptance.
    pub delay_ms: Option<u64>,
    /// The fields the line gave that shape the HTTP request itself
    /// (`method`, `path`, `headers`, `timeout_ms`, `max_attempts`), by
    /// name, in that order: a batching destination shapes its requests
    /// alone and refuses a send that sets any of them.
    pub shaped: Vec<&'static str>,
    /// The body came from `json`: it is valid JSON (checked here), only
    /// perhaps not compact.
    pub body_is_json: bool,
}

/// A control op (`{"op": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// Liveness check.
    Ping,
    /// Counters and queue state.
    Stats,
    /// State of one request.
    Status {
        /// The request's id.
        id: String,
    },
    /// List dead letters, newest last.
    Dead {
        /// At most this many (default: all kept).
        limit: Option<usize>,
    },
    /// Queue dead letters for delivery again.
    Replay(Selection),
    /// Forget dead letters.
    Purge(Selection),
    /// Stream one line per event until the connection closes.
    Tail(TailFilter),
    /// Stop pending requests: they end `cancelled`.
    Cancel(CancelSelection),
}

/// Which requests a `cancel` stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelSelection {
    /// One request, by id (an admin may write `uid:id`).
    Id(String),
    /// Every pending request the peer may cancel, optionally only those to
    /// one host (as `status` shows it, `scheme://host:port`) or to one
    /// named destination.
    All {
        /// Only requests to this host.
        host: Option<String>,
        /// Only requests to this named destination.
        dest: Option<String>,
    },
}

/// Which events a `tail` streams (all when every field is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailFilter {
    /// Only requests to this host: `host`, `host:port` or `scheme://host:port`.
    pub host: Option<String>,
    /// Only requests to this named destination's host.
    pub dest: Option<String>,
    /// Only these events (see [`TAIL_EVENTS`]).
    pub events: Vec<String>,
}

/// The events `tail` knows.
pub const TAIL_EVENTS: [&str; 10] = [
    "accepted",
    "attempt",
    "retry",
    "delivered",
    "dead",
    "expired",
    "cancelled",
    "host_failing",
    "host_paused",
    "host_recovered",
];

/// Which dead letters a `replay` or `purge` acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One id.
    Id(String),
    /// Every dead letter.
    All,
}

/// Every field protocol version 1 knows, flat; see the module docs.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLine<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<Str<'a>>,
    #[serde(borrow)]
    dest: Option<Str<'a>>,
    #[serde(borrow)]
    path: Option<Str<'a>>,
    #[serde(borrow)]
    method: Option<Str<'a>>,
    #[serde(borrow)]
    headers: Option<Headers<'a>>,
    #[serde(borrow)]
    body: Option<Str<'a>>,
    #[serde(borrow)]
    body_base64: Option<Str<'a>>,
    #[serde(borrow)]
    json: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<Str<'a>>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    ttl_ms: Option<u64>,
    delay_ms: Option<u64>,
    limit: Option<usize>,
    all: Option<bool>,
    host: Option<String>,
    events: Option<Vec<String>>,
}

/// A JSON string borrowed from the line when it has no escapes (the line
/// outlives the parse): most strings of a send are copied once, into
/// what keeps them, not first into a `String` of their own.
struct Str<'a>(Cow<'a, str>);

impl<'a> Str<'a> {
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            // As serde's for `String`: error messages stay the same.
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_string(V)
    }
}

/// Headers given either as an object or as a list of `[name, value]` pairs.
struct Headers<'a>(Vec<(Str<'a>, Str<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Headers<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of header values or a list of [name, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Headers<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Str<'de>, Str<'de>>()? {
                    out.push((k, v));
                }
                Ok(Headers(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Headers<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = s.next_element::<(Str<'de>, Str<'de>)>()? {
                    out.push((k, v));
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
///
/// Pure: no I/O, no clock. Every refusal carries a stable [`ErrorCode`].
pub fn parse_line(line: &[u8]) -> Result<Line, ProtoError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|e| {
        ProtoError::new(
            ErrorCode::BadJson,
            format!("line is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ProtoError::new(ErrorCode::BadJson, "empty line"));
    }
    if !text.trim_start().starts_with('{') {
        return Err(ProtoError::new(
            ErrorCode::BadJson,
            "a line must be one JSON object ({...})",
        ));
    }
    let raw: RawLine = serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        let (code, mut msg) = match e.classify() {
            // serde names neither the field nor the expectation in words,
            // and its column is one of the protocol line, not of what the
            // user typed: say it again, by field (the error path only).
            Category::Data => (ErrorCode::BadRequest, explain(text, &e)),
            _ => (ErrorCode::BadJson, e.to_string()),
        };
        if msg.len() > 300 {
            let mut end = 300;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
            msg.push_str("...");
        }
        ProtoError::new(code, msg)
    })?;
    validate(raw)
}

/// The fields of a send, in the order the README lists them.
const SEND_FIELDS: [&str; 13] = [
    "url",
    "dest",
    "path",
    "method",
    "headers",
    "body",
    "body_base64",
    "json",
    "id",
    "timeout_ms",
    "max_attempts",
    "ttl_ms",
    "delay_ms",
];

/// The fields each control op takes besides `op`.
fn op_fields(op: &str) -> &'static [&'static str] {
    match op {
        "status" => &["id"],
        "dead" => &["limit"],
        "replay" | "purge" => &["id", "all"],
        "tail" => &["host", "dest", "events"],
        "cancel" => &["id", "all", "host", "dest"],
        _ => &[],
    }
}

/// A value as an error message shows it: numbers and booleans as written,
/// strings quoted and cut short, the rest by kind.
fn shown_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => show(s),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// What a field of the protocol expects, as words, if `v` is not it.
fn mismatch(field: &str, v: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value;
    if v.is_null() {
        return None;
    }
    let int_in = |max: u64| v.as_u64().is_none_or(|n| n > max);
    match field {
        "url" | "dest" | "path" | "method" | "body" | "body_base64" | "id" | "host" => {
            (!v.is_string()).then_some("a string")
        }
        "timeout_ms" | "ttl_ms" | "delay_ms" => {
            int_in(u64::MAX).then_some("a non-negative integer")
        }
        "max_attempts" => int_in(u32::MAX as u64).then_some("a non-negative integer"),
        "limit" => int_in(usize::MAX as u64).then_some("a non-negative integer"),
        "all" => (!v.is_boolean()).then_some("true or false"),
        "events" => {
            let ok = v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
            (!ok).then_some("a list of strings")
        }
        "headers" => {
            let pair = |p: &Value| {
                p.as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(Value::is_string))
            };
            let ok = match v {
                Value::Object(m) => m.values().all(Value::is_string),
                Value::Array(a) => a.iter().all(pair),
                _ => false,
            };
            (!ok).then_some("an object of string values, or a list of [name, value] string pairs")
        }
        _ => None,
    }
}

/// A data error of serde said again by field: which field, what it
/// expects, what it got; an unknown field with the fields this kind of
/// line takes. Falls back to serde's words, without the position.
fn explain(text: &str, e: &serde_json::Error) -> String {
    let serde_words = || {
        let m = e.to_string();
        match m.rfind(" at line ") {
            Some(i) => m[..i].to_string(),
            None => m,
        }
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return serde_words();
    };
    let op = map.get("op").and_then(|v| v.as_str());
    let known: Vec<&str> = match op {
        None => SEND_FIELDS.to_vec(),
        Some(op) => op_fields(op).to_vec(),
    };
    for (k, v) in &map {
        if k == "op" {
            continue;
        }
        if !SEND_FIELDS.contains(&k.as_str())
            && !["limit", "all", "host", "events"].contains(&k.as_str())
        {
            let what = match op {
                None => "a send".to_string(),
                Some(op) => format!("op `{op}`"),
            };
            let list = if known.is_empty() {
                "no other fields".to_string()
            } else {
                known.join(", ")
            };
            return format!("unknown field {}: {what} takes {list}", show(k));
        }
        if let Some(expected) = mismatch(k, v) {
            return format!("{k}: expected {expected}, got {}", shown_value(v));
        }
    }
    serde_words()
}

fn validate(raw: RawLine) -> Result<Line, ProtoError> {
    match raw.op {
        Some(op) => validate_op(op, raw).map(Line::Op),
        None => validate_send(raw).map(Line::Send),
    }
}

fn validate_op(op: &RawValue, raw: RawLine) -> Result<ControlOp, ProtoError> {
    let name: String = serde_json::from_str(op.get())
        .map_err(|_| ProtoError::bad_request("field `op` must be a string"))?;
    // `tail` and `cancel` take `dest` as a filter, not as a target.
    let takes_dest = name == "tail" || name == "cancel";
    let send_field = [
        ("url", raw.url.is_some()),
        ("dest", raw.dest.is_some() && !takes_dest),
        ("path", raw.path.is_some()),
        ("method", raw.method.is_some()),
        ("headers", raw.headers.is_some()),
        ("body", raw.body.is_some()),
        ("body_base64", raw.body_base64.is_some()),
        ("json", raw.json.is_some()),
        ("timeout_ms", raw.timeout_ms.is_some()),
        ("max_attempts", raw.max_attempts.is_some()),
        ("ttl_ms", raw.ttl_ms.is_some()),
        ("delay_ms", raw.delay_ms.is_some()),
    ]
    .into_iter()
    .find(|(_, present)| *present);
    if let Some((field, _)) = send_field {
        return Err(ProtoError::bad_request(format!(
            "field `{field}` is not allowed with op `{name}`"
        )));
    }
    let no_extra = |allowed: &[&str]| -> Result<(), ProtoError> {
        for (field, present) in [
            ("id", raw.id.is_some()),
            ("limit", raw.limit.is_some()),
            ("all", raw.all.is_some()),
            ("host", raw.host.is_some()),
            ("events", raw.events.is_some()),
        ] {
            if present && !allowed.contains(&field) {
                return Err(ProtoError::bad_request(format!(
                    "field `{field}` is not allowed with op `{name}`"
                )));
            }
        }
        Ok(())
    };
    let selection =
        |raw_id: Option<Str>, all: Option<bool>| match (raw_id.map(Str::into_owned), all) {
            (Some(id), None | Some(false)) => Ok(Selection::Id(id)),
            (None, Some(true)) => Ok(Selection::All),
            (Some(_), Some(true)) => Err(ProtoError::bad_request(format!(
                "op `{name}` takes `id` or `all`, not both"
            ))),
            _ => Err(ProtoError::bad_request(format!(
                "op `{name}` needs `id` or `\"all\": true`"
            ))),
        };
    match name.as_str() {
        "ping" => no_extra(&[]).map(|_| ControlOp::Ping),
        "stats" => no_extra(&[]).map(|_| ControlOp::Stats),
        "status" => {
            no_extra(&["id"])?;
            let id = raw
                .id
                .map(Str::into_owned)
                .ok_or_else(|| ProtoError::bad_request("op `status` needs field `id`"))?;
            Ok(ControlOp::Status { id })
        }
        "dead" => {
            no_extra(&["limit"])?;
            Ok(ControlOp::Dead { limit: raw.limit })
        }
        "replay" => {
            no_extra(&["id", "all"])?;
            selection(raw.id, raw.all).map(ControlOp::Replay)
        }
        "purge" => {
            no_extra(&["id", "all"])?;
            selection(raw.id, raw.all).map(ControlOp::Purge)
        }
        "tail" => {
            no_extra(&["host", "events"])?;
            let events = raw.events.unwrap_or_default();
            if let Some(bad) = events.iter().find(|e| !TAIL_EVENTS.contains(&e.as_str())) {
                return Err(ProtoError::bad_request(format!(
                    "unknown event {} in `events` (known: {})",
                    show(bad),
                    TAIL_EVENTS.join(", ")
                )));
            }
            Ok(ControlOp::Tail(TailFilter {
                host: raw.host,
                dest: raw.dest.map(Str::into_owned),
                events,
            }))
        }
        "cancel" => {
            no_extra(&["id", "all", "host"])?;
            cancel_selection(raw)
        }
        other => Err(ProtoError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown op `{other}` (known: ping, stats, status, dead, replay, purge, tail, cancel)"
            ),
        )),
    }
}

/// `cancel`: one `id`, or `"all": true` with at most one of `host` and `dest`.
fn cancel_selection(raw: RawLine) -> Result<ControlOp, ProtoError> {
    let dest = raw.dest.map(Str::into_owned);
    match (raw.id.map(Str::into_owned), raw.all) {
        (Some(_), Some(true)) => Err(ProtoError::bad_request(
            "op `cancel` takes `id` or `all`, not both",
        )),
        (Some(_), _) if raw.host.is_some() || dest.is_some() => Err(ProtoError::bad_request(
            "op `cancel` takes `host` or `dest` only with `\"all\": true`",
        )),
        (Some(id), _) => Ok(ControlOp::Cancel(CancelSelection::Id(id))),
        (None, Some(true)) => {
            if raw.host.is_some() && dest.is_some() {
                return Err(ProtoError::bad_request(
                    "op `cancel` takes `host` or `dest`, not both",
                ));
            }
            if let Some(name) = &dest {
                validate_dest_name(name)?;
            }
            Ok(ControlOp::Cancel(CancelSelection::All {
                host: raw.host,
                dest,
            }))
        }
        _ => Err(ProtoError::bad_request(
            "op `cancel` needs `id` or `\"all\": true`",
        )),
    }
}

fn validate_send(raw: RawLine) -> Result<SendRequest, ProtoError> {
    let shaped = [
        ("method", raw.method.is_some()),
        ("path", raw.path.is_some()),
        ("headers", raw.headers.is_some()),
        ("timeout_ms", raw.timeout_ms.is_some()),
        ("max_attempts", raw.max_attempts.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, given)| given.then_some(f))
    .collect();
    for (field, present) in [
        ("limit", raw.limit.is_some()),
        ("all", raw.all.is_some()),
        ("host", raw.host.is_some()),
        ("events", raw.events.is_some()),
    ] {
        if present {
            return Err(ProtoError::bad_request(format!(
                "field `{field}` belongs to control ops; a send has no `{field}`"
            )));
        }
    }
    let target = match (raw.url, raw.dest) {
        (Some(_), Some(dest)) => {
            return Err(ProtoError::bad_request(format!(
                "give `url` or `dest`, not both: destination {:?} has its own URL",
                &*dest
            )))
        }
        (None, None) => {
            return Err(ProtoError::bad_request(
                "missing field `url` (or `dest`): where should the request go?",
            ))
        }
        (Some(url), None) => {
            if raw.path.is_some() {
                return Err(ProtoError::bad_request(
                    "field `path` goes with `dest`; with `url`, put the path in the URL",
                ));
            }
            Target::Url(validate_url(&url)?)
        }
        (None, Some(name)) => {
            validate_dest_name(&name)?;
            let path = raw.path.map(Str::into_owned).unwrap_or_default();
            if !path.is_empty() && !path.starts_with('/') && !path.starts_with('?') {
                return Err(ProtoError::bad_request(format!(
                    "`path` must start with `/` or `?`, got {}",
                    show(&path)
                )));
            }
            if path.parse::<http::uri::PathAndQuery>().is_err() && !path.is_empty() {
                return Err(ProtoError::bad_request(format!(
                    "`path` is not a valid URL path: {}",
                    show(&path)
                )));
            }
            Target::Dest {
                name: name.into_owned(),
                path,
            }
        }
    };

    let mut headers = Vec::new();
    if let Some(Headers(list)) = raw.headers {
        headers.reserve(list.len());
        for (name, value) in list {
            headers.push(validate_header(&name, value.0)?);
        }
    }

    let bodies = [
        raw.body.is_some(),
        raw.body_base64.is_some(),
        raw.json.is_some(),
    ];
    if bodies.iter().filter(|b| **b).count() > 1 {
        return Err(ProtoError::bad_request(
            "give at most one of `body`, `body_base64` and `json`",
        ));
    }
    let has_body = bodies.iter().any(|b| *b);
    let body_is_json = raw.json.is_some();
    let body = if let Some(text) = raw.body {
        text.into_owned().into_bytes()
    } else if let Some(b64) = raw.body_base64 {
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| {
                ProtoError::bad_request(format!("`body_base64` is not valid base64: {e}"))
            })?
    } else if let Some(json) = raw.json {
        if !headers.iter().any(|(n, _)| n == "content-type") {
            headers.push((
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            ));
        }
        json.get().as_bytes().to_vec()
    } else {
        Vec::new()
    };

    let method = match raw.method {
        Some(m) => match http::Method::from_bytes(m.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return Err(ProtoError::bad_request(format!(
                    "`method` is not an HTTP method token: {}",
                    show(&m)
                )))
            }
        },
        None if has_body => http::Method::POST,
        None => http::Method::GET,
    };

    if let Some(id) = &raw.id {
        validate_id(id)?;
    }
    let id = raw.id.map(Str::into_owned);
    if let Some(t) = raw.timeout_ms {
        if t == 0 || t > MAX_TIMEOUT_MS {
            return Err(ProtoError::bad_request(format!(
                "`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}, got {t}"
            )));
        }
    }
    if let Some(a) = raw.max_attempts {
        if a == 0 || a > MAX_ATTEMPTS {
            return Err(ProtoError::bad_request(format!(
                "`max_attempts` must be between 1 and {MAX_ATTEMPTS}, got {a}"
            )));
        }
    }
    if raw.ttl_ms == Some(0) {
        return Err(ProtoError::bad_request("`ttl_ms` must be at least 1"));
    }
    if let (Some(ttl), Some(delay)) = (raw.ttl_ms, raw.delay_ms) {
        if delay >= ttl {
            return Err(ProtoError::bad_request(format!(
                "`delay_ms` ({delay}) must be less than `ttl_ms` ({ttl}): the request would expire before its first attempt"
            )));
        }
    }

    Ok(SendRequest {
        body_is_json,
        shaped,
        id,
        method,
        target,
        headers,
        body,
        timeout_ms: raw.timeout_ms,
        max_attempts: raw.max_attempts,
        ttl_ms: raw.ttl_ms,
        delay_ms: raw.delay_ms,
    })
}

/// A user's value quoted in an error message, cut short: answers stay small
/// (a pipelining client relies on that), whatever the line held.
fn show(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// Checks that `url` is an absolute `http` or `https` URL with a host.
pub fn validate_url(url: &str) -> Result<http::Uri, ProtoError> {
    let uri: http::Uri = url.parse().map_err(|e| {
        ProtoError::bad_request(format!("`url` is not a valid URL ({e}): {}", show(url)))
    })?;
    check_uri(uri, url)
}

fn check_uri(uri: http::Uri, url: &str) -> Result<http::Uri, ProtoError> {
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(ProtoError::bad_request(format!(
                "`url` scheme must be http or https, got {}",
                show(other)
            )))
        }
        None => {
            return Err(ProtoError::bad_request(format!(
                "`url` must be absolute (http://... or https://...), got {}",
                show(url)
            )))
        }
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => {
            return Err(ProtoError::bad_request(format!(
                "`url` has no host: {}",
                show(url)
            )))
        }
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProtoError::bad_request(
            "`url` must not carry user:password; send an `authorization` header instead",
        ));
    }
    Ok(uri)
}

fn validate_dest_name(name: &str) -> Result<(), ProtoError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ProtoError::bad_request(format!(
            "`dest` must be 1-64 characters of [A-Za-z0-9_.-], got {}",
            show(name)
        )))
    }
}

/// Checks a caller id: 1 to [`MAX_ID_BYTES`] visible ASCII characters, so it
/// can travel in a header and a log line unchanged.
pub fn validate_id(id: &str) -> Result<(), ProtoError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProtoError::bad_request(format!(
            "`id` must be 1-{MAX_ID_BYTES} visible ASCII characters (no spaces), got {}",
            show(id)
        )));
    }
    Ok(())
}

/// Why a header may not be set by a caller or a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRefusal {
    /// `host`: ffd sets Host from the URL.
    Host,
    /// One of [`HOP_BY_HOP`]: about one connection, or computed by ffd.
    HopByHop,
}

/// Whether a header may not be set, and why: the one rule for sends and
/// for the config's destination headers.
pub fn refused_header(name: &http::HeaderName) -> Option<HeaderRefusal> {
    if *name == http::header::HOST {
        Some(HeaderRefusal::Host)
    } else if HOP_BY_HOP.contains(&name.as_str()) {
        Some(HeaderRefusal::HopByHop)
    } else {
        None
    }
}

fn validate_header(
    name: &str,
    value: Cow<str>,
) -> Result<(http::HeaderName, http::HeaderValue), ProtoError> {
    let hn = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        ProtoError::bad_request(format!("header name is not a valid token: {}", show(name)))
    })?;
    match refused_header(&hn) {
        Some(HeaderRefusal::Host) => {
            return Err(ProtoError::bad_request(
                "header `host` cannot be set: ffd sets Host from the URL (put the host in `url`)",
            ))
        }
        Some(HeaderRefusal::HopByHop) => {
            return Err(ProtoError::bad_request(format!(
                "header `{}` is hop-by-hop or computed by ffd and cannot be set",
                hn.as_str()
            )))
        }
        None => {}
    }
    // Same check either way; an owned value (it had escapes) is not copied.
    let hv = match value {
        Cow::Owned(v) => http::HeaderValue::try_from(v),
        Cow::Borrowed(v) => http::HeaderValue::from_str(v),
    };
    let hv = hv.map_err(|_| {
        // Never echo the value: it may be a secret.
        ProtoError::bad_request(format!(
            "value of header `{}` holds a control character (CR, LF, NUL...)",
            hn.as_str()
        ))
    })?;
    Ok((hn, hv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> (http::HeaderName, http::HeaderValue) {
        (k.parse().unwrap(), v.parse().unwrap())
    }

    fn err(line: &str) -> ProtoError {
        parse_line(line.as_bytes()).expect_err(line)
    }

    fn send(line: &str) -> SendRequest {
        match parse_line(line.as_bytes()) {
            Ok(Line::Send(s)) => s,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn minimal_send_defaults_to_get() {
        let s = send(r#"{"url":"http://example.com/x?y=1"}"#);
        assert_eq!(s.method, http::Method::GET);
        assert_eq!(
            s.target,
            Target::Url("http://example.com/x?y=1".parse().unwrap())
        );
        assert!(s.body.is_empty());
    }

    #[test]
    fn body_defaults_to_post_and_crlf_is_accepted() {
        let s = send("{\"url\":\"https://h/\",\"body\":\"hi\"}\r");
        assert_eq!(s.method, http::Method::POST);
        assert_eq!(s.body, b"hi");
    }

    #[test]
    fn json_body_is_sent_verbatim_with_content_type() {
        let s = send(r#"{"url":"http://h/","json":{"a": [1, 2]}}"#);
        assert_eq!(s.body, br#"{"a": [1, 2]}"#);
        assert_eq!(s.headers, vec![h("content-type", "application/json")]);
        let s = send(r#"{"url":"http://h/","json":1,"headers":{"Content-Type":"application/x"}}"#);
        assert_eq!(s.headers, vec![h("content-type", "application/x")]);
    }

    #[test]
    fn headers_as_object_or_pairs() {
        let s = send(r#"{"url":"http://h/","headers":{"X-A":"1","x-b":"2"}}"#);
        assert_eq!(s.headers, vec![h("x-a", "1"), h("x-b", "2")]);
        let s = send(r#"{"url":"http://h/","headers":[["X-A","1"],["x-a","2"]]}"#);
        assert_eq!(s.headers, vec![h("x-a", "1"), h("x-a", "2")]);
    }

    #[test]
    fn base64_body() {
        let s = send(r#"{"url":"http://h/","body_base64":"AAEC"}"#);
        assert_eq!(s.body, vec![0, 1, 2]);
    }

    #[test]
    fn dest_with_path() {
        let s = send(r#"{"dest":"hooks","path":"/a?b=1"}"#);
        assert_eq!(
            s.target,
            Target::Dest {
                name: "hooks".into(),
                path: "/a?b=1".into()
            }
        );
    }

    /// One row per refusal: the line and the code it must get.
    #[test]
    fn every_error_code_of_a_line() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (b"{not json", ErrorCode::BadJson),
            (b"[1,2]", ErrorCode::BadJson),
            (b"", ErrorCode::BadJson),
            (b"\xff\xfe{}", ErrorCode::BadJson),
            (
                b"{\"url\":\"http://h/\",\"body\":\"\xc3\x28\"}",
                ErrorCode::BadJson,
            ),
            (br#"{"url":5}"#, ErrorCode::BadRequest),
            (
                br#"{"url":"http://h/","timeout_ms":"5"}"#,
                ErrorCode::BadRequest,
            ),
            (br#"{"url":"http://h/","urll":"x"}"#, ErrorCode::BadRequest),
            (br#"{"method":"POST"}"#, ErrorCode::BadRequest),
            (br#"{"url":"ftp://h/x"}"#, ErrorCode::BadRequest),
            (br#"{"url":"/relative"}"#, ErrorCode::BadRequest),
            (br#"{"url":"http://u:p@h/"}"#, ErrorCode::BadRequest),
            (
                br#"{"url":"http://h/","headers":{"x-a":"a\r\nb: c"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","headers":{"bad name":"v"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","headers":{"Connection":"close"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","headers":{"transfer-encoding":"chunked"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","headers":[["a"]]}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","body":"a","json":{}}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","body_base64":"***"}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","method":"GE T"}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","id":"has space"}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","max_attempts":0}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","timeout_ms":0}"#,
                ErrorCode::BadRequest,
            ),
            (
                br#"{"url":"http://h/","ttl_ms":10,"delay_ms":10}"#,
                ErrorCode::BadRequest,
            ),
            (br#"{"url":"http://h/","dest":"x"}"#, ErrorCode::BadRequest),
            (br#"{"url":"http://h/","path":"/x"}"#, ErrorCode::BadRequest),
            (br#"{"dest":"bad name"}"#, ErrorCode::BadRequest),
            (br#"{"url":"http://h/","all":true}"#, ErrorCode::BadRequest),
            (br#"{"op":"frobnicate"}"#, ErrorCode::UnknownOp),
            (br#"{"op":7}"#, ErrorCode::BadRequest),
            (br#"{"op":"status"}"#, ErrorCode::BadRequest),
            (br#"{"op":"ping","url":"http://h/"}"#, ErrorCode::BadRequest),
            (br#"{"op":"replay"}"#, ErrorCode::BadRequest),
            (
                br#"{"op":"purge","id":"a","all":true}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (line, code) in cases {
            let e = parse_line(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                e.code,
                *code,
                "{}: {}",
                String::from_utf8_lossy(line),
                e.message
            );
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn header_value_is_never_echoed() {
        let e = err(r#"{"url":"http://h/","headers":{"authorization":"Bearer sekrit\n"}}"#);
        assert!(!e.message.contains("sekrit"), "{}", e.message);
    }

    #[test]
    fn host_is_refused_in_any_form_ffd_sets_it_from_the_url() {
        for line in [
            r#"{"url":"http://h/","headers":{"host":"evil.example"}}"#,
            r#"{"url":"http://h/","headers":{"Host":"h"}}"#,
            r#"{"url":"http://h/","headers":[["host","a"],["Host","b"]]}"#,
        ] {
            let e = err(line);
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
            assert!(
                e.message.contains("ffd sets Host from the URL"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn a_bad_value_names_its_field_and_what_it_expects() {
        let e = err(r#"{"url":"http://h/","delay_ms":-5}"#);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(
            e.message,
            "delay_ms: expected a non-negative integer, got -5"
        );
        let e = err(r#"{"url":"http://h/","timeout_ms":"5"}"#);
        assert_eq!(
            e.message,
            r#"timeout_ms: expected a non-negative integer, got "5""#
        );
        let e = err(r#"{"url":7}"#);
        assert_eq!(e.message, "url: expected a string, got 7");
        let e = err(r#"{"op":"cancel","all":"yes"}"#);
        assert_eq!(e.message, r#"all: expected true or false, got "yes""#);
        let e = err(r#"{"url":"http://h/","headers":{"a":1}}"#);
        assert!(e.message.starts_with("headers: expected"), "{}", e.message);
        // No column of the protocol line: it means nothing to whoever
        // typed only the value.
        assert!(!e.message.contains("column"), "{}", e.message);
    }

    #[test]
    fn the_unknown_field_list_of_a_send_names_send_fields_only() {
        let e = err(r#"{"url":"http://h/","urll":"x"}"#);
        assert!(
            e.message
                .starts_with(r#"unknown field "urll": a send takes url, dest, path"#),
            "{}",
            e.message
        );
        for op_field in ["limit", "all", "host", "events"] {
            assert!(!e.message.contains(op_field), "{}", e.message);
        }
        let e = err(r#"{"op":"status","idd":"x"}"#);
        assert_eq!(e.message, r#"unknown field "idd": op `status` takes id"#);
    }

    #[test]
    fn cancel_takes_an_id_or_all_with_a_host_or_a_dest() {
        let op = |l: &str| match parse_line(l.as_bytes()) {
            Ok(Line::Op(op)) => op,
            other => panic!("{l}: {other:?}"),
        };
        assert_eq!(
            op(r#"{"op":"cancel","id":"a"}"#),
            ControlOp::Cancel(CancelSelection::Id("a".into()))
        );
        assert_eq!(
            op(r#"{"op":"cancel","all":true}"#),
            ControlOp::Cancel(CancelSelection::All {
                host: None,
                dest: None
            })
        );
        assert_eq!(
            op(r#"{"op":"cancel","all":true,"host":"http://127.0.0.1:8080"}"#),
            ControlOp::Cancel(CancelSelection::All {
                host: Some("http://127.0.0.1:8080".into()),
                dest: None
            })
        );
        assert_eq!(
            op(r#"{"op":"cancel","all":true,"dest":"hooks"}"#),
            ControlOp::Cancel(CancelSelection::All {
                host: None,
                dest: Some("hooks".into())
            })
        );
        for bad in [
            r#"{"op":"cancel"}"#,
            r#"{"op":"cancel","all":false}"#,
            r#"{"op":"cancel","id":"a","all":true}"#,
            r#"{"op":"cancel","id":"a","host":"h"}"#,
            r#"{"op":"cancel","all":true,"host":"h","dest":"d"}"#,
            r#"{"op":"cancel","all":true,"limit":3}"#,
            r#"{"op":"cancel","all":true,"url":"http://h/"}"#,
        ] {
            assert_eq!(err(bad).code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(r#"{"url":"http://h/","timout_ms":5}"#);
        assert!(e.message.contains("timout_ms"), "{}", e.message);
    }

    #[test]
    fn control_ops() {
        let op = |l: &str| match parse_line(l.as_bytes()) {
            Ok(Line::Op(op)) => op,
            other => panic!("{l}: {other:?}"),
        };
        assert_eq!(op(r#"{"op":"ping"}"#), ControlOp::Ping);
        assert_eq!(
            op(r#"{"op":"tail","host":"h:80","dest":"hooks","events":["dead","expired"]}"#),
            ControlOp::Tail(TailFilter {
                host: Some("h:80".into()),
                dest: Some("hooks".into()),
                events: vec!["dead".into(), "expired".into()],
            })
        );
        assert_eq!(
            op(r#"{"op":"tail"}"#),
            ControlOp::Tail(TailFilter::default())
        );
        assert_eq!(op(r#"{"op":"stats"}"#), ControlOp::Stats);
        assert_eq!(
            op(r#"{"op":"status","id":"a"}"#),
            ControlOp::Status { id: "a".into() }
        );
        assert_eq!(
            op(r#"{"op":"dead","limit":3}"#),
            ControlOp::Dead { limit: Some(3) }
        );
        assert_eq!(
            op(r#"{"op":"replay","all":true}"#),
            ControlOp::Replay(Selection::All)
        );
        assert_eq!(
            op(r#"{"op":"purge","id":"x"}"#),
            ControlOp::Purge(Selection::Id("x".into()))
        );
    }
}
