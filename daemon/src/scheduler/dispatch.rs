//! Dispatch: timers fire, and deliveries start round-robin over the hosts
//! with queued work, within the global and per-host limits. A delivery task,
//! once its attempt is done and its outcome applied, takes the next job that
//! may start (under the same lock) instead of ending: no spawn and no
//! wake-up per request while work is queued.

use super::entry::{JobRef, Phase};
use super::{Engine, Queues, State, Timer};
use crate::clock::now_ms;
use crate::config::DeliveryConfig;
use crate::job::Job;
use crate::shutdown::Shutdown;
use crate::spool::{Outcome, ReadError, Spool};
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Work handed to a delivery task.
pub(super) enum Start {
    /// One request: its id, where the request is, its host.
    One(Arc<str>, JobRef, u32),
    /// A batch of events (see [`super::batch`]).
    Batch(Box<super::batch::BatchStart>),
}

/// Why a job could not be loaded for its attempt.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    /// Its spool record could not be read.
    #[error(transparent)]
    Spool(#[from] ReadError),
    /// Memory mode has no record to read.
    #[error("no spool")]
    NoSpool,
    /// It finished meanwhile.
    #[error("request already finished")]
    Gone,
}

impl Engine {
    /// Runs the dispatcher until `shutdown` begins draining: fires due
    /// timers and starts delivery tasks for what may start.
    pub async fn run_dispatcher(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let notified = self.wake.notified();
            let (starts, next, events, pages) = {
                let dcfg = self.dcfg();
                let mut st = self.lock();
                let now = now_ms();
                let starts = st.collect(now, &dcfg, self.spool.as_deref());
                let pages = st.take_page_ins();
                (starts, st.next_wake(), st.take_events(), pages)
            };
            self.publish(events);
            for (host, locs) in pages {
                tokio::spawn(self.clone().page_in(host, locs));
            }
            for start in starts {
                tokio::spawn(self.clone().deliver(start, shutdown.clone()));
            }
            let wait = next.map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {}
                _ = shutdown.draining() => return,
            }
        }
    }

    /// A delivery task: one attempt, its outcome applied, then the next job
    /// that may start, until none may. Holds `_shutdown` so the exit waits
    /// for it.
    async fn deliver(self: Arc<Self>, start: Start, _shutdown: Shutdown) {
        let mut next = Some(start);
        while let Some(start) = next.take() {
            let (id, job, host) = match start {
                Start::One(id, job, host) => (id, job, host),
                Start::Batch(b) => {
                    next = self.deliver_batch(b).await;
                    continue;
                }
            };
            next = match self.load(&job) {
                Ok(job) if *job.key == *id => {
                    let started = std::time::Instant::now();
                    let attempt = self.deliverer.attempt(&job).await;
                    self.metrics
                        .attempt_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.finish(&id, host, &job, attempt)
                }
                Ok(_) => {
                    self.unreadable(&id, host, "spool record belongs to another request".into())
                }
                // Out of file descriptors, a disk hiccup: try again soon.
                Err(LoadError::Spool(e @ ReadError::Io { .. })) => {
                    self.read_failed(&id, host, e.to_string())
                }
                Err(e) => self.unreadable(&id, host, e.to_string()),
            };
        }
    }

    /// A request whose record could not be read for a reason that may pass
    /// (an I/O error, no file descriptor left) waits a second and is tried
    /// again; no attempt is counted, since nothing was sent.
    fn read_failed(&self, id: &Arc<str>, host: u32, error: String) -> Option<Start> {
        let mut st = self.lock();
        st.in_flight -= 1;
        st.hosts[host as usize].in_flight -= 1;
        warn!(id = %id, error = %error, "cannot read the request from the spool; trying again in 1 s");
        if let Some(e) = st.entries.get_mut(id) {
            e.last_error = Some(error.into());
        }
        if st.take_cancel(id) {
            // Cancelled meanwhile: nothing was sent, and nothing will be.
            if let Some(e) = st.entries.get_mut(id) {
                e.phase = Phase::Queued;
            }
            st.cancel_now(id, self.dcfg().status_history, self.spool.as_deref());
        } else {
            st.schedule(id, now_ms() + 1000, true);
        }
        drop(st);
        self.wake.notify_one();
        self.idle.notify_waiters();
        None
    }

    /// The full job: from memory, or read back from its spool record.
    pub(super) fn load(&self, r: &JobRef) -> Result<Arc<Job>, LoadError> {
        match r {
            JobRef::Mem(j) | JobRef::Hot(j, _) => Ok(j.clone()),
            JobRef::Disk(loc) => match &self.spool {
                Some(s) => Ok(s.read(*loc)?),
                None => Err(LoadError::NoSpool),
            },
            JobRef::Gone => Err(LoadError::Gone),
        }
    }
}

