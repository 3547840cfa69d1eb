//! A real OTLP trace receiver (a stand-in collector): OTLP/gRPC (`TraceService/Export`) with
//! [`OtlpReceiver::start_grpc`], or OTLP/HTTP (`POST /v1/traces`, `application/x-protobuf`) with
//! [`OtlpReceiver::start_http`]. Each span received is decoded into a [`ReceivedSpan`]; [`Mode`]
//! makes it refuse or stall exports, for collector-down tests. JSON and compressed bodies are not
//! accepted (415): the proxy sends neither.
//!
//! Follows the OTLP specification (https://opentelemetry.io/docs/specs/otlp/).

mod decode;

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as SpanStatus};
use prost::Message;
use tokio::sync::watch;

use self::decode::decode;
use super::serve::{self, Served};

/// How the receiver answers exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Record the spans and answer success.
    Ok,
    /// Record nothing; gRPC `UNAVAILABLE`, HTTP 503.
    Unavailable,
    /// Hold each export unanswered until the mode changes (or the receiver is dropped).
    Stall,
}

/// An attribute value, as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Arrays, maps and bytes, rendered with `Debug`: the proxy sends none of these.
    Other(String),
}

/// One decoded span, with IDs as lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or `""` for a root span.
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: BTreeMap<String, Value>,
    pub events: Vec<String>,
    pub links: Vec<ReceivedLink>,
    pub status_code: SpanStatus,
    pub status_message: String,
    /// Resource attributes, every value rendered as a string.
    pub resource: BTreeMap<String, String>,
    pub scope_name: String,
}

/// A span link as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: BTreeMap<String, Value>,
}

/// The OTLP transport a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// A running receiver; stops on `Drop` (then the proxy sees connection refused).
#[derive(Debug)]
pub struct OtlpReceiver {
    served: Served,
    shared: Arc<Shared>,
    protocol: Protocol,
}

// === impl Protocol ===

impl Protocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` for this transport.
    pub fn as_env(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Debug)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// The number of spans recorded, for waiting without polling.
    count: watch::Sender<usize>,
    mode: watch::Sender<Mode>,
    requests: AtomicUsize,
}

// === impl OtlpReceiver ===

impl OtlpReceiver {
    /// Starts an OTLP/gRPC receiver.
    pub async fn start_grpc() -> Self {
        Self::start_grpc_on(serve::bind_loopback().await)
    }

    /// Starts an OTLP/gRPC receiver on a listener the caller bound: for proxies that cannot
    /// reach this process's loopback, such as ones in another network namespace.
    pub fn start_grpc_on(listener: tokio::net::TcpListener) -> Self {
        let shared = Shared::new();
        let service = TraceServiceServer::new(GrpcTraceService(shared.clone()));
        let service = hyper_util::service::TowerToHyperService::new(service);
        let served = serve::serve_http(listener, service);
        Self {
            served,
            shared,
            protocol: Protocol::Grpc,
        }
    }

    /// Starts an OTLP/HTTP receiver (`POST /v1/traces`, protobuf).
    pub async fn start_http() -> Self {
        let shared = Shared::new();
        let handler = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = handler.clone();
            async move { Ok::<_, Infallible>(http_export(&shared, req).await) }
        });
        let served = serve::serve_http(serve::bind_loopback().await, service);
        Self {
            served,
            shared,
            protocol: Protocol::HttpProtobuf,
        }
    }

    /// Which transport this receiver speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// `http://ADDR:PORT`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT` (the proxy appends
    /// `/v1/traces` for HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.served.addr())
    }

    /// `http://127.0.0.1:PORT/v1/traces`: the value for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// over HTTP (used as is).
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.served.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Every span recorded so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().expect("spans lock").clone()
    }

    /// Forgets the spans recorded so far (the request count stays).
    pub fn clear(&self) {
        self.shared.spans.lock().expect("spans lock").clear();
        self.shared.count.send_replace(0);
    }

    /// Export calls received, whatever the mode answered. The OTLP exporter retries a gRPC
    /// `UNAVAILABLE`, so one failed export can count several times.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Changes how later (and stalled) exports are answered.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Waits until at least `n` spans have been recorded; returns all of them.
    ///
    /// # Panics
    /// After `timeout`, with the spans it did get, as a tree.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let mut count = self.shared.count.subscribe();
        if tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .is_err()
        {
            let spans = self.spans();
            panic!(
                "expected {n} spans within {timeout:?}, got {} (export calls: {}):\n{}",
                spans.len(),
                self.requests(),
                tree(&spans)
            );
        }
        self.spans()
    }

    /// Waits until `done(spans)` holds; returns the spans. `what` names the condition for the
    /// panic message.
    ///
    /// # Panics
    /// After `timeout`, with the spans it did get, as a tree.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut count = self.shared.count.subscribe();
        let wait = async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                count
                    .changed()
                    .await
                    .expect("the receiver outlives its waiters");
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(spans) => spans,
            Err(_) => {
                let spans = self.spans();
                panic!(
                    "spans never satisfied {what:?} within {timeout:?}; got {}:\n{}",
                    spans.len(),
                    tree(&spans)
                );
            }
        }
    }
}

