//! Span export: the bounded queue's consumer. Batches [`SpanRecord`]s, converts them to
//! OpenTelemetry `SpanData` with semantic-convention attributes, and ships them with
//! opentelemetry-otlp (gRPC or HTTP/protobuf), prints them (console), or keeps them in memory
//! (the demo and tests).
//!
//! Every export call is bounded by the configured timeout; while one is under way the queue keeps
//! filling and, once full, the data path drops spans and counts them. A failed batch is counted
//! as dropped spans plus one export error. Nothing here can block a request.

use std::{
    borrow::Cow,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    trace::{
        SpanContext as OtelSpanContext, SpanId as OtelSpanId, SpanKind as OtelSpanKind, Status,
        TraceFlags as OtelTraceFlags, TraceId as OtelTraceId, TraceState,
    },
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Outcome, SpanKind, SpanRecord};
use crate::{
    config::{BatchConfig, OtlpProtocol, TelemetryConfig, TracesExporter},
    metrics::ExportMetrics,
};

/// Where batches go.
#[derive(Debug)]
pub enum Exporter {
    // Boxed: the OTLP exporter is large and the enum is moved around at start-up.
    Otlp(Box<opentelemetry_otlp::SpanExporter>),
    Console,
    Sink(SpanSink),
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the OTLP exporter for {endpoint}")]
pub struct ExporterError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Exporter {
    /// The exporter `config` asks for, or `None` for `OTEL_TRACES_EXPORTER=none`. Must be called
    /// inside the Tokio runtime (the gRPC channel is created lazily on it).
    ///
    /// # Errors
    /// The OTLP exporter could not be built from the configured endpoint.
    pub fn from_config(config: &TelemetryConfig) -> Result<Option<Self>, ExporterError> {
        let built = match config.exporter {
            TracesExporter::None => return Ok(None),
            TracesExporter::Console => return Ok(Some(Exporter::Console)),
            TracesExporter::Otlp => match config.protocol {
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.endpoint.clone())
                    .with_timeout(config.export_timeout)
                    .build(),
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(config.endpoint.clone())
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(config.export_timeout)
                    .with_headers(Default::default())
                    .build(),
            },
        };
        built
            .map(|e| Some(Exporter::Otlp(Box::new(e))))
            .map_err(|source| ExporterError {
                endpoint: config.endpoint.clone(),
                source,
            })
    }
}

/// In-memory destination for the demo and tests: every exported span with its service name.
#[derive(Debug, Clone, Default)]
pub struct SpanSink {
    spans: Arc<Mutex<Vec<ServiceSpan>>>,
}

/// A span and the `service.name` of the proxy that exported it.
pub type ServiceSpan = (Arc<str>, SpanData);

impl SpanSink {
    pub fn spans(&self) -> Vec<ServiceSpan> {
        self.spans.lock().expect("sink lock poisoned").clone()
    }

    fn push(&self, service: &Arc<str>, batch: Vec<SpanData>) {
        let mut spans = self.spans.lock().expect("sink lock poisoned");
        spans.extend(batch.into_iter().map(|s| (service.clone(), s)));
    }
}

/// The export task: owns the queue's receiving end.
pub struct ExportTask {
    rx: mpsc::Receiver<SpanRecord>,
    exporter: Exporter,
    batch: BatchConfig,
    timeout: Duration,
    metrics: ExportMetrics,
    service: Arc<str>,
    scope: InstrumentationScope,
}

