//! The traces this sidecar kept recently, shared by its inbound and outbound sides: a fixed
//! table of atomics (no lock, no allocation after start), so that a SERVER span ending after
//! one of its outbound calls was kept is kept too, although the app never forwards response
//! headers.
//!
//! Each slot holds a trace's 64-bit key and the time it expires. A lookup checks [`WAYS`]
//! slots; an insert takes the first of them that is free, expired or already the trace's, else
//! evicts the first. So a trace can be forgotten early only when many others were kept at once (a false
//! negative: one span of it goes unexported); a trace never kept is never reported kept unless
//! two trace IDs share 64 random bits.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

use crate::context::TraceId;

/// Slots a trace may occupy.
const WAYS: usize = 4;

/// How long a kept trace is remembered by default (`--retention-kept-ttl`).
pub const TTL: Duration = Duration::from_secs(30);
/// Slots by default (`--retention-kept-traces`): 64 KiB.
pub const SLOTS: usize = 4096;

#[derive(Debug)]
pub struct KeptTraces {
    slots: Box<[(AtomicU64, AtomicU64)]>,
    mask: usize,
    base: Instant,
    ttl_ms: u64,
}

impl KeptTraces {
    /// A table of `slots` entries (rounded up to a power of two) that remembers a trace for
    /// `ttl`.
    pub fn new(slots: usize, ttl: Duration) -> Self {
        let n = slots.max(2).next_power_of_two();
        KeptTraces {
            slots: (0..n)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            mask: n - 1,
            base: Instant::now(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn key(trace: TraceId) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace.0[8..]);
        // Never 0, which marks an empty slot.
        u64::from_be_bytes(low) | 1
    }

    fn index(&self, key: u64) -> usize {
        // The trace ID's bits are random; a multiply spreads IDs that are not.
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask
    }

    /// Remembers `trace` as kept for the table's TTL.
    pub fn insert(&self, trace: TraceId) {
        let key = Self::key(trace);
        let now = self.now_ms();
        let expires = now.saturating_add(self.ttl_ms);
        let first = self.index(key);
        let usable = |i: &usize| {
            let (k, e) = &self.slots[*i];
            let k = k.load(Ordering::Relaxed);
            k == 0 || k == key || e.load(Ordering::Relaxed) <= now
        };
        let i = (0..WAYS)
            .map(|w| (first + w) & self.mask)
            .find(usable)
            .unwrap_or(first);
        let (k, e) = &self.slots[i];
        e.store(expires, Ordering::Relaxed);
        k.store(key, Ordering::Release);
    }

    /// Whether `trace` was kept within the TTL.
    pub fn contains(&self, trace: TraceId) -> bool {
        let key = Self::key(trace);
        let now = self.now_ms();
        let first = self.index(key);
        (0..WAYS).map(|w| (first + w) & self.mask).any(|i| {
            let (k, e) = &self.slots[i];
            k.load(Ordering::Acquire) == key && e.load(Ordering::Relaxed) > now
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_for_the_ttl_and_not_longer() {
        for ttl in [TTL, Duration::from_secs(2)] {
            let kept = KeptTraces::new(64, ttl);
            let a = TraceId::random();
            assert!(!kept.contains(a));
            kept.insert(a);
            assert!(kept.contains(a));
            tokio::time::advance(ttl - Duration::from_millis(1)).await;
            assert!(kept.contains(a));
            tokio::time::advance(Duration::from_millis(2)).await;
            assert!(!kept.contains(a));
        }
    }

    #[test]
    fn holds_many_traces_and_never_reports_one_it_did_not_keep() {
        let kept = KeptTraces::new(SLOTS, TTL);
        // Fixed IDs (splitmix64), so the outcome is the same every run.
        let id = |i: u64| {
            let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
            b[0] = 1;
            TraceId(b)
        };
        let ids: Vec<TraceId> = (0..1000).map(id).collect();
        for id in &ids {
            kept.insert(*id);
        }
        let found = ids.iter().filter(|id| kept.contains(**id)).count();
        assert!(found >= 999, "{found} of 1000 remembered");
        assert!((1000..11_000).all(|i| !kept.contains(id(i))));
    }
}
