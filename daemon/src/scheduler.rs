//! The scheduler: every accepted request, its state, per-host queues, timers
//! and the dispatcher that starts deliveries within the limits.
//!
//! One `std::sync::Mutex` guards the state: every critical section is short
//! and never awaits, so a blocking mutex is cheaper than tokio's and cannot be
//! held across a delivery. The dispatcher is a single task woken by a
//! `Notify` (new work, a finished attempt) or by the earliest timer.
//!
//! Isolation: each host has its own queues and in-flight limit, hosts are
//! served round-robin, and within a host first attempts and retries alternate,
//! so neither a dead host nor a pile of retries holds back anyone else.

use crate::config::{Config, DeliveryConfig, WhenFull};
use crate::deliver::{Attempt, Deliverer};
use crate::job::{host_key, Job};
use crate::retry::{Backoff, Verdict};
use crate::spool::{Kind, Loc, Outcome, Restored, Spool, SpoolError};
use bytes::Bytes;
use ffd_proto::{ErrorCode, ProtoError, SendRequest, Target};
use http::{HeaderName, HeaderValue, Uri};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Ready, waiting for a free slot.
    Queued,
    /// Waiting for its `delay_ms` or its next retry.
    Waiting,
    /// An attempt is running.
    InFlight,
    /// Delivered (2xx).
    Delivered,
    /// Failed for good: a final status, or attempts spent.
    Dead,
    /// Its ttl passed before it could be delivered.
    Expired,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Waiting => "waiting",
            Phase::InFlight => "in_flight",
            Phase::Delivered => "delivered",
            Phase::Dead => "dead",
            Phase::Expired => "expired",
        }
    }

    fn is_pending(self) -> bool {
        matches!(self, Phase::Queued | Phase::Waiting | Phase::InFlight)
    }
}

/// Where the full request is: in memory (memory mode, or until its spool
/// write returned), on disk (its spool record: the body is not kept in
/// memory), both (a fresh job waiting for its first attempt, within
/// [`HOT_BYTES`], so the common path reads nothing back), or gone (delivered).
#[derive(Clone)]
enum JobRef {
    Mem(Arc<Job>),
    Disk(Loc),
    Hot(Arc<Job>, Loc),
    Gone,
}

/// Bytes of spooled jobs kept in memory until their first attempt. Past it,
/// jobs are read back from the spool: memory stays bounded with a backlog.
const HOT_BYTES: u64 = 32 << 20;

impl JobRef {
    fn loc(&self) -> Option<Loc> {
        match self {
            JobRef::Disk(l) | JobRef::Hot(_, l) => Some(*l),
            _ => None,
        }
    }
}

struct Entry {
    job: JobRef,
    /// False between reserve and the end of its spool write: a duplicate
    /// id must not be acknowledged before the original is safely stored.
    committed: bool,
    host: u32,
    max_attempts: u32,
    expires_ms: u64,
    phase: Phase,
    attempts: u32,
    next_ms: u64,
    accepted_ms: u64,
    finished_ms: u64,
    /// Bytes reserved against `spool.max_bytes`.
    bytes: u64,
    last_status: Option<u16>,
    last_error: Option<Arc<str>>,
    snippet: Option<Box<str>>,
    /// Key in `State::dead` while a dead letter.
    dead_seq: u64,
}

/// Every entry by id: a map from id to a slot in a dense vector. A map of
/// whole entries would hold twice their size in empty buckets at a
/// million pending; this map holds 24 bytes a bucket.
#[derive(Default)]
struct Entries {
    /// foldhash: ids are hashed on every send and every outcome; SipHash
    /// showed as the top user-space cost of ingest.
    index: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
}

impl Entries {
    fn get(&self, id: &str) -> Option<&Entry> {
        let i = *self.index.get(id)?;
        self.slots[i as usize].as_ref()
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        let i = *self.index.get(id)?;
        self.slots[i as usize].as_mut()
    }

    fn get_key_value(&self, id: &str) -> Option<(&Arc<str>, &Entry)> {
        let (k, i) = self.index.get_key_value(id)?;
        Some((k, self.slots[*i as usize].as_ref()?))
    }

    fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts an entry for an id not present.
    fn insert(&mut self, id: Arc<str>, e: Entry) {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(e);
                i
            }
            None => {
                self.slots.push(Some(e));
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(old) = self.index.insert(id, i) {
            // Not expected (callers check first); keep the slots consistent.
            self.slots[old as usize] = None;
            self.free.push(old);
        }
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let i = self.index.remove(id)?;
        self.free.push(i);
        self.slots[i as usize].take()
    }
}

struct Host {
    /// In `State::active`.
    active: bool,
    key: String,
    fresh: VecDeque<Arc<str>>,
    retry: VecDeque<Arc<str>>,
    retry_turn: bool,
    in_flight: usize,
    pending: usize,
    failures: u32,
    paused_until: u64,
    /// When the breaker last tripped.
    tripped_ms: u64,
    cooldown_ms: u64,
    last_success_ms: u64,
    last_failure_ms: u64,
    last_error: Option<Arc<str>>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Entry(Arc<str>),
    Host,
}

#[derive(Default)]
struct Counters {
    accepted: u64,
    delivered: u64,
    retried: u64,
    dead: u64,
    expired: u64,
    duplicates: u64,
}

struct State {
    entries: Entries,
    hosts: Vec<Host>,
    host_index: HashMap<String, u32>,
    /// The host of the last lookup: (https, authority, index).
    last_host: Option<(bool, String, u32)>,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
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
    /// Hosts with queued work, in round-robin order: dispatch looks only at
    /// these, not at every host ever seen.
    active: VecDeque<u32>,
    draining: bool,
    counters: Counters,
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
    rejected: [AtomicU64; ErrorCode::ALL.len()],
    /// Connections open now.
    pub connections: AtomicUsize,
    started: Instant,
}

type Destinations = HashMap<String, (Uri, Vec<(HeaderName, HeaderValue)>)>;

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
            Some((name.clone(), (uri, headers)))
        })
        .collect()
}

