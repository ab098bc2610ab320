//! Batches: how a batching destination's lane turns queued events into
//! requests, and how a batch's answer comes back to each event.
//!
//! A batch is a way of sending, never a durable unit: its events are
//! spooled, owned and finished one by one, and only the lane remembers
//! which events go together (`Held`) while a batch waits to be sent again.
//! After a restart, pending events are batched anew.
//!
//! - A batch goes when it is full (`max_events`, or `max_bytes` counted
//!   from each event's size without building anything) or when its oldest
//!   ready event has waited `max_wait_ms`; until then the lane keeps a
//!   `Timer::Host` for that moment.
//! - A retryable answer sends the same events again, as one batch with the
//!   same id, after the backoff (each event's attempts, `max_attempts` and
//!   ttl still apply).
//! - An answer in `split_on` splits the batch in halves, sent at once
//!   within the lane's limits, until the refused events stand alone; a
//!   split is not an attempt for the events in it. Any other final answer
//!   makes each of its events a dead letter with that status.

use super::dispatch::{LoadError, Start};
use super::entry::{Entries, JobRef, Phase};
use super::lanes::Queued;
use super::{BreakerConfig, Engine, State, Timer};
use crate::batch::{event_cost, BatchSpec};
use crate::clock::now_ms;
use crate::config::DeliveryConfig;
use crate::delivery::retry::Verdict;
use crate::delivery::Attempt;
use crate::job::Job;
use crate::spool::{Kind, Outcome, ReadError, Spool};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;
use tracing::{debug, warn};

/// The header that tells a receiver how many events a batch holds.
pub const BATCH_SIZE_HEADER: HeaderName = HeaderName::from_static("ffd-batch-size");

/// A batching lane's own state (in its `Host`).
#[derive(Default)]
pub(crate) struct BatchLane {
    /// Batches that go as they are: halves of a split (due at once) and
    /// batches waiting for their retry (due then), in the order made.
    held: VecDeque<Held>,
    /// What was weighed of the queued events, from the fronts: the lane's
    /// pops when counted, and per queue (fresh, retry) how many ids and
    /// their bytes. Any pop makes it stale (counted again from the front).
    scan: (u64, [(usize, u64); 2]),
    /// When the timer set for the oldest event's wait fires (0: none).
    wake_ms: u64,
    /// Events in its batches in flight.
    pub(super) events_in_flight: usize,
}

/// A batch formed before, waiting to go as it is.
struct Held {
    id: Arc<str>,
    ids: Vec<Arc<str>>,
    due_ms: u64,
    /// Times this batch was sent already (its backoff grows with them).
    sends: u32,
}

/// Where an event stands in a batch, for `status`.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    /// The batch's id (its requests' `ffd-id` and `webhook-id`).
    pub id: Arc<str>,
    /// Events in the batch.
    pub events: usize,
    /// The batch's send under way, or the next one (1 for the first).
    pub send: u32,
    /// Being sent now.
    pub in_flight: bool,
}

/// A batch handed to a delivery task.
pub(crate) struct BatchStart {
    pub(super) host: u32,
    id: Arc<str>,
    events: Vec<(Arc<str>, JobRef)>,
    /// This is the batch's send number `sends`.
    sends: u32,
    /// Its events counted in flight (`State::batch_extra`, the lane's
    /// `events_in_flight`): all of them, less those that could not be read.
    counted: usize,
    spec: Arc<BatchSpec>,
    dest: Arc<str>,
}

