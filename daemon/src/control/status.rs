//! `status`: where one request stands.

use super::{entry_json, Answer, Peer};
use crate::scheduler::Engine;
use ffd_proto::{ErrorCode, ProtoError};

/// The request with this id, or `not_found` (also for another user's id:
/// it does not exist for this peer).
pub fn run(engine: &Engine, peer: Peer, id: &str) -> Answer {
    let v = engine.status(id, peer.viewer()).ok_or_else(|| {
        ProtoError::new(
            ErrorCode::NotFound,
            format!("no request with id {id} (unknown, or finished long ago)"),
        )
    })?;
    Ok(("status", entry_json(&v)))
}
