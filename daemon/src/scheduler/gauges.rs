//! The state as gauges, read when `/metrics` is scraped and for the health
//! verdict: nothing here runs on the ACK path.

use super::entry::Phase;
use super::{Engine, State};
use crate::clock::now_ms;
use std::sync::atomic::Ordering;

/// Requests looked at, at most, to find the oldest one waiting for a retry
/// or its delay (the scan holds the scheduler's lock).
const BACKOFF_SCAN: usize = 10_000;

/// What the health endpoints judge by.
#[derive(Debug, Clone)]
pub struct Health {
    /// Draining: no new requests.
    pub draining: bool,
    /// The spool takes writes (disk mode: a segment is open), and is below
    /// `max_bytes`.
    pub spool_writable: bool,
    /// Spool bytes and the limit.
    pub spool_bytes: u64,
    /// `spool.max_bytes`.
    pub spool_max_bytes: u64,
    /// Hosts paused by their breaker.
    pub paused_hosts: Vec<String>,
    /// Seconds the oldest ready request has waited for a slot.
    pub oldest_ready_s: f64,
}

impl Engine {
    /// Sets the gauges from the current state, before a scrape. The state
    /// is read under the lock; the metric families (with locks of their
    /// own) are written after it is released.
    pub fn refresh_metrics(&self) {
        let m = &self.metrics;
        let now = now_ms();
        let threshold = self.dcfg().breaker_threshold;
        let mut st = self.lock();
        st.prune_lanes();
        // Events of batches count one by one, as every per-request figure does.
        let (pending, in_flight, dead) = (st.pending, st.in_flight + st.batch_extra, st.dead.len());
        let (ready, backoff) = (st.oldest_ready_ms(now), st.oldest_backoff_ms(now));
        let mut paused = 0;
        let mut rows = Vec::new();
        for h in &st.hosts {
            let is_paused = h.breaker.paused(now);
            paused += i64::from(is_paused);
            if h.pending == 0 && h.in_flight == 0 && h.breaker.failures() == 0 {
                continue;
            }
            let state = h.breaker_state(now, threshold);
            let in_flight = if h.limits.batch.is_some() {
                h.batch.events_in_flight
            } else {
                h.in_flight
            };
            rows.push((h.label.clone(), h.pending, in_flight, state));
        }
        let memory_bytes = st.bytes;
        drop(st);
        m.pending.set(pending as i64);
        m.in_flight.set(in_flight as i64);
        m.dead_letters.set(dead as i64);
        m.connections
            .set(self.connections.load(Ordering::Relaxed) as i64);
        m.oldest_ready.set(ready as f64 / 1000.0);
        m.oldest_backoff.set(backoff as f64 / 1000.0);
        m.hosts_paused.set(paused);
        // Idle hosts drop out of the per-host gauges.
        m.host_pending.clear();
        m.host_in_flight.clear();
        m.host_breaker.clear();
        for (label, pending, in_flight, state) in rows {
            let l = [("host", label.clone())];
            m.host_pending.get_or_create(&l).inc_by(pending as i64);
            m.host_in_flight.get_or_create(&l).inc_by(in_flight as i64);
            m.host_breaker
                .get_or_create(&[("host", label), ("state", state.to_string())])
                .set(1);
        }
        let bytes = self.spool.as_ref().map_or(memory_bytes, |s| s.bytes());
        m.spool_bytes.set(bytes as i64);
    }

    /// What the health endpoints judge by.
    pub fn health(&self) -> Health {
        let now = now_ms();
        let mut st = self.lock();
        st.prune_lanes();
        let paused_hosts = st
            .hosts
            .iter()
            .filter(|h| h.breaker.paused(now))
            .map(|h| h.key.clone())
            .collect();
        let (bytes, writable) = match &self.spool {
            Some(s) => (s.bytes(), s.writable()),
            None => (st.bytes, true),
        };
        Health {
            draining: st.draining,
            spool_writable: writable && bytes < self.max_bytes,
            spool_bytes: bytes,
            spool_max_bytes: self.max_bytes,
            paused_hosts,
            oldest_ready_s: st.oldest_ready_ms(now) as f64 / 1000.0,
        }
    }
}

impl State {
    /// Drops the ids at the front of the lanes that are no longer queued
    /// there (expired while waiting), so the fronts are the live ones.
    fn prune_lanes(&mut self) {
        let entries = &self.entries;
        self.lanes
            .prune_fronts(|id| entries.get(id).is_some_and(|e| e.phase == Phase::Queued));
    }

    /// How long the oldest ready request has waited in its lane (0: none).
    fn oldest_ready_ms(&self, now: u64) -> u64 {
        self.lanes
            .fronts()
            .filter_map(|id| self.entries.get(id))
            .filter(|e| e.phase == Phase::Queued)
            .map(|e| now.saturating_sub(e.next_ms))
            .max()
            .unwrap_or(0)
    }

    /// Age of the oldest request waiting for a retry or its delay (0:
    /// none), among the oldest [`BACKOFF_SCAN`] pending ones.
    fn oldest_backoff_ms(&self, now: u64) -> u64 {
        let oldest = |q: &std::collections::VecDeque<(u64, std::sync::Arc<str>)>| {
            q.iter()
                .take(BACKOFF_SCAN)
                .find(|(at, id)| {
                    self.entries
                        .get(id)
                        .is_some_and(|e| e.phase == Phase::Waiting && e.accepted_ms == *at)
                })
                .map(|(at, _)| *at)
        };
        [&self.arrivals, &self.restored, &self.paged]
            .into_iter()
            .filter_map(oldest)
            .min()
            .map_or(0, |at| now.saturating_sub(at))
    }
}