fn backoff(d: &DeliveryConfig) -> Backoff {
    Backoff {
        base_ms: d.backoff_base_ms,
        multiplier: d.backoff_multiplier,
        max_ms: d.backoff_max_ms,
    }
}

/// A job handed to a delivery task: its id, where the request is, its host.
type Start = (Arc<str>, JobRef, u32);

/// What restoring a replayed job came to.
pub enum RestoreResult {
    /// Done: true if the job was taken, false if a newer send holds its id.
    Taken(bool),
    /// A send with the same id is still being stored: try again shortly.
    Wait(Restored),
}

/// What reserving room for a send came to.
enum Reserve {
    /// Room reserved; the entry waits for its spool write.
    Reserved,
    /// The spool is full.
    Full,
    /// The id is known and stored: acknowledge, do not queue again.
    Known,
    /// The id is known but its spool write has not finished: wait for it.
    Pending,
}

impl Engine {
    /// A scheduler for `cfg`, delivering with `deliverer`, persisting to `spool`
    /// (`None`: memory only).
    pub fn new(cfg: &Config, deliverer: Arc<Deliverer>, spool: Option<Arc<Spool>>) -> Arc<Engine> {
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
                last_host: None,
                timers: BinaryHeap::new(),
                finished: VecDeque::new(),
                dead: BTreeMap::new(),
                next_dead_seq: 1,
                in_flight: 0,
                pending: 0,
                bytes: 0,
                hot_bytes: 0,
                arrivals: VecDeque::new(),
                restored: VecDeque::new(),
                active: VecDeque::new(),
                draining: false,
                counters: Counters::default(),
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            room: Notify::new(),
            deliverer,
            spool,
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
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
            breaker_threshold,
            breaker_cooldown_ms,
            breaker_cooldown_max_ms,
            status_history
        );
        *self.delivery.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new.clone());
        *self.destinations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(destinations(cfg));
        changed.push("destinations");
        self.wake.notify_one();
        changed
    }

    /// A short line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let st = self.lock();
        format!(
            "{} queued, {} in flight, {} delivered, {} dead letters",
            st.pending - st.in_flight,
            st.in_flight,
            st.counters.delivered,
            st.dead.len()
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still
        // the best record of what is pending, so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a refused line.
    pub fn count_rejected(&self, code: ErrorCode) {
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Turns a validated send into a job, resolving `dest` and the defaults.
    fn make_job(&self, req: SendRequest, now: u64) -> Result<Job, ProtoError> {
        let dcfg = self.dcfg();
        let mut headers: Vec<(HeaderName, HeaderValue)>;
        let uri: Uri = match req.target {
            Target::Url(u) => {
                headers = req.headers;
                u
            }
            Target::Dest { name, path } => {
                let dests = self
                    .destinations
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let (base, dest_headers) = dests.get(&name).ok_or_else(|| {
                    ProtoError::new(
                        ErrorCode::UnknownDest,
                        format!("no destination named {name:?} in the config"),
                    )
                })?;
                headers = Vec::with_capacity(req.headers.len() + dest_headers.len());
                for (k, v) in dest_headers {
                    if !req.headers.iter().any(|(n, _)| n == k) {
                        headers.push((k.clone(), v.clone()));
                    }
                }
                headers.extend(req.headers);
                format!("{base}{path}").parse().map_err(|_| {
                    ProtoError::new(
                        ErrorCode::BadRequest,
                        "destination URL + `path` is not a valid URL",
                    )
                })?
            }
        };
        let method = req.method;
        let id: Arc<str> = match req.id {
            Some(id) => id.into(),
            None => crate::id::new_id(now),
        };
        let ttl = req.ttl_ms.unwrap_or(dcfg.ttl_ms);
        let delay = req.delay_ms.unwrap_or(0);
        if delay >= ttl {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                format!("`delay_ms` ({delay}) must be less than the ttl ({ttl} ms): the request would expire before its first attempt"),
            ));
        }
        Ok(Job {
            id,
            method,
            uri,
            headers,
            body: Bytes::from(req.body),
            timeout_ms: req.timeout_ms.unwrap_or(dcfg.timeout_ms),
            max_attempts: req.max_attempts.unwrap_or(dcfg.max_attempts),
            accepted_ms: now,
            not_before_ms: now.saturating_add(delay),
            expires_ms: now.saturating_add(ttl),
        })
    }

    /// Accepts a batch of sends from one connection: validates, persists (one
    /// spool write for the batch), queues. Results are in the batch's order.
    pub async fn accept(&self, reqs: Vec<SendRequest>) -> Vec<Result<Arc<str>, ProtoError>> {
        let now = now_ms();
        let mut results: Vec<Result<Arc<str>, ProtoError>> = Vec::with_capacity(reqs.len());
        let mut jobs: Vec<(usize, Arc<Job>, u64)> = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.make_job(req, now) {
                Ok(job) => {
                    let bytes = job_bytes(&job);
                    results.push(Ok(job.id.clone()));
                    jobs.push((results.len() - 1, Arc::new(job), bytes));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if jobs.is_empty() {
            return self.count_results(results);
        }
        // A caller id repeated within the batch: later copies share the
        // first one's fate.
        let mut same_as: Vec<(usize, usize)> = Vec::new();
        if jobs.len() > 1 {
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(jobs.len());
            let mut keep = Vec::with_capacity(jobs.len());
            for (k, (i, job, _)) in jobs.iter().enumerate() {
                match seen.get(&*job.id) {
                    Some(first) => same_as.push((*i, *first)),
                    None => {
                        seen.insert(&job.id, *i);
                        keep.push(k);
                    }
                }
            }
            if !same_as.is_empty() {
                let mut all: Vec<Option<(usize, Arc<Job>, u64)>> =
                    jobs.into_iter().map(Some).collect();
                jobs = keep.into_iter().filter_map(|k| all[k].take()).collect();
            }
        }
        // Reserve room, skipping ids already known (idempotency key).
        let mut fresh: Vec<(usize, Arc<Job>, u64)> = Vec::with_capacity(jobs.len());
        for (i, job, bytes) in jobs {
            let mut waited = 0u32;
            loop {
                let notified = self.room.notified();
                match self.reserve(&job, bytes) {
                    Ok(Reserve::Known) => break,
                    Ok(Reserve::Reserved) => {
                        fresh.push((i, job, bytes));
                        break;
                    }
                    Ok(Reserve::Pending) if waited < 5000 => {
                        // Another connection's send with this id is being
                        // written: its outcome decides what this one gets.
                        waited += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(Reserve::Pending) => {
                        results[i] = Err(ProtoError::new(
                            ErrorCode::Internal,
                            "a send with this id is still being stored; try again",
                        ));
                        break;
                    }
                    Ok(Reserve::Full) if self.when_full == WhenFull::Block => {
                        // Room comes back when the spool writer deletes a
                        // segment, which sends no wake-up: look again soon.
                        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                    }
                    Ok(Reserve::Full) => {
                        results[i] = Err(ProtoError::new(
                            ErrorCode::SpoolFull,
                            format!(
                                "spool is full ({} bytes max); nothing was accepted, try again later",
                                self.max_bytes
                            ),
                        ));
                        break;
                    }
                    Err(e) => {
                        results[i] = Err(e);
                        break;
                    }
                }
            }
        }
        let mut locs: Vec<Loc> = Vec::new();
        if let Some(spool) = &self.spool {
            if !fresh.is_empty() {
                let batch: Vec<Arc<Job>> = fresh.iter().map(|(_, j, _)| j.clone()).collect();
                let appended = loop {
                    match spool.append(batch.clone()).await {
                        // `when_full = "block"`: a full disk waits like a full spool.
                        Err(SpoolError::DiskFull(_))
                            if self.when_full == WhenFull::Block && !self.lock().draining =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => break other,
                    }
                };
                match appended {
                    Ok(l) => locs = l,
                    Err(e) => {
                        let mut st = self.lock();
                        for (i, job, bytes) in fresh.drain(..) {
                            st.bytes -= bytes;
                            st.entries.remove(&job.id);
                            results[i] = Err(ProtoError::new(e.code(), e.to_string()));
                        }
                    }
                }
            }
        }
        if !fresh.is_empty() {
            let mut st = self.lock();
            let mut kick = false;
            for (k, (_, job, _)) in fresh.iter().enumerate() {
                kick |= st.commit(job, locs.get(k).copied());
            }
            st.counters.accepted += fresh.len() as u64;
            st.counters.duplicates += same_as.len() as u64;
            drop(st);
            // Sends delayed past the dispatcher's next timer need no wake-up
            // (a wake-up costs a context switch on the ACK path).
            if kick {
                self.wake.notify_one();
            }
        }
        for (i, first) in same_as {
            results[i] = results[first].clone();
        }
        self.count_results(results)
    }

    fn count_results(
        &self,
        results: Vec<Result<Arc<str>, ProtoError>>,
    ) -> Vec<Result<Arc<str>, ProtoError>> {
        for r in &results {
            if let Err(e) = r {
                self.count_rejected(e.code);
            }
        }
        results
    }

    /// Reserves room for a job and inserts it as not yet committed.
    /// `Ok(None)`: the id is already known, nothing to do.
    fn reserve(&self, job: &Arc<Job>, bytes: u64) -> Result<Reserve, ProtoError> {
        let mut st = self.lock();
        if st.draining {
            return Err(ProtoError::new(
                ErrorCode::ShuttingDown,
                "ffd is shutting down and accepts no new requests",
            ));
        }
        let used = match &self.spool {
            Some(s) => s.bytes(),
            None => st.bytes,
        };
        let host = st.host_for(&job.uri);
        if let Some(e) = st.entries.get(&job.id) {
            if !e.committed {
                return Ok(Reserve::Pending);
            }
            st.counters.duplicates += 1;
            return Ok(Reserve::Known);
        }
        if used + bytes > self.max_bytes {
            return Ok(Reserve::Full);
        }
        st.bytes += bytes;
        st.entries.insert(
            job.id.clone(),
            Entry {
                job: JobRef::Mem(job.clone()),
                committed: false,
                host,
                max_attempts: job.max_attempts,
                expires_ms: job.expires_ms,
                // Not queued until committed: an entry in this phase with no
                // timer and no queue slot is invisible to the dispatcher.
                phase: Phase::Waiting,
                attempts: 0,
                next_ms: u64::MAX,
                accepted_ms: job.accepted_ms,
                finished_ms: 0,
                bytes,
                last_status: None,
                last_error: None,
                snippet: None,
                dead_seq: 0,
            },
        );
        Ok(Reserve::Reserved)
    }

    /// Restores a job read back from the spool at start-up, in its recorded
    /// state: pending (due at its next attempt) or a dead letter.
    /// `Taken(false)` when a newer send with the same id already holds it;
    /// `Wait(r)` when that send is still being stored (its outcome decides).
    pub fn restore(&self, r: Restored) -> RestoreResult {
        let mut st = self.lock();
        if let Some(e) = st.entries.get(&r.id) {
            if !e.committed {
                return RestoreResult::Wait(r);
            }
            return RestoreResult::Taken(false);
        }
        let Restored {
            id,
            host,
            max_attempts,
            accepted_ms,
            not_before_ms,
            expires_ms,
            loc,
            state: o,
        } = r;
        // What the spool holds for it, roughly (memory-mode accounting only).
        let bytes = loc.len as u64;
        let host = st.host_for_key(&host);
        let dead = o.dead_phase();
        st.entries.insert(
            id.clone(),
            Entry {
                job: JobRef::Disk(loc),
                committed: true,
                host,
                max_attempts,
                expires_ms,
                phase: dead.unwrap_or(Phase::Waiting),
                attempts: o.attempts,
                next_ms: u64::MAX,
                accepted_ms,
                finished_ms: if dead.is_some() { o.at_ms } else { 0 },
                bytes,
                last_status: o.status,
                last_error: o.error,
                snippet: o.snippet.map(Into::into),
                dead_seq: 0,
            },
        );
        st.bytes += bytes;
        if dead.is_some() {
            let seq = st.next_dead_seq;
            st.next_dead_seq += 1;
            if let Some(e) = st.entries.get_mut(&id) {
                e.dead_seq = seq;
            }
            st.dead.insert(seq, id);
            return RestoreResult::Taken(true);
        }
        st.pending += 1;
        st.hosts[host as usize].pending += 1;
        st.restored.push_back((accepted_ms, id.clone()));
        let at = o.next_ms.max(not_before_ms);
        let kick = st.schedule(&id, at, o.attempts > 0);
        drop(st);
        if kick {
            self.wake.notify_one();
        }
        RestoreResult::Taken(true)
    }

    /// Remembers a job delivered before the restart, for `status` only.
    pub fn restore_delivered(&self, r: Restored) {
        let history = self.dcfg().status_history;
        let mut st = self.lock();
        if st.entries.contains_key(&r.id) || history == 0 {
            return;
        }
        let host = st.host_for_key(&r.host);
        st.entries.insert(
            r.id.clone(),
            Entry {
                job: JobRef::Gone,
                committed: true,
                host,
                max_attempts: r.max_attempts,
                expires_ms: r.expires_ms,
                phase: Phase::Delivered,
                attempts: r.state.attempts,
                next_ms: u64::MAX,
                accepted_ms: r.accepted_ms,
                finished_ms: r.state.at_ms,
                bytes: 0,
                last_status: r.state.status,
                last_error: None,
                snippet: r.state.snippet.map(Into::into),
                dead_seq: 0,
            },
        );
        st.remember_delivered(r.id, history);
    }

    /// Re-appends the live jobs of the spool's oldest segment when few are
    /// left in it, so the segment can be deleted. Called from time to time.
    pub fn compact(&self) {
        let Some(spool) = &self.spool else { return };
        let Some(seg) = spool.compaction_candidate() else {
            return;
        };
        {
            let futile = self
                .futile_compaction
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if matches!(*futile, Some((s, at)) if s == seg && at.elapsed() < Duration::from_secs(60))
            {
                return;
            }
        }
        let jobs = spool.jobs_in(seg);
        let mut st = self.lock();
        let mut n = 0;
        let mut busy = 0;
        for (job, loc) in jobs {
            let Some(e) = st.entries.get_mut(&job.id) else {
                continue;
            };
            // Only the job's latest record matters; older copies are dead weight.
            if e.job.loc() != Some(loc) {
                continue;
            }
            let kind = match e.phase {
                Phase::Dead => Kind::Dead,
                Phase::Expired => Kind::Expired,
                Phase::Delivered => continue,
                // Its delivery task may be about to read the old record:
                // moving it now could make that read fail. Next round.
                Phase::InFlight => {
                    busy += 1;
                    continue;
                }
                _ => Kind::Retry,
            };
            let state = Outcome {
                kind,
                attempts: e.attempts,
                next_ms: if e.phase == Phase::Waiting {
                    e.next_ms
                } else {
                    0
                },
                status: e.last_status,
                error: e.last_error.clone(),
                snippet: e.snippet.as_deref().map(Into::into),
                at_ms: now_ms(),
            };
            // Written under the state lock, so no outcome of this job can be
            // ordered before its copy.
            let moved = spool.rewrite(&job, state, Some(loc));
            e.job = match &e.job {
                JobRef::Hot(j, _) => JobRef::Hot(j.clone(), moved),
                _ => JobRef::Disk(moved),
            };
            n += 1;
        }
        spool.retire(seg);
        drop(st);
        debug!(segment = seg, jobs = n, busy, "compacted spool segment");
        if n == 0 && busy == 0 {
            warn!(
                segment = seg,
                "spool segment counted live jobs the scheduler does not hold; left in place"
            );
            *self
                .futile_compaction
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((seg, Instant::now()));
        }
    }

    /// Runs the dispatcher until the engine drains.
    pub async fn run_dispatcher(self: Arc<Self>) {
        loop {
            let notified = self.wake.notified();
            let (starts, next) = {
                let mut st = self.lock();
                let now = now_ms();
                let starts = st.collect(now, &self.dcfg(), self.spool.as_deref());
                (starts, st.timers.peek().map(|Reverse((at, _))| *at))
            };
            for start in starts {
                let me = self.clone();
                tokio::spawn(async move {
                    // A delivery task goes on with the next job that may
                    // start (round-robin, within the limits) instead of
                    // ending and waking the dispatcher: no spawn and no
                    // wake-up per request while there is work.
                    let mut next = Some(start);
                    while let Some((id, job, host)) = next.take() {
                        next = match me.load(&job) {
                            Ok(job) if *job.id == *id => {
                                let attempt = me.deliverer.attempt(&job).await;
                                me.finish(&id, host, &job, attempt)
                            }
                            Ok(_) => me.unreadable(
                                &id,
                                host,
                                "spool record belongs to another request".into(),
                            ),
                            Err(e) => me.unreadable(&id, host, e),
                        };
                    }
                });
            }
            match next {
                Some(at) => {
                    let wait = at.saturating_sub(now_ms());
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_millis(wait.max(1))) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The full job: from memory, or read back from its spool record.
    fn load(&self, r: &JobRef) -> Result<Arc<Job>, String> {
        match r {
            JobRef::Mem(j) | JobRef::Hot(j, _) => Ok(j.clone()),
            JobRef::Disk(loc) => match &self.spool {
                Some(s) => s.read(*loc),
                None => Err("no spool".into()),
            },
            JobRef::Gone => Err("request already finished".into()),
        }
    }

    /// A job whose spool record cannot be read can never be delivered: it
    /// becomes a dead letter that says why, instead of vanishing.
    fn unreadable(&self, id: &Arc<str>, host: u32, error: String) -> Option<Start> {
        let now = now_ms();
        let history = self.dcfg().status_history;
        let mut st = self.lock();
        st.in_flight -= 1;
        st.hosts[host as usize].in_flight -= 1;
        if let Some(e) = st.entries.get_mut(id) {
            e.last_error = Some(error.as_str().into());
            let attempts = e.attempts;
            let at = e.job.loc();
            error!(id = %id, error = %error, "cannot load request from the spool; kept as dead letter");
            st.end(id, Phase::Dead, now, history);
            if let Some(s) = &self.spool {
                let mut o = Outcome::expired(attempts, now);
                o.kind = Kind::Dead;
                o.error = Some(error.into());
                s.record(id, at, o);
            }
        }
        drop(st);
        self.wake.notify_one();
        self.idle.notify_waiters();
        None
    }

    /// Applies an attempt's outcome; returns the next job for the same task.
    fn finish(&self, id: &Arc<str>, host: u32, job: &Arc<Job>, a: Attempt) -> Option<Start> {
        let now = now_ms();
        let dcfg = self.dcfg();
        // Set when a timer may now be due before the dispatcher's next wake.
        let mut kick = false;
        let mut st = self.lock();
        let host = host as usize;
        // Counters first: whatever happened to the entry, the slot is free.
        st.in_flight -= 1;
        st.hosts[host].in_flight -= 1;
        let st_last_error = st.hosts[host].last_error.clone();
        let Some(e) = st.entries.get_mut(id) else {
            drop(st);
            self.wake.notify_one();
            self.idle.notify_waiters();
            return None;
        };
        e.attempts = e.attempts.saturating_add(1);
        e.last_status = a.status;
        // Many requests fail the same way: share the host's copy of the text.
        let err: Option<Arc<str>> = a.error.as_deref().map(|msg| match &st_last_error {
            Some(x) if &**x == msg => x.clone(),
            _ => Arc::from(msg),
        });
        e.last_error = err.clone();
        e.snippet = a.snippet.clone().map(Into::into);
        let attempts = e.attempts;
        let here = e.job.loc();
        // Only built when a log line will be written.
        let url = tracing::field::display(crate::job::Redacted(&job.uri));
        let end = match a.verdict {
            Verdict::Success => {
                let h = &mut st.hosts[host];
                kick |= h.answered(now, dcfg.breaker_threshold);
                h.last_success_ms = now;
                debug!(id = %job.id, url, status = a.status, attempts, "delivered");
                Some(Phase::Delivered)
            }
            Verdict::Final => {
                // The host answered: it is alive, whatever it thought of the request.
                let h = &mut st.hosts[host];
                kick |= h.answered(now, dcfg.breaker_threshold);
                h.last_failure_ms = now;
                h.last_error = err.clone();
                warn!(id = %job.id, url, status = a.status, attempts, "delivery failed for good (final status); kept as dead letter");
                Some(Phase::Dead)
            }
            Verdict::Retry => {
                let breaker_cfg = (
                    dcfg.breaker_threshold,
                    dcfg.breaker_cooldown_ms,
                    dcfg.breaker_cooldown_max_ms,
                );
                let h = &mut st.hosts[host];
                h.last_failure_ms = now;
                h.last_error = err.clone();
                let mut paused = None;
                // Only attempts that began after the last trip count: the
                // ones already in flight when it tripped say nothing new.
                if a.started_ms >= h.tripped_ms && h.paused_until <= now {
                    h.failures += 1;
                    if h.failures >= breaker_cfg.0 {
                        h.cooldown_ms = if h.cooldown_ms == 0 {
                            breaker_cfg.1
                        } else {
                            (h.cooldown_ms * 2).min(breaker_cfg.2)
                        };
                        h.paused_until = now + h.cooldown_ms;
                        h.tripped_ms = now;
                        paused = Some((h.paused_until, h.cooldown_ms, h.key.clone(), h.failures));
                    }
                }
                if let Some((until, cooldown, key, failures)) = paused {
                    st.timers.push(Reverse((until, Timer::Host)));
                    kick = true;
                    warn!(host = %key, failures, pause_ms = cooldown, "host keeps failing; pausing deliveries to it");
                }
                if attempts >= job.max_attempts {
                    warn!(id = %job.id, url, status = a.status, error = a.error.as_deref(), attempts, "delivery failed, attempts spent; kept as dead letter");
                    Some(Phase::Dead)
                } else {
                    let wait = backoff(&dcfg).wait_ms(attempts, fastrand::f64(), a.retry_after_ms);
                    let at = now + wait;
                    if at >= job.expires_ms {
                        warn!(id = %job.id, url, attempts, "ttl passes before the next attempt; expired");
                        Some(Phase::Expired)
                    } else {
                        debug!(id = %job.id, url, status = a.status, error = a.error.as_deref(), attempts, wait_ms = wait, "delivery failed; will retry");
                        st.counters.retried += 1;
                        st.cool(id);
                        kick |= st.schedule(id, at, true);
                        if let Some(s) = &self.spool {
                            s.record(&job.id, here, Outcome::retry(attempts, at, &a, now));
                        }
                        None
                    }
                }
            }
        };
        if let Some(phase) = end {
            st.end(&job.id, phase, now, dcfg.status_history);
            if let Some(s) = &self.spool {
                s.record(&job.id, here, Outcome::end(phase, attempts, &a, now));
            }
        }
        let next = st.take_one(now, &dcfg, self.spool.as_deref());
        let idle = st.in_flight == 0;
        drop(st);
        if next.is_none() || kick {
            // A slot is free (the dispatcher may have work for it
            // elsewhere), or a new timer may be due before its next wake.
            self.wake.notify_one();
        }
        if end == Some(Phase::Delivered) {
            self.room.notify_waiters();
        }
        if idle {
            self.idle.notify_waiters();
        }
        next
    }

    /// Stops starting deliveries and waits for the running ones, up to `deadline`.
    /// Returns (still in flight, still pending).
    pub async fn drain(&self, deadline: Duration) -> (usize, usize) {
        self.lock().draining = true;
        self.room.notify_waiters();
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

    /// `stats` op.
    pub fn stats(&self) -> Value {
        let now = now_ms();
        let mut st = self.lock();
        let mut rejected = serde_json::Map::new();
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            rejected.insert(
                c.as_str().into(),
                self.rejected[i].load(Ordering::Relaxed).into(),
            );
        }
        let oldest = st.oldest_pending();
        let hosts: Vec<Value> = st
            .hosts
            .iter()
            .filter(|h| h.pending > 0 || h.last_success_ms > 0 || h.last_failure_ms > 0)
            .map(|h| {
                json!({
                    "host": h.key,
                    "pending": h.pending,
                    "in_flight": h.in_flight,
                    "paused": h.paused_until > now,
                    "consecutive_failures": h.failures,
                    "last_success_ms": (h.last_success_ms > 0).then_some(h.last_success_ms),
                    "last_failure_ms": (h.last_failure_ms > 0).then_some(h.last_failure_ms),
                    "last_error": h.last_error.as_deref(),
                })
            })
            .collect();
        let queued = st.pending - st.in_flight;
        json!({
            "accepted": st.counters.accepted,
            "duplicates": st.counters.duplicates,
            "rejected": rejected,
            "delivered": st.counters.delivered,
            "retried": st.counters.retried,
            "dead": st.counters.dead,
            "expired": st.counters.expired,
            "queued": queued,
            "in_flight": st.in_flight,
            "dead_letters": st.dead.len(),
            "oldest_pending_age_ms": oldest.map(|t| now.saturating_sub(t)),
            "spool": match &self.spool {
                Some(s) => s.stats(),
                None => json!({"mode": "memory", "bytes": st.bytes, "max_bytes": self.max_bytes}),
            },
            "connections": self.connections.load(Ordering::Relaxed),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "hosts": hosts,
        })
    }

    /// `status` op: `None` when the id is unknown.
    pub fn status(&self, id: &str) -> Option<Value> {
        let (r, mut v) = {
            let st = self.lock();
            let e = st.entries.get(id)?;
            (e.job.clone(), entry_json(id, e, &st))
        };
        self.add_request(&r, &mut v);
        Some(v)
    }

    /// Method and URL, read back from the spool outside the state lock.
    fn add_request(&self, r: &JobRef, v: &mut Value) {
        if let Ok(job) = self.load(r) {
            v["method"] = job.method.as_str().into();
            v["url"] = job.uri.to_string().into();
        }
    }

    /// `dead` op: dead letters, oldest first, at most `limit`.
    pub fn dead(&self, limit: Option<usize>) -> Value {
        let list: Vec<(JobRef, Value)> = {
            let st = self.lock();
            let n = st.dead.len();
            let skip = limit.map(|l| n.saturating_sub(l)).unwrap_or(0);
            st.dead
                .values()
                .skip(skip)
                .filter_map(|id| {
                    st.entries
                        .get(id)
                        .map(|e| (e.job.clone(), entry_json(id, e, &st)))
                })
                .collect()
        };
        Value::Array(
            list.into_iter()
                .map(|(r, mut v)| {
                    self.add_request(&r, &mut v);
                    v
                })
                .collect(),
        )
    }

    /// `replay` op: dead letters go back to the queue with fresh attempts and ttl.
    pub fn replay(&self, id: Option<&str>) -> Result<usize, ProtoError> {
        // Read the requests back outside the state lock: replaying many
        // dead letters must not stall every ACK meanwhile.
        let picked: Vec<(Arc<str>, JobRef)> = {
            let st = self.lock();
            st.select_dead(id)?
                .into_iter()
                .filter_map(|id| st.entries.get(&id).map(|e| (id.clone(), e.job.clone())))
                .collect()
        };
        let mut loaded = Vec::with_capacity(picked.len());
        for (id, r) in picked {
            match self.load(&r) {
                Ok(j) => loaded.push((id, r, j)),
                Err(err) => warn!(id = %id, error = %err, "cannot replay: request unreadable"),
            }
        }
        let now = now_ms();
        let mut st = self.lock();
        let mut n = 0;
        for (id, r, old) in loaded {
            let Some(e) = st.entries.get_mut(&id) else {
                continue;
            };
            // Purged or replayed by someone else meanwhile.
            if !matches!(e.phase, Phase::Dead | Phase::Expired) || e.job.loc() != r.loc() {
                continue;
            }
            let mut job = (*old).clone();
            let ttl = old.expires_ms.saturating_sub(old.accepted_ms);
            job.accepted_ms = now;
            job.not_before_ms = now;
            job.expires_ms = now.saturating_add(ttl);
            e.expires_ms = job.expires_ms;
            e.job = match &self.spool {
                Some(s) => JobRef::Disk(s.replay(&job, r.loc())),
                None => JobRef::Mem(Arc::new(job)),
            };
            e.attempts = 0;
            e.accepted_ms = now;
            e.finished_ms = 0;
            e.last_status = None;
            e.last_error = None;
            e.snippet = None;
            let seq = e.dead_seq;
            let host = e.host as usize;
            st.dead.remove(&seq);
            st.pending += 1;
            st.hosts[host].pending += 1;
            st.arrivals.push_back((now, id.clone()));
            st.schedule(&id, now, false);
            n += 1;
        }
        drop(st);
        info!(count = n, "dead letters replayed");
        self.wake.notify_one();
        Ok(n)
    }

    /// `purge` op: dead letters are forgotten.
    pub fn purge(&self, id: Option<&str>) -> Result<usize, ProtoError> {
        let mut st = self.lock();
        let ids = st.select_dead(id)?;
        for id in &ids {
            if let Some(e) = st.entries.remove(id) {
                st.dead.remove(&e.dead_seq);
                st.bytes -= e.bytes;
                if let Some(s) = &self.spool {
                    s.record(id, e.job.loc(), Outcome::purged(now_ms()));
                }
            }
        }
        drop(st);
        info!(count = ids.len(), "dead letters purged");
        self.room.notify_waiters();
        Ok(ids.len())
    }
}

/// Bytes a job is charged against `max_bytes` (memory mode).
fn job_bytes(job: &Job) -> u64 {
    let headers: usize = job
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (job.body.len() + headers + job.id.len() + 128) as u64
}

fn entry_json(id: &str, e: &Entry, st: &State) -> Value {
    json!({
        "id": id,
        "state": e.phase.as_str(),
        "attempts": e.attempts,
        "max_attempts": e.max_attempts,
        "method": Value::Null,
        "url": Value::Null,
        "host": st.hosts[e.host as usize].key,
        "accepted_ms": e.accepted_ms,
        "next_attempt_ms": (e.phase == Phase::Waiting && e.next_ms != u64::MAX).then_some(e.next_ms),
        "expires_ms": e.expires_ms,
        "finished_ms": (e.finished_ms > 0).then_some(e.finished_ms),
        "last_status": e.last_status,
        "last_error": e.last_error.as_deref(),
        "response": e.snippet.as_deref(),
    })
}

/// Puts an entry in its host's queue (due now) or on the timer heap.
/// Returns whether the dispatcher must look: work is ready, or the
/// earliest timer moved earlier than the one it sleeps for.
#[allow(clippy::too_many_arguments)]
fn place(
    e: &mut Entry,
    id: &Arc<str>,
    at: u64,
    retry: bool,
    now: u64,
    hosts: &mut [Host],
    active: &mut VecDeque<u32>,
    timers: &mut BinaryHeap<Reverse<(u64, Timer)>>,
) -> bool {
    if at <= now {
        e.phase = Phase::Queued;
        e.next_ms = u64::MAX;
        enqueue(hosts, active, e.host, id.clone(), retry);
        true
    } else {
        e.phase = Phase::Waiting;
        e.next_ms = at;
        let earliest = timers.peek().is_none_or(|Reverse((first, _))| at < *first);
        timers.push(Reverse((at, Timer::Entry(id.clone()))));
        earliest
    }
}

impl Host {
    /// The host answered (any status): the breaker closes. Returns whether
    /// it was limited (paused or half-open), in which case leaving that
    /// state raises its limit and the dispatcher must fill the new slots.
    fn answered(&mut self, now: u64, threshold: u32) -> bool {
        let was_limited = self.failures >= threshold || self.paused_until > now;
        self.failures = 0;
        self.paused_until = 0;
        self.cooldown_ms = 0;
        was_limited
    }
}

/// Appends a queued id to its host's queue, and the host to the active ones.
fn enqueue(hosts: &mut [Host], active: &mut VecDeque<u32>, host: u32, id: Arc<str>, retry: bool) {
    let h = &mut hosts[host as usize];
    if retry {
        h.retry.push_back(id);
    } else {
        h.fresh.push_back(id);
    }
    if !h.active {
        h.active = true;
        active.push_back(host);
    }
}

impl State {
    /// Keeps a delivered id for `status`, forgetting the oldest past `history`.
    fn remember_delivered(&mut self, id: Arc<str>, history: usize) {
        self.finished.push_back(id);
        while self.finished.len() > history {
            if let Some(old) = self.finished.pop_front() {
                if self
                    .entries
                    .get(&old)
                    .is_some_and(|e| e.phase == Phase::Delivered)
                {
                    self.entries.remove(&old);
                }
            }
        }
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
        match (self.arrivals.front(), self.restored.front()) {
            (Some(a), Some(r)) => Some(a.0.min(r.0)),
            (a, r) => a.or(r).map(|x| x.0),
        }
    }

    /// A hot job leaves memory (its first attempt is done, or it ended).
    fn cool(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            if let JobRef::Hot(_, loc) = e.job {
                e.job = JobRef::Disk(loc);
                self.hot_bytes -= e.bytes;
            }
        }
    }

    fn host_for(&mut self, uri: &Uri) -> u32 {
        // Batches mostly go to one host: skip building the key for a repeat.
        if let Some((https, auth, i)) = &self.last_host {
            if uri.authority().map(|a| a.as_str()) == Some(auth.as_str())
                && (uri.scheme_str() == Some("https")) == *https
            {
                return *i;
            }
        }
        let i = self.host_index_of(uri);
        if let Some(a) = uri.authority() {
            self.last_host = Some((uri.scheme_str() == Some("https"), a.as_str().to_string(), i));
        }
        i
    }

    fn host_index_of(&mut self, uri: &Uri) -> u32 {
        self.host_for_key(&host_key(uri))
    }

    fn host_for_key(&mut self, key: &str) -> u32 {
        if let Some(i) = self.host_index.get(key) {
            return *i;
        }
        let i = self.hosts.len() as u32;
        self.hosts.push(Host {
            active: false,
            key: key.to_string(),
            fresh: VecDeque::new(),
            retry: VecDeque::new(),
            retry_turn: false,
            in_flight: 0,
            pending: 0,
            failures: 0,
            paused_until: 0,
            tripped_ms: 0,
            cooldown_ms: 0,
            last_success_ms: 0,
            last_failure_ms: 0,
            last_error: None,
        });
        self.host_index.insert(key.to_string(), i);
        i
    }

    /// Makes a reserved entry pending: queued now, or at its `delay_ms`.
    /// With a spool location, the body is dropped from memory.
    fn commit(&mut self, job: &Arc<Job>, loc: Option<Loc>) -> bool {
        let Some(e) = self.entries.get_mut(&job.id) else {
            return false;
        };
        if e.next_ms != u64::MAX || e.phase != Phase::Waiting {
            return false;
        }
        e.committed = true;
        if let Some(loc) = loc {
            e.job = if self.hot_bytes + e.bytes <= HOT_BYTES {
                self.hot_bytes += e.bytes;
                JobRef::Hot(job.clone(), loc)
            } else {
                JobRef::Disk(loc)
            };
        }
        let host = e.host as usize;
        self.pending += 1;
        self.hosts[host].pending += 1;
        self.arrivals.push_back((job.accepted_ms, job.id.clone()));
        place(
            e,
            &job.id,
            job.not_before_ms,
            false,
            now_ms(),
            &mut self.hosts,
            &mut self.active,
            &mut self.timers,
        )
    }

    /// Queues an entry at `at` (now or later); `retry` picks the retry queue.
    /// Returns whether the dispatcher must look (see [`place`]).
    fn schedule(&mut self, id: &Arc<str>, at: u64, retry: bool) -> bool {
        match self.entries.get_mut(id) {
            Some(e) => place(
                e,
                id,
                at,
                retry,
                now_ms(),
                &mut self.hosts,
                &mut self.active,
                &mut self.timers,
            ),
            None => false,
        }
    }

    /// Moves an entry to an end state.
    fn end(&mut self, id: &Arc<str>, phase: Phase, now: u64, history: usize) {
        self.cool(id);
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let was_pending = e.phase.is_pending();
        e.phase = phase;
        e.finished_ms = now;
        let host = e.host as usize;
        match phase {
            Phase::Delivered => {
                e.job = JobRef::Gone;
                self.bytes -= e.bytes;
                e.bytes = 0;
                self.counters.delivered += 1;
                self.remember_delivered(id.clone(), history);
            }
            Phase::Dead | Phase::Expired => {
                let seq = self.next_dead_seq;
                self.next_dead_seq += 1;
                e.dead_seq = seq;
                self.dead.insert(seq, id.clone());
                if phase == Phase::Dead {
                    self.counters.dead += 1;
                } else {
                    self.counters.expired += 1;
                }
            }
            _ => {}
        }
        if was_pending {
            self.pending -= 1;
            self.hosts[host].pending -= 1;
        }
    }

    fn select_dead(&self, id: Option<&str>) -> Result<Vec<Arc<str>>, ProtoError> {
        match id {
            None => Ok(self.dead.values().cloned().collect()),
            Some(id) => match self.entries.get_key_value(id) {
                Some((k, e)) if matches!(e.phase, Phase::Dead | Phase::Expired) => {
                    Ok(vec![k.clone()])
                }
                Some((_, e)) => Err(ProtoError::new(
                    ErrorCode::BadRequest,
                    format!("{id} is {}, not a dead letter", e.phase.as_str()),
                )),
                None => Err(ProtoError::new(
                    ErrorCode::NotFound,
                    format!("no request with id {id}"),
                )),
            },
        }
    }

    /// Fires due timers and picks the jobs to start now, within the limits.
    /// Requests found expired on the way are recorded in the spool here,
    /// under the state lock like every other state change.
    fn collect(&mut self, now: u64, cfg: &DeliveryConfig, spool: Option<&Spool>) -> Vec<Start> {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, timer))) = self.timers.pop() else {
                break;
            };
            if let Timer::Entry(id) = timer {
                if let Some(e) = self.entries.get_mut(&id) {
                    if e.phase == Phase::Waiting && e.next_ms == at {
                        e.phase = Phase::Queued;
                        e.next_ms = u64::MAX;
                        let retry = e.attempts > 0;
                        let host = e.host;
                        enqueue(&mut self.hosts, &mut self.active, host, id, retry);
                    }
                }
            }
        }
        let mut starts = Vec::new();
        while let Some(start) = self.take_one(now, cfg, spool) {
            starts.push(start);
        }
        starts
    }

    /// Takes the next job to start, round-robin over the hosts that may take
    /// one more, or `None` when nothing can start now. Marks it in flight.
    fn take_one(&mut self, now: u64, cfg: &DeliveryConfig, spool: Option<&Spool>) -> Option<Start> {
        if self.draining {
            return None;
        }
        // Only hosts with queued work are looked at, in rotation; a round
        // with no job taken (only stale or expired ids popped) is tried again.
        loop {
            if self.in_flight >= cfg.max_in_flight {
                return None;
            }
            let mut popped = false;
            for _ in 0..self.active.len() {
                let Some(hi) = self.active.pop_front() else {
                    break;
                };
                let h = &mut self.hosts[hi as usize];
                if h.fresh.is_empty() && h.retry.is_empty() {
                    h.active = false;
                    continue;
                }
                // Half-open: a host that tripped the breaker gets one probe at a time.
                let limit = if h.failures >= cfg.breaker_threshold {
                    1
                } else {
                    cfg.max_in_flight_per_host
                };
                if h.paused_until > now || h.in_flight >= limit {
                    self.active.push_back(hi);
                    continue;
                }
                let take_retry = (h.retry_turn && !h.retry.is_empty()) || h.fresh.is_empty();
                let id = if take_retry {
                    h.retry.pop_front()
                } else {
                    h.fresh.pop_front()
                };
                h.retry_turn = !take_retry;
                // Back of the line while it has work: round-robin.
                if h.fresh.is_empty() && h.retry.is_empty() {
                    h.active = false;
                } else {
                    self.active.push_back(hi);
                }
                let Some(id) = id else { continue };
                popped = true;
                let Some(e) = self.entries.get_mut(&id) else {
                    break;
                };
                if e.phase != Phase::Queued {
                    break;
                }
                if now >= e.expires_ms {
                    if let Some(s) = spool {
                        s.record(&id, e.job.loc(), Outcome::expired(e.attempts, now));
                    }
                    self.end(&id, Phase::Expired, now, cfg.status_history);
                    warn!(id = %id, "ttl passed before delivery; expired");
                    break;
                }
                e.phase = Phase::InFlight;
                let job = e.job.clone();
                self.hosts[hi as usize].in_flight += 1;
                self.in_flight += 1;
                return Some((id, job, hi));
            }
            if !popped {
                return None;
            }
        }
    }
}
