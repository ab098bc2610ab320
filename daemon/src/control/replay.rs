//! `replay`: dead letters back to the queue (admin only).

use super::{admin_only, selected, Answer, Peer};
use crate::scheduler::Engine;
use ffd_proto::Selection;
use serde_json::json;

/// Replays one dead letter or all; answers how many.
pub fn run(engine: &Engine, peer: Peer, sel: &Selection) -> Answer {
    admin_only(peer)?;
    let n = engine.replay(selected(sel), peer.viewer())?;
    Ok(("replayed", json!(n)))
}
