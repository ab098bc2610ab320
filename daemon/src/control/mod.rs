//! Control ops: each op is a file that runs itself against the scheduler
//! and renders its answer (as mini-redis's `cmd/*.rs` do), so adding an op
//! touches one file and the `match` below.

mod cancel;
mod dead;
mod ping;
mod purge;
mod replay;
mod stats;
mod status;
pub mod tail;

use crate::scheduler::{Engine, EntryView, Viewer};
use ffd_proto::{ControlOp, ProtoError, Selection};
use serde_json::{json, Value};

/// Who is asking, decided at accept time from the peer's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The peer's uid (SO_PEERCRED), when known.
    pub uid: Option<u32>,
    /// The peer's primary gid, when known.
    pub gid: Option<u32>,
    /// May run `replay` and `purge`: root or ffd's own user.
    pub admin: bool,
}

impl Peer {
    /// Who owns what this peer sends.
    pub fn owner(&self) -> Option<crate::job::Owner> {
        Some(crate::job::Owner {
            uid: self.uid?,
            gid: self.gid?,
        })
    }

    /// What this peer may see.
    pub fn viewer(&self) -> Viewer {
        Viewer {
            uid: self.uid,
            admin: self.admin,
        }
    }
}

/// What an op answers: the key of its value and the value.
type Answer = Result<(&'static str, Value), ProtoError>;

/// Answers one op into `out` (one line).
pub fn handle(op: ControlOp, engine: &Engine, peer: Peer, out: &mut Vec<u8>) {
    let result = match op {
        ControlOp::Ping => ping::run(),
        ControlOp::Stats => stats::run(engine),
        ControlOp::Status { id } => status::run(engine, peer, &id),
        ControlOp::Dead { limit } => dead::run(engine, peer, limit),
        ControlOp::Replay(sel) => replay::run(engine, peer, &sel),
        ControlOp::Purge(sel) => purge::run(engine, peer, &sel),
        ControlOp::Cancel(sel) => cancel::run(engine, peer, &sel),
        // Taken over by the connection (it streams); never answered here.
        ControlOp::Tail(_) => Err(ProtoError::new(
            ffd_proto::ErrorCode::Internal,
            "tail is served by the connection",
        )),
    };
    match result {
        Ok((key, value)) => ffd_proto::write_ok_value(out, key, &value),
        Err(e) => {
            engine.count_rejected(e.code);
            ffd_proto::write_error(out, e.code, &e.message)
        }
    }
}

/// The id a selection names, or `None` for all.
fn selected(sel: &Selection) -> Option<&str> {
    match sel {
        Selection::Id(id) => Some(id),
        Selection::All => None,
    }
}

/// Admin ops are for ffd's own user and root only.
fn admin_only(peer: Peer) -> Result<(), ProtoError> {
    if peer.admin {
        return Ok(());
    }
    Err(ProtoError::new(
        ffd_proto::ErrorCode::Forbidden,
        "replay and purge are only for ffd's own user or root",
    ))
}

/// One request as `status` and `dead` render it.
fn entry_json(v: &EntryView) -> Value {
    json!({
        "id": v.id,
        "owner": v.owner,
        "state": v.phase.as_str(),
        "attempts": v.attempts,
        "max_attempts": v.max_attempts,
        "method": v.method,
        "url": v.url,
        "host": v.host,
        "accepted_ms": v.accepted_ms,
        "next_attempt_ms": v.next_attempt_ms,
        "expires_ms": v.expires_ms,
        "finished_ms": v.finished_ms,
        "last_status": v.last_status,
        "last_error": v.last_error,
        "response": v.response,
        "host_paused_until_ms": v.host_paused_until_ms,
        "host_failures": v.host_failures,
        "last_attempts": v.last_attempts,
        "batch": v.batch,
    })
}
