//! Admission: the door from ingest. A batch of validated sends becomes
//! jobs (destinations and defaults resolved), room is reserved, the batch is
//! written to the spool in one go, and only then are the jobs queued and
//! acknowledged.

use super::entry::{Entry, JobRef, Phase, HOT_BYTES, NO_OWNER};
use super::{place, Engine, Queues, State};
use crate::clock::now_ms;
use crate::config::{DeliveryConfig, WhenFull};
use crate::job::{owner_key, Job, Owner};
use crate::policy::{Denied, Policy};
use crate::spool::{Loc, SpoolError};
use bytes::Bytes;
use ffd_proto::{ErrorCode, ProtoError, SendRequest, Target};
use http::{HeaderName, HeaderValue, Uri};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A send acknowledged: the id the caller is told, and whether its owner
/// had already sent that id (acknowledged once, not queued again).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The request's id (the caller's, or one ffd made).
    pub id: Arc<str>,
    /// The owner sent this id before.
    pub duplicate: bool,
}

/// What admission says to one send.
pub type Admitted = Result<Accepted, ProtoError>;

/// A job of the batch: its index in the batch, the job, its bytes.
type Pending = (usize, Arc<Job>, u64);

/// A caller id repeated within the batch: later copies share the first
/// one's fate. Removes them from `jobs`; returns (copy, first) indexes.
/// `caller_ids`: how many of them carry the caller's id. Ids ffd makes are
/// unique within the process, so a batch without caller ids has no copy
/// to find and pays nothing (one caller id is still looked for: a caller
/// may name an id ffd is about to make).
fn dedupe(jobs: &mut Vec<Pending>, caller_ids: usize) -> Vec<(usize, usize)> {
    let mut same_as = Vec::new();
    if jobs.len() < 2 || caller_ids == 0 {
        return same_as;
    }
    let mut seen: HashMap<Arc<str>, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(jobs.len(), Default::default());
    jobs.retain(|(i, job, _)| match seen.get(&job.key) {
        Some(first) => {
            same_as.push((*i, *first));
            false
        }
        None => {
            seen.insert(job.key.clone(), *i);
            true
        }
    });
    same_as
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
    /// Turns a validated send into a job, resolving `dest` and the defaults
    /// (`dcfg` and `policy` as the batch found them).
    fn make_job(
        &self,
        req: SendRequest,
        owner: Option<Owner>,
        now: u64,
        dcfg: &DeliveryConfig,
        policy: &Policy,
    ) -> Result<Job, ProtoError> {
        let mut headers: Vec<(HeaderName, HeaderValue)>;
        let mut dest = None;
        let mut body = req.body;
        let mut batched = false;
        let (mut timeout_ms, mut max_attempts, mut ttl_ms) =
            (dcfg.timeout_ms, dcfg.max_attempts, dcfg.ttl_ms);
        let uri: Uri = match req.target {
            Target::Url(u) => {
                if !policy.raw_urls {
                    return Err(ProtoError::new(
                        ErrorCode::DeniedDestination,
                        "this ffd accepts named destinations only (`policy.raw_urls = false`): send with `dest`",
                    ));
                }
                headers = req.headers;
                u
            }
            Target::Dest { name, path } => {
                let dests = self
                    .destinations
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let d = dests.get(&name).ok_or_else(|| {
                    ProtoError::new(
                        ErrorCode::UnknownDest,
                        format!("no destination named {name:?} in the config"),
                    )
                })?;
                if let Some(spec) = &d.batch {
                    // An event: the destination shapes the request alone.
                    if let Some(field) = req.shaped.first() {
                        return Err(ProtoError::new(
                            ErrorCode::BadRequest,
                            format!("destination {name:?} batches its events: its method, path, headers, timeout and attempts come from the config, so a send to it may not set `{field}`"),
                        ));
                    }
                    body = spec
                        .event(std::mem::take(&mut body), req.body_is_json)
                        .map_err(|why| {
                            ProtoError::new(
                                ErrorCode::BadRequest,
                                format!("destination {name:?} batches its events: {why}"),
                            )
                        })?;
                    batched = true;
                }
                if let Some((n, _)) = req.headers.iter().find(|(n, _)| d.credentials.contains(n)) {
                    return Err(ProtoError::new(
                        ErrorCode::BadRequest,
                        format!("destination {name:?} sets `{n}` itself from its credentials (`header_files` or `oauth2`); a send to it may not set it"),
                    ));
                }
                headers = Vec::with_capacity(req.headers.len() + d.headers.len());
                // A batch takes the destination's headers when it is sent:
                // its events carry none (nor the `json` content-type).
                if !batched {
                    for (k, v) in &d.headers {
                        if !req.headers.iter().any(|(n, _)| n == k) {
                            headers.push((k.clone(), v.clone()));
                        }
                    }
                    headers.extend(req.headers);
                }
                timeout_ms = d.timeout_ms.unwrap_or(timeout_ms);
                max_attempts = d.max_attempts.unwrap_or(max_attempts);
                ttl_ms = d.ttl_ms.unwrap_or(ttl_ms);
                dest = Some(Arc::<str>::from(name.as_str()));
                format!("{}{path}", d.uri).parse().map_err(|_| {
                    ProtoError::new(
                        ErrorCode::BadRequest,
                        "destination URL + `path` is not a valid URL",
                    )
                })?
            }
        };
        // An address in the URL is judged now; a name when it is resolved.
        if let Err(denied) = check_host_fast(policy, uri.host().unwrap_or("")) {
            return Err(ProtoError::new(
                ErrorCode::DeniedDestination,
                denied.to_string(),
            ));
        }
        let method = if batched {
            http::Method::POST
        } else {
            req.method
        };
        let id: Arc<str> = match req.id {
            Some(id) => id.into(),
            None => crate::id::new_id(now),
        };
        let ttl = req.ttl_ms.unwrap_or(ttl_ms);
        let delay = req.delay_ms.unwrap_or(0);
        if delay >= ttl {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                format!("`delay_ms` ({delay}) must be less than the ttl ({ttl} ms): the request would expire before its first attempt"),
            ));
        }
        Ok(Job {
            key: owner_key(owner, &id),
            id,
            owner,
            method,
            uri,
            dest,
            headers,
            body: Bytes::from(body),
            timeout_ms: req.timeout_ms.unwrap_or(timeout_ms),
            max_attempts: req.max_attempts.unwrap_or(max_attempts),
            accepted_ms: now,
            not_before_ms: now.saturating_add(delay),
            expires_ms: now.saturating_add(ttl),
        })
    }

    /// Accepts a batch of sends from one connection of `owner`: validates,
    /// persists (one spool write for the batch), queues. Results are in the
    /// batch's order. `reqs` is drained (its room kept for the next batch).
    pub async fn accept(&self, reqs: &mut Vec<SendRequest>, owner: Option<Owner>) -> Vec<Admitted> {
        let now = now_ms();
        let mut results: Vec<Admitted> = Vec::with_capacity(reqs.len());
        let mut jobs: Vec<Pending> = Vec::with_capacity(reqs.len());
        let mut caller_ids = 0;
        // Read once a batch: each read is a lock and two atomic counts on
        // lines every connection's worker shares.
        let (dcfg, policy) = (self.dcfg(), self.deliverer.policy());
        for req in reqs.drain(..) {
            let has_id = req.id.is_some();
            match self.make_job(req, owner, now, &dcfg, &policy) {
                Ok(job) => {
                    let bytes = job_bytes(&job);
                    results.push(Ok(Accepted {
                        id: job.id.clone(),
                        duplicate: false,
                    }));
                    jobs.push((results.len() - 1, Arc::new(job), bytes));
                    caller_ids += usize::from(has_id);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if jobs.is_empty() {
            return self.count_results(results);
        }
        let same_as = dedupe(&mut jobs, caller_ids);
        let mut fresh = self.reserve_all(jobs, &mut results).await;
        let locs = self.persist(&mut fresh, &mut results).await;
        if !fresh.is_empty() {
            let mut st = self.lock();
            let mut kick = false;
            for (k, (_, job, _)) in fresh.iter().enumerate() {
                kick |= st.commit(job, locs.get(k).copied());
            }
            self.metrics.accepted.inc_by(fresh.len() as u64);
            st.counters.duplicates += same_as.len() as u64;
            let events = st.take_events();
            drop(st);
            self.publish(events);
            // Sends delayed past the dispatcher's next timer need no wake-up
            // (a wake-up costs a context switch on the ACK path).
            if kick {
                self.wake.notify_one();
            }
        }
        for (i, first) in same_as {
            results[i] = results[first].clone().map(|a| Accepted {
                duplicate: true,
                ..a
            });
        }
        self.count_results(results)
    }

    /// Reserves room for each job, skipping ids already known (the
    /// idempotency key); returns the jobs to write.
    async fn reserve_all(&self, jobs: Vec<Pending>, results: &mut [Admitted]) -> Vec<Pending> {
        let mut fresh = Vec::with_capacity(jobs.len());
        let mut rest = jobs.into_iter().peekable();
        // One lock for the batch (a lock per send was the contended part of
        // ingest on many connections), up to the first send that must wait.
        {
            let mut st = self.lock();
            while let Some((i, job, bytes)) = rest.peek() {
                let i = *i;
                match self.reserve_locked(&mut st, job, *bytes) {
                    Ok(Reserve::Known) => {
                        if let Ok(a) = &mut results[i] {
                            a.duplicate = true;
                        }
                    }
                    Ok(Reserve::Reserved) => {}
                    Ok(Reserve::Pending | Reserve::Full) => break,
                    Err(e) => results[i] = Err(e),
                }
                if let Some(p) = rest.next() {
                    if matches!(results[i], Ok(ref a) if !a.duplicate) {
                        fresh.push(p);
                    }
                }
            }
        }
        for (i, job, bytes) in rest {
            let mut waited = 0u32;
            loop {
                let notified = self.room.notified();
                match self.reserve(&job, bytes) {
                    Ok(Reserve::Known) => {
                        if let Ok(a) = &mut results[i] {
                            a.duplicate = true;
                        }
                        break;
                    }
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
        fresh
    }

    /// Writes the reserved jobs to the spool (one append); on failure they
    /// are taken back out and refused. Returns where each record lives.
    async fn persist(&self, fresh: &mut Vec<Pending>, results: &mut [Admitted]) -> Vec<Loc> {
        let Some(spool) = &self.spool else {
            return Vec::new();
        };
        if fresh.is_empty() {
            return Vec::new();
        }
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
            Ok(locs) => locs,
            Err(e) => {
                let mut st = self.lock();
                for (i, job, bytes) in fresh.drain(..) {
                    st.bytes -= bytes;
                    st.entries.remove(&job.key);
                    results[i] = Err(ProtoError::new(e.code(), e.to_string()));
                }
                Vec::new()
            }
        }
    }

    fn count_results(&self, results: Vec<Admitted>) -> Vec<Admitted> {
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
        self.reserve_locked(&mut st, job, bytes)
    }

    /// [`Engine::reserve`] under a lock the caller holds.
    fn reserve_locked(
        &self,
        st: &mut State,
        job: &Arc<Job>,
        bytes: u64,
    ) -> Result<Reserve, ProtoError> {
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
        let host = st.host_for(&job.uri, job.dest.as_deref());
        if let Some(e) = st.entries.get(&job.key) {
            if !e.committed {
                return Ok(Reserve::Pending);
            }
            st.counters.duplicates += 1;
            return Ok(Reserve::Known);
        }
        if st.cold.contains(&job.key) || st.delivered.contains(&job.key) {
            st.counters.duplicates += 1;
            return Ok(Reserve::Known);
        }
        if used + bytes > self.max_bytes {
            return Ok(Reserve::Full);
        }
        st.bytes += bytes;
        st.entries
            .insert(job.key.clone(), new_entry(job, host, bytes));
        Ok(Reserve::Reserved)
    }
}

/// The entry of a new send, reserved and not yet committed.
fn new_entry(job: &Arc<Job>, host: u32, bytes: u64) -> Entry {
    Entry {
        job: JobRef::Mem(job.clone()),
        committed: false,
        host,
        owner: job.owner.map_or(NO_OWNER, |o| o.uid),
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
        size: job.body.len().min(u32::MAX as usize) as u32,
        last_status: None,
        last_error: None,
        snippet: None,
        dead_seq: 0,
        delayed: false,
    }
}

/// `Policy::check_host`, without its cost for the two common hosts: a
/// plain dotted quad (std's parser accepts exactly the forms that
/// `inet_aton` reads the same way, and allocates nothing) and a name that
/// cannot be an address (no `:`, not starting with a digit or `[`: neither
/// IPv6 nor any `inet_aton` form). Everything else goes the long way.
fn check_host_fast(policy: &Policy, host: &str) -> Result<(), Denied> {
    match host.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => {
            if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
                return policy.check(std::net::IpAddr::V4(v4));
            }
        }
        Some(b) if *b != b'[' && !host.contains(':') => return Ok(()),
        _ => {}
    }
    policy.check_host(host)
}

/// Bytes a job is charged against `max_bytes` (memory mode).
fn job_bytes(job: &Job) -> u64 {
    let headers: usize = job
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (job.body.len() + headers + job.key.len() + 128) as u64
}

impl State {
    /// Makes a reserved entry pending: queued now, or at its `delay_ms`.
    /// With a spool location, the body is dropped from memory.
    fn commit(&mut self, job: &Arc<Job>, loc: Option<Loc>) -> bool {
        let Some(e) = self.entries.get_mut(&job.key) else {
            return false;
        };
        if e.committed || e.phase != Phase::Waiting {
            return false;
        }
        e.committed = true;
        let host = e.host;
        // A delayed send stays in memory: paged out, it would wait behind
        // the lane's window for longer than its delay.
        let delayed = job.not_before_ms > job.accepted_ms;
        if let Some(loc) = loc.filter(|l| !delayed && self.goes_cold(host, *l)) {
            // Told before the entry goes: the event reads it.
            self.emit("accepted", &job.key, |_| {});
            if let Some(e) = self.entries.remove(&job.key) {
                self.bytes -= e.bytes;
            }
            self.make_cold(host, &job.key, loc);
            return false;
        }
        let Some(e) = self.entries.get_mut(&job.key) else {
            return false;
        };
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
        self.arrivals.push_back((job.accepted_ms, job.key.clone()));
        let mut q = Queues {
            lanes: &mut self.lanes,
            timers: &mut self.timers,
            expiry: &mut self.expiry,
        };
        let kick = place(e, &job.key, job.not_before_ms, false, now_ms(), &mut q);
        if e.phase == Phase::Waiting {
            e.delayed = true;
            self.hosts[host].delayed += 1;
        }
        self.emit("accepted", &job.key, |_| {});
        self.trim_arrivals();
        kick
    }
}
