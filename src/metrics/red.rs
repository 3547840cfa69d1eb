//! RED metrics: `tracemesh_requests_total` and `tracemesh_request_duration_seconds` (names are a
//! contract: dashboards and alerts use them), per direction, method, status code, and — when
//! configured — route; gRPC requests add `grpc_service`, `grpc_method` and `grpc_status`;
//! answers the proxy synthesised after a forwarding failure add `error_type`.
//!
//! Every sample of a sampled request carries its `trace_id` and `span_id` as an OpenMetrics
//! exemplar: the IDs exported over OTLP. Unsampled requests carry none (a link to a trace that
//! was never exported would 404).
//!
//! Cardinality is bounded by construction: methods fold to the semantic conventions' list plus
//! `_OTHER`, routes are configured templates plus `_unmatched`, gRPC method names are interned
//! up to [`MAX_GRPC_METHODS`] and fold to `_other` beyond (as does a service or method name
//! longer than [`MAX_GRPC_LABEL_BYTES`]), status codes are numbers in 100..=599. So `/metrics`
//! stays small whatever paths clients send.
//!
//! Nothing on the request path takes a lock that another thread could hold: each series is
//! atomics (a count, a sum, one counter per bucket), found through a small per-thread cache of
//! series handles (the shared table's read lock is taken only on a miss), and its exemplar slots
//! are only ever *tried* (`try_lock`): a request that finds one busy leaves the exemplar to the
//! next. prometheus-client's histogram takes a write lock per observation, which serialised the
//! workers; and it cannot be handed exemplars from outside, so this module writes the two
//! families' OpenMetrics text itself, in the form prometheus-client writes (see `render`).

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::Direction;
use crate::{
    config::routes::Route,
    context::{SpanId, TraceId},
};

/// Sub-millisecond through 10 s: a sidecar hop is often well under a millisecond, while the
/// app behind it may take seconds.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Distinct gRPC `service/method` pairs given their own label values; more fold to `_other`.
pub const MAX_GRPC_METHODS: usize = 256;

/// Longest gRPC service or method name, in bytes, kept as a label value. Real names are
/// identifiers (`grpc.health.v1.Health`, `Check`) far below this; anything longer is a client
/// writing to our scrape: each label value is repeated on every histogram line of its series,
/// so without a length bound [`MAX_GRPC_METHODS`] 60 KB names would make every scrape hundreds
/// of megabytes. A path with either part over the bound is [`GrpcMethod::OTHER`] and takes no
/// slot in the table.
pub const MAX_GRPC_LABEL_BYTES: usize = 128;

const OTHER: &str = "_other";

/// One series' labels. `Copy`, no allocation: every value is `&'static str` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RedLabels {
    pub direction: Direction,
    pub method: &'static str,
    pub status_code: u16,
    pub route: Option<Route>,
    pub error_type: Option<&'static str>,
    pub grpc: Option<GrpcLabels>,
}

/// The gRPC part of a series' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcLabels {
    pub method: GrpcMethod,
    /// The `grpc-status` code, absent when the call ended without one.
    pub status: Option<u8>,
}

/// An interned gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcMethod {
    pub service: &'static str,
    pub method: &'static str,
}

impl GrpcMethod {
    /// Every method not (yet) named: unanswered, unimplemented, or past the table's bound.
    pub const OTHER: GrpcMethod = GrpcMethod {
        service: OTHER,
        method: OTHER,
    };
}

/// The exemplar of a sampled request: the span the proxy exported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceExemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// [`DURATION_BUCKETS`] as `le` label values, as prometheus-client formats them (a unit test
/// checks they agree).
const LE: [&str; DURATION_BUCKETS.len()] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
];

/// A label value, escaped per OpenMetrics (backslash, double quote, line feed).
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A series' labels into `out` (cleared first), without braces.
fn write_labels(out: &mut String, l: &RedLabels) {
    out.clear();
    let mut label = |name: &str, value: &str| {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_into(out, value);
        out.push('"');
    };
    label("direction", l.direction.as_str());
    label("method", l.method);
    label("status_code", itoa::Buffer::new().format(l.status_code));
    if let Some(route) = l.route {
        label("route", route.as_str());
    }
    if let Some(e) = l.error_type {
        label("error_type", e);
    }
    if let Some(g) = l.grpc {
        label("grpc_service", g.method.service);
        label("grpc_method", g.method.method);
        if let Some(status) = g.status {
            label("grpc_status", itoa::Buffer::new().format(status));
        }
    }
}

