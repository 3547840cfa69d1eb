//! "Slow", learned per route: each (direction, route) keeps a small histogram of its own recent
//! durations, and a span is slow when it took longer than that route's running p99 (and at
//! least a floor, so a route whose p99 is 2 ms does not keep every 3 ms request).
//!
//! Lock-free: a fixed table of entries found by the route's interned text pointer; buckets are
//! powers of two of microseconds; every [`WINDOW`] observations the entry recomputes its p99 and
//! halves its counts, so old traffic fades. Routes beyond the table share one entry.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use crate::{config::routes::Route, metrics::Direction};

/// Buckets: 2^i µs for i in 0..BUCKETS (1 µs … ~4.6 h).
const BUCKETS: usize = 34;
/// Observations between two recomputations of an entry's p99.
pub const WINDOW: u64 = 512;
/// Entries in the table (routes × directions); more share the last one. Room for both
/// directions' inferred routes (`--route-learn-limit`, 200 each) and configured ones; 150 KiB.
const ENTRIES: usize = 512;

#[derive(Debug)]
struct Entry {
    /// `(route pointer << 1) | direction`, 0 when free.
    tag: AtomicUsize,
    counts: [AtomicU64; BUCKETS],
    seen: AtomicU64,
    /// The learned p99 in microseconds; `u64::MAX` until the first window is full.
    p99_us: AtomicU64,
}

impl Entry {
    fn new() -> Self {
        Entry {
            tag: AtomicUsize::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            seen: AtomicU64::new(0),
            p99_us: AtomicU64::new(u64::MAX),
        }
    }

    fn observe(&self, us: u64) {
        let bucket = (64 - us.max(1).leading_zeros() as usize - 1).min(BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen.is_multiple_of(WINDOW) {
            self.recompute();
        }
    }

    /// The upper bound of the bucket holding the 99th percentile; then every count halves.
    fn recompute(&self) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return;
        }
        let rank = total - total / 100;
        let mut cumulative = 0;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            if cumulative >= rank {
                self.p99_us.store(1u64 << (i + 1), Ordering::Relaxed);
                break;
            }
        }
        for c in &self.counts {
            let v = c.load(Ordering::Relaxed);
            c.fetch_sub(v - v / 2, Ordering::Relaxed);
        }
    }
}

/// The learned thresholds of one proxy.
#[derive(Debug)]
pub struct SlowLearner {
    entries: Box<[Entry]>,
    floor: Duration,
}

impl SlowLearner {
    pub fn new(floor: Duration) -> Self {
        SlowLearner {
            entries: (0..ENTRIES).map(|_| Entry::new()).collect(),
            floor,
        }
    }

    fn tag(direction: Direction, route: Option<Route>) -> usize {
        let text = route.map_or("", Route::as_str);
        // Route texts are interned: one pointer per template, and `_unmatched` / none share
        // the static ones.
        let ptr = text.as_ptr() as usize ^ text.len();
        ((ptr << 1) | usize::from(direction == Direction::Outbound)) | 1 << (usize::BITS - 1)
    }

    fn entry(&self, direction: Direction, route: Option<Route>) -> &Entry {
        let tag = Self::tag(direction, route);
        let start = (tag.wrapping_mul(0x9e37_79b9) >> 7) % (ENTRIES - 1);
        for step in 0..8 {
            let e = &self.entries[(start + step) % (ENTRIES - 1)];
            // A plain load finds a route's entry; only a free one is claimed with a CAS, so a
            // request costs no locked instruction on a line other workers read.
            let seen = e.tag.load(Ordering::Acquire);
            if seen == tag {
                return e;
            }
            if seen != 0 {
                continue;
            }
            match e
                .tag
                .compare_exchange(0, tag, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return e,
                Err(seen) if seen == tag => return e,
                Err(_) => {}
            }
        }
        &self.entries[ENTRIES - 1]
    }

    /// Adds one duration to the route's histogram.
    pub fn observe(&self, direction: Direction, route: Option<Route>, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.entry(direction, route).observe(us);
    }

    /// Whether `elapsed` is slow for the route: above its learned p99 and the floor. Nothing is
    /// slow before the route's first window has been seen.
    pub fn is_slow(&self, direction: Direction, route: Option<Route>, elapsed: Duration) -> bool {
        if elapsed <= self.floor {
            return false;
        }
        let p99 = self.entry(direction, route).p99_us.load(Ordering::Relaxed);
        p99 != u64::MAX && u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX) > p99
    }

    /// The learned p99 of a route, if it has one yet.
    pub fn p99(&self, direction: Direction, route: Option<Route>) -> Option<Duration> {
        let p = self.entry(direction, route).p99_us.load(Ordering::Relaxed);
        (p != u64::MAX).then(|| Duration::from_micros(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_learns_its_p99_and_only_what_is_above_it_and_the_floor_is_slow() {
        let learner = SlowLearner::new(Duration::from_millis(5));
        let route = Some(Route::Matched("/orders/{id}"));
        let dir = Direction::Inbound;
        assert!(
            !learner.is_slow(dir, route, Duration::from_secs(10)),
            "nothing learned yet"
        );
        for i in 0..WINDOW {
            // 99.4% at 1.5 ms, 0.6% at 20 ms.
            let d = if i % 200 == 0 { 20_000 } else { 1_500 };
            learner.observe(dir, route, Duration::from_micros(d));
        }
        let p99 = learner.p99(dir, route).unwrap();
        assert!(
            p99 >= Duration::from_micros(1_500) && p99 <= Duration::from_millis(4),
            "{p99:?}"
        );
        assert!(learner.is_slow(dir, route, Duration::from_millis(30)));
        // Above the p99 but under the floor: not slow.
        assert!(!learner.is_slow(dir, route, Duration::from_millis(4)));
        // Another route, another direction: their own histograms.
        assert_eq!(learner.p99(Direction::Outbound, route), None);
        assert_eq!(learner.p99(dir, Some(Route::Matched("/users/{id}"))), None);
    }

    #[test]
    fn old_traffic_fades() {
        let learner = SlowLearner::new(Duration::ZERO);
        let dir = Direction::Inbound;
        for _ in 0..WINDOW {
            learner.observe(dir, None, Duration::from_millis(100));
        }
        assert!(learner.p99(dir, None).unwrap() >= Duration::from_millis(100));
        for _ in 0..(8 * WINDOW) {
            learner.observe(dir, None, Duration::from_micros(900));
        }
        // 900 µs lies in the bucket [512, 1024) µs, whose upper bound is the estimate.
        assert_eq!(learner.p99(dir, None), Some(Duration::from_micros(1024)));
    }
}