/// Bounds the `Timer::Host` wake-ups of a lane waiting for `max_wait_ms`.
impl BatchLane {
    /// Whether a batch should go now from what `q` holds: full by count or
    /// bytes, or its oldest ready event has waited `max_wait_ms`. Else the
    /// time it will have (`Err`).
    pub(super) fn ready(
        &mut self,
        spec: &BatchSpec,
        q: Queued<'_>,
        entries: &Entries,
        now: u64,
    ) -> Result<(), u64> {
        if q.fresh.len() + q.retry.len() >= spec.max_events {
            return Ok(());
        }
        let live = |id: &Arc<str>| entries.get(id).filter(|e| e.phase == Phase::Queued);
        // The oldest live event of each queue: a few stale ids (ended
        // while queued) may sit in front of it.
        let mut oldest = u64::MAX;
        for queue in [q.fresh, q.retry] {
            match queue.iter().take(16).find_map(live) {
                Some(e) => oldest = oldest.min(e.next_ms),
                // All stale: let a take clear them.
                None if queue.len() > 16 => return Ok(()),
                None => {}
            }
        }
        if oldest == u64::MAX || oldest.saturating_add(spec.max_wait_ms) <= now {
            return Ok(());
        }
        if self.scan.0 != q.pops {
            self.scan = (q.pops, [(0, 0); 2]);
        }
        let mut bytes = spec.fixed_bytes();
        for (k, queue) in [q.fresh, q.retry].into_iter().enumerate() {
            let (seen, sum) = &mut self.scan.1[k];
            while *seen < queue.len() && bytes + *sum < spec.max_bytes {
                if let Some(e) = live(&queue[*seen]) {
                    *sum += event_cost(e.size as usize);
                }
                *seen += 1;
            }
            bytes += *sum;
        }
        if bytes >= spec.max_bytes {
            return Ok(());
        }
        Err(oldest.saturating_add(spec.max_wait_ms))
    }

    /// Whether a held batch is due.
    fn due(&self, now: u64) -> bool {
        self.held.iter().any(|h| h.due_ms <= now)
    }
}

impl State {
    /// Sets a timer for a batching lane's oldest event, unless one is set
    /// for that time or earlier.
    pub(super) fn arm_batch_timers(&mut self, waits: Vec<(u32, u64)>, now: u64) {
        for (h, at) in waits {
            let lane = &mut self.hosts[h as usize].batch;
            if lane.wake_ms > now && lane.wake_ms <= at {
                continue;
            }
            lane.wake_ms = at;
            self.timers.push(Reverse((at, Timer::Host)));
            self.rate_kick = true;
        }
    }

    /// A held batch that is due, of a lane that may start one now, as a
    /// start; its events that ended meanwhile are left out.
    pub(super) fn take_held(
        &mut self,
        now: u64,
        cfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) -> Option<Start> {
        let mut i = 0;
        while i < self.holding.len() {
            let hi = self.holding[i];
            let host = &mut self.hosts[hi as usize];
            if host.batch.held.is_empty() {
                self.holding.swap_remove(i);
                continue;
            }
            i += 1;
            if !host.batch.due(now) || !host.may_start(now, cfg) {
                continue;
            }
            if let Some(at) = host.bucket.as_mut().and_then(|b| b.ready_at(now)) {
                self.arm_rate_timers(vec![(hi, at)], now);
                continue;
            }
            let Some(spec) = host.limits.batch.clone() else {
                // Its destination left the config (SIGHUP): its events go
                // one by one, and end with that error.
                let held = std::mem::take(&mut host.batch.held);
                for h in held {
                    for id in h.ids {
                        self.unbatch(&id, now);
                    }
                }
                continue;
            };
            let at = host.batch.held.iter().position(|h| h.due_ms <= now)?;
            let held = host.batch.held.remove(at)?;
            let mut events = Vec::with_capacity(held.ids.len());
            for id in held.ids {
                if self.batch_of.get(&id).is_some_and(|b| b.id == held.id) {
                    self.batch_of.remove(&id);
                } else {
                    continue;
                }
                if let Some(r) = self.start_event(&id, now, cfg, spool) {
                    events.push((id, r));
                }
            }
            if let Some(start) = self.launch(hi, held.id, events, held.sends + 1, spec, now) {
                return Some(start);
            }
        }
        None
    }

    /// Fills a batch on lane `hi`, from `first` (just taken off it) and
    /// the ids after it, up to `max_events` and `max_bytes`.
    pub(super) fn form_batch(
        &mut self,
        hi: u32,
        first: (Arc<str>, bool),
        spec: Arc<BatchSpec>,
        now: u64,
        cfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) -> Option<Start> {
        let mut events = Vec::new();
        let mut bytes = spec.fixed_bytes();
        let mut next = Some(first);
        while let Some((id, retry)) = next.take().or_else(|| self.lanes.pop(hi)) {
            let Some(e) = self.entries.get(&id).filter(|e| e.phase == Phase::Queued) else {
                continue;
            };
            let cost = event_cost(e.size as usize);
            if !events.is_empty()
                && (events.len() >= spec.max_events || bytes + cost > spec.max_bytes)
            {
                self.lanes.push_front(hi, id, retry);
                break;
            }
            if let Some(r) = self.start_event(&id, now, cfg, spool) {
                bytes += cost;
                events.push((id, r));
            }
        }
        let id = crate::id::new_id(now);
        self.launch(hi, id, events, 1, spec, now)
    }

