//! `cancel`: pending requests stopped, by their owner or an admin.

use super::tail::host_matches;
use super::{Answer, Peer};
use crate::scheduler::Engine;
use ffd_proto::{CancelSelection, ErrorCode, ProtoError};
use serde_json::json;

/// Cancels one request or all the peer's (an admin's: everyone's), in one
/// lane or all; answers how many it ended or stopped from retrying.
pub fn run(engine: &Engine, peer: Peer, sel: &CancelSelection) -> Answer {
    let n = match sel {
        CancelSelection::Id(id) => engine.cancel_id(id, peer.viewer())?,
        CancelSelection::All { host, dest } => match (dest, host) {
            (Some(name), _) => {
                let lane = engine.dest_host(name).ok_or_else(|| {
                    ProtoError::new(
                        ErrorCode::UnknownDest,
                        format!("no destination named {name:?} in the config"),
                    )
                })?;
                engine.cancel_all(peer.viewer(), &|key| key == lane)
            }
            (None, Some(h)) => {
                let want = h.to_ascii_lowercase();
                engine.cancel_all(peer.viewer(), &|key| host_matches(key, &want))
            }
            (None, None) => engine.cancel_all(peer.viewer(), &|_| true),
        },
    };
    Ok(("cancelled", json!(n)))
}