// === impl Shared ===

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            spans: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            mode: watch::channel(Mode::Ok).0,
            requests: AtomicUsize::new(0),
        })
    }

    /// Counts the call, honours the mode, and records the spans when the mode is `Ok`.
    async fn export(&self, request: ExportTraceServiceRequest) -> Result<(), ()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut mode = self.mode.subscribe();
        let mode = *mode
            .wait_for(|m| *m != Mode::Stall)
            .await
            .expect("the mode sender lives in Shared");
        if mode == Mode::Unavailable {
            return Err(());
        }
        let decoded = decode(request);
        let mut spans = self.spans.lock().expect("spans lock");
        spans.extend(decoded);
        self.count.send_replace(spans.len());
        Ok(())
    }
}

struct GrpcTraceService(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcTraceService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.0.export(request.into_inner()).await {
            Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Err(()) => Err(tonic::Status::unavailable(
                "receiver set to Mode::Unavailable",
            )),
        }
    }
}

async fn http_export(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response")
    };
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        eprintln!("[otlp receiver] unexpected {} {}", req.method(), req.uri());
        return reply(StatusCode::NOT_FOUND, "only POST /v1/traces\n");
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let encoded = req.headers().contains_key(header::CONTENT_ENCODING);
    if content_type != Some("application/x-protobuf") || encoded {
        eprintln!("[otlp receiver] unsupported body: {:?}", req.headers());
        return reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only uncompressed protobuf\n",
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "body read failed\n"),
    };
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "not an ExportTraceServiceRequest\n",
        );
    };
    match shared.export(request).await {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(
                ExportTraceServiceResponse::default().encode_to_vec().into(),
            ))
            .expect("static response"),
        Err(()) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "receiver set to Mode::Unavailable\n",
        ),
    }
}

// === impl ReceivedSpan ===

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn attr_double(&self, key: &str) -> Option<f64> {
        match self.attributes.get(key) {
            Some(Value::Double(d)) => Some(*d),
            _ => None,
        }
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    /// End minus start (zero if the span ends before it starts).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }
}

/// Renders spans as indented trees, one per trace, children under their parent in start order:
/// `name [Server] span=.. status=Error attrs={..}`. A span whose parent was not received is shown
/// as a root with `(parent ..)`, which is itself worth seeing in a failure message.
pub fn tree(spans: &[ReceivedSpan]) -> String {
    let ids: HashSet<(&str, &str)> = spans
        .iter()
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();
    let mut sorted: Vec<&ReceivedSpan> = spans.iter().collect();
    sorted.sort_by_key(|s| s.start_unix_nanos);
    let mut traces: Vec<&str> = Vec::new();
    for s in &sorted {
        if !traces.contains(&s.trace_id.as_str()) {
            traces.push(&s.trace_id);
        }
    }
    let mut out = String::new();
    for trace in traces {
        let _ = writeln!(out, "trace {trace}");
        for root in sorted
            .iter()
            .filter(|s| s.trace_id == trace && !ids.contains(&(trace, s.parent_span_id.as_str())))
        {
            render(&mut out, &sorted, root, 1);
        }
    }
    if out.is_empty() {
        out.push_str("(no spans)\n");
    }
    out
}

fn render(out: &mut String, all: &[&ReceivedSpan], span: &ReceivedSpan, depth: usize) {
    let _ = write!(
        out,
        "{:indent$}{} [{:?}] span={} {:?}",
        "",
        span.name,
        span.kind,
        span.span_id,
        span.duration(),
        indent = depth * 2
    );
    if !span.is_root() && depth == 1 {
        let _ = write!(out, " (parent {} not received)", span.parent_span_id);
    }
    let _ = write!(out, " status={:?}", span.status_code);
    if !span.status_message.is_empty() {
        let _ = write!(out, "({:?})", span.status_message);
    }
    let _ = writeln!(out, " attrs={:?}", span.attributes);
    for child in all
        .iter()
        .filter(|c| c.trace_id == span.trace_id && c.parent_span_id == span.span_id)
    {
        render(out, all, child, depth + 1);
    }
}
