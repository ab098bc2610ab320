//! A set of 64-bit fingerprints in about 8 bytes each, for the keys of
//! requests paged out to the spool: ten million of them must fit in a
//! fraction of 256 MiB. A hash set holds 9 bytes a bucket at a load of
//! 44–87% (10–20 bytes an entry), and doubles with both tables alive; this
//! keeps a sorted run (binary search) with a bit per entry for removals,
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
        let i = self.run.binary_search(&fp).ok()?;
        (self.gone[i / 64] & (1 << (i % 64)) == 0).then_some(i)
    }

    pub(super) fn contains(&self, fp: u64) -> bool {
        self.recent.contains(&fp) || self.find(fp).is_some()
    }

    /// Adds `fp`; false if it was there already.
    pub(super) fn insert(&mut self, fp: u64) -> bool {
        if self.find(fp).is_some() || !self.recent.insert(fp) {
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
        // Small values so that inserts and removals hit each other.
        for round in 0..400_000u32 {
            let fp = rng.u64(0..150_000);
            if rng.u8(0..3) == 0 {
                assert_eq!(set.remove(fp), model.remove(&fp), "remove {fp} at {round}");
            } else {
                assert_eq!(set.insert(fp), model.insert(fp), "insert {fp} at {round}");
            }
            if round % 997 == 0 {
                let probe = rng.u64(0..150_000);
                assert_eq!(set.contains(probe), model.contains(&probe));
                assert_eq!(set.len(), model.len());
            }
        }
        assert!(!set.run.is_empty(), "merged at least once");
        for fp in 0..150_000 {
            assert_eq!(set.contains(fp), model.contains(&fp), "{fp}");
        }
        assert_eq!(set.len(), model.len());
    }

    /// About 8 bytes an entry once merged.
    #[test]
    fn a_million_take_about_eight_bytes_each() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut set = FpSet::default();
        for _ in 0..1_000_000 {
            set.insert(rng.u64(..));
        }
        let bytes = set.run.capacity() * 8 + set.gone.capacity() * 8 + set.recent.capacity() * 9;
        assert!(bytes < 13 * 1_000_000, "{bytes} bytes");
    }
}
