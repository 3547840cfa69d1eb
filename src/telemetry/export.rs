//! Span export: the bounded queue's consumer. Batches [`SpanRecord`]s and encodes them straight
//! into OTLP protobuf ([`super::encode`]) for the collector ([`super::transport`], gRPC or
//! HTTP/protobuf), or converts them to OpenTelemetry `SpanData` to print them (console) or keep
//! them in memory (the demo and tests). Both paths take attributes, names and status from
//! [`super::semconv`].
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
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    encode::Encoder,
    semconv::{self, AttributeSink},
    transport::{EndpointError, OtlpClient},
    SpanRecord,
};
use crate::{
    config::{BatchConfig, TelemetryConfig, TracesExporter},
    metrics::{Direction, ExportMetrics},
};

/// Where batches go.
pub enum Exporter {
    // Boxed: the client holds a connection and the enum is moved around at start-up.
    Otlp(Box<OtlpClient>),
    Console,
    Sink(SpanSink),
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exporter::Otlp(_) => "Otlp",
            Exporter::Console => "Console",
            Exporter::Sink(_) => "Sink",
        })
    }
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP endpoint {endpoint}")]
pub struct ExporterError {
    endpoint: String,
    #[source]
    source: EndpointError,
}

impl Exporter {
    /// The exporter `config` asks for, or `None` for `OTEL_TRACES_EXPORTER=none`. Connects
    /// lazily, on the first export.
    ///
    /// # Errors
    /// The configured endpoint is not an `http://` URL with a host.
    pub fn from_config(config: &TelemetryConfig) -> Result<Option<Self>, ExporterError> {
        match config.exporter {
            TracesExporter::None => Ok(None),
            TracesExporter::Console => Ok(Some(Exporter::Console)),
            TracesExporter::Otlp => OtlpClient::new(config.protocol, &config.endpoint)
                .map(|c| Some(Exporter::Otlp(Box::new(c))))
                .map_err(|source| ExporterError {
                    endpoint: config.endpoint.clone(),
                    source,
                }),
        }
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
    rx: mpsc::Receiver<Box<SpanRecord>>,
    wake: Arc<tokio::sync::Notify>,
    exporter: Exporter,
    batch: BatchConfig,
    timeout: Duration,
    metrics: ExportMetrics,
    service: Arc<str>,
    scope: InstrumentationScope,
    /// For OTLP: the protobuf encoder and its reused buffers.
    encoder: Option<Encoder>,
    /// `/debug/traces`: each record goes in as it is encoded (OTLP), or before its batch goes.
    pub store: Option<Arc<super::store::TraceStore>>,
}

impl ExportTask {
    /// A bounded queue of `config.batch.max_queue_size` and the task that drains it.
    pub fn new(
        config: &TelemetryConfig,
        exporter: Exporter,
        metrics: ExportMetrics,
    ) -> (super::SpanQueue, Self) {
        let (tx, rx) = mpsc::channel(config.batch.max_queue_size);
        let wake = Arc::new(tokio::sync::Notify::new());
        let queue = super::SpanQueue {
            tx,
            wake: wake.clone(),
            batch: i64::try_from(config.batch.max_export_batch_size).unwrap_or(i64::MAX),
        };
        let encoder = matches!(exporter, Exporter::Otlp(_))
            .then(|| Encoder::new(&config.resource, "tracemesh", env!("CARGO_PKG_VERSION")));
        let task = ExportTask {
            wake,
            encoder,
            store: None,
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
        (queue, task)
    }

    /// Runs until `shutdown` fires or every sender is gone, then exports what is queued (each
    /// call still bounded by the export timeout) and shuts the exporter down.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let max = self.batch.max_export_batch_size;
        // Only the console and in-memory exporters batch records; OTLP encodes from the queue.
        let mut batch: Vec<SpanRecord> = Vec::new();
        let mut tick = tokio::time::interval(self.batch.schedule_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Woken by a full batch: full batches go out, a remainder waits. Woken by the
            // schedule: everything queued goes, the last batch partial.
            let scheduled = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => false,
                _ = tick.tick() => true,
            };
            while scheduled || self.rx.len() >= max {
                if self.export_queued(&mut batch, max).await < max {
                    break;
                }
            }
            if self.rx.is_closed() && self.rx.is_empty() {
                break;
            }
        }
        // Flush: what was queued before shutdown, in batches.
        while self.export_queued(&mut batch, max).await > 0 {}
    }

    /// Exports up to `max` queued records; returns how many (none: nothing was sent).
    async fn export_queued(&mut self, batch: &mut Vec<SpanRecord>, max: usize) -> usize {
        let n = match self.encoder.is_some() {
            true => self.encode_queued(max),
            false => self.take(batch, max),
        };
        if n > 0 {
            self.export(batch, n as u64).await;
        }
        n
    }