    /// Takes one queued or held event into a batch being started: marked
    /// in flight and out of memory (the batch body will hold it), or
    /// expired if its ttl passed. Returns where the request is.
    fn start_event(
        &mut self,
        id: &Arc<str>,
        now: u64,
        cfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) -> Option<JobRef> {
        let e = self.entries.get_mut(id)?;
        if !matches!(e.phase, Phase::Queued | Phase::Waiting) {
            return None;
        }
        self.expiry.remove(&(e.expires_ms, id.clone()));
        if now >= e.expires_ms {
            if let Some(s) = spool {
                s.record(id, e.job.loc(), Outcome::expired(e.attempts, now));
            }
            self.end(id, Phase::Expired, now, cfg.status_history);
            self.emit("expired", id, |ev| {
                ev.error = Some("ttl passed before its batch was sent".into())
            });
            return None;
        }
        e.phase = Phase::InFlight;
        let r = e.job.clone();
        self.cool(id);
        Some(r)
    }

    /// Marks a batch of `events` in flight on lane `hi`; `None` if none is
    /// left to send.
    fn launch(
        &mut self,
        hi: u32,
        id: Arc<str>,
        events: Vec<(Arc<str>, JobRef)>,
        sends: u32,
        spec: Arc<BatchSpec>,
        now: u64,
    ) -> Option<Start> {
        if events.is_empty() {
            return None;
        }
        let info = BatchInfo {
            id: id.clone(),
            events: events.len(),
            send: sends,
            in_flight: true,
        };
        self.note_batch(events.iter().map(|(k, _)| k), info);
        let host = &mut self.hosts[hi as usize];
        if let Some(b) = &mut host.bucket {
            b.take(now);
        }
        host.in_flight += 1;
        host.batch.events_in_flight += events.len();
        self.in_flight += 1;
        self.batch_extra += events.len() - 1;
        let dest = host.dest.clone().unwrap_or_else(|| "".into());
        Some(Start::Batch(Box::new(BatchStart {
            host: hi,
            id,
            counted: events.len(),
            events,
            sends,
            spec,
            dest,
        })))
    }

    /// Keeps `ids` together as a batch that goes at `due_ms` (a half of a
    /// split: now; a retry: after its backoff).
    fn hold(&mut self, hi: u32, id: Arc<str>, ids: Vec<Arc<str>>, due_ms: u64, sends: u32) {
        let info = BatchInfo {
            id: id.clone(),
            events: ids.len(),
            send: sends + 1,
            in_flight: false,
        };
        self.note_batch(ids.iter(), info);
        let lane = &mut self.hosts[hi as usize].batch;
        if lane.held.is_empty() && !self.holding.contains(&hi) {
            self.holding.push(hi);
        }
        lane.held.push_back(Held {
            id,
            ids,
            due_ms,
            sends,
        });
    }

    /// Notes for `status` that `keys` are in the batch `info` says.
    fn note_batch<'a>(&mut self, keys: impl Iterator<Item = &'a Arc<str>>, info: BatchInfo) {
        let info = Arc::new(info);
        for k in keys {
            self.batch_of.insert(k.clone(), info.clone());
        }
    }

    /// An event of a held batch whose lane no longer batches: queued alone.
    fn unbatch(&mut self, id: &Arc<str>, now: u64) {
        self.batch_of.remove(id);
        if self
            .entries
            .get(id)
            .is_some_and(|e| matches!(e.phase, Phase::Queued | Phase::Waiting))
        {
            self.schedule(id, now, true);
        }
    }

    /// `status`: the batch an event is in, if it is in one.
    pub(super) fn batch_info(&self, key: &str) -> Option<Arc<BatchInfo>> {
        self.batch_of.get(key).cloned()
    }
}

