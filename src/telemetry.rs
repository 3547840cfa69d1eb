//! Telemetry: the span layer, the sampler, and export.
//!
//! The data path builds a small [`SpanRecord`] (IDs, timings, and cheap `Bytes`-backed clones
//! of the request's method, URI and a few headers) in a box of its own when the request
//! begins, and hands the box to a bounded queue with `try_send`; a full queue drops the span
//! and counts it. The record itself is never moved after that: the queue, the retention ring
//! and the `/debug/traces` store pass the pointer on. One export task encodes batches of
//! records straight into OTLP protobuf (attributes are derived there, off the request path) and
//! ships them to the collector, or prints them, or hands them to an in-process sink.
//! Export can never slow or fail a request.
//!
//! Not owned here: header formats ([`crate::context`]) and the metric registry
//! ([`crate::metrics`]).

pub mod access_log;
pub mod autoroute;
pub mod encode;
pub mod export;
pub mod gaps;
pub mod policy;
pub mod retention;
pub mod sampling;
pub mod semconv;
pub mod spans;
pub mod store;
pub mod text;
pub mod transport;
pub mod waterfall;

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
    /// An inferred link (`tracemesh.link.inferred`): the SERVER span this new root's call
    /// probably serves, when the app dropped its context ([`gaps`]).
    pub link: Option<SpanContext>,
}

impl SpanRecord {
    /// For records parked by retention, which may wait a while: the header values copied once
    /// more, each into an allocation of its own. The record's values are already copies
    /// ([`crate::context::detached`]) but cut from the per-thread header arena, and a full ring
    /// of them would pin one 4 KiB chunk per few dozen records. A `tracestate` or
    /// `grpc-message` over 512 bytes (the length W3C asks every hop to propagate) is dropped.
    pub fn trim_for_parking(&mut self) {
        let own = |v: &HeaderValue| {
            (v.len() <= 512)
                .then(|| HeaderValue::from_bytes(v.as_bytes()).ok())
                .flatten()
        };
        self.tracestate = self.tracestate.as_ref().and_then(own);
        self.grpc_message = self.grpc_message.as_ref().and_then(own);
    }
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
    /// Route names inferred when no templates are configured: inbound, outbound.
    learned_routes: [autoroute::RouteLearner; 2],
    /// `--access-log json`.
    access_log: Option<access_log::AccessLog>,
    /// In-flight inbound requests, for propagation-gap detection.
    gaps: Arc<gaps::Gaps>,
}

/// A request's body bytes sent on, counted by the forwarder: the span layer puts one in the
/// request's extensions when the access log wants the figure.
#[derive(Debug, Clone, Default)]
pub struct RequestBytes(pub Arc<std::sync::atomic::AtomicU64>);

impl RequestBytes {
    pub fn add(&self, n: usize) {
        self.0
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the proxy does to make traces easy to find and read, beyond exporting them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserveConfig {
    /// Route templates inferred at most (`--route-learn-limit`; 0: none).
    pub route_learn_limit: usize,
    /// `--access-log json`: a JSON line per request on stdout.
    pub access_log: bool,
    /// `/debug/traces`, holding this many spans (`None`: off).
    pub debug_traces: Option<usize>,
    /// `/debug/traces` answers clients beyond loopback (`--debug-traces on`).
    pub debug_traces_remote: bool,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            route_learn_limit: autoroute::DEFAULT_LIMIT,
            access_log: false,
            debug_traces: Some(store::DEFAULT_SPANS),
            debug_traces_remote: false,
        }
    }
}

