//! `status`: where one request stands.

use super::{entry_json, Answer};
use crate::scheduler::Engine;
use ffd_proto::{ErrorCode, ProtoError};

/// The request with this id, or `not_found`.
pub fn run(engine: &Engine, id: &str) -> Answer {
    let v = engine.status(id).ok_or_else(|| {
        ProtoError::new(
            ErrorCode::NotFound,
            format!("no request with id {id} (unknown, or finished long ago)"),
        )
    })?;
    Ok(("status", entry_json(&v)))
}
