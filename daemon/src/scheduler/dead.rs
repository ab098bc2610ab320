//! Dead letters and the views of requests: `status` of one id, the `dead`
//! list, and the admin ops `replay` and `purge`.

use super::entry::{Entry, JobRef, Phase, NO_OWNER};
use super::{Engine, State};
use crate::clock::now_ms;
use crate::job::{client_id, owner_key, Owner};
use crate::spool::Outcome;
use ffd_proto::{ErrorCode, ProtoError};
use std::sync::Arc;
use tracing::{info, warn};

/// One request as `status` and `dead` show it.
pub struct EntryView {
    /// The id, as its sender gave it (or ffd made it).
    pub id: String,
    /// The sender's uid (`None`: accepted before requests had owners).
    pub owner: Option<u32>,
    /// Where it stands.
    pub phase: Phase,
    /// Attempts made.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Method, when the request can still be read.
    pub method: Option<String>,
    /// URL, when the request can still be read.
    pub url: Option<String>,
    /// `scheme://host:port`.
    pub host: String,
    /// Accepted at (Unix ms).
    pub accepted_ms: u64,
    /// Next attempt (Unix ms) while waiting.
    pub next_attempt_ms: Option<u64>,
    /// Given up at (Unix ms).
    pub expires_ms: u64,
    /// Finished at (Unix ms).
    pub finished_ms: Option<u64>,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last error.
    pub last_error: Option<String>,
    /// First bytes of the last response.
    pub response: Option<String>,
    /// Until when its host is paused by the breaker, if it is.
    pub host_paused_until_ms: Option<u64>,
    /// Failures in a row that paused it, while it is paused.
    pub host_failures: Option<u32>,
    /// Its last attempts, oldest first (for recent requests).
    pub last_attempts: Vec<super::AttemptRecord>,
    /// An event of a batching destination: where it stands in its batch.
    pub batch: Option<BatchView>,
}

/// Where an event stands in a batch (`status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchView {
    /// `waiting` (for a batch to form), `held` (in a batch not sent yet,
    /// or waiting to be sent again), `in_flight`, `delivered`.
    pub state: &'static str,
    /// The batch's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Events in the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<usize>,
    /// The batch's send under way, or the next one (1 for the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<u32>,
}

fn view(key: &str, e: &Entry, st: &State) -> EntryView {
    let owned = e.owner != NO_OWNER;
    // A delivered request keeps `METHOD url` in `last_error` (see there).
    let delivered = e.phase == Phase::Delivered;
    let text = e.last_error.as_deref().filter(|_| delivered);
    let (text, in_batch) = match text.map(super::batch::parse_delivered) {
        Some((t, b)) => (Some(t), b),
        None => (None, None),
    };
    let (method, url) = match text.and_then(|r| r.split_once(' ')) {
        Some((m, u)) => (Some(m.to_string()), Some(u.to_string())),
        None => (None, None),
    };
    let batching = st
        .hosts
        .get(e.host as usize)
        .is_some_and(|h| h.limits.batch.is_some());
    let batch = match (in_batch, st.batch_info(key)) {
        (Some((id, n)), _) => Some(BatchView {
            state: "delivered",
            id: Some(id.to_string()),
            events: Some(n),
            send: None,
        }),
        (None, Some(b)) => Some(BatchView {
            state: if b.in_flight { "in_flight" } else { "held" },
            id: Some(b.id.to_string()),
            events: Some(b.events),
            send: Some(b.send),
        }),
        (None, None) if batching && e.phase.is_pending() => Some(BatchView {
            state: "waiting",
            id: None,
            events: None,
            send: None,
        }),
        _ => None,
    };
    EntryView {
        id: client_id(key, owned).to_string(),
        owner: owned.then_some(e.owner),
        phase: e.phase,
        attempts: e.attempts,
        max_attempts: e.max_attempts,
        method,
        url,
        host: st.host_name(e),
        accepted_ms: e.accepted_ms,
        next_attempt_ms: (e.phase == Phase::Waiting && e.next_ms != u64::MAX).then_some(e.next_ms),
        expires_ms: e.expires_ms,
        finished_ms: (e.finished_ms > 0).then_some(e.finished_ms),
        last_status: e.last_status,
        last_error: e
            .last_error
            .as_deref()
            .filter(|_| !delivered)
            .map(Into::into),
        response: e.snippet.as_deref().map(Into::into),
        last_attempts: st.history.of(key),
        batch,
        host_paused_until_ms: paused(e, st).map(|b| b.paused_until()),
        host_failures: paused(e, st).map(|b| b.failures()),
    }
}

