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

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use prometheus_client::{
    encoding::{
        EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
        MetricEncoder,
    },
    metrics::{
        counter::Counter,
        exemplar::{CounterWithExemplar, HistogramWithExemplars},
        family::Family,
        MetricType, TypedMetric,
    },
    registry::Registry,
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

impl EncodeLabelSet for RedLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("method", self.method).encode(encoder.encode_label())?;
        ("status_code", self.status_code).encode(encoder.encode_label())?;
        if let Some(route) = self.route {
            ("route", route.as_str()).encode(encoder.encode_label())?;
        }
        if let Some(e) = self.error_type {
            ("error_type", e).encode(encoder.encode_label())?;
        }
        if let Some(g) = self.grpc {
            ("grpc_service", g.method.service).encode(encoder.encode_label())?;
            ("grpc_method", g.method.method).encode(encoder.encode_label())?;
            if let Some(status) = g.status {
                ("grpc_status", status).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

use prometheus_client::encoding::EncodeLabel as _;

/// The exemplar of a sampled request: the span the proxy exported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceExemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

struct Hex<const N: usize>([u8; N]);

impl<const N: usize> EncodeLabelValue for Hex<N> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(std::str::from_utf8(&self.0).map_err(|_| std::fmt::Error)?)
    }
}

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("trace_id", Hex(self.trace_id.to_hex())).encode(encoder.encode_label())?;
        ("span_id", Hex(self.span_id.to_hex())).encode(encoder.encode_label())
    }
}

/// The request counter of one series. prometheus-client's `CounterWithExemplar` replaces its
/// exemplar on every increment, so an unsampled request would erase the last sampled one; here
/// the count is a lock-free atomic and the exemplar holder is only touched by sampled requests.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    total: Counter,
    exemplar: CounterWithExemplar<TraceExemplar>,
}

impl RequestCounter {
    fn inc(&self, exemplar: Option<TraceExemplar>, ts: Option<SystemTime>) {
        self.total.inc();
        if exemplar.is_some() {
            self.exemplar.inc_by(1, exemplar, ts);
        }
    }
}

impl TypedMetric for RequestCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for RequestCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (_, exemplar) = self.exemplar.get();
        encoder.encode_counter(&self.total.get(), exemplar.as_ref())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

type Requests = Family<RedLabels, RequestCounter>;
type Durations = Family<
    RedLabels,
    HistogramWithExemplars<TraceExemplar>,
    fn() -> HistogramWithExemplars<TraceExemplar>,
>;

fn new_histogram() -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

/// The RED pair and the gRPC method table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Red {
    requests: Requests,
    durations: Durations,
    grpc_methods: Arc<RwLock<HashMap<Box<str>, GrpcMethod>>>,
}

impl Red {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Requests::default();
        registry.register(
            "tracemesh_requests",
            "Requests proxied, by direction, method, status code and route",
            requests.clone(),
        );
        let durations = Durations::new_with_constructor(new_histogram);
        registry.register_with_unit(
            "tracemesh_request_duration",
            "Time from a request's arrival to the end of its response body",
            prometheus_client::registry::Unit::Seconds,
            durations.clone(),
        );
        Red {
            requests,
            durations,
            grpc_methods: Default::default(),
        }
    }

    /// Records one finished request. `exemplar` is `Some` only for sampled requests.
    pub fn observe(&self, labels: &RedLabels, duration: Duration, exemplar: Option<TraceExemplar>) {
        let ts = exemplar.map(|_| SystemTime::now());
        self.requests.get_or_create(labels).inc(exemplar, ts);
        self.durations
            .get_or_create(labels)
            .observe(duration.as_secs_f64(), exemplar, ts);
    }

    /// The interned labels for a gRPC path `/pkg.Service/Method`. Bounded in number and length:
    /// past [`MAX_GRPC_METHODS`] distinct methods new ones are `_other`, and so is a path whose
    /// service or method is longer than [`MAX_GRPC_LABEL_BYTES`].
    pub fn grpc_method(&self, path: &str) -> GrpcMethod {
        if let Some(m) = self
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
        let mut table = self.grpc_methods.write().expect("grpc table poisoned");
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

    fn render(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
        s
    }

    #[test]
    fn sampled_requests_carry_trace_and_span_id_exemplars() {
        let mut registry = Registry::default();
        let red = Red::register(&mut registry);
        let ex = TraceExemplar {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0xcd; 8]),
        };
        red.observe(&labels(200), Duration::from_micros(700), Some(ex));
        let text = render(&registry);
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
        let mut registry = Registry::default();
        let red = Red::register(&mut registry);
        red.observe(&labels(503), Duration::from_millis(3), None);
        let text = render(&registry);
        let line = text
            .lines()
            .find(|l| l.starts_with("tracemesh_requests_total{"))
            .unwrap();
        assert!(line.ends_with("} 1"), "{line}");
        assert!(!text.contains("trace_id"), "{text}");
    }

    #[test]
    fn an_unsampled_request_keeps_the_last_sampled_exemplar() {
        let mut registry = Registry::default();
        let red = Red::register(&mut registry);
        let ex = TraceExemplar {
            trace_id: TraceId([0x11; 16]),
            span_id: SpanId([0x22; 8]),
        };
        red.observe(&labels(200), Duration::from_millis(1), Some(ex));
        red.observe(&labels(200), Duration::from_millis(1), None);
        let text = render(&registry);
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
        let mut registry = Registry::default();
        let red = Red::register(&mut registry);
        let m = red.grpc_method("/pkg.Svc/Do");
        assert_eq!((m.service, m.method), ("pkg.Svc", "Do"));
        assert!(std::ptr::eq(
            m.service,
            red.grpc_method("/pkg.Svc/Do").service
        ));
        for i in 0..MAX_GRPC_METHODS + 10 {
            red.grpc_method(&format!("/pkg.Svc/M{i}"));
        }
        assert_eq!(red.grpc_methods.read().unwrap().len(), MAX_GRPC_METHODS);
        assert_eq!(red.grpc_method("/pkg.Svc/Unseen").method, "_other");
        assert_eq!(red.grpc_method("not-grpc").service, "_other");
    }

    #[test]
    fn grpc_names_longer_than_the_bound_fold_to_other_and_take_no_slot() {
        let mut registry = Registry::default();
        let red = Red::register(&mut registry);
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
        assert_eq!(red.grpc_methods.read().unwrap().len(), 1);

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
