//! The scheduler: every accepted request, its state, per-host lanes, timers
//! and the dispatcher that starts deliveries within the limits.
//!
//! Rooms, along a request's path: `admit` (reserve, spool, queue: the door
//! from ingest), `lanes` (per-host queues and the rotation), `breaker` (one
//! host's circuit breaker), `dispatch` (timers, the dispatcher and the
//! delivery tasks), `outcome` (an attempt's result applied), `restore`
//! (replay at start), `dead` (dead letters: list, replay, purge), `compact`
//! (spool compaction), `entry` (what is kept per request), `rate` (a
//! destination's token bucket).
//!
//! A lane (a "host" here) is a URL's `scheme://host:port`, or a named
//! destination: each destination has its own queue, in-flight limit
//! (`max_in_flight`), rate limit (`rate_per_s`), backoff and breaker.
//!
//! One `std::sync::Mutex` guards [`State`]: every critical section is short
//! and never awaits, so a blocking mutex is cheaper than tokio's and cannot
//! be held across a delivery. The spool is called while it is held, so the
//! order of spool records is the order of state changes (the spool's own
//! mutex nests inside this one, never the other way).

mod admit;
mod batch;
mod breaker;
mod cancel;
mod compact;
mod dead;
mod delivered;
mod dispatch;
mod entry;
mod fpset;
mod gauges;
mod history;
mod host;
mod lanes;
mod outcome;
mod page;
mod rate;
mod restore;
mod tail;

pub use admit::{Accepted, Admitted};
pub use batch::{BatchInfo, BATCH_SIZE_HEADER};
pub use breaker::{Breaker, BreakerConfig, Trip};
pub use dead::{EntryView, Viewer};
pub use entry::Phase;
pub use gauges::Health;
pub use history::AttemptRecord;
pub use lanes::Lanes;
pub use restore::RestoreResult;
pub use tail::{Event, Subscription, TAIL_BUFFER};

use crate::batch::BatchSpec;
use crate::clock::now_ms;
use crate::config::{Config, DeliveryConfig, WhenFull};
use crate::delivery::retry::Backoff;
use crate::delivery::Deliverer;
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolStats};
use entry::{Entries, Entry};
use ffd_proto::ErrorCode;
use host::{DestLimits, Host};
use http::{HeaderName, HeaderValue, Uri};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A request's delay or retry wait ends.
    Entry(Arc<str>),
    /// A host's pause ends.
    Host,
}

#[derive(Default)]
struct Counters {
    /// The other counts are the metrics' counters (`Engine::metrics`).
    duplicates: u64,
}

/// Everything behind the scheduler's lock.
struct State {
    entries: Entries,
    hosts: Vec<Host>,
    host_index: HashMap<String, u32>,
    /// Numbers of dropped hosts, for new ones to take.
    free_hosts: Vec<u32>,
    /// Hosts of raw URLs given a metrics label of their own (at most
    /// `HOST_LABELS`, ever).
    labelled: std::collections::HashSet<String>,
    /// The host of the last lookup: (https, authority, index).
    last_host: Option<(bool, String, u32)>,
    lanes: Lanes,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    /// Requests waiting in a lane, by expiry: a request stuck behind a
    /// paused host or a full limit expires on time, not when it leaves
    /// its lane. Removed when it leaves the lane.
    expiry: BTreeSet<(u64, Arc<str>)>,
    /// What `status` keeps of the most recent delivered requests.
    delivered: delivered::Delivered,
    /// Cancelled requests kept for `status`, oldest first.
    finished: VecDeque<Arc<str>>,
    dead: BTreeMap<u64, Arc<str>>,
    next_dead_seq: u64,
    in_flight: usize,
    pending: usize,
    bytes: u64,
    /// Bytes of `JobRef::Hot` jobs.
    hot_bytes: u64,
    /// Pending ids in acceptance order (new sends, replays), and restored
    /// ones (in their own acceptance order): the oldest pending request is
    /// at the front of one of them once finished ones are popped, so
    /// `stats` does not walk every entry.
    arrivals: VecDeque<(u64, Arc<str>)>,
    restored: VecDeque<(u64, Arc<str>)>,
    /// Paged-in ids, in the order they came back (acceptance order within
    /// a lane).
    paged: VecDeque<(u64, Arc<str>)>,
    /// Requests kept in the spool only, and lanes waiting for a page-in.
    cold: page::Cold,
    draining: bool,
    counters: Counters,
    metrics: Arc<Metrics>,
    /// `tail` subscribers (shared with the engine): events are built only
    /// while there are some.
    listening: Arc<AtomicUsize>,
    /// Events built under the lock, sent once it is released.
    outbox: Vec<Arc<tail::Event>>,
    /// The last attempts of recent requests, for `status` (bounded).
    history: history::History,
    /// Each destination's lane settings, by name (reloaded on SIGHUP).
    dest_limits: HashMap<String, DestLimits>,
    /// A rate timer was set that the dispatcher may not know of yet.
    rate_kick: bool,
    /// Events in a batch (in flight, or held to go again), by key.
    batch_of: HashMap<Arc<str>, Arc<BatchInfo>, foldhash::fast::RandomState>,
    /// Events in flight beyond one per request (a batch of n is one
    /// request in `in_flight` and n - 1 here).
    batch_extra: usize,
    /// Lanes with held batches ([`batch`]).
    holding: Vec<u32>,
    /// Accepted-to-delivered times (ms) of a batch's events, observed in
    /// the histogram once the lock is released.
    latencies: Vec<u64>,
    /// Cancels of requests in flight or paged out, carried out later.
    cancels: cancel::Cancels,
}

