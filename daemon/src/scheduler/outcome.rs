//! Outcomes: an attempt's result applied to its request (delivered, retry
//! at a later time, dead letter, expired) and to its host (breaker, last
//! success or failure), and recorded in the spool.

use super::dispatch::Start;
use super::entry::{JobRef, Phase, NO_OWNER};
use super::{Engine, State, Timer};
use crate::clock::now_ms;
use crate::config::DeliveryConfig;
use crate::delivery::retry::{Backoff, Verdict};
use crate::delivery::Attempt;
use crate::job::Job;
use crate::spool::{Kind, Loc, Outcome, Spool};
use std::cmp::Reverse;
use std::sync::Arc;
use tracing::{debug, error, info, warn};

pub(super) fn backoff(d: &DeliveryConfig) -> Backoff {
    Backoff {
        base_ms: d.backoff_base_ms,
        multiplier: d.backoff_multiplier,
        max_ms: d.backoff_max_ms,
    }
}

impl Engine {
    /// A job whose spool record cannot be read can never be delivered: it
    /// becomes a dead letter that says why, instead of vanishing.
    pub(super) fn unreadable(&self, id: &Arc<str>, host: u32, error: String) -> Option<Start> {
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
            st.emit("dead", id, |ev| ev.error = Some(error.clone()));
            if let Some(s) = &self.spool {
                let mut o = Outcome::expired(attempts, now);
                o.kind = Kind::Dead;
                o.error = Some(error.into());
                s.record(id, at, o);
            }
        }
        let events = st.take_events();
        drop(st);
        self.publish(events);
        self.wake.notify_one();
        self.idle.notify_waiters();
        None
    }

    /// Applies an attempt's outcome; returns the next job for the same task.
    pub(super) fn finish(
        &self,
        id: &Arc<str>,
        host: u32,
        job: &Arc<Job>,
        a: Attempt,
    ) -> Option<Start> {
        let now = now_ms();
        let dcfg = self.dcfg();
        let mut st = self.lock();
        // Counters first: whatever happened to the entry, the slot is free.
        st.in_flight -= 1;
        st.hosts[host as usize].in_flight -= 1;
        let Some((end, kick, note)) =
            st.apply_attempt(id, host, job, &a, now, &dcfg, self.spool.as_deref())
        else {
            drop(st);
            self.wake.notify_one();
            self.idle.notify_waiters();
            return None;
        };
        let next = st.take_one(now, &dcfg, self.spool.as_deref());
        let st_rate_kick = st.take_rate_kick();
        // A lane wants requests read back from the spool.
        let page = st.cold.wanted();
        let idle = st.in_flight == 0;
        let events = st.take_events();
        drop(st);
        // Metrics and events after the lock: their own locks stay off it.
        self.publish(events);
        self.metrics.attempt(note.result);
        match note.counter {
            Some(c) => {
                c.inc();
            }
            None => self.first_host_attempt(host, note.label, note.result),
        }
        if end == Some(Phase::Delivered) {
            self.metrics
                .delivery_latency
                .observe(now.saturating_sub(note.accepted_ms) as f64 / 1000.0);
        }
        if next.is_none() || kick || st_rate_kick || page {
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
}

impl State {
    /// Applies an attempt to its request (attempts, last status and error,
    /// end state or retry) and to its host (breaker, last success or
    /// failure), and records it in the spool. Returns the end state reached
    /// and whether the dispatcher must look; `None` if the request is gone.
    #[allow(clippy::too_many_arguments)]
    fn apply_attempt(
        &mut self,
        id: &Arc<str>,
        host: u32,
        job: &Job,
        a: &Attempt,
        now: u64,
        dcfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) -> Option<(Option<Phase>, bool, Note)> {
        let (attempts, here, accepted_ms, err) = self.note_attempt(id, host, a, now)?;
        // Cancelled while in flight: a failure ends it (see `cancel`).
        let cancelled = self.take_cancel(id);
        let result = a.result();
        let h = &self.hosts[host as usize];
        let counter = crate::metrics::result_index(result)
            .and_then(|i| h.attempt_counters.get(i).cloned().flatten());
        let note = Note {
            // The label is only needed the first time (see `Host::attempt_counters`).
            label: if counter.is_none() {
                h.label.clone()
            } else {
                String::new()
            },
            counter,
            result,
            accepted_ms,
        };
        let mut kick = false;
        let end = match a.verdict {
            Verdict::Success | Verdict::Final => {
                let (end, k) = self.answered(host, job, a, attempts, err, now, dcfg);
                kick |= k;
                Some(if cancelled && end == Phase::Dead {
                    Phase::Cancelled
                } else {
                    end
                })
            }
            Verdict::Retry => {
                self.hosts[host as usize].last_error = err;
                kick |= self.host_failed(host, a, now, dcfg);
                let next = if cancelled {
                    Err(Phase::Cancelled)
                } else {
                    self.retry_or_end(id, job, a, attempts, now, dcfg)
                };
                match next {
                    Err(end) => Some(end),
                    Ok((at, scheduled)) => {
                        kick |= scheduled;
                        self.emit("retry", id, |ev| ev.wait_ms = Some(at.saturating_sub(now)));
                        if let Some(s) = spool {
                            s.record(id, here, outcome_of(Kind::Retry, attempts, at, a, now));
                        }
                        None
                    }
                }
            }
        };
        if let Some(phase) = end {
            if phase == Phase::Delivered {
                // See `Entry::last_error`. Most deliveries of a lane go to
                // the same URL: its text is shared, not formatted each time.
                let h = &mut self.hosts[host as usize];
                let text = match &h.delivered_text {
                    Some(t) if shows(t, job) => t.clone(),
                    _ => {
                        let t: Arc<str> =
                            format!("{} {}", job.method, crate::job::Redacted(&job.uri)).into();
                        h.delivered_text = Some(t.clone());
                        t
                    }
                };
                if let Some(e) = self.entries.get_mut(id) {
                    e.last_error = Some(text);
                }
            }
            // Told first: a delivered request leaves the entries.
            self.emit(phase.as_str(), id, |ev| {
                ev.status = a.status;
                ev.error = a.error.clone();
            });
            self.end(id, phase, now, dcfg.status_history);
            if let Some(s) = spool {
                s.record(id, here, outcome_of(phase.kind(), attempts, 0, a, now));
            }
        }
        Some((end, kick, note))
    }
}

/// An attempt noted on its request: attempts so far, its record, when it
/// was accepted, the error text.
type Noted = (u32, Option<Loc>, u64, Option<Arc<str>>);

/// What `finish` counts in the metrics once the lock is released.
struct Note {
    label: String,
    /// The host's `ffd_host_attempts_total` counter for this result, once
    /// looked up.
    counter: Option<prometheus_client::metrics::counter::Counter>,
    result: &'static str,
    accepted_ms: u64,
}

/// The spool's record of an attempt's result.
fn outcome_of(kind: Kind, attempts: u32, next_ms: u64, a: &Attempt, now: u64) -> Outcome {
    Outcome::after_attempt(
        kind,
        attempts,
        next_ms,
        a.status,
        a.error.as_deref(),
        a.snippet.as_deref(),
        now,
    )
}

impl Engine {
    /// Counts a host's first attempt with this result, and keeps the
    /// counter with the host: later attempts add to it without building
    /// and hashing its labels.
    fn first_host_attempt(&self, host: u32, label: String, result: &'static str) {
        let c = self
            .metrics
            .host_attempts
            .get_or_create(&[("host", label.clone()), ("result", result.to_string())])
            .clone();
        c.inc();
        let Some(i) = crate::metrics::result_index(result) else {
            return;
        };
        let mut st = self.lock();
        // The host may have been dropped and its number taken meanwhile.
        if let Some(h) = st.hosts.get_mut(host as usize).filter(|h| h.label == label) {
            if h.attempt_counters.len() <= i {
                h.attempt_counters.resize(i + 1, None);
            }
            h.attempt_counters[i] = Some(c);
        }
    }
}

impl State {
    /// Records an attempt on its request (attempts, last status, error and
    /// snippet) and tells the tail. Returns the attempts so
    /// far, the request's record, when it was accepted and the error text
    /// (shared with its host's); `None` if the request is gone.
    fn note_attempt(&mut self, id: &Arc<str>, host: u32, a: &Attempt, now: u64) -> Option<Noted> {
        let host_error = self.hosts[host as usize].last_error.clone();
        let e = self.entries.get_mut(id)?;
        e.attempts = e.attempts.saturating_add(1);
        e.last_status = a.status;
        // Many requests fail the same way: share the host's copy of the text.
        let err: Option<Arc<str>> = a.error.as_deref().map(|msg| match &host_error {
            Some(x) if &**x == msg => x.clone(),
            _ => Arc::from(msg),
        });
        e.last_error = err.clone();
        e.snippet = a.snippet.clone().map(Into::into);
        let noted = (e.attempts, e.job.loc(), e.accepted_ms, err);
        self.hosts[host as usize].note(
            a.verdict == Verdict::Success,
            now.saturating_sub(a.started_ms),
        );
        self.history.note(
            id,
            super::AttemptRecord {
                at_ms: a.started_ms,
                duration_ms: now.saturating_sub(a.started_ms),
                status: a.status,
                error: noted.3.clone(),
            },
        );
        self.emit("attempt", id, |ev| {
            ev.status = a.status;
            ev.error = a.error.clone();
            ev.duration_ms = Some(now.saturating_sub(a.started_ms));
        });
        Some(noted)
    }

    /// The host answered (2xx, or a final status): its breaker closes, and
    /// the request is delivered or dead. Returns the end state and whether
    /// the host's limit went up.
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &mut self,
        host: u32,
        job: &Job,
        a: &Attempt,
        attempts: u32,
        err: Option<Arc<str>>,
        now: u64,
        dcfg: &DeliveryConfig,
    ) -> (Phase, bool) {
        let url = tracing::field::display(crate::job::Redacted(&job.uri));
        let kick = self.host_answered(host, a, now, dcfg);
        let h = &mut self.hosts[host as usize];
        if a.verdict == Verdict::Success {
            debug!(id = %job.id, url, status = a.status, attempts, "delivered");
            return (Phase::Delivered, kick);
        }
        h.last_error = err;
        warn!(id = %job.id, url, status = a.status, attempts, "delivery failed for good (final status); kept as dead letter");
        (Phase::Dead, kick)
    }

    /// The host answered (2xx, or a final status): it is alive, whatever
    /// it thought of the request, and its breaker closes. Returns whether
    /// its limit went up.
    pub(super) fn host_answered(
        &mut self,
        host: u32,
        a: &Attempt,
        now: u64,
        dcfg: &DeliveryConfig,
    ) -> bool {
        if self.hosts[host as usize].breaker.failures() > 0 {
            info!(host = %self.hosts[host as usize].key, "host recovered: it answers again");
            self.emit_host("host_recovered", host, |ev| ev.status = a.status);
        }
        let h = &mut self.hosts[host as usize];
        let kick = h.breaker.answered(now, dcfg.breaker_threshold);
        if a.verdict == Verdict::Success {
            h.last_success_ms = now;
        } else {
            h.last_failure_ms = now;
            if let Some(e) = &a.error {
                h.last_error = Some(e.as_str().into());
            }
        }
        kick
    }

    /// An attempt to the host failed in a way worth retrying: its breaker
    /// counts it and may pause the host. Returns whether a timer was set
    /// that the dispatcher must know of.
    pub(super) fn host_failed(
        &mut self,
        host: u32,
        a: &Attempt,
        now: u64,
        dcfg: &DeliveryConfig,
    ) -> bool {
        let h = &mut self.hosts[host as usize];
        let started_failing = h.breaker.failures() == 0 && !h.breaker.paused(now);
        if started_failing {
            // Once per failing streak: the per-request retries are at debug.
            info!(host = %h.key, error = a.error.as_deref(), status = a.status, "host started failing; requests to it will be retried");
        }
        h.last_failure_ms = now;
        if h.last_error.as_deref() != a.error.as_deref() {
            h.last_error = a.error.as_deref().map(Into::into);
        }
        let trip = h
            .breaker
            .failed(now, a.started_ms, super::batch::breaker_config(dcfg));
        if started_failing {
            self.emit_host("host_failing", host, |ev| {
                ev.status = a.status;
                ev.error = a.error.clone();
            });
        }
        let Some(trip) = trip else {
            return false;
        };
        let key = &self.hosts[host as usize].key;
        warn!(host = %key, failures = trip.failures, pause_ms = trip.cooldown_ms, "host keeps failing; pausing deliveries to it");
        self.timers.push(Reverse((trip.until, Timer::Host)));
        self.emit_host("host_paused", host, |ev| {
            ev.error = a.error.clone();
            ev.wait_ms = Some(trip.cooldown_ms);
        });
        true
    }

    /// After a failed attempt that may be retried: the end state when the
    /// attempts are spent or the ttl passes before the next one, else the
    /// time of the retry, scheduled, and whether the dispatcher must look
    /// (see [`State::schedule`]).
    fn retry_or_end(
        &mut self,
        id: &Arc<str>,
        job: &Job,
        a: &Attempt,
        attempts: u32,
        now: u64,
        dcfg: &DeliveryConfig,
    ) -> Result<(u64, bool), Phase> {
        let url = tracing::field::display(crate::job::Redacted(&job.uri));
        if attempts >= job.max_attempts {
            warn!(id = %job.id, url, status = a.status, error = a.error.as_deref(), attempts, "delivery failed, attempts spent; kept as dead letter");
            return Err(Phase::Dead);
        }
        let b = self.backoff_of(id).unwrap_or_else(|| backoff(dcfg));
        let wait = b.wait_ms(attempts, fastrand::f64(), a.retry_after_ms);
        let at = now + wait;
        if at >= job.expires_ms {
            warn!(id = %job.id, url, attempts, "ttl passes before the next attempt; expired");
            return Err(Phase::Expired);
        }
        debug!(id = %job.id, url, status = a.status, error = a.error.as_deref(), attempts, wait_ms = wait, "delivery failed; will retry");
        self.metrics.retries.inc();
        self.cool(id);
        Ok((at, self.schedule(id, at, true)))
    }

    /// Keeps a cancelled id for `status`, forgetting the oldest past
    /// `history` (delivered ones go to `State::delivered`).
    pub(super) fn remember_cancelled(&mut self, id: Arc<str>, history: usize) {
        self.finished.push_back(id);
        while self.finished.len() > history {
            if let Some(old) = self.finished.pop_front() {
                if self
                    .entries
                    .get(&old)
                    .is_some_and(|e| e.phase == Phase::Cancelled)
                {
                    self.entries.remove(&old);
                }
            }
        }
    }

    /// A hot job leaves memory (its first attempt is done, or it ended).
    pub(super) fn cool(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            if let JobRef::Hot(_, loc) = e.job {
                e.job = JobRef::Disk(loc);
                self.hot_bytes -= e.bytes;
            }
        }
    }

    /// Moves an entry to an end state.
    pub(super) fn end(&mut self, id: &Arc<str>, phase: Phase, now: u64, history: usize) {
        self.cool(id);
        self.take_cancel(id);
        self.undelay(id);
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let was_pending = e.phase.is_pending();
        e.phase = phase;
        e.finished_ms = now;
        let host = e.host as usize;
        match phase {
            Phase::Delivered => {
                self.bytes -= e.bytes;
                self.metrics.finished("delivered");
            }
            Phase::Cancelled => {
                // Kept for `status` as a delivered request is; its host
                // stays named (nothing else shows it).
                e.job = JobRef::Gone;
                self.bytes -= e.bytes;
                e.bytes = 0;
                self.metrics.finished("cancelled");
                self.remember_cancelled(id.clone(), history);
            }
            Phase::Dead | Phase::Expired => {
                let seq = self.next_dead_seq;
                self.next_dead_seq += 1;
                e.dead_seq = seq;
                self.dead.insert(seq, id.clone());
                if phase == Phase::Dead {
                    self.metrics.finished("dead");
                } else {
                    self.metrics.finished("expired");
                }
            }
            _ => {}
        }
        if was_pending {
            self.pending -= 1;
            self.hosts[host].pending -= 1;
            self.want_page_in(host as u32);
        }
        if phase == Phase::Delivered {
            // What `status` keeps of it: a small record, not the entry.
            if let Some(e) = self.entries.remove(id) {
                let id_part = crate::job::client_id(id, e.owner != NO_OWNER);
                self.delivered.push(
                    id,
                    e.owner,
                    id_part,
                    e.attempts,
                    e.max_attempts,
                    e.last_status,
                    e.accepted_ms,
                    now,
                    e.last_error,
                    history,
                );
            }
        }
    }
}

/// Whether `text` is `METHOD url` of `job` (the query left out, as
/// [`crate::job::Redacted`] writes it).
fn shows(text: &str, job: &Job) -> bool {
    let u = &job.uri;
    (|| {
        let rest = text.strip_prefix(job.method.as_str())?.strip_prefix(' ')?;
        let rest = rest
            .strip_prefix(u.scheme_str().unwrap_or(""))?
            .strip_prefix("://")?;
        let rest = rest.strip_prefix(u.authority().map(|a| a.as_str()).unwrap_or(""))?;
        Some(rest == u.path())
    })()
    .unwrap_or(false)
}
