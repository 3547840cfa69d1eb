//! Deferred sampling across the mesh ("retention"): keep every error and slow trace at a low
//! head-sampling rate, without a tail-sampling collector.
//!
//! Every request's span is recorded, sampled or not. When a span ends it is kept if it was
//! head-sampled, failed, was slow, or belongs to a trace a downstream hop kept; a kept span is
//! exported with `tracemesh.sampling.reason`, and anything else goes to a bounded [`ring`] where
//! a later keep decision for its trace can still find it (a sibling call that ended before the
//! failing one).
//!
//! The decision travels back up the path in the response: a kept SERVER span answers with the
//! W3C response context (`traceresponse: 00-<trace>-<span>-01`, and the Level 3 draft's
//! `server-timing: trace;desc=…`), which the caller's sidecar reads on its CLIENT span; a
//! decision made after the head went (a gRPC status in the trailers) travels in the trailers,
//! where the caller's sidecar looks too. Between
//! an outbound call and the inbound request it serves, the app forwards no response headers, so
//! the sidecar remembers which traces it kept ([`kept`]) and keeps the SERVER span of such a
//! trace when it ends.

pub mod kept;
pub mod ring;
pub mod slow;

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use self::{kept::KeptTraces, ring::Ring, slow::SlowLearner};
use super::SpanRecord;
use crate::context::{SpanId, TraceId};