/// The scheduler and its handles: shared by connections (accept, ops), the
/// dispatcher and delivery tasks.
pub struct Engine {
    /// A segment whose compaction moved nothing, and when: not re-read
    /// every second while that stays so.
    futile_compaction: Mutex<Option<(u64, Instant)>>,
    /// Reloadable on SIGHUP: swapped whole, read as a snapshot.
    delivery: RwLock<Arc<DeliveryConfig>>,
    destinations: RwLock<Arc<Destinations>>,
    max_bytes: u64,
    when_full: WhenFull,
    state: Mutex<State>,
    wake: Notify,
    idle: Notify,
    room: Notify,
    deliverer: Arc<Deliverer>,
    spool: Option<Arc<Spool>>,
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Subscribers of `tail`.
    tail: tokio::sync::broadcast::Sender<Arc<tail::Event>>,
    /// How many there are.
    listening: Arc<AtomicUsize>,
    /// Connections open now.
    pub connections: AtomicUsize,
    started: Instant,
}

/// A destination as admission resolves it.
struct DestSpec {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    ttl_ms: Option<u64>,
    /// Its batch settings: sends to it are events.
    batch: Option<Arc<BatchSpec>>,
    /// Headers ffd sets from credentials (`header_files`, `oauth2`): a
    /// send may not set them.
    credentials: Vec<HeaderName>,
}

type Destinations = HashMap<String, DestSpec>;

fn destinations(cfg: &Config) -> Destinations {
    cfg.destinations
        .iter()
        .filter_map(|(name, d)| {
            let uri: Uri = d.url.trim_end_matches('/').parse().ok()?;
            let headers = d
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect();
            let spec = DestSpec {
                uri,
                headers,
                timeout_ms: d.timeout_ms,
                max_attempts: d.max_attempts,
                ttl_ms: d.ttl_ms,
                batch: d.batch.as_ref().map(|b| Arc::new(b.spec())),
                credentials: d.credential_headers(),
            };
            Some((name.clone(), spec))
        })
        .collect()
}

fn dest_limits(cfg: &Config) -> HashMap<String, DestLimits> {
    let dc = &cfg.delivery;
    cfg.destinations
        .iter()
        .map(|(name, d)| {
            let custom = d.backoff_base_ms.is_some()
                || d.backoff_multiplier.is_some()
                || d.backoff_max_ms.is_some();
            let backoff = custom.then(|| Backoff {
                base_ms: d.backoff_base_ms.unwrap_or(dc.backoff_base_ms),
                multiplier: d.backoff_multiplier.unwrap_or(dc.backoff_multiplier),
                max_ms: d.backoff_max_ms.unwrap_or(dc.backoff_max_ms),
            });
            let limits = DestLimits {
                max_in_flight: d.max_in_flight,
                rate_per_s: d.rate_per_s,
                backoff,
                batch: d.batch.as_ref().map(|b| Arc::new(b.spec())),
            };
            (name.clone(), limits)
        })
        .collect()
}

