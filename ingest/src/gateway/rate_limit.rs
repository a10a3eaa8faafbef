//! Per-key token buckets: each API key may send `rate` events per second sustained and
//! `burst` at once. A request costs one token per event; when the bucket lacks them the
//! request is refused whole with the seconds until it would pass (`Retry-After`). Time is
//! passed in, so the arithmetic is tested without sleeping. Memory is one bucket per key,
//! bounded by the number of keys.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every key.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens from `key`'s bucket at `now`, or returns the whole seconds to wait.
    pub fn take(&self, key: &str, cost: usize, now: Instant) -> Result<(), u64> {
        let cost = cost as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Ok(());
        }
        let wait = ((cost - bucket.tokens) / self.rate_per_sec).ceil();
        Err((wait as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let rl = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        assert!(rl.take("k", 20, t0).is_ok());
        assert_eq!(rl.take("k", 5, t0), Err(1));
        assert!(rl.take("k", 5, t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(rl.take("k", 20, t0 + Duration::from_millis(500)), Err(2));
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let rl = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        assert!(rl.take("a", 1, t0).is_ok());
        assert!(rl.take("b", 1, t0).is_ok());
        assert!(rl.take("a", 1, t0).is_err());
    }

    #[test]
    fn buckets_never_exceed_the_burst() {
        let rl = RateLimiter::new(100, 10);
        let t0 = Instant::now();
        assert!(rl.take("k", 1, t0).is_ok());
        assert!(rl.take("k", 11, t0 + Duration::from_secs(3600)).is_err());
    }
}