/// `METHOD url` of an event delivered in a batch, with the batch: what
/// `status` shows of it once its body is gone (see `Entry::last_error`),
/// one text shared by every event of the batch.
fn delivered_text(job: &Job, events: usize) -> Arc<str> {
    format!(
        "{} {} (batch {} of {events})",
        job.method,
        crate::job::Redacted(&job.uri),
        job.id
    )
    .into()
}

/// The batch id and size in a delivered event's text, if it has them.
pub(super) fn parse_delivered(text: &str) -> (&str, Option<(&str, usize)>) {
    let Some((head, rest)) = text.split_once(" (batch ") else {
        return (text, None);
    };
    let batch = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(" of "))
        .and_then(|(id, n)| Some((id, n.parse().ok()?)));
    (head, batch)
}

impl Engine {
    /// A batch's attempt: its events read back, its body built, one
    /// request, its answer applied to every event. Returns the next job
    /// for the same task.
    pub(super) async fn deliver_batch(&self, mut b: Box<BatchStart>) -> Option<Start> {
        let mut jobs: Vec<Arc<Job>> = Vec::with_capacity(b.events.len());
        let mut lost = Vec::new();
        for (id, r) in &b.events {
            match self.load(r) {
                Ok(job) if *job.key == **id => jobs.push(job),
                Ok(_) => lost.push((
                    id.clone(),
                    "spool record belongs to another request".to_string(),
                    false,
                )),
                Err(LoadError::Spool(e @ ReadError::Io { .. })) => {
                    lost.push((id.clone(), e.to_string(), true))
                }
                Err(e) => lost.push((id.clone(), e.to_string(), false)),
            }
        }
        // The events' in-memory copies are let go of as the body is built:
        // a batch in flight holds each body once.
        for e in &mut b.events {
            e.1 = JobRef::Gone;
        }
        if !lost.is_empty() {
            self.lost_from_batch(&mut b, lost);
        }
        let Some(first) = jobs.first() else {
            return self.finish_batch(&b, Vec::new(), None);
        };
        let body = b.spec.build(jobs.iter().map(|j| &j.body[..]));
        let built = body.len() as u64;
        let job = Job {
            id: b.id.clone(),
            owner: None,
            key: b.id.clone(),
            method: http::Method::POST,
            uri: first.uri.clone(),
            dest: Some(b.dest.clone()),
            headers: self.batch_headers(&b, jobs.len()),
            body: Bytes::from(body),
            timeout_ms: first.timeout_ms,
            max_attempts: first.max_attempts,
            accepted_ms: first.accepted_ms,
            not_before_ms: 0,
            expires_ms: u64::MAX,
        };
        let ids: Vec<Arc<str>> = jobs.iter().map(|j| j.key.clone()).collect();
        // The events' own copies go: the body holds each of them once.
        drop(jobs);
        self.metrics.batch_events.observe(ids.len() as f64);
        let started = std::time::Instant::now();
        let attempt = self.deliverer.attempt(&job).await;
        self.metrics
            .attempt_duration
            .observe(started.elapsed().as_secs_f64());
        self.finish_batch(&b, ids, Some((&job, built, attempt)))
    }

