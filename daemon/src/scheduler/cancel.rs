//! `cancel`: pending requests end `cancelled`, by their owner or an admin.
//!
//! A request waiting in a lane or on a timer ends at once: an OUTCOME
//! record says so, and its stale place in the lane or the timer heap is
//! skipped when reached (as an expired one's is). A request in flight
//! finishes its attempt: a success is delivered, a failure is not retried
//! and ends `cancelled` (`State::cancels`, read by `outcome`). A paged-out
//! (cold) request is found by reading its lane's cold records back; its
//! key leaves the cold set at once, and its place in the lane's list is
//! skipped at page-in, which is when it stops counting as pending and
//! stops holding its segment (the list keeps its order that way).

use super::entry::{Entry, JobRef, Phase, NO_OWNER};
use super::{Engine, State, Viewer};
use crate::clock::now_ms;
use crate::job::{owner_key, Owner};
use crate::spool::{Loc, Outcome, Restored, Spool};
use ffd_proto::{ErrorCode, ProtoError};
use std::collections::HashSet;
use std::sync::Arc;
use tracing::info;

/// Cancels still to be carried out.
#[derive(Default)]
pub(super) struct Cancels {
    /// Keys of requests cancelled while in flight: their attempt's failure
    /// ends them instead of a retry.
    in_flight: HashSet<Arc<str>>,
    /// Fingerprints (`page::Cold`'s) of cold requests cancelled before
    /// they were read back: page-in skips them.
    cold: HashSet<u64>,
}

impl State {
    /// Whether the request `key`, in flight, was cancelled meanwhile; it
    /// is no longer marked after this.
    pub(super) fn take_cancel(&mut self, key: &str) -> bool {
        !self.cancels.in_flight.is_empty() && self.cancels.in_flight.remove(key)
    }

    /// Whether the cold request with fingerprint `fp`, read back, was
    /// cancelled meanwhile; it is no longer marked after this.
    pub(super) fn take_cold_cancel(&mut self, fp: u64) -> bool {
        !self.cancels.cold.is_empty() && self.cancels.cold.remove(&fp)
    }

    /// Cancels the request `key` now, whatever its attempt was doing (it
    /// was in flight and nothing was sent).
    pub(super) fn cancel_now(&mut self, key: &Arc<str>, history: usize, spool: Option<&Spool>) {
        self.cancel_entry(key, now_ms(), history, spool);
    }

    /// Cancels the request `key` (in memory). Returns whether it counts:
    /// it was ended, or stopped from retrying; a finished one does not.
    fn cancel_entry(
        &mut self,
        key: &Arc<str>,
        now: u64,
        history: usize,
        spool: Option<&Spool>,
    ) -> bool {
        let Some(e) = self.entries.get(key) else {
            return false;
        };
        match e.phase {
            Phase::Queued | Phase::Waiting => {
                let (expires, attempts, loc) = (e.expires_ms, e.attempts, e.job.loc());
                self.expiry.remove(&(expires, key.clone()));
                if let Some(s) = spool {
                    s.record(key, loc, Outcome::cancelled(attempts, now));
                }
                self.end(key, Phase::Cancelled, now, history);
                self.emit("cancelled", key, |_| {});
                true
            }
            Phase::InFlight => {
                let (attempts, fresh) = (e.attempts, self.cancels.in_flight.insert(key.clone()));
                if let Some(s) = spool.filter(|_| fresh) {
                    // Written now, so that a restart before the attempt ends
                    // does not send it again; no place: its record stays
                    // live until the attempt's own outcome.
                    s.record(key, None, Outcome::cancelled(attempts, now));
                }
                fresh
            }
            Phase::Delivered | Phase::Dead | Phase::Expired | Phase::Cancelled => false,
        }
    }

    /// Cancels a cold request of lane `host`, read back as `r`. Returns
    /// false if it is cold no more (paged in meanwhile: the caller looks in
    /// memory again).
    fn cancel_cold(
        &mut self,
        host: u32,
        r: &Restored,
        now: u64,
        history: usize,
        spool: Option<&Spool>,
    ) -> bool {
        let Some(fp) = self.cold.take(&r.id) else {
            return false;
        };
        self.cancels.cold.insert(fp);
        if let Some(s) = spool {
            // No place: its record stays live until page-in skips it.
            s.record(&r.id, None, Outcome::cancelled(r.state.attempts, now));
        }
        self.keep_cancelled(r, host, now, history);
        self.metrics.finished("cancelled");
        self.emit("cancelled", &r.id, |_| {});
        // The lane may now have room to read its next requests back.
        self.want_page_in(host);
        true
    }

    /// A cancelled request known only by its spool record (paged out, or
    /// read back at start) kept for `status` as an entry, as long as the
    /// status history keeps cancelled requests.
    pub(super) fn keep_cancelled(
        &mut self,
        r: &Restored,
        host: u32,
        finished_ms: u64,
        history: usize,
    ) {
        self.entries.insert(
            r.id.clone(),
            Entry {
                job: JobRef::Gone,
                committed: true,
                host,
                owner: r.owner.map_or(NO_OWNER, |o| o.uid),
                max_attempts: r.max_attempts,
                expires_ms: r.expires_ms,
                phase: Phase::Cancelled,
                attempts: r.state.attempts,
                next_ms: u64::MAX,
                accepted_ms: r.accepted_ms,
                finished_ms,
                bytes: 0,
                size: 0,
                last_status: r.state.status,
                last_error: None,
                snippet: r.state.snippet.clone().map(Into::into),
                dead_seq: 0,
                delayed: false,
            },
        );
        self.remember_cancelled(r.id.clone(), history);
    }