/// `traceresponse` (W3C Trace Context Level 2, response header).
pub static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
/// `server-timing` (the Level 3 draft carries the response context in a `trace` metric).
pub static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Why a span was exported: the attribute `tracemesh.sampling.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeepReason {
    /// Sampled at the head (the trace's own decision).
    Head,
    /// It, or a span of its trace in this sidecar, failed.
    Error,
    /// It, or a span of its trace in this sidecar, was slow.
    Slow,
    /// A downstream hop kept the trace.
    Downstream,
}

impl KeepReason {
    pub const ALL: [KeepReason; 4] = [
        KeepReason::Head,
        KeepReason::Error,
        KeepReason::Slow,
        KeepReason::Downstream,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            KeepReason::Head => "head",
            KeepReason::Error => "error",
            KeepReason::Slow => "slow",
            KeepReason::Downstream => "downstream",
        }
    }
}

/// Settings (flags `--retention*`, `--slow-*`, `--response-context`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionConfig {
    /// Record unsampled spans and keep errors, slow and downstream-kept traces.
    pub enabled: bool,
    /// Records the ring holds.
    pub ring_spans: usize,
    /// A span longer than this is slow, whatever the route (unset: learned only).
    pub slow_threshold: Option<Duration>,
    /// Nothing shorter is slow by the learned threshold.
    pub slow_floor: Duration,
    /// Answer kept requests with `traceresponse` / `server-timing` (off at the mesh's edge).
    pub response_context: bool,
    /// New traces kept for a reason other than the head, per second (a token bucket).
    pub keep_rate: f64,
    /// Traces the kept table can remember at once.
    pub kept_traces: usize,
    /// How long a kept trace is remembered: the longest a SERVER span may outlive the outbound
    /// call that kept its trace and still be kept.
    pub kept_ttl: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            ring_spans: DEFAULT_RING_SPANS,
            slow_threshold: None,
            slow_floor: DEFAULT_SLOW_FLOOR,
            response_context: true,
            keep_rate: DEFAULT_KEEP_RATE,
            kept_traces: kept::SLOTS,
            kept_ttl: kept::TTL,
        }
    }
}

/// 5 MiB of records (568 bytes each, in a 640-byte allocation; `ring.rs` checks the size).
pub const DEFAULT_RING_SPANS: usize = 8192;
pub const DEFAULT_SLOW_FLOOR: Duration = Duration::from_millis(100);
pub const DEFAULT_KEEP_RATE: f64 = 1000.0;

/// One proxy's retention state.
#[derive(Debug)]
pub struct Retention {
    pub config: RetentionConfig,
    ring: Ring,
    kept: KeptTraces,
    learner: SlowLearner,
    /// New traces kept for a reason other than the head, per second: bounds what an error
    /// storm, or a client replaying a kept trace ID, can make the proxy export (and scan).
    limiter: crate::telemetry::sampling::limiter::RateLimiter,
}

impl Retention {
    pub fn new(config: RetentionConfig, workers: usize) -> Self {
        Retention {
            config,
            ring: Ring::new(config.ring_spans, workers.max(1)),
            kept: KeptTraces::new(config.kept_traces, config.kept_ttl),
            learner: SlowLearner::new(config.slow_floor),
            limiter: crate::telemetry::sampling::limiter::RateLimiter::per_second(
                config.keep_rate.max(0.001),
            ),
        }
    }

    pub fn learner(&self) -> &SlowLearner {
        &self.learner
    }

    /// Whether a span of `trace` was kept here recently.
    pub fn is_kept(&self, trace: TraceId) -> bool {
        self.kept.contains(trace)
    }

    /// Remembers `trace` as kept and hands back the records of it that were parked.
    pub fn keep_trace(&self, trace: TraceId, siblings: &mut Vec<Box<SpanRecord>>) {
        self.kept.insert(trace);
        self.ring.take_trace(trace, siblings);
    }

    /// Parks a record that was not kept (see [`ring::Ring::push`]); a `tracestate` over 512
    /// bytes (the length W3C asks every hop to propagate) is not kept.
    pub fn park(&self, mut record: Box<SpanRecord>) -> ring::Pushed {
        record.trim_for_parking();
        self.ring.push(record, |trace| self.kept.contains(trace))
    }

    /// Takes a token for keeping one more trace for a reason other than the head; `false` when
    /// the per-second budget is spent.
    pub fn may_keep(&self) -> bool {
        self.limiter.try_acquire()
    }
}

/// The response context value for a kept span: `00-<trace>-<span>-01`.
pub fn response_context(trace: TraceId, span: SpanId) -> [u8; 55] {
    crate::context::w3c::write_traceparent(&crate::context::SpanContext {
        trace_id: trace,
        span_id: span,
        flags: crate::context::TraceFlags::SAMPLED,
    })
}

/// Adds the response context to a response's headers: `traceresponse` (replacing any), and a
/// `trace` entry appended to `server-timing` (others kept; an old `trace` entry dropped).
pub fn write_response_context(headers: &mut HeaderMap, trace: TraceId, span: SpanId) {
    let value = response_context(trace, span);
    // Both values are one copy in the per-thread header arena, `traceresponse` the tail of
    // the `server-timing` entry: no allocation of their own.
    let mut timing = [0u8; 11 + 55];
    timing[..11].copy_from_slice(b"trace;desc=");
    timing[11..].copy_from_slice(&value);
    let shared = crate::context::arena_bytes(&timing);
    headers.insert(
        TRACERESPONSE.clone(),
        crate::context::ascii_header(shared.slice(11..)),
    );
    // One hash of the name whether the app sent a `server-timing` or not.
    if let http::header::Entry::Vacant(slot) = headers.entry(SERVER_TIMING.clone()) {
        slot.insert(crate::context::ascii_header(shared));
        return;
    }
    // The app's own server-timing (rare): rebuilt with ours appended.
    let mut timing: Vec<u8> = Vec::with_capacity(80);
    for existing in headers.get_all(&SERVER_TIMING) {
        for entry in existing.as_bytes().split(|&b| b == b',') {
            let trimmed = entry.trim_ascii();
            if trimmed.is_empty() || metric_name(trimmed) == b"trace" {
                continue;
            }
            if !timing.is_empty() {
                timing.extend_from_slice(b", ");
            }
            timing.extend_from_slice(trimmed);
        }
    }
    if !timing.is_empty() {
        timing.extend_from_slice(b", ");
    }
    timing.extend_from_slice(b"trace;desc=");
    timing.extend_from_slice(&value);
    let mut timing = HeaderValue::from_bytes(&timing).expect("parts of valid header values");
    // Unique per response, like `ascii_value`'s: never indexed by HPACK.
    timing.set_sensitive(true);
    headers.insert(SERVER_TIMING.clone(), timing);
}

/// Removes the response context (at the mesh's edge).
pub fn strip_response_context(headers: &mut HeaderMap) {
    headers.remove(&TRACERESPONSE);
    let kept: Vec<Vec<u8>> = headers
        .get_all(&SERVER_TIMING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty() && metric_name(e) != b"trace")
        .map(<[u8]>::to_vec)
        .collect();
    if headers.contains_key(&SERVER_TIMING) {
        headers.remove(&SERVER_TIMING);
        if !kept.is_empty() {
            let joined = kept.join(&b", "[..]);
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(SERVER_TIMING.clone(), v);
            }
        }
    }
}

/// The metric name of a `server-timing` entry (`name;dur=…;desc=…`).
fn metric_name(entry: &[u8]) -> &[u8] {
    entry
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Whether a response carries a kept response context for `trace`: a valid `traceresponse`
/// (or, failing that, a `server-timing` `trace` entry) of the same trace with `sampled` set.
pub fn downstream_kept(headers: &HeaderMap, trace: TraceId) -> bool {
    let says_kept = |v: &[u8]| {
        crate::context::w3c::parse_traceparent(v)
            .is_ok_and(|ctx| ctx.trace_id == trace && ctx.flags.is_sampled())
    };
    if let Some(v) = headers.get(&TRACERESPONSE) {
        return says_kept(v.as_bytes());
    }
    headers.get_all(&SERVER_TIMING).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|entry| {
            let entry = entry.trim_ascii();
            metric_name(entry) == b"trace"
                && entry.split(|&b| b == b';').skip(1).any(|param| {
                    let param = param.trim_ascii();
                    param
                        .strip_prefix(b"desc=")
                        .map(|d| {
                            d.strip_prefix(b"\"")
                                .and_then(|d| d.strip_suffix(b"\""))
                                .unwrap_or(d)
                        })
                        .is_some_and(says_kept)
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    fn ids() -> (TraceId, SpanId) {
        (
            TraceId::from_hex(TRACE.as_bytes()).unwrap(),
            SpanId::from_hex(SPAN.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn the_response_context_is_written_exactly_and_server_timing_is_added_to() {
        let (t, s) = ids();
        let mut h = HeaderMap::new();
        write_response_context(&mut h, t, s);
        assert_eq!(h["traceresponse"], format!("00-{TRACE}-{SPAN}-01").as_str());
        assert_eq!(
            h["server-timing"],
            format!("trace;desc=00-{TRACE}-{SPAN}-01").as_str()
        );
        // Unique per response: HTTP/2 must not put them in its HPACK table.
        assert!(h["traceresponse"].is_sensitive() && h["server-timing"].is_sensitive());

        let mut h = HeaderMap::new();
        h.append(
            "server-timing",
            "db;dur=53, cache;desc=\"Cache Read\";dur=23.2"
                .parse()
                .unwrap(),
        );
        h.append("server-timing", "app;dur=47.2".parse().unwrap());
        h.insert(
            "traceresponse",
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-00"
                .parse()
                .unwrap(),
        );
        write_response_context(&mut h, t, s);
        assert_eq!(h.get_all("server-timing").iter().count(), 1);
        assert_eq!(
            h["server-timing"],
            format!("db;dur=53, cache;desc=\"Cache Read\";dur=23.2, app;dur=47.2, trace;desc=00-{TRACE}-{SPAN}-01").as_str()
        );
        assert_eq!(h["traceresponse"], format!("00-{TRACE}-{SPAN}-01").as_str());
        assert!(h["server-timing"].is_sensitive());
    }

    #[test]
    fn a_kept_context_is_read_from_either_header_and_only_for_its_own_trace() {
        let (t, s) = ids();
        let mut h = HeaderMap::new();
        write_response_context(&mut h, t, s);
        assert!(downstream_kept(&h, t));
        assert!(!downstream_kept(&h, TraceId::random()));
        h.remove("traceresponse");
        assert!(downstream_kept(&h, t), "server-timing alone");
        let mut h = HeaderMap::new();
        h.insert(
            "server-timing",
            format!("trace;desc=\"00-{TRACE}-{SPAN}-01\"")
                .parse()
                .unwrap(),
        );
        assert!(downstream_kept(&h, t), "quoted desc");
        let mut h = HeaderMap::new();
        h.insert(
            "traceresponse",
            format!("00-{TRACE}-{SPAN}-00").parse().unwrap(),
        );
        assert!(!downstream_kept(&h, t), "not sampled");
        h.insert("traceresponse", "garbage".parse().unwrap());
        assert!(!downstream_kept(&h, t));
    }

    #[test]
    fn stripping_removes_only_the_trace_entry() {
        let (t, s) = ids();
        let mut h = HeaderMap::new();
        h.insert("server-timing", "db;dur=53".parse().unwrap());
        write_response_context(&mut h, t, s);
        strip_response_context(&mut h);
        assert!(!h.contains_key("traceresponse"));
        assert_eq!(h["server-timing"], "db;dur=53");
        let mut h = HeaderMap::new();
        write_response_context(&mut h, t, s);
        strip_response_context(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }
}