/// ` # {trace_id="…",span_id="…"} value timestamp`, when there is an exemplar.
fn write_exemplar(out: &mut String, sample: Option<Sample>) {
    let Some(s) = sample else { return };
    let trace = s.exemplar.trace_id.to_hex();
    let span = s.exemplar.span_id.to_hex();
    let at =
        s.at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
    let _ = write!(
        out,
        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}",
        std::str::from_utf8(&trace).unwrap_or_default(),
        std::str::from_utf8(&span).unwrap_or_default(),
        dtoa::Buffer::new().format(s.value),
        dtoa::Buffer::new().format(at)
    );
}

/// The latest exemplar offered to a slot.
#[derive(Debug, Clone, Copy)]
struct Sample {
    exemplar: TraceExemplar,
    value: f64,
    at: SystemTime,
}

/// An exemplar slot. Writers only `try_lock`: a busy slot keeps its exemplar.
#[derive(Debug, Default)]
struct Slot(Mutex<Option<Sample>>);

impl Slot {
    fn offer(&self, sample: Sample) {
        if let Ok(mut slot) = self.0.try_lock() {
            *slot = Some(sample);
        }
    }

    fn get(&self) -> Option<Sample> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One series of both families: `tracemesh_requests_total` is the sum of its buckets.
#[derive(Debug, Default)]
struct Series {
    sum_nanos: AtomicU64,
    /// Observations per bucket (not cumulative); the last is above every bound (`+Inf`).
    buckets: [AtomicU64; BUCKETS],
    count_exemplar: Slot,
    bucket_exemplars: [Slot; BUCKETS],
}

impl Series {
    fn observe(&self, duration: Duration, exemplar: Option<(TraceExemplar, SystemTime)>) {
        let secs = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some((exemplar, at)) = exemplar {
            let sample = |value| Sample {
                exemplar,
                value,
                at,
            };
            self.count_exemplar.offer(sample(1.0));
            self.bucket_exemplars[bucket].offer(sample(secs));
        }
    }
}

/// Distinguishes `Red` instances (one per proxy; a process may run several) in the per-thread
/// cache.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Series handles a thread used last, per `Red` instance: (instance, labels, series).
const CACHED: usize = 8;

type Cached = (u64, RedLabels, Arc<Series>);

thread_local! {
    static CACHE: RefCell<(usize, Vec<Cached>)> = const { RefCell::new((0, Vec::new())) };
}

/// The RED pair and the gRPC method table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Red(Arc<RedInner>);

#[derive(Debug)]
struct RedInner {
    id: u64,
    series: RwLock<HashMap<RedLabels, Arc<Series>>>,
    grpc_methods: RwLock<HashMap<Box<str>, GrpcMethod>>,
}

const REQUESTS: &str = "tracemesh_requests";
const REQUESTS_HELP: &str = "Requests proxied, by direction, method, status code and route";
const DURATIONS: &str = "tracemesh_request_duration_seconds";
const DURATIONS_HELP: &str = "Time from a request's arrival to the end of its response body";

impl Default for Red {
    fn default() -> Self {
        Self::new()
    }
}

impl Red {
    pub fn new() -> Self {
        Red(Arc::new(RedInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            series: RwLock::default(),
            grpc_methods: RwLock::default(),
        }))
    }

    /// The shared series of `labels`, from the shared table (created on first use).
    fn shared_series(&self, labels: &RedLabels) -> Arc<Series> {
        let found = self
            .0
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(labels)
            .cloned();
        match found {
            Some(s) => s,
            None => self
                .0
                .series
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(*labels)
                .or_default()
                .clone(),
        }
    }

    /// Records one finished request. `exemplar` (the span's IDs, and when the request ended)
    /// is `Some` only for sampled requests.
    pub fn observe(
        &self,
        labels: &RedLabels,
        duration: Duration,
        exemplar: Option<(TraceExemplar, SystemTime)>,
    ) {
        let id = self.0.id;
        // A cache hit observes inside the borrow: no reference count moves per request.
        let hit = CACHE.with_borrow(|(_, cache)| {
            let found = cache.iter().find(|(i, l, _)| *i == id && l == labels);
            if let Some((_, _, series)) = found {
                series.observe(duration, exemplar);
            }
            found.is_some()
        });
        if hit {
            return;
        }
        let series = self.shared_series(labels);
        series.observe(duration, exemplar);
        CACHE.with_borrow_mut(|(next, cache)| {
            let entry = (id, *labels, series);
            if cache.len() < CACHED {
                cache.push(entry);
            } else {
                cache[*next] = entry;
                *next = (*next + 1) % CACHED;
            }
        });
    }

