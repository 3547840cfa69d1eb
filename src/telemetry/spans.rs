//! The span layer: extract the incoming context, decide sampling, rewrite the propagation
//! headers towards the next hop, and record a SERVER (inbound) or CLIENT (outbound) span that
//! ends when the response body ends, so streaming time is inside the span. The RED metrics are
//! observed at the same moment, from the same record, with the span's IDs as exemplar.
//!
//! The same layer serves both directions: an inbound span is a SERVER span, an outbound one a
//! CLIENT span ([`Direction`]). Errors never reach it:
//! the rescue layer below turns forwarding failures into responses and puts the cause in a
//! response extension, which this layer reads for the span's status.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{
    gaps::InFlightRequest,
    retention::{self, KeepReason, Retention},
    sampling::{
        rules::{RequestFacts, Retain, Slow},
        Reason, FORCE_TRACE,
    },
    semconv, Failure, Outcome, SpanRecord, Telemetry,
};
use crate::{
    context::{self, SpanContext, SpanId, TraceId},
    metrics::{
        red::{method_label, GrpcLabels, GrpcMethod, RedLabels, TraceExemplar},
        Direction,
    },
};

static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");
const GRPC_UNIMPLEMENTED: u8 = 12;

/// Builds [`SpanService`]s for one connection: the peer is known once per connection.
/// hyper clones the service for every request, so the state is one `Arc`.
#[derive(Clone)]
pub struct SpanLayer(Arc<LayerInner>);

struct LayerInner {
    kind: Direction,
    telemetry: Telemetry,
    client: SocketAddr,
    upstream: Option<SocketAddr>,
}

impl SpanLayer {
    pub fn new(
        kind: Direction,
        telemetry: Telemetry,
        client: SocketAddr,
        upstream: Option<SocketAddr>,
    ) -> Self {
        SpanLayer(Arc::new(LayerInner {
            kind,
            telemetry,
            client,
            upstream,
        }))
    }
}

