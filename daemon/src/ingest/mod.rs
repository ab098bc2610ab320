//! Ingest: the socket (bind, accept, peer checks) and each connection (lines
//! split, parsed with ffd-proto, batched into the scheduler's admission,
//! answered in order). Ingest reaches the scheduler and the control ops;
//! nothing reaches back into it.

pub mod conn;
pub mod gate;
pub mod listener;
pub mod tail;