    /// The destination's headers as the config has them now, and the
    /// batch's own.
    fn batch_headers(&self, b: &BatchStart, events: usize) -> Vec<(HeaderName, HeaderValue)> {
        let dests = self
            .destinations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut headers: Vec<(HeaderName, HeaderValue)> = dests
            .get(&*b.dest)
            .map(|d| d.headers.clone())
            .unwrap_or_default();
        if !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(b.spec.format.content_type()),
            ));
        }
        headers.push((BATCH_SIZE_HEADER, HeaderValue::from(events)));
        headers
    }

    /// Events of a batch that could not be read back: as for a single
    /// request, an I/O error is tried again in a second, anything else
    /// makes a dead letter that says why.
    fn lost_from_batch(&self, b: &mut BatchStart, lost: Vec<(Arc<str>, String, bool)>) {
        let now = now_ms();
        let history = self.dcfg().status_history;
        let mut st = self.lock();
        let mut kick = false;
        for (id, error, again) in lost {
            if st.batch_of.get(&id).is_some_and(|i| i.id == b.id) {
                st.batch_of.remove(&id);
            }
            let Some(e) = st
                .entries
                .get_mut(&id)
                .filter(|e| e.phase == Phase::InFlight)
            else {
                continue;
            };
            e.last_error = Some(error.as_str().into());
            let (attempts, at) = (e.attempts, e.job.loc());
            // No longer in flight with the batch: uncounted (the request
            // itself stays in flight until the batch finishes).
            if b.counted > 1 {
                st.batch_extra -= 1;
            }
            st.hosts[b.host as usize].batch.events_in_flight -= 1;
            b.counted -= 1;
            if again {
                warn!(id = %id, error = %error, "cannot read the event from the spool; trying again in 1 s");
                kick |= st.schedule(&id, now + 1000, true);
                continue;
            }
            tracing::error!(id = %id, error = %error, "cannot load event from the spool; kept as dead letter");
            st.end(&id, Phase::Dead, now, history);
            st.emit("dead", &id, |ev| ev.error = Some(error.clone()));
            if let Some(s) = &self.spool {
                let mut o = Outcome::expired(attempts, now);
                o.kind = Kind::Dead;
                o.error = Some(error.into());
                s.record(&id, at, o);
            }
        }
        let events = st.take_events();
        drop(st);
        self.publish(events);
        if kick {
            self.wake.notify_one();
        }
    }

    /// Applies a batch's answer to its events (`sent`: the request, the
    /// body's size before compression and the attempt; `None` when none
    /// was sent) and frees its slot; returns the next job for the task.
    fn finish_batch(
        &self,
        b: &BatchStart,
        ids: Vec<Arc<str>>,
        sent: Option<(&Job, u64, Attempt)>,
    ) -> Option<Start> {
        let now = now_ms();
        let dcfg = self.dcfg();
        let spool = self.spool.as_deref();
        let mut st = self.lock();
        let hi = b.host;
        st.in_flight -= 1;
        st.batch_extra -= b.counted.saturating_sub(1);
        let host = &mut st.hosts[hi as usize];
        host.in_flight -= 1;
        host.batch.events_in_flight -= b.counted;
        let mut result = None;
        let mut kick = false;
        let mut delivered = 0usize;
        if let Some((job, built, a)) = sent {
            // The events still in flight: none ended while it was sent
            // (an admin's purge, a cancel).
            let live: Vec<Arc<str>> = ids
                .into_iter()
                .filter(|id| {
                    if st.batch_of.get(id).is_some_and(|i| i.id == b.id) {
                        st.batch_of.remove(id);
                    }
                    st.entries
                        .get(id)
                        .is_some_and(|e| e.phase == Phase::InFlight)
                })
                .collect();
            let n = live.len() as u64;
            let (res, k) = st.batch_answered(b, job, &a, live, now, &dcfg, spool);
            kick = k;
            if res == "delivered" {
                delivered = b.events.len();
            }
            result = Some((res, a.result(), n));
            st.emit_batch(b, built, &a, res);
        }
        let next = st.take_one(now, &dcfg, spool);
        let rate_kick = st.take_rate_kick();
        let page = st.cold.wanted();
        let idle = st.in_flight == 0;
        let events = st.take_events();
        let label = st.hosts[hi as usize].label.clone();
        let latencies = std::mem::take(&mut st.latencies);
        drop(st);
        // Metrics after the lock (their own locks stay off it); attempts
        // count events, as every per-request figure does.
        self.publish(events);
        for ms in latencies {
            self.metrics.delivery_latency.observe(ms as f64 / 1000.0);
        }
        if let Some((res, attempt_result, n)) = result {
            self.metrics.batch(res);
            self.metrics.attempts_by(attempt_result, n);
            self.metrics
                .host_attempts
                .get_or_create(&[("host", label), ("result", attempt_result.to_string())])
                .inc_by(n);
        }
        if delivered > 0 {
            self.room.notify_waiters();
        }
        if next.is_none() || kick || rate_kick || page {
            self.wake.notify_one();
        }
        if idle {
            self.idle.notify_waiters();
        }
        next
    }
}

