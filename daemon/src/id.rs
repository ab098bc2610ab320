//! Request ids made by ffd: sortable by acceptance time and unique.
//!
//! 26 characters of Crockford base32, like a ULID: 48 bits of milliseconds
//! since the Unix epoch, then 80 bits of a per-process random start that is
//! incremented for every id. Ids of one process sort in creation order even
//! within one millisecond; ids of two processes differ by their random start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

struct Gen {
    node: u16,
    counter: AtomicU64,
    last_ms: AtomicU64,
}

fn gen() -> &'static Gen {
    static GEN: OnceLock<Gen> = OnceLock::new();
    GEN.get_or_init(|| Gen {
        node: fastrand::u16(..),
        counter: AtomicU64::new(fastrand::u64(..) >> 1),
        last_ms: AtomicU64::new(0),
    })
}

/// A new id for a request accepted at `now_ms` (Unix milliseconds).
pub fn new_id(now_ms: u64) -> std::sync::Arc<str> {
    let g = gen();
    // Never go back in time within one process, so ids stay sorted even if the clock steps back.
    let ms = g.last_ms.fetch_max(now_ms, Ordering::Relaxed).max(now_ms);
    let count = g.counter.fetch_add(1, Ordering::Relaxed);
    let value: u128 =
        ((ms as u128 & 0xFFFF_FFFF_FFFF) << 80) | ((g.node as u128) << 64) | count as u128;
    // Five bits a character from the low end: character i holds bits
    // 125 - 5i and up, the first one the top 3 bits.
    let mut out = [0u8; 26];
    let mut v = value;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    std::str::from_utf8(&out).expect("alphabet is ASCII").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_unique() {
        let ids: Vec<std::sync::Arc<str>> = (0..1000)
            .map(|i| new_id(1_700_000_000_000 + i / 100))
            .collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        assert!(ids.iter().all(|i| i.len() == 26));
        // The layout: 48 bits of ms first (10 characters), the rest after.
        assert_eq!(&ids[0][..10], "01HF7YAT00");
        ffd_proto::validate_id(&ids[0]).unwrap();
    }
}
