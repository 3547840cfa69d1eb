//! The bounded ring of span records that were not (yet) kept: every request's record lands here
//! when its span ends unsampled, and a later keep decision for its trace takes it out again.
//!
//! The ring is sharded, a shard per worker thread (the worker's index, set when its thread
//! starts; other threads use shard 0), so the lock taken per request is uncontended; a keep
//! decision scans every shard for its trace. A slot holds a record's box (made when its request
//! began) and frees the record it overwrites: memory is bounded by the capacity, and nothing is
//! allocated for a slot but the slot itself.

use std::{cell::Cell, sync::Mutex};

use super::super::SpanRecord;
use crate::context::TraceId;

/// One shard: a circular buffer of records.
#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Option<Box<SpanRecord>>>,
    next: usize,
}

/// What became of a pushed record.
#[derive(Debug)]
pub enum Pushed {
    /// In the ring; `overwritten` when a never-kept record made room for it.
    Parked { overwritten: bool },
    /// Its trace was kept meanwhile: export it.
    Kept(Box<SpanRecord>),
}

/// A ring of at most `capacity` records, in `shards` shards.
#[derive(Debug)]
pub struct Ring {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread push into shard `index` (modulo the shard count): called by each worker
/// thread as it starts.
pub fn set_thread_shard(index: usize) {
    SHARD.with(|s| s.set(index));
}

impl Ring {
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        Ring {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
        }
    }

    /// Stores `record` unless `kept_now` says, under the shard's lock, that its trace was kept
    /// meanwhile (then the record comes back, to be exported). A keep decision marks the trace
    /// kept before it scans the shards, so a record is either seen by that scan or sees the
    /// mark: none is left behind by the race between the two.
    pub fn push(&self, record: Box<SpanRecord>, kept_now: impl Fn(TraceId) -> bool) -> Pushed {
        let i = SHARD.with(Cell::get) % self.shards.len();
        let mut shard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
        if kept_now(record.context.trace_id) {
            return Pushed::Kept(record);
        }
        if shard.slots.len() < self.per_shard {
            shard.slots.push(Some(record));
            return Pushed::Parked { overwritten: false };
        }
        let at = shard.next;
        shard.next = (at + 1) % self.per_shard;
        let old = shard.slots[at].replace(record);
        drop(shard);
        Pushed::Parked {
            overwritten: old.is_some(),
        }
    }

    /// Takes every record of `trace` out of the ring, into `out`.
    pub fn take_trace(&self, trace: TraceId, out: &mut Vec<Box<SpanRecord>>) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for slot in shard.slots.iter_mut() {
                if slot.as_ref().is_some_and(|r| r.context.trace_id == trace) {
                    out.extend(slot.take());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one parked record costs, besides what its `Bytes`-backed fields share: the ring's
    /// memory is `capacity` times this, rounded up to the allocator's size class, plus a
    /// pointer per slot.
    #[test]
    fn a_record_is_a_few_hundred_bytes() {
        // 568 bytes (the request text is 240 of them), allocated in jemalloc's 640-byte class:
        // the default 8,192 records are 5 MiB.
        let size = std::mem::size_of::<SpanRecord>();
        println!("SpanRecord: {size} bytes");
        assert!(size <= 600, "{size}");
    }
}