/// A destination that batched keeps batching until a restart, and one
/// that did not keeps sending one request a send: its queued requests were
/// accepted as events (no headers, a checked body), or as requests (their
/// own method and headers), and must leave as they came. Its batch
/// settings themselves reload.
fn keep_batching(
    running: &Destinations,
    new: &mut Destinations,
    limits: &mut HashMap<String, DestLimits>,
) {
    for (name, spec) in new.iter_mut() {
        let Some(old) = running.get(name) else {
            continue;
        };
        if let (Some(o), Some(n)) = (&old.batch, &spec.batch) {
            if o.format != n.format {
                tracing::warn!(destination = %name, "SIGHUP: changing `destinations.{name}.batch.format` takes a restart (its queued events were checked for the running one); it keeps `{}` until then", o.format.as_str());
                let kept = Arc::new(BatchSpec {
                    format: o.format,
                    ..(**n).clone()
                });
                spec.batch = Some(kept.clone());
                if let Some(l) = limits.get_mut(name) {
                    l.batch = Some(kept);
                }
            }
            continue;
        }
        if old.batch.is_some() == spec.batch.is_some() {
            continue;
        }
        tracing::warn!(
            destination = %name,
            "SIGHUP: adding or removing `destinations.{name}.batch` takes a restart; it keeps {} until then",
            if old.batch.is_some() { "batching" } else { "sending one request a send" }
        );
        spec.batch = old.batch.clone();
        if let Some(l) = limits.get_mut(name) {
            l.batch = old.batch.clone();
        }
    }
}

/// The counters and gauges `stats` shows.
pub struct StatsView {
    /// Sends accepted.
    pub accepted: u64,
    /// Repeated ids acknowledged without queueing again.
    pub duplicates: u64,
    /// Refused lines by code.
    pub rejected: Vec<(ErrorCode, u64)>,
    /// Delivered.
    pub delivered: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Became dead letters (final status, attempts spent).
    pub dead: u64,
    /// Expired (ttl).
    pub expired: u64,
    /// Waiting for a slot or a timer.
    pub queued: usize,
    /// Of those, kept in the spool only (`spool.memory_window`).
    pub paged_out: usize,
    /// Attempts running.
    pub in_flight: usize,
    /// Dead letters kept.
    pub dead_letters: usize,
    /// Age of the oldest pending request.
    pub oldest_pending_age_ms: Option<u64>,
    /// The spool (`None`: memory mode, with its byte count).
    pub spool: Option<SpoolStats>,
    /// Memory mode: bytes held.
    pub memory_bytes: u64,
    /// `spool.max_bytes`.
    pub max_bytes: u64,
    /// Connections open.
    pub connections: usize,
    /// Since start.
    pub uptime_ms: u64,
    /// Hosts with work or history.
    pub hosts: Vec<HostView>,
}

/// One host in `stats`.
pub struct HostView {
    /// `scheme://host:port`.
    pub host: String,
    /// Pending requests.
    pub pending: usize,
    /// Attempts running.
    pub in_flight: usize,
    /// Breaker paused it.
    pub paused: bool,
    /// Failed attempts in a row.
    pub consecutive_failures: u32,
    /// Last 2xx (Unix ms).
    pub last_success_ms: Option<u64>,
    /// Last failure (Unix ms).
    pub last_failure_ms: Option<u64>,
    /// Last error text.
    pub last_error: Option<String>,
    /// Attempts allowed at once now (1 while half-open).
    pub limit: usize,
    /// `closed`, `open` (paused) or `half_open` (one probe at a time).
    pub breaker: &'static str,
    /// Until when it is paused.
    pub paused_until_ms: Option<u64>,
    /// How long its oldest ready request has waited for a slot.
    pub oldest_ready_ms: Option<u64>,
    /// Share of its last 100 attempts that succeeded.
    pub success_rate: Option<f64>,
    /// 95th percentile of its last 100 attempts' durations.
    pub p95_attempt_ms: Option<u64>,
    /// A batching destination: events waiting to be sent (for a batch to
    /// form, or in one held to go again), and batches in flight.
    pub batches: Option<(usize, usize)>,
}