    /// The key `id` names for `viewer` in memory: the viewer's own id
    /// first, then the key as given (an admin's `uid:id`, or the id of a
    /// request without owner).
    fn key_for(&self, id: &str, viewer: Viewer) -> Option<Arc<str>> {
        viewer
            .uid
            .map(|u| owner_key(Some(Owner { uid: u, gid: 0 }), id))
            .and_then(|k| self.entries.get_key_value(&k))
            .or_else(|| self.entries.get_key_value(id))
            .filter(|(_, e)| viewer.sees(e))
            .map(|(k, _)| k.clone())
    }

    /// The cold key `id` names for `viewer`, as [`State::key_for`].
    fn cold_key_for(&self, id: &str, viewer: Viewer) -> Option<Arc<str>> {
        let own = viewer
            .uid
            .map(|u| owner_key(Some(Owner { uid: u, gid: 0 }), id));
        match own {
            Some(k) if self.cold.contains(&k) => Some(k),
            _ if viewer.admin && self.cold.contains(id) => Some(id.into()),
            _ => None,
        }
    }
}

/// Whether `viewer` may cancel a request of this owner.
fn may(viewer: Viewer, owner: Option<Owner>) -> bool {
    viewer.admin || owner.is_some_and(|o| Some(o.uid) == viewer.uid)
}

impl Engine {
    /// `cancel` of one id: how many requests it ended or stopped from
    /// retrying (0 for one already finished); `not_found` for an id the
    /// viewer does not have (another user's included).
    pub fn cancel_id(&self, id: &str, viewer: Viewer) -> Result<usize, ProtoError> {
        let history = self.dcfg().status_history;
        let not_found = || {
            ProtoError::new(
                ErrorCode::NotFound,
                format!("no request with id {id} (unknown, or finished long ago)"),
            )
        };
        // Twice at most: a cold request may be paged in while it is read.
        for _ in 0..2 {
            let cold_key = {
                let mut st = self.lock();
                if let Some(key) = st.key_for(id, viewer) {
                    let n = st.cancel_entry(&key, now_ms(), history, self.spool.as_deref());
                    let events = st.take_events();
                    drop(st);
                    self.publish(events);
                    self.after_cancel(n as usize);
                    return Ok(n as usize);
                }
                st.cold_key_for(id, viewer).ok_or_else(not_found)?
            };
            let Some((r, host)) = self.find_cold_lane(&cold_key) else {
                continue;
            };
            if !may(viewer, r.owner) {
                return Err(not_found());
            }
            let mut st = self.lock();
            if st.cancel_cold(host, &r, now_ms(), history, self.spool.as_deref()) {
                let events = st.take_events();
                drop(st);
                self.publish(events);
                self.after_cancel(1);
                return Ok(1);
            }
        }
        Err(not_found())
    }

    /// `cancel` of every pending request `viewer` may cancel, in lanes
    /// whose key `lane` accepts: how many it ended or stopped from
    /// retrying.
    pub fn cancel_all(&self, viewer: Viewer, lane: &dyn Fn(&str) -> bool) -> usize {
        let history = self.dcfg().status_history;
        let spool = self.spool.as_deref();
        let (mut n, hosts) = {
            let mut st = self.lock();
            let hosts: Vec<u32> = (0..st.hosts.len() as u32)
                .filter(|h| {
                    let key = &st.hosts[*h as usize].key;
                    !key.is_empty() && lane(key)
                })
                .collect();
            let picked: Vec<Arc<str>> = st
                .entries
                .iter()
                .filter(|(_, e)| e.phase.is_pending() && viewer.sees(e))
                .filter(|(_, e)| hosts.contains(&e.host))
                .map(|(k, _)| k.clone())
                .collect();
            let now = now_ms();
            let mut n = 0;
            for key in &picked {
                n += st.cancel_entry(key, now, history, spool) as usize;
            }
            let events = st.take_events();
            drop(st);
            self.publish(events);
            (n, hosts)
        };
        // Cold requests: their records say whose they are.
        for host in hosts {
            n += self.cancel_cold_lane(host, viewer, history);
        }
        self.after_cancel(n);
        n
    }

    /// Cancels the cold requests of lane `host` that `viewer` may cancel,
    /// reading its cold records back a chunk at a time (off the lock).
    fn cancel_cold_lane(&self, host: u32, viewer: Viewer, history: usize) -> usize {
        let Some(spool) = self.spool.as_ref() else {
            return 0;
        };
        let mut n = 0;
        let mut from = 0;
        loop {
            let chunk = {
                let st = self.lock();
                let Some(h) = st.hosts.get(host as usize) else {
                    break;
                };
                let (chunk, next) = h.cold.chunk_at(from);
                from = next;
                chunk
            };
            if chunk.is_empty() {
                break;
            }
            let mine: Vec<Restored> = spool
                .read_records(&chunk)
                .into_iter()
                .flatten()
                .filter_map(|(loc, payload): (Loc, Vec<u8>)| {
                    crate::spool::restored_from(&payload, loc)
                })
                .filter(|r| may(viewer, r.owner))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let now = now_ms();
            let mut st = self.lock();
            for r in &mine {
                // Paged in since the pass over memory: cancelled there.
                let done = st.cancel_cold(host, r, now, history, Some(spool))
                    || st.cancel_entry(&r.id, now, history, Some(spool));
                n += done as usize;
            }
            let events = st.take_events();
            drop(st);
            self.publish(events);
        }
        n
    }

    /// Wakes whoever may have work after `n` cancels: the dispatcher (a
    /// page-in may be wanted) and senders waiting for room.
    fn after_cancel(&self, n: usize) {
        if n > 0 {
            info!(count = n, "requests cancelled");
            self.wake.notify_one();
            self.room.notify_waiters();
        }
    }
}