impl ExportTask {
    /// A bounded queue of `config.batch.max_queue_size` and the task that drains it.
    pub fn new(
        config: &TelemetryConfig,
        mut exporter: Exporter,
        metrics: ExportMetrics,
    ) -> (mpsc::Sender<SpanRecord>, Self) {
        let (tx, rx) = mpsc::channel(config.batch.max_queue_size);
        let resource = Resource::builder_empty()
            .with_attributes(
                config
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        if let Exporter::Otlp(e) = &mut exporter {
            e.set_resource(&resource);
        }
        let task = ExportTask {
            rx,
            exporter,
            batch: config.batch,
            timeout: config.export_timeout,
            metrics,
            service: Arc::from(config.service_name()),
            scope: InstrumentationScope::builder("tracemesh")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        };
        (tx, task)
    }

    /// Runs until `shutdown` fires or every sender is gone, then exports what is queued (each
    /// call still bounded by the export timeout) and shuts the exporter down.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let max = self.batch.max_export_batch_size;
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(max);
        let mut tick = tokio::time::interval(self.batch.schedule_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = max - batch.len();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                n = self.rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        break;
                    }
                    self.metrics.queue_depth.dec_by(n as i64);
                    if batch.len() < max {
                        continue;
                    }
                }
                _ = tick.tick() => {}
            }
            if !batch.is_empty() {
                self.export(std::mem::take(&mut batch)).await;
                batch.reserve(max);
            }
        }
        // Flush: what was queued before shutdown, in batches.
        while let Ok(record) = self.rx.try_recv() {
            self.metrics.queue_depth.dec();
            batch.push(record);
            if batch.len() >= max {
                self.export(std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.export(batch).await;
        }
        if let Exporter::Otlp(e) = &self.exporter {
            let _ = e.shutdown_with_timeout(self.timeout);
        }
    }

    async fn export(&mut self, records: Vec<SpanRecord>) {
        let n = records.len() as u64;
        let spans: Vec<SpanData> = records
            .into_iter()
            .map(|r| to_span_data(r, &self.scope))
            .collect();
        let ok = match &self.exporter {
            Exporter::Otlp(e) => match tokio::time::timeout(self.timeout, e.export(spans)).await {
                Ok(Ok(())) => true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, spans = n, "span export failed; spans dropped");
                    false
                }
                Err(_) => {
                    tracing::warn!(timeout = ?self.timeout, spans = n, "span export timed out; spans dropped");
                    false
                }
            },
            Exporter::Console => {
                let mut out = String::new();
                for s in &spans {
                    console_line(&mut out, &self.service, s);
                }
                print!("{out}");
                true
            }
            Exporter::Sink(sink) => {
                sink.push(&self.service, spans);
                true
            }
        };
        if ok {
            self.metrics.exported.inc_by(n);
        } else {
            self.metrics.errors.inc();
            self.metrics.dropped.inc_by(n);
        }
    }
}

