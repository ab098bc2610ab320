//! Stable error codes of the wire protocol.

use std::fmt;

/// A stable, machine-readable reason a line was refused.
///
/// The string form (`as_str`) is part of protocol version 1: callers branch on
/// it, so a code is never renamed or reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// The line is not valid UTF-8 JSON (or is not a JSON object).
    BadJson,
    /// Valid JSON, but not a valid request: wrong type, unknown field, bad URL...
    BadRequest,
    /// The line is longer than the daemon's `max_line_bytes`.
    LineTooLong,
    /// The spool has no room for the request; nothing was accepted.
    SpoolFull,
    /// The daemon is shutting down and accepts no new requests.
    ShuttingDown,
    /// The peer is not allowed to use the socket or this operation.
    Forbidden,
    /// A control op named an id the daemon does not know.
    NotFound,
    /// `op` names no known control op.
    UnknownOp,
    /// `dest` names no destination of the daemon's config.
    UnknownDest,
    /// The daemon failed in a way that is not the caller's fault.
    Internal,
    /// Too many connections (in all, or from this user): the connection is
    /// answered with this one line and closed; try again later.
    Busy,
    /// The destination policy refuses the send: its URL's host is an
    /// address in a denied range, or the policy accepts named destinations
    /// only (`raw_urls = false`).
    DeniedDestination,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::LineTooLong,
        ErrorCode::SpoolFull,
        ErrorCode::ShuttingDown,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownDest,
        ErrorCode::Internal,
        ErrorCode::Busy,
        ErrorCode::DeniedDestination,
    ];

    /// The code as it appears in the `error` field of a response.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::SpoolFull => "spool_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownDest => "unknown_dest",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::DeniedDestination => "denied_destination",
        }
    }

    /// Parses the `error` field of a response; `None` for a code this version
    /// does not know (a newer daemon may add codes).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused line: a stable code and a human message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtoError {
    /// What kind of refusal, for programs.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
}

impl ProtoError {
    /// A refusal with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ProtoError::new(ErrorCode::BadRequest, message)
    }
}