/// The sending end of the export queue. The export task is woken when a batch's worth is
/// queued (and by its own timer), not once per span: at a few thousand spans a second, a
/// wake-up per span cost more than the span.
pub struct SpanQueue {
    pub tx: mpsc::Sender<Box<SpanRecord>>,
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
        observe: ObserveConfig,
    ) -> Self {
        let retention = retention.filter(|r| r.config.enabled && queue.is_some());
        Telemetry(Arc::new(TelemetryInner {
            sampler,
            propagators,
            policy,
            queue,
            retention,
            learned_routes: [
                autoroute::RouteLearner::new(observe.route_learn_limit),
                autoroute::RouteLearner::new(observe.route_learn_limit),
            ],
            access_log: observe.access_log.then(|| {
                access_log::AccessLog::start(
                    Box::new(std::io::stdout()),
                    access_log::QUEUE,
                    metrics.access_log_dropped.clone(),
                )
            }),
            gaps: Arc::new(gaps::Gaps::new(metrics.propagation_gaps.clone())),
            metrics,
        }))
    }

    /// Propagation-gap detection.
    pub fn gaps(&self) -> &Arc<gaps::Gaps> {
        &self.0.gaps
    }

    /// The access log, when on.
    pub fn access_log(&self) -> Option<&access_log::AccessLog> {
        self.0.access_log.as_ref()
    }

    /// The route for `path`: with templates configured, the first that matches (else
    /// `_unmatched`: the operator's templates are the whole label set); with none, a template
    /// inferred from the path. gRPC paths are not inferred: the method names them, and RED
    /// bounds those itself.
    pub fn route(
        &self,
        direction: Direction,
        routes: &crate::config::routes::Routes,
        path: &str,
        grpc: bool,
    ) -> Option<crate::config::routes::Route> {
        if !routes.is_empty() || grpc {
            return routes.route(path);
        }
        let learner = match direction {
            Direction::Inbound => &self.0.learned_routes[0],
            Direction::Outbound => &self.0.learned_routes[1],
        };
        learner.route(path)
    }

    /// Deferred sampling, when on.
    pub fn retention(&self) -> Option<&retention::Retention> {
        self.0.retention.as_ref()
    }

    /// Exports `record` as kept for `reason`: its context says sampled, and a span kept for any
    /// reason but the head loses the `ot` threshold (its adjusted count is not that of a
    /// probability sample).
    pub fn keep(&self, mut record: Box<SpanRecord>, reason: retention::KeepReason) {
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
    pub fn park(&self, record: Box<SpanRecord>) {
        if let Some(r) = &self.0.retention {
            match r.park(record) {
                retention::ring::Pushed::Parked { overwritten: true } => {
                    self.0.metrics.retention.overwritten.inc();
                }
                retention::ring::Pushed::Parked { overwritten: false } => {}
                // Its trace was kept by another worker while this span ended.
                retention::ring::Pushed::Kept(record) => {
                    self.keep(record, retention::KeepReason::Downstream)
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
    pub fn submit(&self, record: Box<SpanRecord>) {
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
    store: Option<Arc<store::TraceStore>>,
}

impl ExportHandle {
    /// The spans `/debug/traces` shows, when it is on and spans are exported.
    pub fn store(&self) -> Option<&Arc<store::TraceStore>> {
        self.store.as_ref()
    }

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

/// What [`start`] builds the telemetry handle from, besides its configuration.
pub struct Setup {
    pub sampler: Sampler,
    pub propagators: Propagators,
    pub policy: PolicyHandle,
    pub retention: retention::Retention,
    pub observe: ObserveConfig,
}

/// Builds the telemetry handle and starts the export task (if `exporter` is `Some`). Must run
/// inside the Tokio runtime.
pub fn start(
    config: &crate::config::TelemetryConfig,
    setup: Setup,
    metrics: Metrics,
    exporter: Option<Exporter>,
) -> (Telemetry, ExportHandle) {
    let stop = tokio_util::sync::CancellationToken::new();
    // `/debug/traces` reads what export sees: with nothing exported, there is nothing to show.
    let store = exporter
        .as_ref()
        .and(setup.observe.debug_traces)
        .map(|spans| Arc::new(store::TraceStore::new(spans)));
    let (queue, task) = match exporter {
        Some(exporter) => {
            let (tx, mut task) = ExportTask::new(config, exporter, metrics.export.clone());
            task.store = store.clone();
            let task = tokio::spawn(task.run(stop.clone()));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let telemetry = Telemetry::new(
        setup.sampler,
        setup.propagators,
        setup.policy,
        queue,
        metrics,
        Some(setup.retention),
        setup.observe,
    );
    let handle = ExportHandle {
        task,
        stop,
        flush_timeout: config.export_timeout + Duration::from_secs(1),
        store,
    };
    (telemetry, handle)
}
