//! Telemetry: the span layer, the sampler, and export.
//!
//! The data path builds a small [`SpanRecord`] (IDs, timings, and cheap `Bytes`-backed clones
//! of the request's method, URI and a few headers) and hands it to a bounded queue with
//! `try_send`; a full queue drops the span and counts it. One export task encodes batches of
//! records straight into OTLP protobuf (attributes are derived there, off the request path) and
//! ships them to the collector, or prints them, or hands them to an in-process sink.
//! Export can never slow or fail a request.
//!
//! Not owned here: header formats ([`crate::context`]) and the metric registry
//! ([`crate::metrics`]).

pub mod encode;
pub mod export;
pub mod policy;
pub mod retention;
pub mod sampling;
pub mod semconv;
pub mod spans;
pub mod text;
pub mod transport;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{HeaderValue, Method, StatusCode, Version};
use tokio::sync::mpsc;

pub use self::{
    export::{ExportTask, Exporter, SpanSink},
    policy::{Policy, PolicyHandle},
    sampling::Sampler,
    spans::{SpanLayer, SpanService},
};
use crate::{
    context::{Propagators, SpanContext, SpanId},
    metrics::{Direction, Metrics},
};

/// Everything a finished span needs, captured on the data path without formatting anything.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Inbound spans are SERVER spans, outbound ones CLIENT spans.
    pub kind: Direction,
    pub context: SpanContext,
    pub parent: Option<SpanId>,
    pub tracestate: Option<HeaderValue>,
    pub start: SystemTime,
    pub duration: Duration,
    pub method: Method,
    /// Path, authority, `Host` (HTTP/1; for HTTP/2 the URI carries `:authority`) and
    /// `User-Agent`, copied (see [`text`] for why not shared).
    pub text: text::RequestText,
    pub version: Version,
    /// The peer that sent the request.
    pub client: SocketAddr,
    /// Where the request went: the app (inbound) or the upstream (outbound), when known.
    pub upstream: Option<SocketAddr>,
    pub grpc: bool,
    /// The configured route template the path matched, if routes are configured.
    pub route: Option<crate::config::routes::Route>,
    pub status: Option<StatusCode>,
    pub grpc_status: Option<i32>,
    pub grpc_message: Option<HeaderValue>,
    pub outcome: Outcome,
    /// Why the span is exported (`tracemesh.sampling.reason`); `None` while undecided, and for
    /// proxies without retention.
    pub reason: Option<retention::KeepReason>,
}

/// Why the proxy answered a request itself, as spans and metrics see it. The proxy's rescue
/// layer fills it into the response's extensions; telemetry owns the type, so it needs nothing
/// from the proxy's layer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A bounded label: the span's `error.type` and the RED `error_type`.
    pub error_type: &'static str,
    /// What happened, for the span's status message. Built on the error path only.
    pub message: Arc<str>,
    /// The client's own fault (a 4xx): a SERVER span stays Unset, as for any 4xx.
    pub client_fault: bool,
}

/// How the exchange ended, beyond its status code.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The response body ended (or there was none).
    Complete,
    /// The proxy answered itself because forwarding failed.
    Failed(Failure),
    /// The response body failed mid-stream (upstream reset, client went away).
    BodyError,
    /// The response was dropped before its end (client cancelled).
    Cancelled,
}

/// What the span layer shares across connections: sampler, propagators, the reloadable policy
/// (routes and sampling rules), the span queue. Cloned per request by hyper's service adapter,
/// so it is one `Arc`.
#[derive(Clone)]
pub struct Telemetry(Arc<TelemetryInner>);

struct TelemetryInner {
    sampler: Sampler,
    propagators: Propagators,
    policy: PolicyHandle,
    queue: Option<SpanQueue>,
    metrics: Metrics,
    /// Deferred sampling; `None` when off or when spans go nowhere.
    retention: Option<retention::Retention>,
}

/// The sending end of the export queue. The export task is woken when a batch's worth is
/// queued (and by its own timer), not once per span: at a few thousand spans a second, a
/// wake-up per span cost more than the span.
pub struct SpanQueue {
    pub tx: mpsc::Sender<SpanRecord>,
    pub wake: Arc<tokio::sync::Notify>,
    pub batch: i64,
}