/// The breaker of a pending request's host, while it pauses the host.
fn paused<'a>(e: &Entry, st: &'a State) -> Option<&'a super::Breaker> {
    let b = st.hosts.get(e.host as usize).map(|h| &h.breaker);
    b.filter(|b| e.phase.is_pending() && b.paused(now_ms()))
}

/// A delivered request as `status` shows it, from what is remembered of it.
fn delivered_view(key: &str, r: &super::delivered::Record, st: &State) -> EntryView {
    let (text, in_batch) = match r.text.as_deref().map(super::batch::parse_delivered) {
        Some((t, b)) => (Some(t), b),
        None => (None, None),
    };
    let (method, url) = match text.and_then(|t| t.split_once(' ')) {
        Some((m, u)) => (Some(m.to_string()), Some(u.to_string())),
        None => (None, None),
    };
    let host = url
        .as_deref()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .map(|u| crate::job::host_key(&u))
        .unwrap_or_default();
    EntryView {
        id: r.id().to_string(),
        owner: (r.owner != NO_OWNER).then_some(r.owner),
        phase: Phase::Delivered,
        attempts: u32::from(r.attempts),
        max_attempts: u32::from(r.max_attempts),
        method,
        url,
        host,
        accepted_ms: r.accepted_ms(),
        next_attempt_ms: None,
        expires_ms: 0,
        finished_ms: Some(r.finished_ms),
        last_status: r.status(),
        last_error: None,
        response: None,
        host_paused_until_ms: None,
        host_failures: None,
        last_attempts: st.history.of(key),
        batch: in_batch.map(|(id, n)| BatchView {
            state: "delivered",
            id: Some(id.to_string()),
            events: Some(n),
            send: None,
        }),
    }
}

/// Who is looking: a user sees only their own requests; root and ffd's own
/// user see everyone's.
#[derive(Debug, Clone, Copy)]
pub struct Viewer {
    /// The peer's uid (`None`: unknown, sees only requests without owner).
    pub uid: Option<u32>,
    /// Root or ffd's own user.
    pub admin: bool,
}

impl Viewer {
    pub(super) fn sees(&self, e: &Entry) -> bool {
        self.admin || (e.owner != NO_OWNER && Some(e.owner) == self.uid)
    }
}

impl Engine {
    /// One request (`status` op); `None` when the id is unknown, or not
    /// the viewer's to see (the same answer: another user's ids do not
    /// exist for them). The viewer's own id first; an admin also finds a
    /// request by its key (`uid:id`) or a request without owner by its id.
    pub fn status(&self, id: &str, viewer: Viewer) -> Option<EntryView> {
        let (r, mut v) = {
            let st = self.lock();
            let own = viewer
                .uid
                .map(|u| owner_key(Some(Owner { uid: u, gid: 0 }), id));
            let found = own
                .as_deref()
                .and_then(|k| st.entries.get_key_value(k))
                .or_else(|| viewer.admin.then(|| st.entries.get_key_value(id)).flatten())
                .filter(|(_, e)| viewer.sees(e));
            match found {
                Some((key, e)) => (e.job.clone(), view(key, e, &st)),
                None => {
                    let delivered = own
                        .as_deref()
                        .and_then(|k| Some((k, st.delivered.get(k)?)))
                        .or_else(|| {
                            viewer
                                .admin
                                .then(|| Some((id, st.delivered.get(id)?)))
                                .flatten()
                        })
                        .filter(|(_, r)| {
                            viewer.admin || (r.owner != NO_OWNER && Some(r.owner) == viewer.uid)
                        });
                    if let Some((key, r)) = delivered {
                        return Some(delivered_view(key, r, &st));
                    }
                    let key = match own {
                        Some(k) if st.cold.contains(&k) => k,
                        _ if viewer.admin && st.cold.contains(id) => id.into(),
                        _ => return None,
                    };
                    drop(st);
                    return self.status_cold(&key, viewer);
                }
            }
        };
        self.add_request(&r, &mut v);
        Some(v)
    }