impl State {
    /// A batch's answer applied: delivered, split, retried or dead.
    /// Returns the `result` of `ffd_batches_total` and whether the
    /// dispatcher must look.
    #[allow(clippy::too_many_arguments)]
    fn batch_answered(
        &mut self,
        b: &BatchStart,
        job: &Job,
        a: &Attempt,
        live: Vec<Arc<str>>,
        now: u64,
        dcfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) -> (&'static str, bool) {
        let hi = b.host;
        let took = now.saturating_sub(a.started_ms);
        self.hosts[hi as usize].note(a.verdict == Verdict::Success, took);
        // Any status listed splits, retryable or not: the list is the
        // user's word on what a bad event gets back.
        let split = live.len() > 1 && a.status.is_some_and(|s| b.spec.split_on.contains(&s));
        match a.verdict {
            Verdict::Success => {
                let kick = self.host_answered(hi, a, now, dcfg);
                let text = delivered_text(job, live.len());
                for id in &live {
                    // Delivered: its attempt count and status, and the
                    // batch's text; no per-event history or snippet (its
                    // `status` names the batch).
                    if let Some(e) = self.entries.get_mut(id) {
                        e.attempts = e.attempts.saturating_add(1);
                        e.last_status = a.status;
                        e.last_error = Some(text.clone());
                        e.snippet = None;
                    }
                    self.finish_event(id, Phase::Delivered, a, now, dcfg, spool);
                }
                debug!(batch = %b.id, events = live.len(), status = a.status, "batch delivered");
                ("delivered", kick)
            }
            _ if split => {
                let kick = self.host_answered(hi, a, now, dcfg);
                debug!(batch = %b.id, events = live.len(), status = a.status, "batch refused; sending it in halves");
                // An event cancelled while the batch was out ends now.
                let (cancelled, rest): (Vec<_>, Vec<_>) =
                    live.into_iter().partition(|id| self.take_cancel(id));
                for id in &cancelled {
                    self.finish_event(id, Phase::Cancelled, a, now, dcfg, spool);
                }
                let mut first = rest;
                let second = first.split_off(first.len() / 2);
                for half in [first, second] {
                    if half.is_empty() {
                        continue;
                    }
                    for id in &half {
                        if let Some(e) = self.entries.get_mut(id) {
                            e.phase = Phase::Queued;
                            e.next_ms = now;
                            // Behind a pause or the lane's limit, it still
                            // expires on time (`State::expire_queued`).
                            self.expiry.insert((e.expires_ms, id.clone()));
                        }
                    }
                    self.hold(hi, crate::id::new_id(now), half, now, 0);
                }
                ("split", true | kick)
            }
            Verdict::Final => {
                let kick = self.host_answered(hi, a, now, dcfg);
                warn!(batch = %b.id, events = live.len(), status = a.status, "batch refused for good (final status); its events are kept as dead letters");
                for id in &live {
                    self.note_event(id, a, now);
                    // Cancelled while it was out: it ends as its owner said.
                    let end = if self.take_cancel(id) {
                        Phase::Cancelled
                    } else {
                        Phase::Dead
                    };
                    self.finish_event(id, end, a, now, dcfg, spool);
                }
                ("dead", kick)
            }
            Verdict::Retry => {
                let mut kick = self.host_failed(hi, a, now, dcfg);
                let backoff = self.hosts[hi as usize]
                    .limits
                    .backoff
                    .unwrap_or_else(|| super::outcome::backoff(dcfg));
                let wait = backoff.wait_ms(b.sends, fastrand::f64(), a.retry_after_ms);
                let at = now + wait;
                let mut again = Vec::with_capacity(live.len());
                for id in live {
                    let Some(attempts) = self.note_event(&id, a, now) else {
                        continue;
                    };
                    if self.take_cancel(&id) {
                        // Cancelled while it was out: not sent again.
                        self.finish_event(&id, Phase::Cancelled, a, now, dcfg, spool);
                        continue;
                    }
                    let Some(e) = self.entries.get_mut(&id) else {
                        continue;
                    };
                    if attempts >= e.max_attempts {
                        self.finish_event(&id, Phase::Dead, a, now, dcfg, spool);
                    } else if at >= e.expires_ms {
                        self.finish_event(&id, Phase::Expired, a, now, dcfg, spool);
                    } else {
                        e.phase = Phase::Waiting;
                        e.next_ms = at;
                        if let Some(s) = spool {
                            let o = Outcome::after_attempt(
                                Kind::Retry,
                                attempts,
                                at,
                                a.status,
                                a.error.as_deref(),
                                a.snippet.as_deref(),
                                now,
                            );
                            s.record(&id, e.job.loc(), o);
                        }
                        self.metrics.retries.inc();
                        self.emit("retry", &id, |ev| ev.wait_ms = Some(wait));
                        again.push(id);
                    }
                }
                debug!(batch = %b.id, events = again.len(), error = a.error.as_deref(), wait_ms = wait, "batch failed; will send it again");
                if !again.is_empty() {
                    self.hold(hi, b.id.clone(), again, at, b.sends);
                    self.timers.push(Reverse((at, Timer::Host)));
                    kick = true;
                }
                ("retry", kick)
            }
        }
    }