impl Engine {
    /// A scheduler for `cfg`, delivering with `deliverer`, persisting to `spool`
    /// (`None`: memory only).
    pub fn new(cfg: &Config, deliverer: Arc<Deliverer>, spool: Option<Arc<Spool>>) -> Arc<Engine> {
        let metrics = Arc::new(Metrics::new());
        let listening = Arc::new(AtomicUsize::new(0));
        metrics.spool_max_bytes.set(cfg.spool.max_bytes as i64);
        Arc::new(Engine {
            futile_compaction: Mutex::new(None),
            delivery: RwLock::new(Arc::new(cfg.delivery.clone())),
            destinations: RwLock::new(Arc::new(destinations(cfg))),
            max_bytes: cfg.spool.max_bytes,
            when_full: cfg.spool.when_full,
            state: Mutex::new(State {
                entries: Entries::default(),
                hosts: Vec::new(),
                host_index: HashMap::new(),
                free_hosts: Vec::new(),
                labelled: Default::default(),
                last_host: None,
                lanes: Lanes::default(),
                timers: BinaryHeap::new(),
                expiry: BTreeSet::new(),
                delivered: delivered::Delivered::default(),
                finished: VecDeque::new(),
                dead: BTreeMap::new(),
                next_dead_seq: 1,
                in_flight: 0,
                pending: 0,
                bytes: 0,
                hot_bytes: 0,
                arrivals: VecDeque::new(),
                restored: VecDeque::new(),
                paged: VecDeque::new(),
                cold: page::Cold::with_window(cfg.spool.memory_window),
                draining: false,
                counters: Counters::default(),
                metrics: metrics.clone(),
                listening: listening.clone(),
                outbox: Vec::new(),
                history: history::History::default(),
                dest_limits: dest_limits(cfg),
                rate_kick: false,
                batch_of: HashMap::default(),
                batch_extra: 0,
                holding: Vec::new(),
                latencies: Vec::new(),
                cancels: Default::default(),
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            room: Notify::new(),
            deliverer,
            spool,
            metrics,
            tail: tokio::sync::broadcast::channel(TAIL_BUFFER).0,
            listening,
            connections: AtomicUsize::new(0),
            started: Instant::now(),
        })
    }

    fn dcfg(&self) -> Arc<DeliveryConfig> {
        self.delivery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still
        // the best record of what is pending, so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the reloadable parts of a new config (delivery limits and
    /// policy, destinations); returns the keys that changed.
    pub fn reload(&self, cfg: &Config) -> Vec<&'static str> {
        let old = self.dcfg();
        let new = &cfg.delivery;
        let mut changed = Vec::new();
        macro_rules! diff {
            ($($f:ident),*) => {$(
                if old.$f != new.$f {
                    changed.push(concat!("delivery.", stringify!($f)));
                }
            )*};
        }
        diff!(
            max_in_flight,
            max_in_flight_per_host,
            timeout_ms,
            max_attempts,
            ttl_ms,
            backoff_base_ms,
            backoff_multiplier,
            backoff_max_ms,
            retry_on,
            retry_after_max_ms,
            breaker_threshold,
            breaker_cooldown_ms,
            breaker_cooldown_max_ms,
            status_history
        );
        *self.delivery.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new.clone());
        // Secrets (files read again), TLS clients, the policy: all or nothing.
        match self.deliverer.reload(cfg) {
            Ok(()) => {
                let mut dests = destinations(cfg);
                let mut limits = dest_limits(cfg);
                keep_batching(
                    &self.destinations.read().unwrap_or_else(|e| e.into_inner()),
                    &mut dests,
                    &mut limits,
                );
                *self.destinations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dests);
                let now = now_ms();
                let mut st = self.lock();
                for h in st.hosts.iter_mut() {
                    if let Some(d) = &h.dest {
                        h.set_limits(limits.get(&**d).cloned().unwrap_or_default(), now);
                    }
                }
                st.dest_limits = limits;
                drop(st);
                changed.extend(["destinations", "policy"]);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "SIGHUP: destinations and policy not reloaded, keeping the running ones");
            }
        }
        self.wake.notify_one();
        changed
    }

    /// A short line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let st = self.lock();
        format!(
            "{} queued, {} in flight, {} delivered, {} dead letters",
            st.queued(),
            st.in_flight + st.batch_extra,
            self.metrics.finished_count("delivered"),
            st.dead.len()
        )
    }

    /// Counts a refused line.
    pub fn count_rejected(&self, code: ErrorCode) {
        self.metrics.rejected(code);
    }

    /// Stops starting deliveries and waits for the running ones, up to `deadline`.
    /// Returns (still in flight, still pending).
    pub async fn drain(&self, deadline: Duration) -> (usize, usize) {
        self.lock().draining = true;
        self.room.notify_waiters();
        self.wake.notify_one();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.idle.notified();
            {
                let st = self.lock();
                if st.in_flight == 0 {
                    return (0, st.pending);
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                let st = self.lock();
                return (st.in_flight, st.pending);
            }
        }
    }

    /// The counters and gauges for `stats`.
    pub fn stats(&self) -> StatsView {
        let now = now_ms();
        let dcfg = self.dcfg();
        let mut st = self.lock();
        let oldest = st.oldest_pending();
        let hosts = st
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.pending > 0 || h.last_success_ms > 0 || h.last_failure_ms > 0)
            .map(|(i, h)| {
                let (success_rate, p95_attempt_ms) = h.recent_stats();
                let max = h
                    .limits
                    .max_in_flight
                    .unwrap_or(dcfg.max_in_flight_per_host);
                HostView {
                    host: h.key.clone(),
                    pending: h.pending,
                    in_flight: h.in_flight,
                    paused: h.breaker.paused(now),
                    consecutive_failures: h.breaker.failures(),
                    last_success_ms: (h.last_success_ms > 0).then_some(h.last_success_ms),
                    last_failure_ms: (h.last_failure_ms > 0).then_some(h.last_failure_ms),
                    last_error: h.last_error.as_deref().map(Into::into),
                    limit: h.breaker.limit(dcfg.breaker_threshold, max),
                    breaker: h.breaker_state(now, dcfg.breaker_threshold),
                    paused_until_ms: h.breaker.paused(now).then(|| h.breaker.paused_until()),
                    oldest_ready_ms: st
                        .lanes
                        .fronts_of(i as u32)
                        .filter_map(|id| st.entries.get(id))
                        .filter(|e| e.phase == Phase::Queued)
                        .map(|e| now.saturating_sub(e.next_ms))
                        .max(),
                    success_rate,
                    p95_attempt_ms,
                    batches: h.limits.batch.as_ref().map(|_| {
                        (
                            h.pending.saturating_sub(h.batch.events_in_flight),
                            h.in_flight,
                        )
                    }),
                }
            })
            .collect();
        let m = &self.metrics;
        StatsView {
            accepted: m.accepted.get(),
            duplicates: st.counters.duplicates,
            rejected: ErrorCode::ALL
                .iter()
                .map(|c| (*c, m.rejected_count(*c)))
                .collect(),
            delivered: m.finished_count("delivered"),
            retried: m.retries.get(),
            dead: m.finished_count("dead"),
            expired: m.finished_count("expired"),
            queued: st.queued(),
            paged_out: st.cold.len(),
            in_flight: st.in_flight + st.batch_extra,
            dead_letters: st.dead.len(),
            oldest_pending_age_ms: oldest.map(|t| now.saturating_sub(t)),
            spool: self.spool.as_ref().map(|s| s.stats()),
            memory_bytes: st.bytes,
            max_bytes: self.max_bytes,
            connections: self.connections.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            hosts,
        }
    }
}