/// The OpenTelemetry span for a record, attributed per the HTTP and RPC semantic conventions.
pub fn to_span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let mut attrs: Vec<KeyValue> = Vec::with_capacity(16);
    let path = r.uri.path();
    let method_attr = crate::metrics::red::method_label(&r.method);
    attrs.push(KeyValue::new("http.request.method", method_attr));
    if method_attr == "_OTHER" {
        attrs.push(KeyValue::new(
            "http.request.method_original",
            r.method.as_str().to_owned(),
        ));
    }
    attrs.push(KeyValue::new("url.scheme", "http"));
    attrs.push(KeyValue::new("url.path", path.to_owned()));
    let authority = r.uri.authority().cloned().or_else(|| {
        r.host
            .as_ref()
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
    });
    if let Some(a) = &authority {
        attrs.push(KeyValue::new("server.address", a.host().to_owned()));
        attrs.push(KeyValue::new(
            "server.port",
            i64::from(a.port_u16().unwrap_or(80)),
        ));
        if r.kind == SpanKind::Client {
            attrs.push(KeyValue::new("url.full", format!("http://{a}{path}")));
        }
    }
    if let Some(status) = r.status {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
    }
    attrs.push(KeyValue::new(
        "network.protocol.version",
        match r.version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            _ => "1.1",
        },
    ));
    match r.kind {
        SpanKind::Server => {
            attrs.push(KeyValue::new("client.address", r.client.ip().to_string()));
            attrs.push(KeyValue::new("client.port", i64::from(r.client.port())));
        }
        SpanKind::Client => {
            if let Some(up) = r.upstream {
                attrs.push(KeyValue::new("network.peer.address", up.ip().to_string()));
                attrs.push(KeyValue::new("network.peer.port", i64::from(up.port())));
            }
        }
    }
    if let Some(ua) = r.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
        attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
    }

    let mut name = r.method.as_str().to_owned();
    if let Some(crate::config::routes::Route::Matched(route)) = r.route {
        attrs.push(KeyValue::new("http.route", route));
        name = format!("{} {route}", r.method);
    }
    let mut grpc_method = None;
    if r.grpc {
        attrs.push(KeyValue::new("rpc.system", "grpc"));
        if let Some((service, method)) = path.trim_start_matches('/').split_once('/') {
            attrs.push(KeyValue::new("rpc.service", service.to_owned()));
            attrs.push(KeyValue::new("rpc.method", method.to_owned()));
            grpc_method = Some(format!("{service}/{method}"));
        }
        if let Some(code) = r.grpc_status {
            attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
    }
    if let Some(m) = grpc_method {
        name = m;
    }

    let (status, error_type) = span_status(&r);
    if let Some(t) = error_type {
        attrs.push(KeyValue::new("error.type", t));
    }

    let trace_state = r
        .tracestate
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: OtelSpanContext::new(
            OtelTraceId::from_bytes(r.context.trace_id.0),
            OtelSpanId::from_bytes(r.context.span_id.0),
            OtelTraceFlags::new(r.context.flags.0),
            false,
            trace_state,
        ),
        parent_span_id: r
            .parent
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: r.parent.is_some(),
        span_kind: match r.kind {
            SpanKind::Server => OtelSpanKind::Server,
            SpanKind::Client => OtelSpanKind::Client,
        },
        name: Cow::Owned(name),
        start_time: r.start,
        end_time: r.start + r.duration,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// Span status and `error.type` per the HTTP and RPC semantic conventions: a server span is an
/// error on 5xx, a client span on 4xx and 5xx; for gRPC, the server errs on the codes that mean
/// a server fault, the client on any non-OK code.
fn span_status(r: &SpanRecord) -> (Status, Option<String>) {
    match &r.outcome {
        // The client's own fault (ambiguous framing, a broken body) is a 4xx: not a server
        // error, as for any 4xx a server answers.
        Outcome::Failed(e) if e.client_fault && r.kind == SpanKind::Server => {
            return (Status::Unset, Some(e.error_type.to_owned()))
        }
        Outcome::Failed(e) => {
            return (
                Status::error(e.message.to_string()),
                Some(e.error_type.to_owned()),
            )
        }
        Outcome::BodyError => {
            return (
                Status::error("response body failed before its end"),
                Some("body_error".to_owned()),
            )
        }
        // A client that goes away is not the server's fault (as gRPC CANCELLED is not a server
        // fault in the RPC conventions): the server span says why but stays Unset. For a
        // client span, a call that did not complete is an error.
        Outcome::Cancelled => {
            let status = match r.kind {
                SpanKind::Server => Status::Unset,
                SpanKind::Client => {
                    Status::error("cancelled: the response was dropped before its end")
                }
            };
            return (status, Some("cancelled".to_owned()));
        }
        Outcome::Complete => {}
    }
    if r.grpc {
        if let Some(code) = r.grpc_status {
            let server_fault = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
            let is_error = match r.kind {
                SpanKind::Server => server_fault,
                SpanKind::Client => code != 0,
            };
            if is_error {
                // grpc-message is percent-encoded on the wire (gRPC over HTTP/2 spec).
                let msg = r
                    .grpc_message
                    .as_ref()
                    .and_then(|m| m.to_str().ok())
                    .map(|m| crate::config::percent_decode(m).unwrap_or_else(|| m.to_owned()))
                    .unwrap_or_default();
                return (
                    Status::error(format!("grpc-status {code} {msg}").trim_end().to_owned()),
                    Some(code.to_string()),
                );
            }
            return (Status::Unset, None);
        }
    }
    match r.status {
        Some(s) if s.is_server_error() || (r.kind == SpanKind::Client && s.is_client_error()) => (
            Status::error(format!("HTTP {}", s.as_u16())),
            Some(s.as_u16().to_string()),
        ),
        _ => (Status::Unset, None),
    }
}

fn console_line(out: &mut String, service: &str, s: &SpanData) {
    let dur = s
        .end_time
        .duration_since(s.start_time)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0;
    let _ = write!(
        out,
        "span service={service} trace_id={} span_id={} parent_id={} kind={:?} name={:?} duration_ms={dur:.3}",
        s.span_context.trace_id(),
        s.span_context.span_id(),
        s.parent_span_id,
        s.span_kind,
        s.name,
    );
    if let Status::Error { description } = &s.status {
        let _ = write!(out, " status=ERROR message={description:?}");
    }
    for kv in &s.attributes {
        let _ = write!(out, " {}={}", kv.key, kv.value);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{SpanContext, SpanId, TraceFlags, TraceId};

    fn record(kind: SpanKind, grpc_status: Option<i32>, outcome: Outcome) -> SpanRecord {
        SpanRecord {
            kind,
            context: SpanContext {
                trace_id: TraceId([7; 16]),
                span_id: SpanId([8; 8]),
                flags: TraceFlags::SAMPLED,
            },
            parent: Some(SpanId([9; 8])),
            tracestate: None,
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(5),
            method: http::Method::POST,
            uri: "/pkg.Svc/Do?x=1".parse().unwrap(),
            host: Some(http::HeaderValue::from_static("svc:8080")),
            version: http::Version::HTTP_2,
            user_agent: None,
            client: "127.0.0.1:5000".parse().unwrap(),
            upstream: None,
            grpc: grpc_status.is_some(),
            route: None,
            status: Some(http::StatusCode::OK),
            grpc_status,
            grpc_message: Some(http::HeaderValue::from_static("asked%20to%20fail")),
            outcome,
        }
    }

    #[test]
    fn grpc_message_is_percent_decoded_into_the_status() {
        let (status, error_type) =
            span_status(&record(SpanKind::Server, Some(13), Outcome::Complete));
        assert_eq!(status, Status::error("grpc-status 13 asked to fail"));
        assert_eq!(error_type.as_deref(), Some("13"));
    }

    #[test]
    fn client_cancel_is_not_a_server_error_but_is_a_client_error() {
        let (s, t) = span_status(&record(SpanKind::Server, None, Outcome::Cancelled));
        assert_eq!(s, Status::Unset);
        assert_eq!(t.as_deref(), Some("cancelled"));
        let (s, _) = span_status(&record(SpanKind::Client, None, Outcome::Cancelled));
        assert!(matches!(s, Status::Error { .. }));
    }

    #[test]
    fn grpc_span_is_named_service_slash_method_and_drops_the_query() {
        let scope = InstrumentationScope::builder("t").build();
        let data = to_span_data(record(SpanKind::Server, Some(0), Outcome::Complete), &scope);
        assert_eq!(data.name, "pkg.Svc/Do");
        let attr = |k: &str| {
            data.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("url.path").as_deref(), Some("/pkg.Svc/Do"));
        assert_eq!(attr("rpc.service").as_deref(), Some("pkg.Svc"));
        assert_eq!(attr("rpc.method").as_deref(), Some("Do"));
        assert_eq!(attr("server.address").as_deref(), Some("svc"));
        assert_eq!(attr("server.port").as_deref(), Some("8080"));
        assert_eq!(data.status, Status::Unset);
        assert_eq!(data.parent_span_id, OtelSpanId::from_bytes([9; 8]));
    }
}
