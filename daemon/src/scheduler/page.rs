//! Paging: bounded memory for a backlog. A lane keeps at most
//! `spool.memory_window` pending requests in memory; past that, its new
//! requests stay only in the spool ("cold"). For each, the lane keeps where
//! its record is (about 4 bytes, in order) and [`Cold`] a 64-bit
//! fingerprint of its key, so a repeated id is still a duplicate and
//! `status` still finds it. When the lane's requests in memory fall under
//! half the window, the next cold ones are read back in order, off the
//! lock, and queued as if just restored.
//!
//! Only requests with no attempt yet go cold (new sends, and replayed ones
//! at start), so a cold request's record says all there is to know of it.
//! Compaction leaves cold records where they are: the lane's list points
//! at them. Memory mode has no spool and never pages.

use super::entry::{Entry, JobRef, Phase, NO_OWNER};
use super::fpset::FpSet;
use super::{Engine, State};
use crate::job::client_id;
use crate::spool::{restored_from, Loc, ReadError, Restored};
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use tracing::{debug, error, warn};

// A lane keeps at most `spool.memory_window` pending requests in memory
// (more only while restoring retries at start, and sends waiting for their
// `delay_ms`): a million-request backlog to one host costs that many
// entries plus about 12 bytes (place and fingerprint) per request. Half a
// window is read back at once, when the lane is down to half its window.

/// Where a cold request's record is; its length is in the record's header.
#[derive(Debug, Clone, Copy)]
pub(super) struct ColdLoc {
    seg: u32,
    off: u32,
}

impl ColdLoc {
    /// `None` for a segment number past `u32` (never in practice: that is
    /// four billion segments); such a request simply stays in memory.
    fn of(loc: Loc) -> Option<ColdLoc> {
        Some(ColdLoc {
            seg: u32::try_from(loc.seg).ok()?,
            off: loc.off,
        })
    }
}

/// A lane's cold requests in order: each record's offset, and its segment
/// once per run of records in the same segment (about 4 bytes a request:
/// a lane's backlog is mostly whole segments of its own records).
#[derive(Default)]
pub(super) struct ColdList {
    offs: VecDeque<u32>,
    /// (segment, how many of the next offsets are in it), in order.
    segs: VecDeque<(u32, u32)>,
    /// Requests taken off the front so far: `popped + i` names the `i`th
    /// for good, however the front moves.
    popped: u64,
}

impl ColdList {
    pub(super) fn len(&self) -> usize {
        self.offs.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.offs.is_empty()
    }