impl Telemetry {
    /// A telemetry handle and, when spans are exported anywhere, its export task. `queue` is the
    /// bounded queue's capacity.
    pub fn new(
        sampler: Sampler,
        propagators: Propagators,
        policy: PolicyHandle,
        queue: Option<SpanQueue>,
        metrics: Metrics,
        retention: Option<retention::Retention>,
    ) -> Self {
        let retention = retention.filter(|r| r.config.enabled && queue.is_some());
        Telemetry(Arc::new(TelemetryInner {
            sampler,
            propagators,
            policy,
            queue,
            metrics,
            retention,
        }))
    }

    /// Deferred sampling, when on.
    pub fn retention(&self) -> Option<&retention::Retention> {
        self.0.retention.as_ref()
    }

    /// Exports `record` as kept for `reason`: its context says sampled, and a span kept for any
    /// reason but the head loses the `ot` threshold (its adjusted count is not that of a
    /// probability sample).
    pub fn keep(&self, mut record: SpanRecord, reason: retention::KeepReason) {
        record.reason = Some(reason);
        record.context.flags =
            crate::context::TraceFlags::new(true, record.context.flags.is_random());
        if reason != retention::KeepReason::Head && record.tracestate.is_some() {
            record.tracestate = sampling::otstate::with_th(record.tracestate.as_ref(), None);
        }
        let i = retention::KeepReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.0.metrics.retention.kept[i].inc();
        self.submit(record);
    }

    /// Parks a record that was not kept in the retention ring.
    pub fn park(&self, record: SpanRecord) {
        if let Some(r) = &self.0.retention {
            match r.park(record) {
                retention::ring::Pushed::Parked { overwritten: true } => {
                    self.0.metrics.retention.overwritten.inc();
                }
                retention::ring::Pushed::Parked { overwritten: false } => {}
                // Its trace was kept by another worker while this span ended.
                retention::ring::Pushed::Kept(record) => {
                    self.keep(*record, retention::KeepReason::Downstream)
                }
            }
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn sampler(&self) -> &Sampler {
        &self.0.sampler
    }

    pub fn propagators(&self) -> Propagators {
        self.0.propagators
    }

    /// The current routes and sampling rules: load once per request.
    pub fn policy(&self) -> &PolicyHandle {
        &self.0.policy
    }

    /// Whether sampled spans go anywhere. When they do not, the span layer skips recording.
    pub fn records(&self) -> bool {
        self.0.queue.is_some()
    }

    /// Hands a finished span to the export queue; never waits. A full or closed queue drops it
    /// and counts the drop.
    pub fn submit(&self, record: SpanRecord) {
        if let Some(queue) = &self.0.queue {
            match queue.tx.try_send(record) {
                Ok(()) => {
                    let depth = self.0.metrics.export.queue_depth.inc() + 1;
                    if depth == queue.batch {
                        queue.wake.notify_one();
                    }
                }
                Err(_) => {
                    self.0.metrics.export.dropped.inc();
                }
            }
        }
    }
}

/// The running export task, stopped last at shutdown so the final spans are flushed.
pub struct ExportHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: tokio_util::sync::CancellationToken,
    flush_timeout: Duration,
}

impl ExportHandle {
    /// Flushes queued spans (bounded by the export timeout, plus a second) and stops.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            if tokio::time::timeout(self.flush_timeout, task)
                .await
                .is_err()
            {
                tracing::warn!("span flush did not finish in time; remaining spans dropped");
            }
        }
    }
}

/// Builds the telemetry handle and starts the export task (if `exporter` is `Some`). Must run
/// inside the Tokio runtime. `trusted` are the sources whose force-trace header is honoured.
pub fn start(
    config: &crate::config::TelemetryConfig,
    propagators: Propagators,
    policy: PolicyHandle,
    trusted: Arc<[ipnet::IpNet]>,
    retention: retention::Retention,
    metrics: Metrics,
    exporter: Option<Exporter>,
) -> (Telemetry, ExportHandle) {
    let stop = tokio_util::sync::CancellationToken::new();
    let (queue, task) = match exporter {
        Some(exporter) => {
            let (tx, task) = ExportTask::new(config, exporter, metrics.export.clone());
            let task = tokio::spawn(task.run(stop.clone()));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let telemetry = Telemetry::new(
        Sampler::new(config.sampler, trusted),
        propagators,
        policy,
        queue,
        metrics,
        Some(retention),
    );
    let handle = ExportHandle {
        task,
        stop,
        flush_timeout: config.export_timeout + Duration::from_secs(1),
    };
    (telemetry, handle)
}
