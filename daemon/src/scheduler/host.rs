//! One host (a lane: a host of raw URLs, or a named destination) as the
//! scheduler sees it: its breaker, limits, counts and recent attempts, and
//! how lanes are found or made.

use super::batch::BatchLane;
use super::page::ColdList;
use super::{rate, Breaker, State};
use crate::batch::BatchSpec;
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
    /// Its cold requests, in order ([`super::page`]); counted in `pending`.
    pub(super) cold: ColdList,
    /// Cold requests being read back (also counted in `pending`).
    pub(super) paging: usize,
    /// Pending requests in memory waiting for their `delay_ms`: not
    /// counted against the memory window (a window full of sends due in an
    /// hour must not hold back one due now).
    pub(super) delayed: usize,
    /// In the list of lanes to page in.
    pub(super) page_wanted: bool,
    /// When it was made (Unix ms): a new host is not dropped at once.
    pub(super) created_ms: u64,
    /// Its `ffd_host_attempts_total` counters by result ([`crate::metrics::RESULTS`]),
    /// once looked up.
    pub(super) attempt_counters: Vec<Option<prometheus_client::metrics::counter::Counter>>,
    /// `METHOD url` of its last delivered request, shared by the next ones
    /// to the same URL (see `Entry::last_error`).
    pub(super) delivered_text: Option<Arc<str>>,
    /// Its batches, when its destination batches ([`DestLimits::batch`]).
    pub(super) batch: BatchLane,
}

/// How long a host of raw URLs stays after its last work.
pub(super) const HOST_IDLE_MS: u64 = 30_000;

impl Host {
    /// The place of a dropped host (an empty key), until a new host takes
    /// its number; also what a new host starts from.
    fn vacant() -> Host {
        Host {
            key: String::new(),
            label: String::new(),
            breaker: Breaker::default(),
            in_flight: 0,
            pending: 0,
            last_success_ms: 0,
            last_failure_ms: 0,
            last_error: None,
            dest: None,
            limits: DestLimits::default(),
            bucket: None,
            rate_wake_ms: 0,
            recent: VecDeque::new(),
            cold: ColdList::default(),
            paging: 0,
            delayed: 0,
            page_wanted: false,
            created_ms: 0,
            attempt_counters: Vec::new(),
            delivered_text: None,
            batch: BatchLane::default(),
        }
    }
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
#[derive(Debug, Clone, Default)]
pub(super) struct DestLimits {
    pub(super) max_in_flight: Option<usize>,
    pub(super) rate_per_s: Option<f64>,
    pub(super) backoff: Option<Backoff>,
    /// Its sends are events, sent in batches.
    pub(super) batch: Option<Arc<BatchSpec>>,
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

    /// The lane with this key, made on first sight (taking the number of
    /// a dropped host if there is one).
    pub(super) fn host_for_key(&mut self, key: &str, dest: Option<&str>) -> u32 {
        if let Some(i) = self.host_index.get(key) {
            return *i;
        }
        // Destinations, and the first hosts seen, get a metrics label of
        // their own; the rest share `_other` (bounded label sets, also as
        // hosts come and go).
        let own = dest.is_some()
            || self.labelled.contains(key)
            || (self.labelled.len() < HOST_LABELS && {
                self.labelled.insert(key.to_string());
                true
            });
        let label = if own {
            key.to_string()
        } else {
            "_other".to_string()
        };
        let now = now_ms();
        let mut host = Host {
            key: key.to_string(),
            label,
            dest: dest.map(Into::into),
            created_ms: now,
            ..Host::vacant()
        };
        if let Some(l) = dest.and_then(|d| self.dest_limits.get(d)) {
            host.set_limits(l.clone(), now);
        }
        let i = match self.free_hosts.pop() {
            Some(i) => {
                self.hosts[i as usize] = host;
                i
            }
            None => {
                let i = self.lanes.add();
                debug_assert_eq!(i as usize, self.hosts.len());
                self.hosts.push(host);
                i
            }
        };
        self.host_index.insert(key.to_string(), i);
        i
    }

