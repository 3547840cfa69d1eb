//! A token bucket for new sampled roots per second, shared by every worker thread of a proxy
//! without a lock: the generic cell rate algorithm keeps one atomic, the theoretical arrival
//! time of the next token, and a compare-and-swap takes a token.
//!
//! Time is tokio's clock, so tests with paused time drive it deterministically.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// At most `rate` acquisitions per second, with bursts of up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds between tokens.
    interval: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) * interval`.
    tolerance: u64,
    /// Theoretical arrival time of the next token, in nanoseconds since `base`.
    tat: AtomicU64,
    base: Instant,
}

impl RateLimiter {
    /// `rate` tokens per second (must be > 0), bursts of `max(1, rate)` rounded up.
    pub fn per_second(rate: f64) -> Self {
        let interval = (1e9 / rate).max(1.0) as u64;
        let burst = rate.ceil().max(1.0) as u64;
        RateLimiter {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            tat: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Takes a token if one is available now.
    pub fn try_acquire(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bounds_acquisitions_per_second_with_a_burst_of_the_rate() {
        let limiter = RateLimiter::per_second(5.0);
        // A burst of 5, then nothing until time moves.
        assert_eq!((0..100).filter(|_| limiter.try_acquire()).count(), 5);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        // Over 10 s of constant demand: the burst plus 5 per second.
        let mut granted = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            granted += (0..10).filter(|_| limiter.try_acquire()).count();
        }
        assert_eq!(granted, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fractional_rate_allows_one_at_a_time() {
        let limiter = RateLimiter::per_second(0.5);
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.try_acquire());
    }
}