impl<S> tower::Layer<S> for SpanLayer {
    type Service = SpanService<S>;
    fn layer(&self, inner: S) -> SpanService<S> {
        SpanService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct SpanService<S> {
    inner: S,
    layer: SpanLayer,
}

// === impl SpanService ===

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for SpanService<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let start = Instant::now();
        let layer = &*self.layer.0;
        let telemetry = &layer.telemetry;
        let extracted = context::extract(req.headers());
        for (format, reason) in extracted.invalid.iter() {
            telemetry.metrics().invalid_header(format, reason);
            tracing::debug!(format = format.as_str(), %reason, "ignored invalid trace context header");
        }
        // One snapshot of the reloadable policy serves this request's route and decision.
        let policy = telemetry.policy().load();
        // gRPC runs over HTTP/2 only; an HTTP/1 request with a gRPC content type is plain HTTP.
        let grpc = req.version() == http::Version::HTTP_2 && is_grpc(req.headers());
        let route = telemetry.route(layer.kind, &policy.routes, req.uri().path(), grpc);
        let facts = RequestFacts {
            direction: layer.kind,
            method: req.method(),
            path: req.uri().path(),
            route,
            headers: req.headers(),
        };
        let decision =
            telemetry
                .sampler()
                .decide(&extracted, &facts, &policy.rules, layer.client.ip());
        let retain = match telemetry.retention() {
            Some(_) => policy.rules.retain(&facts),
            None => Retain::default(),
        };
        drop(policy);
        let sampled = decision.sampled();
        let ctx = SpanContext {
            trace_id: decision.trace_id,
            span_id: SpanId::random(),
            flags: decision.flags,
        };
        let parent = extracted.parent.map(|p| p.span_id);
        // An inbound request is in flight until its span ends; an outbound one without any
        // context while some are is a propagation gap, linked to the one in flight if alone.
        // Probes (never sampled) are not requests the app serves with calls of its own.
        let (in_flight, link) = match layer.kind {
            Direction::Inbound if decision.reason == Reason::Never => (None, None),
            Direction::Inbound => {
                let request = InFlightRequest {
                    context: ctx,
                    route,
                };
                (Some(telemetry.gaps().enter(request)), None)
            }
            Direction::Outbound if extracted.parent.is_none() => {
                let gap = telemetry.gaps().outbound_without_context();
                (None, gap.and_then(|g| g.link).map(|r| r.context))
            }
            Direction::Outbound => (None, None),
        };
        // What travels on is what the span is exported with (nothing, when `tracecontext` is
        // not propagated).
        let tracestate = decision.tracestate.filter(|_| {
            telemetry
                .propagators()
                .contains(context::Format::TraceContext)
        });
        context::inject(
            req.headers_mut(),
            &ctx,
            tracestate.clone(),
            telemetry.propagators(),
        );

        // With deferred sampling every request is recorded: the decision to keep it can come
        // at its end, or later from a downstream hop.
        // A request the rules say never to sample (a probe, /metrics) is not recorded either:
        // a failing readiness check must not fill the collector.
        let retained = telemetry.retention().is_some() && decision.reason != Reason::Never;
        let exports = (sampled || retained) && telemetry.records();
        // The access log has a line for every request, probes included.
        let logged = telemetry.access_log().is_some();
        let bytes_in = logged.then(|| {
            let counter = super::RequestBytes::default();
            req.extensions_mut().insert(counter.clone());
            counter
        });
        let read = ReadHeaders::scan(req.headers());
        let record = (exports || logged).then(|| {
            Box::new(SpanRecord {
                kind: layer.kind,
                context: ctx,
                parent,
                // Copied: the incoming value shares hyper's read buffer, which the record would
                // hold until export (BENCHMARKS.md, "A span record held its request's buffer").
                tracestate: tracestate.as_ref().map(context::detached),
                start: SystemTime::now(),
                duration: Default::default(),
                method: req.method().clone(),
                text: super::text::RequestText::new(req.uri(), read.host, read.user_agent),
                version: req.version(),
                client: layer.client,
                upstream: layer.upstream,
                grpc,
                route,
                status: None,
                grpc_status: None,
                grpc_message: None,
                outcome: Outcome::Complete,
                reason: None,
                link,
            })
        });
        // Ours, and decided: it goes no further, so an app that copies headers onto its own
        // calls cannot carry a force-trace from an untrusted caller to a trusted listener.
        if read.force_trace {
            req.headers_mut().remove(&FORCE_TRACE);
        }
        // RED counts every request, sampled or not; only sampled ones carry an exemplar.
        let red = telemetry.metrics().red.as_ref().map(|_| RedLabels {
            direction: layer.kind,
            method: method_label(req.method()),
            status_code: 0,
            route,
            error_type: None,
            // The method is named only once the service has answered for it (see `finish`), so
            // paths a client makes up never become labels.
            grpc: grpc.then_some(GrpcLabels {
                method: GrpcMethod::OTHER,
                status: None,
            }),
        });
        let grpc_path = (grpc && red.is_some()).then(|| req.uri().clone());
        // Boxed: see `Pending`.
        let pending = (record.is_some() || red.is_some() || in_flight.is_some()).then(|| {
            Box::new(Pending {
                telemetry: telemetry.clone(),
                start,
                red,
                grpc_path,
                // An exemplar must lead to a trace: only for spans that are exported.
                exemplar: (sampled && telemetry.records()).then_some(TraceExemplar {
                    trace_id: ctx.trace_id,
                    span_id: ctx.span_id,
                }),
                record,
                sampled,
                keep: None,
                retain,
                head_after: None,
                refused: false,
                kept_in_trailers: false,
                exports,
                bytes_in,
                bytes_out: 0,
                _in_flight: in_flight,
            })
        });

        ResponseFuture {
            inner: self.inner.call(req),
            span: pending,
        }
    }
}

/// Marks `trace` kept in this sidecar and exports the spans of it that ended unkept before
/// (siblings of the span that decided), with the same reason. A trace not yet kept here needs a
/// token of `--retention-keep-rate`; without one, nothing is kept (`false`) and the count of
/// keeps refused rises.
fn keep_trace(
    telemetry: &Telemetry,
    retention: &Retention,
    trace: TraceId,
    reason: KeepReason,
) -> bool {
    if retention.is_kept(trace) {
        return true; // already kept here: its parked spans went then
    }
    if !retention.may_keep() {
        telemetry.metrics().retention.limited.inc();
        return false;
    }
    let mut siblings = Vec::new();
    retention.keep_trace(trace, &mut siblings);
    for record in siblings {
        telemetry.keep(record, reason);
    }
    true
}

/// The request headers a span reads once the context is injected, from one pass over them
/// rather than a lookup each (each lookup hashes its name, and the force-trace header's is
/// long and usually absent).
struct ReadHeaders<'a> {
    host: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    force_trace: bool,
}

