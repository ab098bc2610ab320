//! `dead`: the dead letters, oldest first.

use super::{entry_json, Answer};
use crate::scheduler::Engine;
use serde_json::Value;

/// At most `limit` dead letters (the most recent ones).
pub fn run(engine: &Engine, limit: Option<usize>) -> Answer {
    let list = engine.dead(limit).iter().map(entry_json).collect();
    Ok(("dead", Value::Array(list)))
}
