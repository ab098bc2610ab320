//! Control ops: answers built from the scheduler's state.

use crate::conn::Peer;
use crate::scheduler::Engine;
use ffd_proto::{ControlOp, ErrorCode, ProtoError, Selection};
use serde_json::json;

/// Answers one op into `out` (one line).
pub fn handle(op: ControlOp, engine: &Engine, peer: Peer, out: &mut Vec<u8>) {
    let result: Result<(&str, serde_json::Value), ProtoError> = match op {
        ControlOp::Ping => Ok((
            "pong",
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": ffd_proto::PROTOCOL_VERSION,
                "pid": std::process::id(),
            }),
        )),
        ControlOp::Stats => Ok(("stats", engine.stats())),
        ControlOp::Status { id } => engine.status(&id).map(|v| ("status", v)).ok_or_else(|| {
            ProtoError::new(
                ErrorCode::NotFound,
                format!("no request with id {id} (unknown, or finished long ago)"),
            )
        }),
        ControlOp::Dead { limit } => Ok(("dead", engine.dead(limit))),
        ControlOp::Replay(sel) | ControlOp::Purge(sel) if !peer.admin => {
            let _ = sel;
            Err(ProtoError::new(
                ErrorCode::Forbidden,
                "replay and purge are only for ffd's own user or root",
            ))
        }
        ControlOp::Replay(sel) => engine
            .replay(selected(&sel))
            .map(|n| ("replayed", json!(n))),
        ControlOp::Purge(sel) => engine.purge(selected(&sel)).map(|n| ("purged", json!(n))),
    };
    match result {
        Ok((key, value)) => ffd_proto::write_ok_value(out, key, &value),
        Err(e) => {
            engine.count_rejected(e.code);
            ffd_proto::write_error(out, e.code, &e.message)
        }
    }
}

fn selected(sel: &Selection) -> Option<&str> {
    match sel {
        Selection::Id(id) => Some(id),
        Selection::All => None,
    }
}
