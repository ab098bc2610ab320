//! What `status` remembers of delivered requests: the most recent
//! `delivery.status_history` of them, in a ring of small fixed records.
//!
//! A delivered request needs none of what a pending one keeps (its place in
//! the spool, timers, its host): only its id, owner, attempts, status,
//! times and `METHOD url`. Kept as a full entry with its own key and text,
//! it cost hundreds of bytes, and 100,000 of them were most of ffd's
//! memory after a long run. Here a record is 72 bytes: the id inline (ffd's
//! own ids are 26 bytes), the text shared with the previous record when the
//! URL repeats, and an index of 64-bit key fingerprints (about 20 bytes a
//! record) instead of a map of keys.

use super::entry::NO_OWNER;
use crate::job::{with_owner_key, Owner};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Ids up to this long are kept inside the record.
const INLINE: usize = 30;

/// A client id, inline when short.
#[derive(Clone)]
enum Id {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Id {
    fn new(id: &str) -> Id {
        if id.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            Id::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            Id::Heap(id.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Made from a `&str` cut at its own length.
            Id::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or(""),
            Id::Heap(s) => s,
        }
    }
}

/// One delivered request.
#[derive(Clone)]
pub(crate) struct Record {
    id: Id,
    /// The sender's uid, [`NO_OWNER`] for a request from before owners.
    pub(crate) owner: u32,
    pub(crate) attempts: u16,
    pub(crate) max_attempts: u16,
    /// 0: none.
    status: u16,
    /// When it was delivered (Unix ms).
    pub(crate) finished_ms: u64,
    /// How long after its acceptance (ms, saturating at ~49 days).
    took_ms: u32,
    /// `METHOD url`, shared while it repeats (see `Entry::last_error`).
    pub(crate) text: Option<Arc<str>>,
}

impl Record {
    /// The client id.
    pub(crate) fn id(&self) -> &str {
        self.id.as_str()
    }

    /// The last HTTP status.
    pub(crate) fn status(&self) -> Option<u16> {
        (self.status != 0).then_some(self.status)
    }

    /// When it was accepted.
    pub(crate) fn accepted_ms(&self) -> u64 {
        self.finished_ms.saturating_sub(u64::from(self.took_ms))
    }

    /// Whether this record is the request known by `key` (`uid:id`).
    fn is(&self, key: &str) -> bool {
        let owner = (self.owner != NO_OWNER).then_some(Owner {
            uid: self.owner,
            gid: 0,
        });
        with_owner_key(owner, self.id(), |k| k == key)
    }
}

/// The fingerprints are already hashes: the index's map takes them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The most recent delivered requests, oldest first.
#[derive(Default)]
pub(crate) struct Delivered {
    ring: VecDeque<Record>,
    /// Key fingerprint → the record's sequence number.
    index: HashMap<u64, u64, BuildHasherDefault<Identity>>,
    /// Sequence number of `ring[0]`.
    first: u64,
    hasher: foldhash::fast::RandomState,
}

impl Delivered {
    fn fingerprint(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Remembers a delivered request known by `key`, forgetting the oldest
    /// past `keep` (0: none is kept).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        key: &str,
        owner: u32,
        id: &str,
        attempts: u32,
        max_attempts: u32,
        status: Option<u16>,
        accepted_ms: u64,
        finished_ms: u64,
        text: Option<Arc<str>>,
        keep: usize,
    ) {
        while self.ring.len() >= keep.max(1) {
            self.pop_oldest();
        }
        if keep == 0 {
            return;
        }
        // The same URL as the last one: one copy of its text.
        let text = match (text, self.ring.back().and_then(|r| r.text.as_ref())) {
            (Some(t), Some(last)) if Arc::ptr_eq(&t, last) || *t == **last => Some(last.clone()),
            (t, _) => t,
        };
        let seq = self.first + self.ring.len() as u64;
        self.index.insert(self.fingerprint(key), seq);
        self.ring.push_back(Record {
            id: Id::new(id),
            owner,
            attempts: attempts.min(u16::MAX as u32) as u16,
            max_attempts: max_attempts.min(u16::MAX as u32) as u16,
            status: status.unwrap_or(0),
            finished_ms,
            took_ms: finished_ms.saturating_sub(accepted_ms).min(u32::MAX as u64) as u32,
            text,
        });
    }

    fn pop_oldest(&mut self) {
        let Some(old) = self.ring.pop_front() else {
            return;
        };
        let seq = self.first;
        self.first += 1;
        let owner = (old.owner != NO_OWNER).then_some(Owner {
            uid: old.owner,
            gid: 0,
        });
        let fp = with_owner_key(owner, old.id(), |k| self.fingerprint(k));
        if self.index.get(&fp) == Some(&seq) {
            self.index.remove(&fp);
        }
    }

    /// The delivered request known by `key`, if it is remembered.
    pub(crate) fn get(&self, key: &str) -> Option<&Record> {
        let seq = *self.index.get(&self.fingerprint(key))?;
        let r = self.ring.get(seq.checked_sub(self.first)? as usize)?;
        r.is(key).then_some(r)
    }

    /// Whether `key` is a remembered delivered request.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Gives back what a shrunk history no longer needs.
    pub(crate) fn shrink(&mut self, keep: usize) {
        while self.ring.len() > keep {
            self.pop_oldest();
        }
        if self.ring.capacity() > 2 * self.ring.len().max(1024) {
            self.ring.shrink_to_fit();
            self.index.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(d: &mut Delivered, uid: u32, id: &str, keep: usize) {
        let key = format!("{uid}:{id}");
        d.push(
            &key,
            uid,
            id,
            1,
            10,
            Some(200),
            1_000,
            1_250,
            Some("POST http://h/x".into()),
            keep,
        );
    }

    #[test]
    fn keeps_the_most_recent_and_finds_them_by_owner_and_id() {
        let mut d = Delivered::default();
        let long = "x".repeat(100);
        for i in 0..50 {
            push(&mut d, 1000, &format!("id-{i}"), 10);
        }
        push(&mut d, 1000, &long, 10);
        assert!(!d.contains("1000:id-40"), "forgotten past 10");
        for i in 41..50 {
            let r = d.get(&format!("1000:id-{i}")).expect("kept");
            assert_eq!(r.id(), format!("id-{i}"));
            assert_eq!(r.status(), Some(200));
            assert_eq!(r.accepted_ms(), 1_000);
        }
        assert_eq!(d.get(&format!("1000:{long}")).unwrap().id(), long);
        assert!(!d.contains("1001:id-45"), "another owner's id");
        // Texts that repeat are one allocation.
        let a = d.get("1000:id-45").unwrap().text.clone().unwrap();
        let b = d.get("1000:id-46").unwrap().text.clone().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        d.shrink(3);
        assert!(!d.contains("1000:id-46"));
        assert!(d.contains(&format!("1000:{long}")));
        assert!(
            std::mem::size_of::<Record>() <= 72,
            "{}",
            std::mem::size_of::<Record>()
        );
    }
}
