//! A destination's rate limit (`rate_per_s`): a token bucket. Pure: the
//! caller passes the time (Unix ms).
//!
//! The bucket holds at most one second's worth of tokens (at least one),
//! so a destination idle for a while may take a burst of `rate_per_s`
//! attempts, then one every `1000 / rate_per_s` ms. An attempt takes a
//! token when it starts; a request that finds none stays queued, and the
//! scheduler sets a timer for when the next token is due.

/// One destination's bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket refilling at `rate_per_s`.
    pub fn new(rate_per_s: f64, now: u64) -> Bucket {
        let burst = rate_per_s.max(1.0);
        Bucket {
            per_ms: rate_per_s / 1000.0,
            burst,
            tokens: burst,
            last_ms: now,
        }
    }

    /// The rate it was made with.
    pub fn rate_per_s(&self) -> f64 {
        self.per_ms * 1000.0
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        self.last_ms = self.last_ms.max(now);
    }

    /// `None` when a token is there now, else when the next one is due.
    pub fn ready_at(&mut self, now: u64) -> Option<u64> {
        self.refill(now);
        // A little slack: 0.004 × 250 is not quite 1 in floating point.
        if self.tokens >= 1.0 - 1e-9 {
            return None;
        }
        let missing = 1.0 - self.tokens;
        Some(now + (missing / self.per_ms - 1e-6).ceil().max(1.0) as u64)
    }

    /// Takes a token (the caller saw [`Bucket::ready_at`] say `None`).
    pub fn take(&mut self, now: u64) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let mut b = Bucket::new(4.0, 0);
        for _ in 0..4 {
            assert_eq!(b.ready_at(0), None);
            b.take(0);
        }
        assert_eq!(b.ready_at(0), Some(250));
        assert_eq!(b.ready_at(249), Some(250));
        assert_eq!(b.ready_at(250), None);
        b.take(250);
        assert_eq!(b.ready_at(250), Some(500));
    }

    #[test]
    fn slow_rates_wait_seconds_and_never_store_more_than_one() {
        let mut b = Bucket::new(0.5, 0);
        assert_eq!(b.ready_at(0), None);
        b.take(0);
        assert_eq!(b.ready_at(0), Some(2000));
        // Long idle: still one token, not many.
        assert_eq!(b.ready_at(100_000), None);
        b.take(100_000);
        assert_eq!(b.ready_at(100_000), Some(102_000));
    }
}
