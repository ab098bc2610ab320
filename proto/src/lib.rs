//! Wire types of the ffd protocol, version 1, and their validation.
//!
//! One UTF-8 JSON object per line; a line without `op` is a send, a line with
//! `op` is a control op. Every line gets one response line. This crate is pure
//! (no I/O, no clock, no async runtime) so the daemon and the client share it
//! and it can be unit-tested and fuzzed in isolation.

mod error;
mod request;
mod response;

pub use error::{ErrorCode, ProtoError};
pub use request::{
    parse_line, refused_header, validate_id, validate_url, CancelSelection, ControlOp,
    HeaderRefusal, Line, Selection, SendRequest, TailFilter, Target, HOP_BY_HOP, MAX_ATTEMPTS,
    MAX_ID_BYTES, MAX_TIMEOUT_MS, TAIL_EVENTS,
};
pub use response::{write_error, write_ok_duplicate, write_ok_id, write_ok_value, Response};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default longest line, in bytes, the daemon accepts (1 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
