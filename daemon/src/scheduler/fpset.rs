//! A set of 64-bit fingerprints in about 8 bytes each, for the keys of
//! requests paged out to the spool: ten million of them must fit in a
//! fraction of 256 MiB. A hash set holds 9 bytes a bucket at a load of
//! 44–87% (10–20 bytes an entry), and doubles with both tables alive; this
//! keeps a sorted run (indexed by the top bits) with a bit per entry for removals,
//! and a small hash set of recent additions that is merged into the run,
//! in place, when it reaches an eighth of it. Pure: no clock, no locks.

use std::collections::HashSet;

/// Recent additions merged at once, at least.
const MIN_RECENT: usize = 1 << 16;

/// See the module docs.
#[derive(Default)]
pub(super) struct FpSet {
    /// Sorted, no repeats.
    run: Vec<u64>,
    /// Where each bucket of fingerprints (by their top bits) starts in
    /// `run`, and one past the last: a lookup reads one small slice of the
    /// run, not 24 steps of a binary search over it (each a cache miss at
    /// ten million entries). Fingerprints are uniform, so buckets are even.
    starts: Vec<u32>,
    /// `fp >> shift` is its bucket.
    shift: u32,
    /// Bit `i` set: `run[i]` was removed.
    gone: Vec<u64>,
    gone_n: usize,
    recent: HashSet<u64, foldhash::fast::RandomState>,
}

impl FpSet {
    /// Entries in the set.
    pub(super) fn len(&self) -> usize {
        self.run.len() - self.gone_n + self.recent.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, fp: u64) -> Option<usize> {
        if self.run.is_empty() {
            return None;
        }
        let b = (fp >> self.shift) as usize;
        let (from, to) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        let i = from + self.run[from..to].binary_search(&fp).ok()?;
        (self.gone[i / 64] & (1 << (i % 64)) == 0).then_some(i)
    }

    /// Rebuilds `starts` for the run: about 32 entries a bucket.
    fn index(&mut self) {
        // At least two buckets: one would need a shift by 64.
        let buckets = (self.run.len() / 32).max(2).next_power_of_two();
        let bits = buckets.trailing_zeros();
        self.shift = 64 - bits;
        self.starts.clear();
        self.starts.reserve_exact(buckets + 1);
        let mut i = 0;
        for b in 0..buckets as u64 {
            while i < self.run.len() && (self.run[i] >> self.shift) < b {
                i += 1;
            }
            self.starts.push(i as u32);
        }
        self.starts.push(self.run.len() as u32);
        self.starts.shrink_to_fit();
    }

    pub(super) fn contains(&self, fp: u64) -> bool {
        self.recent.contains(&fp) || self.find(fp).is_some()
    }

    /// Adds `fp`, which must not be in the set (callers look first: the
    /// check would cost a second lookup per request); false if it is among
    /// the recent ones.
    pub(super) fn insert(&mut self, fp: u64) -> bool {
        debug_assert!(self.find(fp).is_none());
        if !self.recent.insert(fp) {
            return false;
        }
        if self.recent.len() >= MIN_RECENT.max(self.run.len() / 8) {
            self.merge();
        }
        true
    }

    /// Removes `fp`; false if it was not there.
    pub(super) fn remove(&mut self, fp: u64) -> bool {
        if self.recent.remove(&fp) {
            return true;
        }
        let Some(i) = self.find(fp) else {
            return false;
        };
        self.gone[i / 64] |= 1 << (i % 64);
        self.gone_n += 1;
        if self.gone_n * 2 > self.run.len() {
            self.merge();
        }
        true
    }

    /// Drops the removed entries from the run and merges the recent ones
    /// in, without a second copy of the run: the run shrinks in place, then
    /// grows at its end (a large `Vec` grows by `mremap`, not by copying)
    /// and is merged from the back.
    fn merge(&mut self) {
        let mut keep = 0;
        for i in 0..self.run.len() {
            if self.gone[i / 64] & (1 << (i % 64)) == 0 {
                self.run[keep] = self.run[i];
                keep += 1;
            }
        }
        self.run.truncate(keep);
        let mut add: Vec<u64> = self.recent.drain().collect();
        add.sort_unstable();
        self.recent.shrink_to(MIN_RECENT);
        let (old, extra) = (self.run.len(), add.len());
        self.run.resize(old + extra, 0);
        let (mut i, mut j, mut w) = (old, extra, old + extra);
        while j > 0 {
            if i > 0 && self.run[i - 1] > add[j - 1] {
                self.run[w - 1] = self.run[i - 1];
                i -= 1;
            } else {
                self.run[w - 1] = add[j - 1];
                j -= 1;
            }
            w -= 1;
        }
        if self.run.capacity() > 2 * self.run.len().max(MIN_RECENT) {
            self.run.shrink_to_fit();
        }
        self.gone.clear();
        self.gone.resize(self.run.len().div_ceil(64), 0);
        self.gone.shrink_to_fit();
        self.gone_n = 0;
        self.index();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Random inserts and removals, through several merges, against a
    /// `BTreeSet`.
    #[test]
    fn agrees_with_a_plain_set() {
        let mut rng = fastrand::Rng::with_seed(14);
        let mut set = FpSet::default();
        let mut model = BTreeSet::new();
        // Few distinct values so that inserts and removals hit each other;
        // spread over the whole range, as fingerprints are.
        let spread = |v: u64| v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for round in 0..400_000u32 {
            let fp = spread(rng.u64(0..150_000));
            if rng.u8(0..3) == 0 {
                assert_eq!(set.remove(fp), model.remove(&fp), "remove {fp} at {round}");
            } else if !set.contains(fp) {
                assert!(set.insert(fp), "insert {fp} at {round}");
                assert!(model.insert(fp), "{fp} was in the model at {round}");
            } else {
                assert!(model.contains(&fp), "{fp} not in the model at {round}");
            }
            if round % 997 == 0 {
                let probe = spread(rng.u64(0..150_000));
                assert_eq!(set.contains(probe), model.contains(&probe));
                assert_eq!(set.len(), model.len());
            }
        }
        assert!(!set.run.is_empty(), "merged at least once");
        for v in 0..150_000 {
            let fp = spread(v);
            assert_eq!(set.contains(fp), model.contains(&fp), "{fp}");
        }
        assert_eq!(set.len(), model.len());
    }

    /// A set that filled past a merge and is emptied again, one by one,
    /// through every size down to nothing (the run shrinks by half at each
    /// merge on the way).
    #[test]
    fn fills_and_drains_through_every_size() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut set = FpSet::default();
        let fps: Vec<u64> = (0..3 * MIN_RECENT).map(|_| rng.u64(..)).collect();
        for fp in &fps {
            assert!(set.insert(*fp));
        }
        assert!(!set.run.is_empty());
        for (i, fp) in fps.iter().enumerate() {
            assert!(set.contains(*fp), "{i}");
            assert!(set.remove(*fp), "{i}");
            assert!(!set.contains(*fp), "{i}");
            assert_eq!(set.len(), fps.len() - i - 1);
        }
        assert!(set.is_empty());
        assert!(set.insert(7) && set.contains(7));
    }

    /// About 8 bytes an entry once merged.
    #[test]
    fn a_million_take_about_eight_bytes_each() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut set = FpSet::default();
        for _ in 0..1_000_000 {
            set.insert(rng.u64(..));
        }
        let bytes = set.run.capacity() * 8
            + set.gone.capacity() * 8
            + set.starts.capacity() * 4
            + set.recent.capacity() * 9;
        assert!(bytes < 13 * 1_000_000, "{bytes} bytes");
    }
}