    /// Drops the hosts of raw URLs that have had nothing to do for
    /// [`HOST_IDLE_MS`]: nothing pending, in flight or paused, and no
    /// request kept for `status` or as a dead letter. A busy day's hosts
    /// do not stay in memory for ever; a host that comes back starts
    /// afresh. Returns how many went.
    pub(super) fn prune_hosts(&mut self, now: u64) -> usize {
        let mut dropped = 0;
        for i in 0..self.hosts.len() as u32 {
            let h = &self.hosts[i as usize];
            let idle_since = h.last_success_ms.max(h.last_failure_ms).max(h.created_ms);
            if h.key.is_empty()
                || h.dest.is_some()
                || h.pending > 0
                || h.in_flight > 0
                || h.paging > 0
                || h.page_wanted
                || h.breaker.paused(now)
                || now.saturating_sub(idle_since) < HOST_IDLE_MS
                || self.entries.refs(i) > 0
                || self.lanes.is_active(i)
            {
                continue;
            }
            let gone = std::mem::replace(&mut self.hosts[i as usize], Host::vacant());
            self.host_index.remove(&gone.key);
            if self.last_host.as_ref().is_some_and(|(_, _, j)| *j == i) {
                self.last_host = None;
            }
            self.lanes.reset(i);
            self.free_hosts.push(i);
            dropped += 1;
        }
        if dropped > 0 {
            // Vacant numbers at the end go, and the memory with them.
            let keep = self
                .hosts
                .iter()
                .rposition(|h| !h.key.is_empty())
                .map_or(0, |p| p + 1);
            self.hosts.truncate(keep);
            if self.hosts.capacity() > 2 * keep.max(16) {
                self.hosts.shrink_to_fit();
            }
            self.lanes.truncate(keep);
            self.free_hosts.retain(|i| (*i as usize) < keep);
            self.free_hosts.shrink_to_fit();
            if self.host_index.capacity() > 4 * self.host_index.len().max(16) {
                self.host_index.shrink_to_fit();
            }
        }
        dropped
    }

    /// The lane a request's `status` and events name. A delivered request
    /// no longer holds its host: its `METHOD url` (see `Entry::last_error`)
    /// names it.
    pub(super) fn host_name(&self, e: &super::entry::Entry) -> String {
        if let Some(h) = self.hosts.get(e.host as usize) {
            return h.key.clone();
        }
        e.last_error
            .as_deref()
            .and_then(|r| r.split_once(' '))
            // A batch's text goes on after the URL (see `super::batch`).
            .and_then(|(_, url)| url.split(' ').next()?.parse::<Uri>().ok())
            .map(|u| crate::job::host_key(&u))
            .unwrap_or_default()
    }

    /// The backoff of a request's lane: its destination's, else `delivery`'s.
    pub(super) fn backoff_of(&self, id: &str) -> Option<Backoff> {
        let e = self.entries.get(id)?;
        self.hosts.get(e.host as usize)?.limits.backoff
    }
}

impl super::Engine {
    /// Drops idle hosts, and gives back memory a burst left, every few
    /// seconds until draining begins.
    pub async fn run_housekeeping(
        self: std::sync::Arc<Self>,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        let mut last_finished = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let history = self.dcfg().status_history;
                    let (dropped, shrunk) = {
                        let mut st = self.lock();
                        (st.prune_hosts(now_ms()), st.shrink(history))
                    };
                    if dropped > 0 {
                        tracing::debug!(hosts = dropped, "idle hosts dropped");
                    }
                    // Requests finished since the last tick freed memory
                    // the allocator would otherwise keep at its peak.
                    let finished = self.metrics.finished_total();
                    if dropped > 0 || shrunk || finished >= last_finished + 10_000 {
                        last_finished = finished;
                        trim_heap();
                    }
                }
                _ = shutdown.draining() => return,
            }
        }
    }
}

/// Gives freed heap memory back to the system. glibc keeps what a burst
/// (many hosts' connections, a page-in) freed in its arenas, so RSS would
/// stay at the burst's peak; `malloc_trim` returns the free pages.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