    fn push(&mut self, c: ColdLoc) {
        self.offs.push_back(c.off);
        match self.segs.back_mut() {
            Some((seg, n)) if *seg == c.seg => *n += 1,
            _ => self.segs.push_back((c.seg, 1)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = ColdLoc> + '_ {
        let segs = self
            .segs
            .iter()
            .flat_map(|(seg, n)| std::iter::repeat_n(*seg, *n as usize));
        self.offs
            .iter()
            .zip(segs)
            .map(|(off, seg)| ColdLoc { seg, off: *off })
    }

    /// Up to `n` requests from position `from` on (counted from the
    /// first ever pushed), and the position after them. Positions already
    /// taken off the front are skipped.
    fn chunk(&self, from: u64, n: usize) -> (Vec<ColdLoc>, u64) {
        let mut skip = from.saturating_sub(self.popped) as usize;
        let start = self.popped + skip as u64;
        let mut out = Vec::with_capacity(n.min(self.offs.len().saturating_sub(skip)));
        let mut i = skip;
        for &(seg, count) in &self.segs {
            let count = count as usize;
            if skip >= count {
                skip -= count;
                continue;
            }
            for _ in skip..count {
                if out.len() == n {
                    return (out, start + n as u64);
                }
                out.push(ColdLoc {
                    seg,
                    off: self.offs[i],
                });
                i += 1;
            }
            skip = 0;
        }
        let next = start + out.len() as u64;
        (out, next)
    }

    /// The places of up to 8,192 records from position `from` on, as
    /// the spool reads them, and the position after them (see `chunk`).
    pub(super) fn chunk_at(&self, from: u64) -> (Vec<(u64, u32)>, u64) {
        let (chunk, next) = self.chunk(from, 8192);
        let chunk = chunk.iter().map(|c| (c.seg as u64, c.off)).collect();
        (chunk, next)
    }

    /// Drops the first `n`.
    fn drain_front(&mut self, n: usize) {
        for _ in 0..n.min(self.offs.len()) {
            self.popped += 1;
            self.offs.pop_front();
            if let Some(front) = self.segs.front_mut() {
                front.1 -= 1;
                if front.1 == 0 {
                    self.segs.pop_front();
                }
            }
        }
        if self.offs.is_empty() {
            // A drained backlog gives its memory back.
            self.offs = VecDeque::new();
            self.segs = VecDeque::new();
        }
    }
}

/// The keys of the cold requests, as fingerprints, and the lanes that
/// want requests read back.
#[derive(Default)]
pub(super) struct Cold {
    /// A key's fingerprint: 64 bits of a seeded hash. Two keys share one
    /// with odds of about n / 2^64 per lookup (n cold requests): 5e-13 at
    /// ten million, the price of 8 bytes a request instead of the key. A
    /// send whose key shares one is answered `duplicate`.
    ids: FpSet,
    seed: foldhash::fast::RandomState,
    /// Lanes to page in, for the dispatcher.
    wanted: Vec<u32>,
    /// `spool.memory_window`.
    window: usize,
}

impl Cold {
    fn fingerprint(&self, key: &str) -> u64 {
        self.seed.hash_one(key)
    }

    /// Whether `key` names a cold request.
    pub(super) fn contains(&self, key: &str) -> bool {
        !self.ids.is_empty() && self.ids.contains(self.fingerprint(key))
    }

    /// Takes `key` out of the cold set (it was cancelled); its
    /// fingerprint, or `None` if it was not there.
    pub(super) fn take(&mut self, key: &str) -> Option<u64> {
        let fp = self.fingerprint(key);
        self.ids.remove(fp).then_some(fp)
    }

    /// Cold requests.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Sets the window (`spool.memory_window`).
    pub(super) fn with_window(window: usize) -> Cold {
        Cold {
            window: window.max(2),
            ..Cold::default()
        }
    }

    /// Whether a lane waits for a page-in.
    pub(super) fn wanted(&self) -> bool {
        !self.wanted.is_empty()
    }
}

impl State {
    /// Whether a new request of lane `host`, stored at `loc`, stays in the
    /// spool only: the lane has cold requests before it (order), or a full
    /// window.
    pub(super) fn goes_cold(&self, host: u32, loc: Loc) -> bool {
        let h = &self.hosts[host as usize];
        let in_memory = h.pending - h.delayed;
        (!h.cold.is_empty() || h.paging > 0 || in_memory >= self.cold.window)
            && ColdLoc::of(loc).is_some()
    }

    /// Makes a pending request of lane `host`, stored at `loc`, cold: it
    /// counts as pending, and nothing of it stays in memory but its place
    /// in the lane and its fingerprint. Only if [`State::goes_cold`] said so.
    pub(super) fn make_cold(&mut self, host: u32, key: &str, loc: Loc) {
        let Some(c) = ColdLoc::of(loc) else {
            return;
        };
        let fp = self.cold.fingerprint(key);
        self.cold.ids.insert(fp);
        let h = &mut self.hosts[host as usize];
        h.cold.push(c);
        h.pending += 1;
        self.pending += 1;
    }

    /// Asks for a page-in of lane `host` when it has cold requests and
    /// fewer than half its window in memory.
    pub(super) fn want_page_in(&mut self, host: u32) {
        let half = self.cold.window / 2;
        let h = &mut self.hosts[host as usize];
        if h.cold.is_empty() || h.paging > 0 || h.page_wanted {
            return;
        }
        let in_memory = h.pending - h.cold.len() - h.delayed;
        if in_memory < half {
            h.page_wanted = true;
            self.cold.wanted.push(host);
        }
    }

    /// The page-ins to start: each wanted lane's next cold requests (in
    /// transit until applied: `paging`).
    pub(super) fn take_page_ins(&mut self) -> Vec<(u32, Vec<ColdLoc>)> {
        let wanted = std::mem::take(&mut self.cold.wanted);
        let batch = self.cold.window / 2;
        wanted
            .into_iter()
            .filter_map(|host| {
                let h = &mut self.hosts[host as usize];
                h.page_wanted = false;
                let n = h.cold.len().min(batch);
                if n == 0 || h.paging > 0 {
                    return None;
                }
                h.paging = n;
                // They stay on the list until they are queued, so `status`
                // finds them meanwhile.
                Some((host, h.cold.iter().take(n).collect()))
            })
            .collect()
    }

    /// Queues the requests read back for lane `host` (`read` in the order
    /// of `locs`).
    /// Returns whether the dispatcher must look, and whether to try again
    /// later (an I/O error that may pass: the failed request and those
    /// after it stay on the list).
    fn apply_page_in(
        &mut self,
        host: u32,
        locs: &[ColdLoc],
        read: Vec<Result<(Loc, Vec<u8>), ReadError>>,
        spool: &crate::spool::Spool,
    ) -> (bool, bool) {
        let mut kick = false;
        let (mut taken, mut lost, mut retry) = (0usize, 0u64, false);
        for (c, r) in locs.iter().zip(read) {
            let r = match r {
                Ok((loc, payload)) => {
                    restored_from(&payload, loc).ok_or_else(|| "not a request record".to_string())
                }
                Err(e @ ReadError::Io { .. }) => {
                    // Out of file descriptors, a disk hiccup: not lost.
                    warn!(segment = c.seg, error = %e, "cannot read paged-out requests back from the spool; trying again in 1 s");
                    retry = true;
                    break;
                }
                Err(e) => Err(e.to_string()),
            };
            taken += 1;
            match r {
                Ok(r) => {
                    let fp = self.cold.fingerprint(&r.id);
                    // A cancel first: the same id sent again later, and cold
                    // too, is behind it in the lane and has its own turn.
                    if self.take_cold_cancel(fp) {
                        // Cancelled while cold: it ends here, and frees its segment.
                        spool.forget(r.loc);
                        self.drop_cold(host);
                    } else if self.cold.ids.remove(fp) {
                        kick |= self.insert_paged(host, r);
                    } else {
                        // Nothing but this takes a key out of the cold set:
                        // a second copy, and its first won.
                        debug!(id = %r.id, "paged-in record already taken; skipped");
                        self.drop_cold(host);
                    }
                }
                Err(why) => {
                    // Damaged since it was written: as replay would skip it.
                    lost += 1;
                    spool.count_corrupt();
                    error!(segment = c.seg, offset = c.off, error = %why, "a request kept in the spool is damaged and cannot be read back; it is lost");
                    // It must not keep its segment for ever.
                    spool.forget(Loc {
                        seg: c.seg as u64,
                        off: c.off,
                        len: 0,
                    });
                    self.drop_cold(host);
                }
            }
        }
        let h = &mut self.hosts[host as usize];
        h.cold.drain_front(taken);
        h.paging = 0;
        debug!(host = %h.key, taken, lost, "paged requests back in from the spool");
        if !retry {
            self.want_page_in(host);
        }
        (kick, retry)
    }

    /// A cold request that will not come back: it stops counting.
    fn drop_cold(&mut self, host: u32) {
        self.pending -= 1;
        self.hosts[host as usize].pending -= 1;
    }

    /// A paged-in request becomes an entry, scheduled as its record says.
    /// It was counted as pending when it went cold.
    fn insert_paged(&mut self, host: u32, r: Restored) -> bool {
        let bytes = r.loc.len as u64;
        self.bytes += bytes;
        self.paged.push_back((r.accepted_ms, r.id.clone()));
        self.trim_arrivals();
        self.entries.insert(
            r.id.clone(),
            Entry {
                job: JobRef::Disk(r.loc),
                committed: true,
                host,
                owner: r.owner.map_or(NO_OWNER, |o| o.uid),
                max_attempts: r.max_attempts,
                expires_ms: r.expires_ms,
                phase: Phase::Waiting,
                attempts: r.state.attempts,
                next_ms: u64::MAX,
                accepted_ms: r.accepted_ms,
                finished_ms: 0,
                bytes,
                size: r.loc.len,
                last_status: r.state.status,
                last_error: r.state.error,
                snippet: r.state.snippet.map(Into::into),
                dead_seq: 0,
                delayed: false,
            },
        );
        let at = r.state.next_ms.max(r.not_before_ms);
        self.schedule(&r.id, at, r.state.attempts > 0)
    }
}

impl Engine {
    /// Reads a lane's next cold requests back (a blocking read, off the
    /// lock) and queues them.
    pub(super) async fn page_in(self: Arc<Self>, host: u32, locs: Vec<ColdLoc>) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let at: Vec<(u64, u32)> = locs.iter().map(|c| (c.seg as u64, c.off)).collect();
        let s = spool.clone();
        let read = match tokio::task::spawn_blocking(move || s.read_records(&at)).await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "page-in failed; retried");
                let mut st = self.lock();
                st.hosts[host as usize].paging = 0;
                st.want_page_in(host);
                drop(st);
                self.wake.notify_one();
                return;
            }
        };
        let (retry, events) = {
            let mut st = self.lock();
            let (_, retry) = st.apply_page_in(host, &locs, read, &spool);
            (retry, st.take_events())
        };
        self.publish(events);
        self.wake.notify_one();
        if retry {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            self.lock().want_page_in(host);
            self.wake.notify_one();
        }
    }

    /// `status` of a cold request: found by reading the lanes' cold
    /// records back, a chunk at a time (the state lock is not held while
    /// reading). `None` if it is not there (paged in meanwhile: the caller
    /// looks in memory again).
    pub(super) fn find_cold(&self, key: &str) -> Option<(Restored, String)> {
        let (r, host) = self.find_cold_lane(key)?;
        let lane = self.lock().hosts.get(host as usize)?.key.clone();
        Some((r, lane))
    }

    /// [`Engine::find_cold`], with the lane's number.
    pub(super) fn find_cold_lane(&self, key: &str) -> Option<(Restored, u32)> {
        let spool = self.spool.as_ref()?;
        let (hosts, batch) = {
            let st = self.lock();
            (st.hosts.len(), st.cold.window.max(8192))
        };
        for host in 0..hosts {
            let mut from = 0;
            loop {
                let chunk = {
                    let st = self.lock();
                    let Some(h) = st.hosts.get(host) else { break };
                    let (chunk, next) = h.cold.chunk(from, batch);
                    from = next;
                    let chunk: Vec<(u64, u32)> =
                        chunk.iter().map(|c| (c.seg as u64, c.off)).collect();
                    chunk
                };
                if chunk.is_empty() {
                    break;
                }
                for (loc, payload) in spool.read_records(&chunk).into_iter().flatten() {
                    if let Some(r) = restored_from(&payload, loc).filter(|r| *r.id == *key) {
                        return Some((r, host as u32));
                    }
                }
            }
        }
        None
    }
}

