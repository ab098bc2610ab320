//! The last attempts of recent requests, for `status`: when, how long,
//! what came back. Bounded twice: a few attempts per request, and a few
//! thousand requests (the oldest forgotten first), so a backlog of a
//! million failing requests costs no more than a handful.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Attempts kept per request.
const PER_REQUEST: usize = 5;
/// Requests whose attempts are kept.
const REQUESTS: usize = 10_000;

/// One attempt, as `status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptRecord {
    /// When it began (Unix ms).
    pub at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// The HTTP status, if a response came.
    pub status: Option<u16>,
    /// What went wrong (shared with the host's copy).
    #[serde(serialize_with = "opt_str")]
    pub error: Option<Arc<str>>,
}

fn opt_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&v.as_deref(), s)
}

/// The attempts of the most recent requests.
#[derive(Default)]
pub(super) struct History {
    /// foldhash, as the id index: every attempt looks its key up here, and
    /// past `REQUESTS` removes another, so SipHash cost two hashes per
    /// delivery for nothing (the keys are ours, not an attacker's choice
    /// of bucket).
    by_key: HashMap<Arc<str>, VecDeque<AttemptRecord>, foldhash::fast::RandomState>,
    /// Keys in the order they were first seen: the oldest goes first.
    order: VecDeque<Arc<str>>,
}

impl History {
    /// Notes an attempt of `key`.
    pub(super) fn note(&mut self, key: &Arc<str>, rec: AttemptRecord) {
        if let Some(list) = self.by_key.get_mut(key) {
            if list.len() == PER_REQUEST {
                list.pop_front();
            }
            list.push_back(rec);
            return;
        }
        // Once full, every new request forgets the oldest: its list's
        // allocation is taken over instead of freed and made again.
        let mut list = None;
        if self.order.len() == REQUESTS {
            if let Some(old) = self.order.pop_front() {
                list = self.by_key.remove(&old);
            }
        }
        let mut list = list.unwrap_or_default();
        list.clear();
        list.push_back(rec);
        self.order.push_back(key.clone());
        self.by_key.insert(key.clone(), list);
    }

    /// The attempts kept for `key`, oldest first.
    pub(super) fn of(&self, key: &str) -> Vec<AttemptRecord> {
        self.by_key
            .get(key)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: u64) -> AttemptRecord {
        AttemptRecord {
            at_ms: at,
            duration_ms: 1,
            status: Some(503),
            error: None,
        }
    }

    #[test]
    fn keeps_the_last_attempts_of_the_last_requests() {
        let mut h = History::default();
        let a: Arc<str> = "a".into();
        for t in 0..8 {
            h.note(&a, rec(t));
        }
        let at: Vec<u64> = h.of("a").iter().map(|r| r.at_ms).collect();
        assert_eq!(at, [3, 4, 5, 6, 7]);
        for i in 0..REQUESTS {
            h.note(&format!("k{i}").into(), rec(0));
        }
        assert!(h.of("a").is_empty(), "the oldest request was forgotten");
        assert_eq!(h.of(&format!("k{}", REQUESTS - 1)).len(), 1);
    }
}
