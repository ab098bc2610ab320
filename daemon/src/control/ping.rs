//! `ping`: is ffd there, and which version and protocol.

use super::Answer;
use serde_json::json;

/// Answers `pong` with the version, protocol and pid.
pub fn run() -> Answer {
    Ok((
        "pong",
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": ffd_proto::PROTOCOL_VERSION,
            "pid": std::process::id(),
        }),
    ))
}