    /// For OTLP: encodes up to `max` queued records straight out of the queue and moves each
    /// into the store, with no batch between them: only the records' boxes move.
    fn encode_queued(&mut self, max: usize) -> usize {
        let (Some(encoder), rx) = (&mut self.encoder, &mut self.rx) else {
            return 0;
        };
        let mut n = 0;
        let records = std::iter::from_fn(|| {
            let r = (n < max).then(|| rx.try_recv().ok()).flatten()?;
            encoder.push(&r);
            n += 1;
            Some(r)
        });
        match &self.store {
            Some(store) => store.add(records),
            None => records.for_each(drop),
        }
        self.metrics.queue_depth.dec_by(n as i64);
        n
    }

    /// Moves up to `max` queued records into `batch`; returns how many.
    fn take(&mut self, batch: &mut Vec<SpanRecord>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(r) => {
                    batch.push(*r);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        self.metrics.queue_depth.dec_by(n as i64);
        n
    }

    /// Sends the `n` spans taken: for OTLP the encoder's request, otherwise `records` (then
    /// emptied; its capacity is kept for the next batch).
    async fn export(&mut self, records: &mut Vec<SpanRecord>, n: u64) {
        if let (Exporter::Otlp(client), Some(encoder)) = (&mut self.exporter, &mut self.encoder) {
            let body = encoder.finish();
            let ok = match tokio::time::timeout(self.timeout, client.send(body)).await {
                Ok(Ok(())) => true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, spans = n, "span export failed; spans dropped");
                    false
                }
                Err(_) => {
                    tracing::warn!(timeout = ?self.timeout, spans = n, "span export timed out; spans dropped");
                    false
                }
            };
            self.count(n, ok);
            return;
        }
        if let Some(store) = &self.store {
            store.add(records.iter().cloned().map(Box::new));
        }
        let spans: Vec<SpanData> = records
            .drain(..)
            .map(|r| to_span_data(r, &self.scope))
            .collect();
        let ok = match &self.exporter {
            Exporter::Otlp(_) => unreachable!("OTLP batches are encoded by encode_queued"),
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
        self.count(n, ok);
    }

    fn count(&self, n: u64, ok: bool) {
        if ok {
            self.metrics.exported.inc_by(n);
        } else {
            self.metrics.errors.inc();
            self.metrics.dropped.inc_by(n);
        }
    }
}

/// `SpanData`'s attribute list, filled by [`semconv::attributes`].
struct KeyValueList(Vec<KeyValue>);

impl AttributeSink for KeyValueList {
    fn str(&mut self, key: &'static str, value: &str) {
        self.0.push(KeyValue::new(key, value.to_owned()));
    }

    fn int(&mut self, key: &'static str, value: i64) {
        self.0.push(KeyValue::new(key, value));
    }

    fn bool(&mut self, key: &'static str, value: bool) {
        self.0.push(KeyValue::new(key, value));
    }
}

/// The OpenTelemetry span for a record (the console and in-memory exporters; OTLP is encoded
/// from the record directly, with the same attributes, name and status).
pub fn to_span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let status = semconv::status(&r);
    let mut attrs = KeyValueList(Vec::with_capacity(16));
    semconv::attributes(&r, &status, &mut String::new(), &mut attrs);
    let mut name = String::new();
    semconv::name(&r, &mut name);
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
            Direction::Inbound => OtelSpanKind::Server,
            Direction::Outbound => OtelSpanKind::Client,
        },
        name: Cow::Owned(name),
        start_time: r.start,
        end_time: r.start + r.duration,
        attributes: attrs.0,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: {
            let mut links = SpanLinks::default();
            if let Some(l) = r.link {
                links.links.push(opentelemetry::trace::Link::new(
                    OtelSpanContext::new(
                        OtelTraceId::from_bytes(l.trace_id.0),
                        OtelSpanId::from_bytes(l.span_id.0),
                        OtelTraceFlags::new(l.flags.0),
                        false,
                        TraceState::default(),
                    ),
                    vec![KeyValue::new(semconv::LINK_INFERRED, true)],
                    0,
                ));
            }
            links
        },
        status: match status.error {
            Some(message) => Status::error(message),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
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
    use crate::telemetry::{semconv::tests::record, Outcome};

    #[test]
    fn grpc_span_is_named_service_slash_method_and_drops_the_query() {
        let scope = InstrumentationScope::builder("t").build();
        let data = to_span_data(
            record(Direction::Inbound, Some(0), Outcome::Complete),
            &scope,
        );
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
