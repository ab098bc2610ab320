//! `stats`: counters, gauges, the spool and every host with work or history.

use super::Answer;
use crate::scheduler::Engine;
use serde_json::{json, Map, Value};

/// The whole picture, in one object.
pub fn run(engine: &Engine) -> Answer {
    let s = engine.stats();
    let mut rejected = Map::new();
    for (code, n) in &s.rejected {
        rejected.insert(code.as_str().into(), (*n).into());
    }
    let hosts: Vec<Value> = s
        .hosts
        .iter()
        .map(|h| {
            let mut v = json!({
                "host": h.host,
                "pending": h.pending,
                "in_flight": h.in_flight,
                "paused": h.paused,
                "consecutive_failures": h.consecutive_failures,
                "last_success_ms": h.last_success_ms,
                "last_failure_ms": h.last_failure_ms,
                "last_error": h.last_error,
                "limit": h.limit,
                "breaker": h.breaker,
                "paused_until_ms": h.paused_until_ms,
                "oldest_ready_ms": h.oldest_ready_ms,
                "success_rate": h.success_rate,
                "p95_attempt_ms": h.p95_attempt_ms,
            });
            if let Some((waiting, in_flight)) = h.batches {
                v["events_waiting"] = waiting.into();
                v["batches_in_flight"] = in_flight.into();
            }
            v
        })
        .collect();
    let spool = match &s.spool {
        Some(sp) => serde_json::to_value(sp).unwrap_or(Value::Null),
        None => json!({"mode": "memory", "bytes": s.memory_bytes, "max_bytes": s.max_bytes}),
    };
    Ok((
        "stats",
        json!({
            "accepted": s.accepted,
            "duplicates": s.duplicates,
            "rejected": rejected,
            "delivered": s.delivered,
            "retried": s.retried,
            "dead": s.dead,
            "expired": s.expired,
            "cancelled": engine.metrics.finished_count("cancelled"),
            "queued": s.queued,
            "paged_out": s.paged_out,
            "in_flight": s.in_flight,
            "dead_letters": s.dead_letters,
            "oldest_pending_age_ms": s.oldest_pending_age_ms,
            "spool": spool,
            "connections": s.connections,
            "uptime_ms": s.uptime_ms,
            "hosts": hosts,
        }),
    ))
}
