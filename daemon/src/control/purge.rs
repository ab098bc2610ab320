//! `purge`: dead letters forgotten (admin only).

use super::{admin_only, selected, Answer, Peer};
use crate::scheduler::Engine;
use ffd_proto::Selection;
use serde_json::json;

/// Purges one dead letter or all; answers how many.
pub fn run(engine: &Engine, peer: Peer, sel: &Selection) -> Answer {
    admin_only(peer)?;
    let n = engine.purge(selected(sel), peer.viewer())?;
    Ok(("purged", json!(n)))
}
