//! Connection admission: how many connections in all and per uid, so no
//! user can lock the others out by holding connections open.
//!
//! Past `max_connections`, or past the per-uid limit, a new connection is
//! answered `busy` and closed at once (the caller sees why, instead of
//! hanging in the listen backlog). Root and ffd's own user are not held to
//! the per-uid limit and keep [`RESERVED`] slots beyond the total, so an
//! admin can always run `stats`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// Slots beyond `max_connections` only root and ffd's own user may take.
pub const RESERVED: usize = 2;

/// The counts, shared by the accept loop and every connection's [`Ticket`].
pub struct Gate {
    max: usize,
    per_uid: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_uid: HashMap<u32, usize>,
    /// Refusals not logged yet, and when the last log line went out.
    unlogged: u64,
    logged_at: Option<Instant>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// `max_connections` reached.
    Total,
    /// This uid's limit reached.
    Uid,
}

impl Busy {
    /// The message of the `busy` answer.
    pub fn message(self, max: usize, per_uid: usize) -> String {
        match self {
            Busy::Total => format!(
                "ffd is serving its maximum of {max} connections (max_connections); try again later"
            ),
            Busy::Uid => format!(
                "this user already holds {per_uid} connections to ffd (max_connections_per_uid); close some or try again later"
            ),
        }
    }
}

/// A connection's place; frees it when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    uid: Option<u32>,
}

impl Gate {
    /// A gate for `max` connections in all and `per_uid` per uid.
    pub fn new(max: usize, per_uid: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            per_uid,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The limits, for messages.
    pub fn limits(&self) -> (usize, usize) {
        (self.max, self.per_uid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a connection of `uid` (`admin`: root or ffd's own
    /// user), or says why not.
    pub fn enter(self: &Arc<Self>, uid: Option<u32>, admin: bool) -> Result<Ticket, Busy> {
        let mut c = self.lock();
        if admin {
            if c.total >= self.max + RESERVED {
                return Err(self.refused(&mut c, Busy::Total, uid));
            }
            c.total += 1;
            return Ok(Ticket {
                gate: self.clone(),
                uid: None,
            });
        }
        if c.total >= self.max {
            return Err(self.refused(&mut c, Busy::Total, uid));
        }
        if let Some(u) = uid {
            let n = c.by_uid.entry(u).or_default();
            if *n >= self.per_uid {
                return Err(self.refused(&mut c, Busy::Uid, uid));
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Ticket {
            gate: self.clone(),
            uid,
        })
    }

    /// Logs refusals at most once a second, with how many there were.
    fn refused(&self, c: &mut Counts, why: Busy, uid: Option<u32>) -> Busy {
        c.unlogged += 1;
        let now = Instant::now();
        if c.logged_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            warn!(
                ?why,
                uid,
                refused = c.unlogged,
                connections = c.total,
                "connections refused: busy (limits max_connections / max_connections_per_uid)"
            );
            c.unlogged = 0;
            c.logged_at = Some(now);
        }
        why
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.gate.lock();
        c.total -= 1;
        if let Some(u) = self.uid {
            if let Some(n) = c.by_uid.get_mut(&u) {
                *n -= 1;
                if *n == 0 {
                    c.by_uid.remove(&u);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_uid_and_total_limits_with_a_reserved_slot_for_admins() {
        let g = Gate::new(4, 2);
        let a1 = g.enter(Some(1000), false).unwrap();
        let _a2 = g.enter(Some(1000), false).unwrap();
        assert_eq!(g.enter(Some(1000), false).err(), Some(Busy::Uid));
        let _b1 = g.enter(Some(1001), false).unwrap();
        let _b2 = g.enter(Some(1001), false).unwrap();
        assert_eq!(g.enter(Some(1002), false).err(), Some(Busy::Total));
        // Root still gets in, twice, beyond the total.
        let _r1 = g.enter(Some(0), true).unwrap();
        let _r2 = g.enter(Some(0), true).unwrap();
        assert_eq!(g.enter(Some(0), true).err(), Some(Busy::Total));
        // A closed connection frees its place for its uid.
        drop(a1);
        assert_eq!(g.enter(Some(1002), false).err(), Some(Busy::Total));
        drop(_r1);
        drop(_r2);
        assert!(g.enter(Some(1000), false).is_ok());
    }
}