impl<'a> ReadHeaders<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut read = ReadHeaders {
            host: None,
            user_agent: None,
            force_trace: false,
        };
        for (name, value) in headers {
            if name == header::HOST {
                read.host = read.host.or(Some(value.as_bytes()));
            } else if name == header::USER_AGENT {
                read.user_agent = read.user_agent.or(Some(value.as_bytes()));
            } else if name == FORCE_TRACE {
                read.force_trace = true;
            }
        }
        read
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    let v = headers.get(&GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// A request waiting for its response to end: its span (when sampled and exported) and its RED
/// labels (when RED is on).
///
/// Boxed, once per request: by value it was copied at each step, into the response future, out
/// of it, into the response body, and into `finish`. Those copies were 1.5k instructions per
/// HTTP/1.1 request and 1.9k per h2c request more than the box costs (callgrind,
/// BENCHMARKS.md). The record has a box of its own, which goes on to the queue, the retention
/// ring and the `/debug/traces` store without the record being copied again.
struct Pending {
    telemetry: Telemetry,
    start: Instant,
    red: Option<RedLabels>,
    /// The gRPC request's URI (a cheap clone), named in the labels at the end.
    grpc_path: Option<http::Uri>,
    exemplar: Option<TraceExemplar>,
    record: Option<Box<SpanRecord>>,
    /// Head-sampled.
    sampled: bool,
    /// Kept, and why, once decided (at the response head or at the end).
    keep: Option<KeepReason>,
    /// What the retention rules say about this request's span.
    retain: Retain,
    /// When the response head came, after the start.
    head_after: Option<Duration>,
    /// A keep at the head was refused by `--retention-keep-rate`.
    refused: bool,
    /// The response's trailers carried a kept response context for this trace (a hop that
    /// decided after its response head had gone).
    kept_in_trailers: bool,
    /// The record may be exported (head-sampled, or recorded for deferred sampling); a record
    /// made only for the access log is not.
    exports: bool,
    /// Request body bytes sent on, counted by the forwarder (access log only).
    bytes_in: Option<super::RequestBytes>,
    /// Response body bytes passed to the client.
    bytes_out: u64,
    /// An inbound request's place among those in flight, until the span ends.
    _in_flight: Option<super::gaps::InFlightGuard>,
}

impl Pending {
    fn response<B>(&mut self, rsp: &mut Response<B>) {
        let failed = rsp.extensions().get::<Failure>();
        if let Some(red) = self.red.as_mut() {
            red.status_code = rsp.status().as_u16();
            red.error_type = failed.map(|e| e.error_type);
        }
        if let Some(r) = self.record.as_mut() {
            r.status = Some(rsp.status());
            if let Some(err) = failed {
                r.outcome = Outcome::Failed(err.clone());
            }
        }
        // Trailers-only gRPC responses carry the status in the headers.
        self.observe_trailers(rsp.headers());
        self.decide_at_head(rsp.headers_mut());
    }

    /// Deferred sampling at the response head: keep now if the span is head-sampled, failed,
    /// is slow (the time to the response head is what "slow" measures, so a long stream or a
    /// slow reader is not), or a downstream hop kept its trace; a kept SERVER span answers with
    /// the response context so the caller's sidecar keeps its CLIENT span too.
    fn decide_at_head(&mut self, headers: &mut HeaderMap) {
        let elapsed = self.start.elapsed();
        self.head_after = Some(elapsed);
        let Some(retention) = self.telemetry.retention() else {
            return;
        };
        let Some(r) = self.record.as_ref().filter(|_| self.exports) else {
            return;
        };
        let (trace, span, kind) = (r.context.trace_id, r.context.span_id, r.kind);
        let reason = if self.sampled {
            Some(KeepReason::Head)
        } else if self.retain.errors && semconv::failed(r) {
            Some(KeepReason::Error)
        } else if is_slow(retention, self.retain, r, elapsed) {
            Some(KeepReason::Slow)
        } else {
            let downstream = match kind {
                Direction::Outbound => retention::downstream_kept(headers, trace),
                Direction::Inbound => retention.is_kept(trace),
            };
            downstream.then_some(KeepReason::Downstream)
        };
        self.keep = match reason {
            Some(KeepReason::Head) => Some(KeepReason::Head),
            Some(other) => {
                let kept = keep_trace(&self.telemetry, retention, trace, other);
                self.refused = !kept;
                kept.then_some(other)
            }
            None => None,
        };
        if kind == Direction::Inbound {
            if !retention.config.response_context {
                retention::strip_response_context(headers);
            } else if self.keep.is_some() {
                retention::write_response_context(headers, trace, span);
            }
        }
    }

    fn observe_trailers(&mut self, trailers: &HeaderMap) {
        let Some(code) = grpc_status(trailers) else {
            return;
        };
        if let Some(g) = self.red.as_mut().and_then(|r| r.grpc.as_mut()) {
            g.status = u8::try_from(code).ok();
        }
        if let Some(r) = self.record.as_mut() {
            r.grpc_status = Some(code);
            r.grpc_message = trailers.get(&GRPC_MESSAGE).map(context::detached);
        }
    }

    /// The span ends at the response's trailers (a gRPC status that was not trailers-only):
    /// they may carry the status, and a downstream keep decided after the head. A kept SERVER
    /// span whose caller was not told at the head is told here: the response context goes into
    /// the trailers, which the caller's sidecar reads on its CLIENT span.
    fn finish_at_trailers(mut self: Box<Self>, trailers: &mut HeaderMap) {
        self.observe_trailers(trailers);
        let told_at_head = self.keep.is_some();
        let record = self.record.as_ref().filter(|_| self.exports);
        let (Some(retention), Some(r)) = (self.telemetry.retention(), record) else {
            self.finish(None);
            return;
        };
        let (trace, span, kind) = (r.context.trace_id, r.context.span_id, r.kind);
        let response_context = retention.config.response_context;
        if kind == Direction::Outbound {
            self.kept_in_trailers = retention::downstream_kept(trailers, trace);
        }
        let kept = self.finish(None);
        if kind == Direction::Inbound {
            if !response_context {
                retention::strip_response_context(trailers);
            } else if kept.is_some() && !told_at_head {
                retention::write_response_context(trailers, trace, span);
            }
        }
    }

    /// Ends the span: decides whether it is kept (and returns why), observes RED, and exports
    /// or parks the record.
    fn finish(mut self: Box<Self>, outcome: Option<Outcome>) -> Option<KeepReason> {
        let duration = self.start.elapsed();
        // Completed where it lies: the record's box goes to the queue (or the ring) as it is.
        if let Some(r) = &mut self.record {
            r.duration = duration;
            if let Some(outcome) = &outcome {
                r.outcome = outcome.clone();
            }
        }
        let record = &mut self.record;
        // Deferred sampling decides before RED is observed, so a span kept at its end (an error
        // in the body, slow, a downstream keep) is an exemplar too: a metric leads to it.
        let retention = self.telemetry.retention();
        let reason = match (retention, record.as_ref().filter(|_| self.exports)) {
            (Some(retention), Some(r)) => {
                // The learner, like the decision, sees the time to the response head.
                if let Some(head) = self.head_after {
                    retention.learner().observe(r.kind, r.route, head);
                }
                let head = self.sampled.then_some(KeepReason::Head);
                self.keep.or(head).or_else(|| {
                    // Late: a body that broke, a gRPC status in the trailers, a cancellation,
                    // or a keep of its trace elsewhere in this sidecar since the head.
                    // Refused at the head for want of a token: not asked again, only kept if its
                    // trace was kept since (which costs no token).
                    let trace = r.context.trace_id;
                    let late = if self.retain.errors && !self.refused && semconv::failed(r) {
                        Some(KeepReason::Error)
                    } else {
                        (self.kept_in_trailers || retention.is_kept(trace))
                            .then_some(KeepReason::Downstream)
                    };
                    late.filter(|reason| keep_trace(&self.telemetry, retention, trace, *reason))
                })
            }
            _ => None,
        };
        let exemplar = match (&record, reason) {
            (Some(r), Some(_)) => Some(TraceExemplar {
                trace_id: r.context.trace_id,
                span_id: r.context.span_id,
            }),
            _ => self.exemplar,
        };
        // The exemplar's timestamp is the span's end, from the record: no second clock read.
        let exemplar = exemplar.zip(record.as_ref().map(|r| r.start + duration));
        if let Some(mut red) = self.red {
            match &outcome {
                Some(Outcome::Cancelled) => red.error_type = Some("cancelled"),
                Some(Outcome::BodyError) => red.error_type = Some("body_error"),
                _ => {}
            }
            if let Some(metrics) = &self.telemetry.metrics().red {
                // Name the gRPC method only when the service itself answered for it, with a
                // status other than UNIMPLEMENTED: the label set stays bounded by the methods
                // the service really has, whatever paths clients try.
                if let (Some(g), Some(uri)) = (red.grpc.as_mut(), &self.grpc_path) {
                    let implemented = g.status.is_some_and(|s| s != GRPC_UNIMPLEMENTED);
                    if implemented && red.error_type.is_none() {
                        g.method = metrics.grpc_method(uri.path());
                    }
                }
                metrics.observe(&red, duration, exemplar);
            }
        }
        let Some(record) = record.take() else {
            return reason;
        };
        if let Some(log) = self.telemetry.access_log() {
            let kept = match retention {
                Some(_) => reason,
                None => (self.exports && self.sampled).then_some(KeepReason::Head),
            };
            let entry = |record| super::access_log::Entry {
                record,
                kept: kept.filter(|_| self.exports),
                bytes_in: self.bytes_in.as_ref().map_or(0, super::RequestBytes::get),
                bytes_out: self.bytes_out,
            };
            if !self.exports {
                // Made for the log only: moved, not copied.
                log.log(entry(*record));
                return None;
            }
            log.log(entry(SpanRecord::clone(&record)));
        }
        if !self.exports {
            return None;
        }
        match (retention, reason) {
            // Without deferred sampling only head-sampled spans are recorded.
            (None, _) => self.telemetry.submit(record),
            (Some(_), Some(reason)) => self.telemetry.keep(record, reason),
            (Some(_), None) => self.telemetry.park(record),
        }
        reason
    }
}

/// Whether a span whose response head came after `duration` is slow: over its retention rule's
/// threshold, else over `--slow-threshold`, else over its route's learned one.
fn is_slow(retention: &Retention, retain: Retain, r: &SpanRecord, duration: Duration) -> bool {
    match (retain.slow, retention.config.slow_threshold) {
        (Slow::Never, _) => false,
        (Slow::Over(t), _) => duration > t,
        (Slow::Learned, Some(t)) if duration > t => true,
        (Slow::Learned, _) => retention.learner().is_slow(r.kind, r.route, duration),
    }
}

pin_project! {
    /// Resolves to the inner response with its body wrapped so the span ends with the body.
    /// Dropped before the response headers (the client went away while the upstream was still
    /// thinking), it records the request as cancelled: no status code, `error_type=cancelled`.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Box<Pending>>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().span.take() {
                p.finish(Some(Outcome::Cancelled));
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let mut span = this.span.take();
        Poll::Ready(match res {
            Ok(mut rsp) => {
                if let Some(p) = span.as_mut() {
                    p.response(&mut rsp);
                }
                let (parts, body) = rsp.into_parts();
                let body = ResponseBody { inner: body, span };
                Ok(Response::from_parts(parts, body.finish_if_ended()))
            }
            Err(e) => {
                if let Some(p) = span {
                    p.finish(Some(Outcome::BodyError));
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body, with the span attached: the span ends at end-of-stream or trailers,
    /// on a body error, or, when the body is dropped before its end, as cancelled.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        span: Option<Box<Pending>>,
    }

    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().span.take() {
                p.finish(Some(Outcome::Cancelled));
            }
        }
    }
}

impl<B: Body> ResponseBody<B> {
    /// A body that is empty from the start (a 204, a HEAD) ends its span now: hyper may never
    /// poll it.
    fn finish_if_ended(mut self) -> Self {
        if self.inner.is_end_stream() {
            if let Some(p) = self.span.take() {
                p.finish(None);
            }
        }
        self
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let mut frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &mut frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(p)) = (f.data_ref(), this.span.as_mut()) {
                    p.bytes_out += data.len() as u64;
                }
                if let Some(trailers) = f.trailers_mut() {
                    if let Some(p) = this.span.take() {
                        p.finish_at_trailers(trailers);
                    }
                } else if this.inner.is_end_stream() {
                    if let Some(p) = this.span.take() {
                        p.finish(None);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(p) = this.span.take() {
                    p.finish(Some(Outcome::BodyError));
                }
            }
            None => {
                if let Some(p) = this.span.take() {
                    p.finish(None);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `traceparent` value a span layer wrote, for tests and the demo.
pub fn traceparent_of(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get("traceparent")
}
