//! The circuit breaker of one host, as a pure state machine: no clock (times
//! are passed in), no I/O, so every transition is unit-tested.
//!
//! Closed: up to `max_in_flight_per_host` attempts at once. After
//! `threshold` failed attempts in a row it trips: paused for a cooldown
//! (doubling on each trip up to a cap), then half-open: one probe at a time.
//! Any answer from the host (2xx or a final status) closes it.

/// The breaker's settings (from `[delivery]`).
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Failures in a row that trip it.
    pub threshold: u32,
    /// First pause.
    pub cooldown_ms: u64,
    /// Longest pause.
    pub cooldown_max_ms: u64,
}

/// One host's breaker.
#[derive(Debug, Default, Clone)]
pub struct Breaker {
    failures: u32,
    paused_until: u64,
    /// When it last tripped.
    tripped_ms: u64,
    cooldown_ms: u64,
}

/// A trip: deliveries to the host pause until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    /// End of the pause (Unix ms).
    pub until: u64,
    /// Length of this pause.
    pub cooldown_ms: u64,
    /// Failures in a row so far.
    pub failures: u32,
}

impl Breaker {
    /// Failed attempts in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Until when it is paused (Unix ms; in the past when it is not).
    pub fn paused_until(&self) -> u64 {
        self.paused_until
    }

    /// Paused at `now`.
    pub fn paused(&self, now: u64) -> bool {
        self.paused_until > now
    }

    /// Attempts allowed at once: one probe while half-open.
    pub fn limit(&self, threshold: u32, per_host: usize) -> usize {
        if self.failures >= threshold {
            1
        } else {
            per_host
        }
    }

    /// The host answered (any status): the breaker closes. Returns whether
    /// it was limited (paused or half-open), in which case leaving that
    /// state raises the host's limit and the dispatcher must fill the slots.
    pub fn answered(&mut self, now: u64, threshold: u32) -> bool {
        let was_limited = self.failures >= threshold || self.paused_until > now;
        self.failures = 0;
        self.paused_until = 0;
        self.cooldown_ms = 0;
        was_limited
    }

    /// An attempt begun at `started_ms` failed at `now` (timeout, connection
    /// error, 5xx...). Only attempts that began after the last trip count:
    /// the ones already in flight when it tripped say nothing new.
    pub fn failed(&mut self, now: u64, started_ms: u64, cfg: BreakerConfig) -> Option<Trip> {
        if started_ms < self.tripped_ms || self.paused_until > now {
            return None;
        }
        self.failures += 1;
        if self.failures < cfg.threshold {
            return None;
        }
        self.cooldown_ms = if self.cooldown_ms == 0 {
            cfg.cooldown_ms
        } else {
            (self.cooldown_ms * 2).min(cfg.cooldown_max_ms)
        };
        self.paused_until = now + self.cooldown_ms;
        self.tripped_ms = now;
        Some(Trip {
            until: self.paused_until,
            cooldown_ms: self.cooldown_ms,
            failures: self.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        threshold: 3,
        cooldown_ms: 1_000,
        cooldown_max_ms: 3_000,
    };

    #[test]
    fn trips_after_threshold_then_half_open_then_closes_on_an_answer() {
        let mut b = Breaker::default();
        assert_eq!(b.failed(10, 5, CFG), None);
        assert_eq!(b.failed(11, 5, CFG), None);
        assert_eq!(b.limit(CFG.threshold, 8), 8);
        let trip = b.failed(12, 5, CFG).expect("third failure trips");
        assert_eq!(trip.until, 1_012);
        assert!(b.paused(500));
        assert!(!b.paused(1_012));
        // Half-open after the pause: one probe at a time.
        assert_eq!(b.limit(CFG.threshold, 8), 1);
        assert!(b.answered(1_100, CFG.threshold), "was limited");
        assert_eq!(b.limit(CFG.threshold, 8), 8);
        assert!(!b.answered(1_200, CFG.threshold), "already closed");
    }

    #[test]
    fn attempts_begun_before_a_trip_or_during_a_pause_do_not_count() {
        let mut b = Breaker::default();
        for t in 0..3 {
            b.failed(100 + t, 50, CFG);
        }
        assert_eq!(b.failures(), 3);
        // In flight when it tripped (started at 50 < tripped at 102).
        assert_eq!(b.failed(200, 50, CFG), None);
        // During the pause.
        assert_eq!(b.failed(300, 150, CFG), None);
        assert_eq!(b.failures(), 3);
    }

    #[test]
    fn cooldown_doubles_per_trip_up_to_the_cap() {
        let mut b = Breaker::default();
        let mut now = 0;
        let mut pauses = Vec::new();
        for _ in 0..4 {
            // Failing probes after each pause trip it again.
            let mut trip = None;
            while trip.is_none() {
                now += 1;
                trip = b.failed(now, now, CFG);
            }
            let t = trip.unwrap();
            pauses.push(t.cooldown_ms);
            now = t.until;
        }
        assert_eq!(pauses, [1_000, 2_000, 3_000, 3_000]);
    }
}
