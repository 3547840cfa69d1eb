//! The trace store behind `/debug/traces`: the spans this proxy exported most recently, in
//! memory, so a person can read a trace with no collector at all.
//!
//! The export task moves each record's box into [`TraceStore::add`] as it encodes it out of the
//! queue (OTLP), or each batch before it exports it: nothing is added to the request path. The
//! store is a fixed ring of records (`--debug-traces-spans`, default [`DEFAULT_SPANS`]; a record
//! is about 640 bytes with its allocation), so memory is bounded and adding allocates nothing;
//! the oldest span makes room, and is freed. Reading (a page view)
//! groups the ring by trace, newest trace first.

use std::{collections::HashMap, sync::Mutex, time::SystemTime};

use super::SpanRecord;
use crate::context::TraceId;

/// Spans held by default: 640 KiB.
pub const DEFAULT_SPANS: usize = 1024;

#[derive(Debug)]
pub struct TraceStore {
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    slots: Box<[Option<Box<SpanRecord>>]>,
    next: usize,
}

/// One trace's spans in the store, by start time.
#[derive(Debug, Clone)]
pub struct StoredTrace {
    pub trace_id: TraceId,
    pub spans: Vec<SpanRecord>,
}

impl StoredTrace {
    /// When its last span arrived, by the spans' own clocks (the latest end).
    pub fn end(&self) -> SystemTime {
        self.spans
            .iter()
            .map(|s| s.start + s.duration)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl TraceStore {
    /// A store of `spans` records (at least one).
    pub fn new(spans: usize) -> Self {
        TraceStore {
            ring: Mutex::new(Ring {
                slots: (0..spans.max(1)).map(|_| None).collect(),
                next: 0,
            }),
        }
    }

    /// Records capacity.
    pub fn capacity(&self) -> usize {
        self.lock().slots.len()
    }

    /// Takes `records` in, overwriting the oldest. The lock is held while `records` is
    /// iterated: the exporter encodes each record as it is taken (a batch, ~0.3 ms), and only a
    /// page being rendered waits on it.
    pub fn add(&self, records: impl IntoIterator<Item = Box<SpanRecord>>) {
        let mut ring = self.lock();
        for mut r in records {
            let i = ring.next;
            // Held for minutes, so no share of hyper's request buffers: the header values go
            // (the pages show neither), rather than being copied, which would allocate.
            r.tracestate = None;
            r.grpc_message = None;
            ring.slots[i] = Some(r);
            ring.next = (i + 1) % ring.slots.len();
        }
    }

    /// Up to `n` traces, the most recently ended first.
    pub fn recent(&self, n: usize) -> Vec<StoredTrace> {
        let mut by_trace: HashMap<TraceId, Vec<SpanRecord>> = HashMap::new();
        for r in self.lock().slots.iter().flatten() {
            by_trace
                .entry(r.context.trace_id)
                .or_default()
                .push(SpanRecord::clone(r));
        }
        let mut traces: Vec<StoredTrace> = by_trace
            .into_iter()
            .map(|(trace_id, mut spans)| {
                spans.sort_by_key(|s| s.start);
                StoredTrace { trace_id, spans }
            })
            .collect();
        traces.sort_by_key(|t| std::cmp::Reverse(t.end()));
        traces.truncate(n);
        traces
    }

    /// The spans of `trace` that are still held.
    pub fn trace(&self, trace: TraceId) -> Option<StoredTrace> {
        let mut spans: Vec<SpanRecord> = self
            .lock()
            .slots
            .iter()
            .flatten()
            .filter(|r| r.context.trace_id == trace)
            .map(|r| SpanRecord::clone(r))
            .collect();
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|s| s.start);
        Some(StoredTrace {
            trace_id: trace,
            spans,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        context::SpanId,
        metrics::Direction,
        telemetry::{semconv::tests::record, Outcome},
    };

    fn record_of(trace: TraceId, start_ms: u64, ms: u64) -> Box<SpanRecord> {
        let mut r = record(Direction::Inbound, None, Outcome::Complete);
        r.context.trace_id = trace;
        r.context.span_id = SpanId::random();
        r.start = SystemTime::UNIX_EPOCH + Duration::from_millis(start_ms);
        r.duration = Duration::from_millis(ms);
        Box::new(r)
    }

    #[test]
    fn holds_the_latest_spans_grouped_by_trace_newest_first() {
        let store = TraceStore::new(4);
        let a = TraceId([1; 16]);
        let b = TraceId([2; 16]);
        let c = TraceId([3; 16]);
        store.add([record_of(a, 0, 10), record_of(a, 1, 5)]);
        store.add([record_of(b, 20, 5)]);
        let recent = store.recent(10);
        assert_eq!(
            recent.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
            [b, a]
        );
        assert_eq!(recent[1].spans.len(), 2);
        // Two more spans: the ring is full, then the oldest (a's first) goes.
        store.add([record_of(c, 30, 5), record_of(c, 31, 5)]);
        assert_eq!(store.trace(a).unwrap().spans.len(), 1);
        assert_eq!(store.recent(2).len(), 2, "truncated to n");
        assert!(store.trace(TraceId([9; 16])).is_none());
        assert_eq!(store.capacity(), 4);
    }
}