impl State {
    /// Pending requests not in flight.
    fn queued(&self) -> usize {
        self.pending
            .saturating_sub(self.in_flight + self.batch_extra)
    }

    /// Acceptance time of the oldest pending request.
    fn oldest_pending(&mut self) -> Option<u64> {
        let entries = &self.entries;
        let live = |(at, id): &(u64, Arc<str>)| {
            entries
                .get(id)
                .is_some_and(|e| e.phase.is_pending() && e.accepted_ms == *at)
        };
        while self.arrivals.front().is_some_and(|f| !live(f)) {
            self.arrivals.pop_front();
        }
        while self.restored.front().is_some_and(|f| !live(f)) {
            self.restored.pop_front();
        }
        while self.paged.front().is_some_and(|f| !live(f)) {
            self.paged.pop_front();
        }
        [&self.arrivals, &self.restored, &self.paged]
            .iter()
            .filter_map(|q| q.front().map(|x| x.0))
            .min()
    }

    /// Keeps the oldest-pending queues in proportion to what is pending.
    /// `stats` pops finished requests off their fronts, but nothing else
    /// does, and a request retrying for a day at the front would hold every
    /// later one behind it: past twice the requests pending in memory, the
    /// finished ones go (amortized: the next trim is as many pushes away).
    fn trim_arrivals(&mut self) {
        let limit = 2 * self.pending.saturating_sub(self.cold.len()) + 65_536;
        let entries = &self.entries;
        for q in [&mut self.arrivals, &mut self.restored, &mut self.paged] {
            if q.len() > limit {
                q.retain(|(at, id)| {
                    entries
                        .get(id)
                        .is_some_and(|e| e.phase.is_pending() && e.accepted_ms == *at)
                });
                q.shrink_to(q.len() * 2);
            }
        }
    }