    /// `status` of a request kept in the spool only: its record says all
    /// (it has had no attempt). Read back from the spool; if it was paged
    /// in meanwhile, it is in memory.
    fn status_cold(&self, key: &str, viewer: Viewer) -> Option<EntryView> {
        let Some((r, lane)) = self.find_cold(key) else {
            let st = self.lock();
            let e = st.entries.get(key).filter(|e| viewer.sees(e))?;
            let (job, mut v) = (e.job.clone(), view(key, e, &st));
            drop(st);
            self.add_request(&job, &mut v);
            return Some(v);
        };
        let owner = r.owner.map(|o| o.uid);
        if !viewer.admin && (owner.is_none() || owner != viewer.uid) {
            return None;
        }
        let batching = r.dest.as_deref().is_some_and(|d| {
            let dests = self.destinations.read().unwrap_or_else(|e| e.into_inner());
            dests.get(d).is_some_and(|d| d.batch.is_some())
        });
        let mut v = EntryView {
            id: super::page::shown_id(&r),
            owner,
            phase: Phase::Queued,
            attempts: r.state.attempts,
            max_attempts: r.max_attempts,
            method: None,
            url: None,
            host: lane,
            accepted_ms: r.accepted_ms,
            next_attempt_ms: None,
            expires_ms: r.expires_ms,
            finished_ms: None,
            last_status: None,
            last_error: None,
            response: None,
            host_paused_until_ms: None,
            host_failures: None,
            last_attempts: Vec::new(),
            batch: batching.then_some(BatchView {
                state: "waiting",
                id: None,
                events: None,
                send: None,
            }),
        };
        self.add_request(&JobRef::Disk(r.loc), &mut v);
        Some(v)
    }

    /// Method and URL, read back from the spool outside the state lock.
    fn add_request(&self, r: &JobRef, v: &mut EntryView) {
        if v.method.is_some() {
            return;
        }
        if let Ok(job) = self.load(r) {
            v.method = Some(job.method.as_str().into());
            v.url = Some(job.uri.to_string());
        }
    }

    /// The viewer's dead letters, oldest first, at most `limit` (the most
    /// recent ones) (`dead` op).
    pub fn dead(&self, limit: Option<usize>, viewer: Viewer) -> Vec<EntryView> {
        let list: Vec<(JobRef, EntryView)> = {
            let st = self.lock();
            let mut list: Vec<(JobRef, EntryView)> = st
                .dead
                .values()
                .rev()
                .filter_map(|id| st.entries.get(id).map(|e| (id, e)))
                .filter(|(_, e)| viewer.sees(e))
                .take(limit.unwrap_or(usize::MAX))
                .map(|(id, e)| (e.job.clone(), view(id, e, &st)))
                .collect();
            list.reverse();
            list
        };
        list.into_iter()
            .map(|(r, mut v)| {
                self.add_request(&r, &mut v);
                v
            })
            .collect()
    }

    /// `replay` op: dead letters go back to the queue with fresh attempts and ttl.
    pub fn replay(&self, id: Option<&str>, viewer: Viewer) -> Result<usize, ProtoError> {
        // Read the requests back outside the state lock: replaying many
        // dead letters must not stall every ACK meanwhile.
        let picked: Vec<(Arc<str>, JobRef)> = {
            let st = self.lock();
            st.select_dead(id, viewer)?
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
                Some(s) => JobRef::Disk(s.requeue(&job, r.loc())),
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
            st.trim_arrivals();
            st.schedule(&id, now, false);
            n += 1;
        }
        drop(st);
        info!(count = n, "dead letters replayed");
        self.wake.notify_one();
        Ok(n)
    }

    /// `purge` op: dead letters are forgotten.
    pub fn purge(&self, id: Option<&str>, viewer: Viewer) -> Result<usize, ProtoError> {
        let mut st = self.lock();
        let ids = st.select_dead(id, viewer)?;
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

impl State {
    /// The dead letters `id` names (all the viewer sees when `None`): the
    /// viewer's own id first, then the key as given (`uid:id`, or the id
    /// of a request without owner).
    fn select_dead(&self, id: Option<&str>, viewer: Viewer) -> Result<Vec<Arc<str>>, ProtoError> {
        match id {
            None => Ok(self
                .dead
                .values()
                .filter(|k| self.entries.get(k).is_some_and(|e| viewer.sees(e)))
                .cloned()
                .collect()),
            Some(id) => match viewer
                .uid
                .map(|u| owner_key(Some(Owner { uid: u, gid: 0 }), id))
                .and_then(|k| self.entries.get_key_value(&k))
                .or_else(|| self.entries.get_key_value(id))
                .filter(|(_, e)| viewer.sees(e))
            {
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
}
