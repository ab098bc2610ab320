//! Events for `tail`: one per step of a request (accepted, attempt, retry,
//! delivered, dead, expired), sent to every subscriber through a bounded
//! broadcast ring. Nothing is built unless someone listens, and a slow
//! reader never slows delivery: it falls behind the ring and is told how
//! many events it missed.

use super::entry::NO_OWNER;
use super::{Engine, State};
use crate::clock::now_ms;
use crate::job::client_id;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events kept for slow subscribers before they miss some.
pub const TAIL_BUFFER: usize = 4096;

/// One step of one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// `accepted`, `attempt`, `retry`, `delivered`, `dead`, `expired`, or
    /// about a host: `host_failing`, `host_paused`, `host_recovered`, and
    /// `batch` (one request of a batching destination sent and answered).
    pub event: &'static str,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The request's id, as its sender knows it (empty for host events).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The sender's uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// `scheme://host:port`.
    pub host: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// HTTP status of the attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the attempt took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How long until the next attempt (`retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// `batch`: the batch's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// `batch`: events in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<usize>,
    /// `batch`: bytes of its body before compression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `batch`: bytes of its body as sent (after compression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_bytes: Option<u64>,
    /// `batch`: what its answer did: `delivered`, `retry`, `split`, `dead`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
}

/// A subscriber: the events, and its place in the count of listeners
/// (events are built only while someone listens).
pub struct Subscription {
    /// The events.
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// Keep while listening: dropped, the listener count goes down.
    pub _listening: Listening,
}

/// A place in the count of listeners.
pub struct Listening(Arc<AtomicUsize>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engine {
    /// A new subscriber to the events.
    pub fn subscribe(&self) -> Subscription {
        self.listening.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx: self.tail.subscribe(),
            _listening: Listening(self.listening.clone()),
        }
    }

    /// Sends the events gathered under the lock, after it was released:
    /// the broadcast's own lock and its wake-ups stay off the scheduler's.
    pub(super) fn publish(&self, events: Vec<Arc<Event>>) {
        for ev in events {
            let _ = self.tail.send(ev);
        }
    }

    /// The lane key of a named destination (what events carry as `host`),
    /// for a `tail` filter.
    pub fn dest_host(&self, name: &str) -> Option<String> {
        let dests = self
            .destinations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        dests
            .get(name)
            .map(|d| crate::job::lane_key(&d.uri, Some(name)))
    }
}

impl State {
    /// Sends an event about the request `key`, if anyone listens; `fill`
    /// adds the event's own fields.
    pub(super) fn emit(&mut self, event: &'static str, key: &str, fill: impl FnOnce(&mut Event)) {
        if self.listening.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(e) = self.entries.get(key) else {
            return;
        };
        let owned = e.owner != NO_OWNER;
        let mut ev = Event {
            event,
            at_ms: now_ms(),
            id: client_id(key, owned).to_string(),
            owner: owned.then_some(e.owner),
            host: self.host_name(e),
            attempts: e.attempts,
            ..Event::default()
        };
        fill(&mut ev);
        self.outbox.push(Arc::new(ev));
    }

    /// Sends an event about a host (failing, paused, recovered), if anyone
    /// listens. It names no request and no owner: only root and ffd's own
    /// user see it.
    pub(super) fn emit_host(
        &mut self,
        event: &'static str,
        host: u32,
        fill: impl FnOnce(&mut Event),
    ) {
        if self.listening.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut ev = Event {
            event,
            at_ms: now_ms(),
            host: self.hosts[host as usize].key.clone(),
            ..Event::default()
        };
        fill(&mut ev);
        self.outbox.push(Arc::new(ev));
    }

    /// The events gathered since the last call, to [`Engine::publish`]
    /// once the lock is released.
    pub(super) fn take_events(&mut self) -> Vec<Arc<Event>> {
        std::mem::take(&mut self.outbox)
    }
}
