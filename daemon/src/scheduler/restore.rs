//! Restore: jobs read back from the spool at start are put back in their
//! recorded state, beside new sends (ffd accepts lines while it replays).

use super::entry::{Entry, JobRef, Phase, NO_OWNER};
use super::Engine;
use crate::shutdown::Shutdown;
use crate::spool::{Kind, Restored, Spool};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// What restoring a replayed job came to.
pub enum RestoreResult {
    /// Done: true if the job was taken, false if a newer send holds its id.
    Taken(bool),
    /// A send with the same id is still being stored: try again shortly.
    Wait(Restored),
}

impl Engine {
    /// Replays the spool's old segments into the scheduler, beside new
    /// sends; stops early (the rest stays on disk) when draining begins.
    pub async fn replay_spool(self: Arc<Self>, spool: Arc<Spool>, mut shutdown: Shutdown) {
        let started = std::time::Instant::now();
        let (s, me, stop) = (spool.clone(), self.clone(), shutdown.clone());
        let replay = tokio::task::spawn_blocking(move || {
            let (sp, halt) = (s.clone(), stop.clone());
            s.replay_old(
                move |r| me.restore_streamed(r, &sp, &halt),
                move || stop.is_draining(),
            )
        })
        .await;
        let replay = match replay {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "spool replay failed; pending requests stay on disk until the next start");
                return;
            }
        };
        let r = &replay.report;
        let (pending, dead) = (r.pending, r.dead);
        let (corrupt, torn) = (r.corrupt_records, r.torn_bytes);
        let mut jobs = replay.jobs;
        // Oldest first, so `stats` finds the oldest pending at the front.
        jobs.sort_by_key(|r| r.accepted_ms);
        for mut r in jobs {
            if shutdown.is_draining() {
                // The rest stay on disk for the next start.
                return;
            }
            let loc = r.loc;
            let taken = loop {
                match self.restore(r) {
                    RestoreResult::Taken(t) => break t,
                    RestoreResult::Wait(back) => {
                        // A send with this id arrived during replay and is
                        // being stored; if it fails, this copy stays.
                        r = back;
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                            _ = shutdown.draining() => return,
                        }
                    }
                }
            };
            if !taken {
                spool.forget(loc);
            }
        }
        for r in replay.delivered {
            self.restore_delivered(r);
        }
        info!(
            pending,
            dead,
            corrupt_records = corrupt,
            torn_bytes = torn,
            ms = started.elapsed().as_millis() as u64,
            "spool replayed"
        );
        if corrupt > 0 || torn > 0 {
            warn!(
                corrupt_records = corrupt,
                torn_bytes = torn,
                "spool damage found at start; the rest was recovered"
            );
        }
    }

    /// Restores a plainly pending job as replay streams it (on replay's
    /// blocking thread); one a newer send holds no longer counts in its
    /// segment. Once ffd is stopping, jobs just stay on disk.
    fn restore_streamed(&self, mut r: Restored, spool: &Spool, stop: &Shutdown) {
        let loc = r.loc;
        loop {
            match self.restore(r) {
                RestoreResult::Taken(true) => return,
                RestoreResult::Taken(false) => return spool.forget(loc),
                RestoreResult::Wait(back) => {
                    if stop.is_draining() {
                        return;
                    }
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
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
        if st.cold.contains(&r.id) {
            return RestoreResult::Taken(false);
        }
        // Never attempted, and due (a delayed one stays in memory: see
        // `State::commit`).
        let fresh = r.state.attempts == 0
            && !r.state.is_dead_letter()
            && r.not_before_ms.max(r.state.next_ms) <= crate::clock::now_ms();
        let lane = st.host_for_key(&r.host, r.dest.as_deref());
        if fresh && self.spool.is_some() {
            let host = lane;
            if st.goes_cold(host, r.loc) {
                st.make_cold(host, &r.id, r.loc);
                return RestoreResult::Taken(true);
            }
        }
        let Restored {
            id,
            owner,
            dest: _,
            host: _,
            max_attempts,
            accepted_ms,
            not_before_ms,
            expires_ms,
            loc,
            state: o,
        } = r;
        // What the spool holds for it, roughly (memory-mode accounting only).
        let bytes = loc.len as u64;
        let host = lane;
        let dead = match o.kind {
            Kind::Dead => Some(Phase::Dead),
            Kind::Expired => Some(Phase::Expired),
            _ => None,
        };
        st.entries.insert(
            id.clone(),
            Entry {
                job: JobRef::Disk(loc),
                committed: true,
                host,
                owner: owner.map_or(NO_OWNER, |o| o.uid),
                max_attempts,
                expires_ms,
                phase: dead.unwrap_or(Phase::Waiting),
                attempts: o.attempts,
                next_ms: u64::MAX,
                accepted_ms,
                finished_ms: if dead.is_some() { o.at_ms } else { 0 },
                bytes,
                size: loc.len,
                last_status: o.status,
                last_error: o.error,
                snippet: o.snippet.map(Into::into),
                dead_seq: 0,
                delayed: false,
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
        st.trim_arrivals();
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
        // Sent again since, and pending (in memory or paged out): that wins.
        if st.entries.contains_key(&r.id)
            || st.cold.contains(&r.id)
            || st.delivered.contains(&r.id)
            || history == 0
        {
            return;
        }
        if r.state.kind != Kind::Cancelled {
            let owner = r.owner.map_or(NO_OWNER, |o| o.uid);
            let id = crate::job::client_id(&r.id, owner != NO_OWNER);
            st.delivered.push(
                &r.id,
                owner,
                id,
                r.state.attempts,
                r.max_attempts,
                r.state.status,
                r.accepted_ms,
                r.state.at_ms,
                None,
                history,
            );
            return;
        }
        let host = st.host_for_key(&r.host, r.dest.as_deref());
        st.keep_cancelled(&r, host, r.state.at_ms, history);
    }
}
