//! Token buckets: how the server gives each connection its fair share.
//!
//! One type serves every per-connection budget (ops per second, presence
//! updates per second, transform work per second), so they all refill and
//! burst the same way: a full second's worth at most, refilled continuously.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `per_second` tokens a second, in bursts of up to as many; starts full.
    pub fn new(per_second: f64) -> Self {
        let per_second = per_second.max(1.0);
        TokenBucket {
            per_second,
            tokens: per_second,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if there are that many; otherwise takes none.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// When one token will be there, if it is not now.
    pub fn next_token_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        now + std::time::Duration::from_secs_f64(missing / self.per_second)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.per_second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_over_time_up_to_one_second() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0);
        b.last = start;
        assert!(b.try_take(1.0, start));
        assert!(b.try_take(1.0, start));
        assert!(!b.try_take(1.0, start));
        assert_eq!(b.next_token_at(start), start + Duration::from_millis(500));
        assert!(b.try_take(1.0, start + Duration::from_millis(500)));
        assert!(!b.try_take(1.0, start + Duration::from_millis(500)));
        // A long pause refills one second's worth, no more.
        assert!(b.try_take(2.0, start + Duration::from_secs(60)));
        assert!(!b.try_take(0.5, start + Duration::from_secs(60)));
    }

    #[test]
    fn a_cost_above_what_is_left_takes_nothing() {
        let now = Instant::now();
        let mut b = TokenBucket::new(100.0);
        b.last = now;
        assert!(!b.try_take(150.0, now));
        assert!(b.try_take(100.0, now));
    }
}