    /// Appends both families in OpenMetrics text, as prometheus-client writes its own: `HELP`,
    /// `TYPE` (and `UNIT`), then a line per series (the histogram's `_sum`, `_count` and
    /// cumulative `_bucket`s, `le` first), exemplars as ` # {trace_id=…,span_id=…} value
    /// timestamp`.
    pub fn render(&self, out: &mut String) {
        let series: Vec<(RedLabels, Arc<Series>)> = self
            .0
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(l, s)| (*l, s.clone()))
            .collect();
        let mut labels = String::new();
        let _ = writeln!(out, "# HELP {REQUESTS} {REQUESTS_HELP}");
        let _ = writeln!(out, "# TYPE {REQUESTS} counter");
        for (l, s) in &series {
            write_labels(&mut labels, l);
            let count: u64 = s.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
            let _ = write!(out, "{REQUESTS}_total{{{labels}}} {count}");
            write_exemplar(out, s.count_exemplar.get());
            out.push('\n');
        }
        let _ = writeln!(out, "# HELP {DURATIONS} {DURATIONS_HELP}");
        let _ = writeln!(out, "# TYPE {DURATIONS} histogram");
        let _ = writeln!(out, "# UNIT {DURATIONS} seconds");
        let mut float = dtoa::Buffer::new();
        for (l, s) in &series {
            write_labels(&mut labels, l);
            let buckets: [u64; BUCKETS] =
                std::array::from_fn(|i| s.buckets[i].load(Ordering::Relaxed));
            // The count is the buckets' total, so `_count` and `+Inf` agree in one scrape.
            let count: u64 = buckets.iter().sum();
            let sum = s.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{DURATIONS}_sum{{{labels}}} {}", float.format(sum));
            let _ = writeln!(out, "{DURATIONS}_count{{{labels}}} {count}");
            let mut cumulative = 0;
            for (i, n) in buckets.iter().enumerate() {
                cumulative += n;
                let le = LE.get(i).copied().unwrap_or("+Inf");
                let _ = write!(
                    out,
                    "{DURATIONS}_bucket{{le=\"{le}\",{labels}}} {cumulative}"
                );
                write_exemplar(out, s.bucket_exemplars[i].get());
                out.push('\n');
            }
        }
    }

    /// The interned labels for a gRPC path `/pkg.Service/Method`. Bounded in number and length:
    /// past [`MAX_GRPC_METHODS`] distinct methods new ones are `_other`, and so is a path whose
    /// service or method is longer than [`MAX_GRPC_LABEL_BYTES`].
    pub fn grpc_method(&self, path: &str) -> GrpcMethod {
        if let Some(m) = self
            .0
            .grpc_methods
            .read()
            .expect("grpc table poisoned")
            .get(path)
        {
            return *m;
        }
        let other = GrpcMethod::OTHER;
        let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
            return other;
        };
        if service.len() > MAX_GRPC_LABEL_BYTES || method.len() > MAX_GRPC_LABEL_BYTES {
            return other;
        }
        let mut table = self.0.grpc_methods.write().expect("grpc table poisoned");
        if let Some(m) = table.get(path) {
            return *m;
        }
        if table.len() >= MAX_GRPC_METHODS {
            return other;
        }
        // Leaked once per distinct method, at most MAX_GRPC_METHODS times per process.
        let m = GrpcMethod {
            service: Box::leak(service.to_owned().into_boxed_str()),
            method: Box::leak(method.to_owned().into_boxed_str()),
        };
        table.insert(path.into(), m);
        m
    }
}