/// The id a cold request's key shows.
pub(super) fn shown_id(r: &Restored) -> String {
    client_id(&r.id, r.owner.is_some()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cold_list_keeps_order_across_segments_and_drains_from_the_front() {
        let mut l = ColdList::default();
        let locs: Vec<(u32, u32)> = vec![(1, 16), (1, 300), (2, 16), (2, 90), (2, 400), (4, 16)];
        for (seg, off) in &locs {
            l.push(ColdLoc {
                seg: *seg,
                off: *off,
            });
        }
        let got = |l: &ColdList| l.iter().map(|c| (c.seg, c.off)).collect::<Vec<_>>();
        assert_eq!(got(&l), locs);
        assert_eq!(l.segs.len(), 3, "one run per segment");
        l.drain_front(3);
        assert_eq!(got(&l), locs[3..]);
        // Positions count from the first ever pushed.
        let (c, next) = l.chunk(0, 2);
        assert_eq!(
            c.iter().map(|c| (c.seg, c.off)).collect::<Vec<_>>(),
            locs[3..5]
        );
        assert_eq!(next, 5);
        let (c, next) = l.chunk(next, 10);
        assert_eq!(
            c.iter().map(|c| (c.seg, c.off)).collect::<Vec<_>>(),
            locs[5..]
        );
        assert_eq!(next, 6);
        assert!(l.chunk(next, 10).0.is_empty());
        l.push(ColdLoc { seg: 4, off: 99 });
        assert_eq!(l.len(), 4);
        l.drain_front(10);
        assert!(l.is_empty() && l.segs.is_empty());
    }
}
