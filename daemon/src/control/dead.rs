//! `dead`: the dead letters, oldest first.

use super::{entry_json, Answer, Peer};
use crate::scheduler::Engine;
use serde_json::Value;

/// At most `limit` of the peer's dead letters (the most recent ones).
pub fn run(engine: &Engine, peer: Peer, limit: Option<usize>) -> Answer {
    let list = engine
        .dead(limit, peer.viewer())
        .iter()
        .map(entry_json)
        .collect();
    Ok(("dead", Value::Array(list)))
}