/// The methods the semantic conventions name; anything else is `_OTHER` (bounded label).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(status: u16) -> RedLabels {
        RedLabels {
            direction: Direction::Inbound,
            method: "GET",
            status_code: status,
            route: Some(Route::Matched("/orders/{id}")),
            error_type: None,
            grpc: None,
        }
    }

    fn render(red: &Red) -> String {
        let mut s = String::new();
        red.render(&mut s);
        s
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)
    }

    #[test]
    fn le_labels_are_the_bucket_bounds_as_prometheus_client_writes_them() {
        for (le, b) in LE.iter().zip(DURATION_BUCKETS) {
            assert_eq!(*le, dtoa::Buffer::new().format(b));
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_the_count() {
        let red = Red::new();
        for ms in [0.05, 0.3, 0.3, 7.0, 20_000.0] {
            red.observe(&labels(200), Duration::from_secs_f64(ms / 1000.0), None);
        }
        let text = render(&red);
        let line = |le: &str| {
            let head = format!("tracemesh_request_duration_seconds_bucket{{le=\"{le}\",");
            text.lines()
                .find(|l| l.starts_with(&head))
                .unwrap_or_else(|| panic!("no bucket {le}: {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("0.0001"), "1");
        assert_eq!(line("0.0005"), "3");
        assert_eq!(line("0.01"), "4");
        assert_eq!(line("10.0"), "4");
        assert_eq!(line("+Inf"), "5");
        assert!(text.contains("tracemesh_requests_total{direction=\"inbound\",method=\"GET\",status_code=\"200\",route=\"/orders/{id}\"} 5\n"), "{text}");
        assert!(text.contains("_count{direction=\"inbound\",method=\"GET\",status_code=\"200\",route=\"/orders/{id}\"} 5\n"), "{text}");
    }

    #[test]
    fn sampled_requests_carry_trace_and_span_id_exemplars() {
        let red = Red::new();
        let ex = TraceExemplar {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0xcd; 8]),
        };
        red.observe(&labels(200), Duration::from_micros(700), Some((ex, at())));
        let text = render(&red);
        let want = format!(
            "tracemesh_requests_total{{direction=\"inbound\",method=\"GET\",status_code=\"200\",route=\"/orders/{{id}}\"}} 1 # {{trace_id=\"{}\",span_id=\"{}\"}} 1.0 ",
            "ab".repeat(16),
            "cd".repeat(8)
        );
        assert!(text.contains(&want), "{text}");
        assert!(
            text.contains("tracemesh_request_duration_seconds_bucket{le=\"0.001\",direction=\"inbound\",method=\"GET\",status_code=\"200\",route=\"/orders/{id}\"} 1 # {trace_id=\"abababababababababababababababab\",span_id=\"cdcdcdcdcdcdcdcd\"} 0.0007 "),
            "{text}"
        );
        assert!(
            text.contains("# UNIT tracemesh_request_duration_seconds seconds"),
            "{text}"
        );
    }

    #[test]
    fn unsampled_requests_count_without_exemplars() {
        let red = Red::new();
        red.observe(&labels(503), Duration::from_millis(3), None);
        let text = render(&red);
        let line = text
            .lines()
            .find(|l| l.starts_with("tracemesh_requests_total{"))
            .unwrap();
        assert!(line.ends_with("} 1"), "{line}");
        assert!(!text.contains("trace_id"), "{text}");
    }

    #[test]
    fn an_unsampled_request_keeps_the_last_sampled_exemplar() {
        let red = Red::new();
        let ex = TraceExemplar {
            trace_id: TraceId([0x11; 16]),
            span_id: SpanId([0x22; 8]),
        };
        red.observe(&labels(200), Duration::from_millis(1), Some((ex, at())));
        red.observe(&labels(200), Duration::from_millis(1), None);
        let text = render(&red);
        let line = text
            .lines()
            .find(|l| l.starts_with("tracemesh_requests_total{"))
            .unwrap();
        assert!(
            line.contains("} 2 # {trace_id=\"11111111111111111111111111111111\""),
            "{line}"
        );
    }

    #[test]
    fn grpc_methods_are_interned_and_bounded() {
        let red = Red::new();
        let m = red.grpc_method("/pkg.Svc/Do");
        assert_eq!((m.service, m.method), ("pkg.Svc", "Do"));
        assert!(std::ptr::eq(
            m.service,
            red.grpc_method("/pkg.Svc/Do").service
        ));
        for i in 0..MAX_GRPC_METHODS + 10 {
            red.grpc_method(&format!("/pkg.Svc/M{i}"));
        }
        assert_eq!(red.0.grpc_methods.read().unwrap().len(), MAX_GRPC_METHODS);
        assert_eq!(red.grpc_method("/pkg.Svc/Unseen").method, "_other");
        assert_eq!(red.grpc_method("not-grpc").service, "_other");
    }

    #[test]
    fn grpc_names_longer_than_the_bound_fold_to_other_and_take_no_slot() {
        let red = Red::new();
        let at_bound = "m".repeat(MAX_GRPC_LABEL_BYTES);
        let over = "m".repeat(MAX_GRPC_LABEL_BYTES + 1);

        let kept = red.grpc_method(&format!("/{at_bound}/{at_bound}"));
        assert_eq!((kept.service, kept.method), (&at_bound[..], &at_bound[..]));
        for path in [
            format!("/pkg.Svc/{over}"),
            format!("/{over}/Do"),
            format!("/{over}/{over}"),
            format!("/pkg.Svc/{}", "x".repeat(60 * 1024)),
        ] {
            assert_eq!(red.grpc_method(&path), GrpcMethod::OTHER, "{}", path.len());
        }
        assert_eq!(red.0.grpc_methods.read().unwrap().len(), 1);

        // Over-long paths never fill the table: a real method seen after them is still named.
        for i in 0..MAX_GRPC_METHODS + 10 {
            red.grpc_method(&format!("/pkg.Svc/{over}{i}"));
        }
        assert_eq!(red.grpc_method("/pkg.Svc/Do").method, "Do");
    }

    #[test]
    fn methods_fold_to_other() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(
            method_label(&http::Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
    }
}
