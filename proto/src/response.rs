//! Response lines: written by the daemon, read by clients.

use crate::error::{ErrorCode, ProtoError};
use serde_json::Value;

/// Appends `{"ok":true,"id":"..."}\n` to `out`: the answer to an accepted send.
///
/// Written by hand because it is the hot path of every send; ids are visible
/// ASCII (see [`crate::validate_id`]) but are escaped anyway for safety.
pub fn write_ok_id(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"{\"ok\":true,\"id\":");
    write_json_str(out, id);
    out.extend_from_slice(b"}\n");
}

/// Appends `{"ok":true,"id":"...","duplicate":true}\n` to `out`: the answer
/// to a send whose id this owner already sent (acknowledged once, not
/// queued again). Older clients that ignore the field keep working.
pub fn write_ok_duplicate(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"{\"ok\":true,\"id\":");
    write_json_str(out, id);
    out.extend_from_slice(b",\"duplicate\":true}\n");
}

/// Appends `{"ok":false,"error":"<code>","message":"..."}\n` to `out`.
pub fn write_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(b"{\"ok\":false,\"error\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    write_json_str(out, message);
    out.extend_from_slice(b"}\n");
}

/// Appends `{"ok":true,<key>:<value>}\n` to `out`: the answer to a control op.
pub fn write_ok_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    out.extend_from_slice(b"{\"ok\":true,");
    write_json_str(out, key);
    out.push(b':');
    // Writing a Value into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("serialize Value");
    out.extend_from_slice(b"}\n");
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Nearly every string (every id) needs no escape: copied as serde_json
    // would write it, without its per-byte escape machinery.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(&mut *out, s).expect("serialize str");
}

#[cfg(test)]
mod json_str_tests {
    #[test]
    fn written_as_serde_json_writes_it() {
        for s in [
            "",
            "01ABC",
            "a\"b",
            "a\\b",
            "tab\there",
            "\u{1}",
            "é ü",
            "del\u{7f}",
        ] {
            let mut out = Vec::new();
            super::write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}

/// A response line as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `ok: true`; the whole object, for ops that return data.
    Ok(serde_json::Map<String, Value>),
    /// `ok: false`.
    Err {
        /// The stable code (`None` if this version does not know it).
        code: Option<ErrorCode>,
        /// The code as sent.
        code_str: String,
        /// The daemon's message.
        message: String,
    },
}

impl Response {
    /// Parses a response line (without its `\n`).
    pub fn parse(line: &[u8]) -> Result<Response, ProtoError> {
        let v: Value = serde_json::from_slice(line).map_err(|e| {
            ProtoError::new(ErrorCode::BadJson, format!("response is not JSON: {e}"))
        })?;
        let Value::Object(map) = v else {
            return Err(ProtoError::new(
                ErrorCode::BadJson,
                "response is not an object",
            ));
        };
        match map.get("ok") {
            Some(Value::Bool(true)) => Ok(Response::Ok(map)),
            Some(Value::Bool(false)) => {
                let code_str = map
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let message = map
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                Ok(Response::Err {
                    code: ErrorCode::parse(&code_str),
                    code_str,
                    message,
                })
            }
            _ => Err(ProtoError::new(
                ErrorCode::BadJson,
                "response has no boolean `ok`",
            )),
        }
    }

    /// Whether an accepted send repeated an id its owner had already sent.
    pub fn duplicate(&self) -> bool {
        match self {
            Response::Ok(m) => m.get("duplicate") == Some(&Value::Bool(true)),
            Response::Err { .. } => false,
        }
    }

    /// The `id` of an accepted send.
    pub fn id(&self) -> Option<&str> {
        match self {
            Response::Ok(m) => m.get("id").and_then(Value::as_str),
            Response::Err { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        write_ok_id(&mut out, "abc");
        write_error(&mut out, ErrorCode::SpoolFull, "no \"room\"");
        let mut lines = out.split(|b| *b == b'\n');
        let ok = Response::parse(lines.next().unwrap()).unwrap();
        assert_eq!(ok.id(), Some("abc"));
        assert!(!ok.duplicate());
        match Response::parse(lines.next().unwrap()).unwrap() {
            Response::Err { code, message, .. } => {
                assert_eq!(code, Some(ErrorCode::SpoolFull));
                assert_eq!(message, "no \"room\"");
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn duplicate_is_an_ok_with_its_id() {
        let mut out = Vec::new();
        write_ok_duplicate(&mut out, "order-1");
        assert_eq!(
            out,
            b"{\"ok\":true,\"id\":\"order-1\",\"duplicate\":true}\n"
        );
        let r = Response::parse(&out[..out.len() - 1]).unwrap();
        assert_eq!(r.id(), Some("order-1"));
        assert!(r.duplicate());
    }

    #[test]
    fn every_code_round_trips() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }
}
