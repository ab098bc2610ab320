//! One host (a lane: a host of raw URLs, or a named destination) as the
//! scheduler sees it: its breaker, limits, counts and recent attempts, and
//! how lanes are found or made.

use super::{rate, Breaker, State};
use crate::clock::now_ms;
use crate::config::DeliveryConfig;
use crate::delivery::retry::Backoff;
use crate::job::lane_key;
use http::Uri;
use std::collections::VecDeque;
use std::sync::Arc;

/// What the scheduler knows of one host.
pub(super) struct Host {
    pub(super) key: String,
    /// The `host` label of its metrics: its key for named destinations and
    /// the first [`HOST_LABELS`] hosts seen, `_other` after that.
    pub(super) label: String,
    pub(super) breaker: Breaker,
    pub(super) in_flight: usize,
    pub(super) pending: usize,
    pub(super) last_success_ms: u64,
    pub(super) last_failure_ms: u64,
    pub(super) last_error: Option<Arc<str>>,
    /// The destination this lane serves (`None`: a host of raw URLs).
    pub(super) dest: Option<Arc<str>>,
    /// The destination's limits, when it sets them.
    pub(super) limits: DestLimits,
    /// The destination's token bucket (`rate_per_s`).
    pub(super) bucket: Option<rate::Bucket>,
    /// When the timer set for its next token fires (0: none set).
    pub(super) rate_wake_ms: u64,
    /// The last attempts (success, milliseconds), for `stats` and `top`.
    pub(super) recent: VecDeque<(bool, u32)>,
}

/// Attempts per host kept for the success rate and the p95 attempt time.
const RECENT_ATTEMPTS: usize = 100;

impl Host {
    /// Notes an attempt's result and duration.
    pub(super) fn note(&mut self, ok: bool, ms: u64) {
        if self.recent.len() == RECENT_ATTEMPTS {
            self.recent.pop_front();
        }
        self.recent.push_back((ok, ms.min(u32::MAX as u64) as u32));
    }

    /// Share of the last attempts that succeeded, and their p95 duration.
    pub(super) fn recent_stats(&self) -> (Option<f64>, Option<u64>) {
        if self.recent.is_empty() {
            return (None, None);
        }
        let ok = self.recent.iter().filter(|(ok, _)| *ok).count();
        let mut ms: Vec<u32> = self.recent.iter().map(|(_, ms)| *ms).collect();
        let at = (ms.len() * 95).div_ceil(100).saturating_sub(1);
        // `stats` runs this for every host under the lock: no full sort.
        let p95 = *ms.select_nth_unstable(at).1;
        (Some(ok as f64 / self.recent.len() as f64), Some(p95 as u64))
    }

    /// The breaker's state, as `stats` and the metrics name it.
    pub(super) fn breaker_state(&self, now: u64, threshold: u32) -> &'static str {
        if self.breaker.paused(now) {
            "open"
        } else if self.breaker.failures() >= threshold {
            "half_open"
        } else {
            "closed"
        }
    }

    /// May one more attempt start now (breaker and in-flight limit)?
    pub(super) fn may_start(&self, now: u64, cfg: &DeliveryConfig) -> bool {
        let max = self
            .limits
            .max_in_flight
            .unwrap_or(cfg.max_in_flight_per_host);
        let limit = self.breaker.limit(cfg.breaker_threshold, max);
        !self.breaker.paused(now) && self.in_flight < limit
    }

    /// Applies a destination's limits (at creation and on SIGHUP); the
    /// bucket is kept while its rate stays the same.
    pub(super) fn set_limits(&mut self, limits: DestLimits, now: u64) {
        self.bucket = match (limits.rate_per_s, self.bucket.take()) {
            (Some(r), Some(b)) if b.rate_per_s() == r => Some(b),
            (Some(r), _) => Some(rate::Bucket::new(r, now)),
            (None, _) => None,
        };
        self.limits = limits;
    }
}

/// What a destination sets for its lane.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DestLimits {
    pub(super) max_in_flight: Option<usize>,
    pub(super) rate_per_s: Option<f64>,
    pub(super) backoff: Option<Backoff>,
}

/// Hosts with a label of their own in the metrics, beside destinations'.
const HOST_LABELS: usize = 50;

impl State {
    /// The lane of a request to `uri` (through `dest`, if named): found, or
    /// made.
    pub(super) fn host_for(&mut self, uri: &Uri, dest: Option<&str>) -> u32 {
        if dest.is_none() {
            // Batches mostly go to one host: skip building the key for a repeat.
            if let Some((https, auth, i)) = &self.last_host {
                if uri.authority().map(|a| a.as_str()) == Some(auth.as_str())
                    && (uri.scheme_str() == Some("https")) == *https
                {
                    return *i;
                }
            }
        }
        let i = self.host_for_key(&lane_key(uri, dest), dest);
        if let (Some(a), None) = (uri.authority(), dest) {
            self.last_host = Some((uri.scheme_str() == Some("https"), a.as_str().to_string(), i));
        }
        i
    }

    /// The lane with this key, made on first sight.
    pub(super) fn host_for_key(&mut self, key: &str, dest: Option<&str>) -> u32 {
        if let Some(i) = self.host_index.get(key) {
            return *i;
        }
        let i = self.lanes.add();
        debug_assert_eq!(i as usize, self.hosts.len());
        // Destinations, and the first hosts seen, get a metrics label of
        // their own; the rest share `_other` (bounded label sets).
        let label = if (i as usize) < HOST_LABELS || dest.is_some() {
            key.to_string()
        } else {
            "_other".to_string()
        };
        let mut host = Host {
            key: key.to_string(),
            label,
            breaker: Breaker::default(),
            in_flight: 0,
            pending: 0,
            last_success_ms: 0,
            last_failure_ms: 0,
            last_error: None,
            dest: dest.map(Into::into),
            limits: DestLimits::default(),
            bucket: None,
            rate_wake_ms: 0,
            recent: VecDeque::new(),
        };
        if let Some(l) = dest.and_then(|d| self.dest_limits.get(d)) {
            host.set_limits(*l, now_ms());
        }
        self.hosts.push(host);
        self.host_index.insert(key.to_string(), i);
        i
    }

    /// The backoff of a request's lane: its destination's, else `delivery`'s.
    pub(super) fn backoff_of(&self, id: &str) -> Option<Backoff> {
        let e = self.entries.get(id)?;
        self.hosts.get(e.host as usize)?.limits.backoff
    }
}