    /// An attempt noted on one event of a batch: attempts, last status,
    /// error and snippet, history. Returns its attempts so far.
    fn note_event(&mut self, id: &Arc<str>, a: &Attempt, now: u64) -> Option<u32> {
        // The batch's error text, shared by its events (see `note_attempt`).
        let host_error = self
            .hosts
            .get(self.entries.get(id)?.host as usize)?
            .last_error
            .clone();
        let e = self.entries.get_mut(id)?;
        e.attempts = e.attempts.saturating_add(1);
        e.last_status = a.status;
        e.last_error = a.error.as_deref().map(|msg| match &host_error {
            Some(x) if &**x == msg => x.clone(),
            _ => Arc::from(msg),
        });
        e.snippet = a.snippet.as_deref().map(Into::into);
        let attempts = e.attempts;
        self.history.note(
            id,
            super::AttemptRecord {
                at_ms: a.started_ms,
                duration_ms: now.saturating_sub(a.started_ms),
                status: a.status,
                error: a.error.as_deref().map(Into::into),
            },
        );
        Some(attempts)
    }

    /// One event of a batch ends: recorded in the spool, counted, told.
    fn finish_event(
        &mut self,
        id: &Arc<str>,
        phase: Phase,
        a: &Attempt,
        now: u64,
        dcfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        let (attempts, loc, accepted_ms) = (e.attempts, e.job.loc(), e.accepted_ms);
        // Told first: a delivered event leaves the entries.
        self.emit(phase.as_str(), id, |ev| {
            ev.status = a.status;
            ev.error = a.error.clone();
        });
        self.end(id, phase, now, dcfg.status_history);
        if phase == Phase::Delivered {
            self.latencies.push(now.saturating_sub(accepted_ms));
        }
        if let Some(s) = spool {
            let o = Outcome::after_attempt(
                phase.kind(),
                attempts,
                0,
                a.status,
                a.error.as_deref(),
                a.snippet.as_deref(),
                now,
            );
            s.record(id, loc, o);
        }
    }

    /// A `batch` event for `tail`: one per request sent, for admins (a
    /// batch mixes events of many senders).
    fn emit_batch(&mut self, b: &BatchStart, built: u64, a: &Attempt, result: &'static str) {
        let events = b.events.len();
        self.emit_host("batch", b.host, |ev| {
            ev.batch = Some(b.id.to_string());
            ev.events = Some(events);
            ev.bytes = Some(built);
            ev.sent_bytes = Some(a.sent_bytes);
            ev.status = a.status;
            ev.error = a.error.clone();
            ev.result = Some(result);
            ev.duration_ms = Some(now_ms().saturating_sub(a.started_ms));
        });
    }
}

/// Builds the breaker settings of `[delivery]`.
pub(super) fn breaker_config(dcfg: &DeliveryConfig) -> BreakerConfig {
    BreakerConfig {
        threshold: dcfg.breaker_threshold,
        cooldown_ms: dcfg.breaker_cooldown_ms,
        cooldown_max_ms: dcfg.breaker_cooldown_max_ms,
    }
}
