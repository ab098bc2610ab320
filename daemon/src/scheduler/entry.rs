//! A request as the scheduler keeps it: its phase, attempts and last
//! outcome, and where the full request is. Small on purpose: a million
//! pending requests are a million of these.

use crate::job::Job;
use crate::spool::Loc;
use std::collections::HashMap;
use std::sync::Arc;

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
    /// Cancelled by its owner or an admin (`cancel`).
    Cancelled,
}

impl Phase {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Waiting => "waiting",
            Phase::InFlight => "in_flight",
            Phase::Delivered => "delivered",
            Phase::Dead => "dead",
            Phase::Expired => "expired",
            Phase::Cancelled => "cancelled",
        }
    }

    /// Not finished yet.
    pub fn is_pending(self) -> bool {
        matches!(self, Phase::Queued | Phase::Waiting | Phase::InFlight)
    }
}

/// Where the full request is: in memory (memory mode, or until its spool
/// write returned), on disk (its spool record: the body is not kept in
/// memory), both (a fresh job waiting for its first attempt, within
/// [`HOT_BYTES`], so the common path reads nothing back), or gone (delivered).
#[derive(Clone)]
pub(crate) enum JobRef {
    Mem(Arc<Job>),
    Disk(Loc),
    Hot(Arc<Job>, Loc),
    Gone,
}

/// Bytes of spooled jobs kept in memory until their first attempt. Past it,
/// jobs are read back from the spool: memory stays bounded with a backlog.
pub(crate) const HOT_BYTES: u64 = 32 << 20;

impl JobRef {
    pub(crate) fn loc(&self) -> Option<Loc> {
        match self {
            JobRef::Disk(l) | JobRef::Hot(_, l) => Some(*l),
            _ => None,
        }
    }
}

/// `Entry::owner` of a request without an owner.
pub(crate) const NO_OWNER: u32 = u32::MAX;

/// `Entry::host` of a delivered request: it no longer holds its host in
/// memory (the host can be dropped when idle); its `METHOD url` names it.
pub(crate) const NO_HOST: u32 = u32::MAX;

pub(crate) struct Entry {
    pub(crate) job: JobRef,
    /// False between reserve and the end of its spool write: a duplicate
    /// id must not be acknowledged before the original is safely stored.
    pub(crate) committed: bool,
    pub(crate) host: u32,
    /// The sender's uid, [`NO_OWNER`] for a request from before owners.
    pub(crate) owner: u32,
    pub(crate) max_attempts: u32,
    pub(crate) expires_ms: u64,
    pub(crate) phase: Phase,
    pub(crate) attempts: u32,
    pub(crate) next_ms: u64,
    pub(crate) accepted_ms: u64,
    pub(crate) finished_ms: u64,
    /// Bytes reserved against `spool.max_bytes`.
    pub(crate) bytes: u64,
    /// Bytes of its body, or at most that (a restored request counts its
    /// whole record): what an event weighs against a batch's `max_bytes`.
    pub(crate) size: u32,
    pub(crate) last_status: Option<u16>,
    /// The last attempt's error. A delivered request has none, so its
    /// `METHOD url` (query left out) is kept here instead: its body and
    /// record are gone, and this is what `status` still shows of it (one
    /// field for both keeps a million entries 16 MB smaller).
    pub(crate) last_error: Option<Arc<str>>,
    pub(crate) snippet: Option<Box<str>>,
    /// Key in `State::dead` while a dead letter.
    pub(crate) dead_seq: u64,
    /// Waiting for its `delay_ms` (counted in its host's `delayed`).
    pub(crate) delayed: bool,
}

/// Every entry by id: a map from id to a slot in a dense vector. A map of
/// whole entries would hold twice their size in empty buckets at a
/// million pending; this map holds 24 bytes a bucket.
#[derive(Default)]
pub(crate) struct Entries {
    /// foldhash: ids are hashed on every send and every outcome; SipHash
    /// showed as the top user-space cost of ingest.
    index: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Entries of each host: a host is dropped only when none names it.
    host_refs: Vec<u32>,
}

impl Entries {
    pub(crate) fn get(&self, id: &str) -> Option<&Entry> {
        let i = *self.index.get(id)?;
        self.slots[i as usize].as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        let i = *self.index.get(id)?;
        self.slots[i as usize].as_mut()
    }

    pub(crate) fn get_key_value(&self, id: &str) -> Option<(&Arc<str>, &Entry)> {
        let (k, i) = self.index.get_key_value(id)?;
        Some((k, self.slots[*i as usize].as_ref()?))
    }

    /// Every entry with its key, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.index
            .iter()
            .filter_map(|(k, i)| Some((k, self.slots[*i as usize].as_ref()?)))
    }

    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Entries that name host `h`.
    pub(crate) fn refs(&self, h: u32) -> u32 {
        self.host_refs.get(h as usize).copied().unwrap_or(0)
    }

    fn hold(&mut self, h: u32) {
        if h == NO_HOST {
            return;
        }
        let h = h as usize;
        if h >= self.host_refs.len() {
            self.host_refs.resize(h + 1, 0);
        }
        self.host_refs[h] += 1;
    }

    fn release(&mut self, h: u32) {
        if let Some(r) = self.host_refs.get_mut(h as usize) {
            *r -= 1;
        }
    }

    /// After a burst: the slots are packed again and the index sized to
    /// what is left, when they hold more than twice the room needed.
    /// Returns whether anything was given back.
    pub(crate) fn shrink(&mut self) -> bool {
        let live = self.index.len();
        if self.slots.capacity() <= 2 * live + 1024 {
            return false;
        }
        let mut slots = Vec::with_capacity(live);
        for i in self.index.values_mut() {
            slots.push(self.slots[*i as usize].take());
            *i = (slots.len() - 1) as u32;
        }
        self.slots = slots;
        self.free = Vec::new();
        self.index.shrink_to_fit();
        true
    }

    /// Inserts an entry for an id not present.
    pub(crate) fn insert(&mut self, id: Arc<str>, e: Entry) {
        self.hold(e.host);
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
            if let Some(e) = self.slots[old as usize].take() {
                self.release(e.host);
            }
            self.free.push(old);
        }
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Entry> {
        let i = self.index.remove(id)?;
        self.free.push(i);
        let e = self.slots[i as usize].take()?;
        self.release(e.host);
        Some(e)
    }
}

impl Phase {
    /// How the spool records this phase.
    pub fn kind(self) -> crate::spool::Kind {
        use crate::spool::Kind;
        match self {
            Phase::Delivered => Kind::Delivered,
            Phase::Expired => Kind::Expired,
            Phase::Dead => Kind::Dead,
            Phase::Cancelled => Kind::Cancelled,
            Phase::Queued | Phase::Waiting | Phase::InFlight => Kind::Retry,
        }
    }
}