    /// Gives back what a burst grew and no longer uses: the entries'
    /// slots, lane queues, the oldest-pending queues, the timer heap and
    /// the delivered history past `history`. Returns whether anything was.
    fn shrink(&mut self, history: usize) -> bool {
        let mut any = self.entries.shrink();
        any |= self.lanes.shrink();
        self.delivered.shrink(history);
        for q in [&mut self.arrivals, &mut self.restored, &mut self.paged] {
            if q.capacity() > 2 * q.len() + 1024 {
                q.shrink_to_fit();
                any = true;
            }
        }
        if self.timers.capacity() > 2 * self.timers.len() + 1024 {
            self.timers.shrink_to_fit();
            any = true;
        }
        any
    }

    /// Whether a rate timer was set since the last call.
    pub(super) fn take_rate_kick(&mut self) -> bool {
        std::mem::take(&mut self.rate_kick)
    }

    /// Puts an entry in its host's lane (due now) or on the timer heap.
    /// Returns whether the dispatcher must look: work is ready, or the
    /// earliest timer moved earlier than the one it sleeps for.
    fn schedule(&mut self, id: &Arc<str>, at: u64, retry: bool) -> bool {
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        let mut q = Queues {
            lanes: &mut self.lanes,
            timers: &mut self.timers,
            expiry: &mut self.expiry,
        };
        let kick = place(e, id, at, retry, now_ms(), &mut q);
        if !retry && e.phase == Phase::Waiting && !e.delayed {
            e.delayed = true;
            self.hosts[e.host as usize].delayed += 1;
        }
        kick
    }

    /// A request's delay is over (or it ended): it counts against its
    /// lane's memory window again.
    fn undelay(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id).filter(|e| e.delayed) {
            e.delayed = false;
            if let Some(h) = self.hosts.get_mut(e.host as usize) {
                h.delayed -= 1;
            }
        }
    }
}

/// Where a request waits: its host's lane (with its expiry), or a timer.
struct Queues<'a> {
    lanes: &'a mut Lanes,
    timers: &'a mut BinaryHeap<Reverse<(u64, Timer)>>,
    expiry: &'a mut BTreeSet<(u64, Arc<str>)>,
}

impl Queues<'_> {
    /// Puts a request in its host's lane, due now; `next_ms` keeps when it
    /// became ready (for the age of the oldest ready request).
    fn enqueue(&mut self, e: &mut Entry, id: &Arc<str>, retry: bool, now: u64) {
        e.phase = Phase::Queued;
        e.next_ms = now;
        self.lanes.push(e.host, id.clone(), retry);
        self.expiry.insert((e.expires_ms, id.clone()));
    }
}

/// Puts an entry in its host's lane (due now) or on the timer heap; see
/// [`State::schedule`].
fn place(e: &mut Entry, id: &Arc<str>, at: u64, retry: bool, now: u64, q: &mut Queues<'_>) -> bool {
    if at <= now {
        q.enqueue(e, id, retry, now);
        true
    } else {
        e.phase = Phase::Waiting;
        e.next_ms = at;
        let earliest = q
            .timers
            .peek()
            .is_none_or(|Reverse((first, _))| at < *first);
        q.timers.push(Reverse((at, Timer::Entry(id.clone()))));
        earliest
    }
}
