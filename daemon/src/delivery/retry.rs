//! The retry policy: which outcomes are retried, and how long to wait.
//!
//! Pure functions of their inputs (the random draw is passed in), so the
//! schedule is unit-tested without a clock.

use std::time::{Duration, SystemTime};

/// What an attempt's outcome means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Success,
    /// Worth another attempt (408, 425, 429, 5xx, timeout, connection error).
    Retry,
    /// Will not get better by retrying (other 4xx, 3xx, 1xx).
    Final,
}

/// Classifies an HTTP status by the default rules (408, 425, 429, 5xx).
/// Redirects are not followed, so 3xx is final.
pub fn classify_status(status: u16) -> Verdict {
    RetryRules::default().classify(status)
}

/// `retry_on` and `retry_after_max_ms` as delivery uses them: a set of
/// statuses (one bit each, 0-639) and the cap of a `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRules {
    set: [u64; 10],
    /// Longest wait a `Retry-After` may ask for.
    pub after_max_ms: u64,
}

impl Default for RetryRules {
    fn default() -> Self {
        RetryRules::new([(408, 408), (425, 425), (429, 429), (500, 599)], 3_600_000)
    }
}

impl RetryRules {
    /// Rules from ranges of statuses (first, last; both within 100-599).
    pub fn new(ranges: impl IntoIterator<Item = (u16, u16)>, after_max_ms: u64) -> RetryRules {
        let mut set = [0u64; 10];
        for (lo, hi) in ranges {
            for s in lo..=hi.min(639) {
                set[s as usize / 64] |= 1 << (s % 64);
            }
        }
        RetryRules { set, after_max_ms }
    }

    /// A 2xx is delivered; a listed status is retried; any other is final.
    pub fn classify(&self, status: u16) -> Verdict {
        match status {
            200..=299 => Verdict::Success,
            s if s < 640 && self.set[s as usize / 64] & (1 << (s % 64)) != 0 => Verdict::Retry,
            _ => Verdict::Final,
        }
    }

    /// A server's `Retry-After`, capped.
    pub fn cap(&self, retry_after_ms: u64) -> u64 {
        retry_after_ms.min(self.after_max_ms)
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Cap of the wait after the first failed attempt.
    pub base_ms: u64,
    /// Growth of the cap per failed attempt.
    pub multiplier: u32,
    /// Largest wait.
    pub max_ms: u64,
}

impl Backoff {
    /// The cap of the wait after `failed` attempts (1 = after the first).
    pub fn cap_ms(&self, failed: u32) -> u64 {
        let mut cap = self.base_ms;
        for _ in 1..failed {
            cap = cap.saturating_mul(self.multiplier as u64);
            if cap >= self.max_ms {
                return self.max_ms;
            }
        }
        cap.min(self.max_ms)
    }

    /// The wait after `failed` attempts: full jitter, a uniform draw in
    /// `[0, cap]` (`unit` in `[0, 1)`), lengthened to `retry_after` when the
    /// server asked for more. `max_ms` caps the backoff, not the server's
    /// hint (delivery caps that one with `retry_after_max_ms`).
    pub fn wait_ms(&self, failed: u32, unit: f64, retry_after_ms: Option<u64>) -> u64 {
        let cap = self.cap_ms(failed);
        let jittered = (cap as f64 * unit.clamp(0.0, 1.0)) as u64;
        jittered.max(retry_after_ms.unwrap_or(0))
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date. A date in the
/// past means no wait; garbage means the header is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for (s, v) in [
            (200, Verdict::Success),
            (204, Verdict::Success),
            (301, Verdict::Final),
            (400, Verdict::Final),
            (404, Verdict::Final),
            (408, Verdict::Retry),
            (425, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (503, Verdict::Retry),
        ] {
            assert_eq!(classify_status(s), v, "{s}");
        }
    }

    #[test]
    fn retry_rules() {
        let r = RetryRules::new([(404, 404), (400, 499)], 5);
        assert_eq!(r.classify(404), Verdict::Retry);
        assert_eq!(r.classify(418), Verdict::Retry);
        assert_eq!(r.classify(503), Verdict::Final);
        assert_eq!(r.classify(204), Verdict::Success);
        assert_eq!(r.classify(700), Verdict::Final);
        assert_eq!(r.cap(10), 5);
        let only = RetryRules::new([(404, 404)], 0);
        assert_eq!(only.classify(404), Verdict::Retry);
        assert_eq!(only.classify(405), Verdict::Final);
        assert_eq!(only.classify(500), Verdict::Final);
        assert_eq!(only.classify(599), Verdict::Final);
        let all = RetryRules::new([(100, 599)], 0);
        assert_eq!(all.classify(599), Verdict::Retry);
        assert_eq!(all.classify(100), Verdict::Retry);
        assert_eq!(all.classify(200), Verdict::Success);
    }

    #[test]
    fn default_schedule_caps() {
        let b = Backoff {
            base_ms: 5_000,
            multiplier: 4,
            max_ms: 6 * 3_600_000,
        };
        let caps: Vec<u64> = (1..=9).map(|n| b.cap_ms(n) / 1000).collect();
        assert_eq!(caps, [5, 20, 80, 320, 1280, 5120, 20480, 21600, 21600]);
    }

    #[test]
    fn retry_after_lengthens_never_shortens_and_is_capped() {
        let b = Backoff {
            base_ms: 1_000,
            multiplier: 2,
            max_ms: 10_000,
        };
        assert_eq!(b.wait_ms(1, 0.5, None), 500);
        assert_eq!(b.wait_ms(1, 0.5, Some(3_000)), 3_000);
        assert_eq!(b.wait_ms(1, 0.5, Some(100)), 500);
        // The hint is not capped by `max_ms` (delivery caps it).
        assert_eq!(b.wait_ms(1, 0.5, Some(999_999)), 999_999);
        assert!(b.wait_ms(3, 0.999, None) <= 4_000);
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