impl State {
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
                let mut q = Queues {
                    lanes: &mut self.lanes,
                    timers: &mut self.timers,
                    expiry: &mut self.expiry,
                };
                if let Some(e) = self.entries.get_mut(&id) {
                    if e.phase == Phase::Waiting && e.next_ms == at {
                        let retry = e.attempts > 0;
                        if e.delayed {
                            e.delayed = false;
                            self.hosts[e.host as usize].delayed -= 1;
                        }
                        q.enqueue(e, &id, retry, now);
                    }
                }
            }
        }
        self.expire_queued(now, cfg, spool);
        let mut starts = Vec::new();
        while let Some(start) = self.take_one(now, cfg, spool) {
            starts.push(start);
        }
        // The dispatcher reads the timer heap next: it knows of them.
        self.rate_kick = false;
        starts
    }

    /// Ends the queued requests whose ttl has passed, wherever their host
    /// stands (paused, at its limit). Their ids stay in the lanes and are
    /// skipped there.
    fn expire_queued(&mut self, now: u64, cfg: &DeliveryConfig, spool: Option<&Spool>) {
        while let Some((at, _)) = self.expiry.first() {
            if *at > now {
                return;
            }
            let Some((_, id)) = self.expiry.pop_first() else {
                return;
            };
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.phase != Phase::Queued {
                continue;
            }
            if let Some(s) = spool {
                s.record(&id, e.job.loc(), Outcome::expired(e.attempts, now));
            }
            self.end(&id, Phase::Expired, now, cfg.status_history);
            self.emit("expired", &id, |ev| {
                ev.error = Some("ttl passed while queued".into())
            });
            warn!(id = %id, "ttl passed while queued; expired");
        }
    }

    /// The next time the dispatcher must look: a timer, or an expiry.
    pub(super) fn next_wake(&self) -> Option<u64> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let expiry = self.expiry.first().map(|(at, _)| *at);
        match (timer, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the next job to start, round-robin over the hosts that may take
    /// one more, or `None` when nothing can start now. Marks it in flight.
    pub(super) fn take_one(
        &mut self,
        now: u64,
        cfg: &DeliveryConfig,
        spool: Option<&Spool>,
    ) -> Option<Start> {
        if self.draining {
            return None;
        }
        loop {
            if self.in_flight >= cfg.max_in_flight {
                return None;
            }
            if !self.holding.is_empty() {
                if let Some(start) = self.take_held(now, cfg, spool) {
                    return Some(start);
                }
            }
            let hosts = &mut self.hosts;
            let entries = &self.entries;
            let mut rate_waits = Vec::new();
            let mut batch_waits = Vec::new();
            let next = self.lanes.next(|h, queued| {
                let host = &mut hosts[h as usize];
                if !host.may_start(now, cfg) {
                    return false;
                }
                if let Some(spec) = &host.limits.batch {
                    if let Err(at) = host.batch.ready(spec, queued, entries, now) {
                        batch_waits.push((h, at));
                        return false;
                    }
                }
                match host.bucket.as_mut().and_then(|b| b.ready_at(now)) {
                    Some(at) => {
                        rate_waits.push((h, at));
                        false
                    }
                    None => true,
                }
            });
            self.arm_rate_timers(rate_waits, now);
            self.arm_batch_timers(batch_waits, now);
            let (hi, id, retry) = next?;
            if let Some(spec) = self.hosts[hi as usize].limits.batch.clone() {
                match self.form_batch(hi, (id, retry), spec, now, cfg, spool) {
                    Some(start) => return Some(start),
                    None => continue,
                }
            }
            // A stale id (finished, or queued again elsewhere) is skipped.
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.phase != Phase::Queued {
                continue;
            }
            self.expiry.remove(&(e.expires_ms, id.clone()));
            if now >= e.expires_ms {
                if let Some(s) = spool {
                    s.record(&id, e.job.loc(), Outcome::expired(e.attempts, now));
                }
                self.end(&id, Phase::Expired, now, cfg.status_history);
                self.emit("expired", &id, |ev| {
                    ev.error = Some("ttl passed before delivery".into())
                });
                warn!(id = %id, "ttl passed before delivery; expired");
                continue;
            }
            e.phase = Phase::InFlight;
            let job = e.job.clone();
            if let Some(b) = &mut self.hosts[hi as usize].bucket {
                b.take(now);
            }
            self.hosts[hi as usize].in_flight += 1;
            self.in_flight += 1;
            return Some(Start::One(id, job, hi));
        }
    }

    /// Sets a timer for each rate-limited host's next token, unless one is
    /// already set for that time or earlier; its requests stay queued.
    pub(super) fn arm_rate_timers(&mut self, waits: Vec<(u32, u64)>, now: u64) {
        for (h, at) in waits {
            let host = &mut self.hosts[h as usize];
            if host.rate_wake_ms > now && host.rate_wake_ms <= at {
                continue;
            }
            host.rate_wake_ms = at;
            self.timers.push(Reverse((at, Timer::Host)));
            self.rate_kick = true;
        }
    }
}
