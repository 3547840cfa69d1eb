//! The admin listener. Endpoints:
//!
//! - `GET /live`: 200 while the process runs (liveness probe).
//! - `GET /ready`: 200 once every listener is bound, 503 before that and once shutdown begins
//!   (readiness probe: Kubernetes stops routing to a draining pod).
//! - `GET /metrics`: [`crate::metrics::Metrics`]: OpenMetrics 1.0 with exemplars when `Accept`
//!   asks for `application/openmetrics-text`, else the classic Prometheus text format.
//! - `GET /debug/traces`, `/debug/traces/<trace-id>`, `/debug/traces.json`: recent traces as
//!   waterfalls ([`traces`]; off with `--debug-traces off`).
//!
//! Anything else is 404. The admin listener is plain HTTP/1.1 and is not traced.
//!
//! It is reachable from outside the pod (probes, scrapers), so it is bounded on its own: at most
//! [`MAX_CONNECTIONS`] open connections (the rest wait in the backlog), [`HEADER_READ_TIMEOUT`]
//! for a request head or an idle keep-alive, [`MAX_CONNECTION_AGE`] in all, and a pause after a
//! failed accept, so running out of file descriptors does not spin a core. Both conditions are
//! logged at most every ten seconds: clients can cause them at will.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub mod traces;

pub use self::traces::DebugTraces;

/// Readiness, flipped by the proxy's lifecycle.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Admin connections open at once. Probes and a scraper need a handful; at the cap the listener
/// stops accepting and further clients wait in the kernel's backlog, so a flood of connections
/// costs the proxy no file descriptors beyond these.
pub const MAX_CONNECTIONS: usize = 64;

/// A client must send a whole request head within this. hyper starts the clock whenever it waits
/// for a head, so it also closes idle keep-alive connections (and ones that never send a byte)
/// after this long. Probes and scrapes send their request at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest an admin connection lives, whatever it is doing: a client that stops reading a
/// `/metrics` answer would otherwise hold its slot forever. A scrape takes milliseconds.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30);

/// The largest request head (and read buffer) of an admin connection.
const MAX_BUF_BYTES: usize = 16 * 1024;

/// After a failed accept (EMFILE, ENFILE, ENOBUFS..), wait this long: the error repeats at once
/// while the backlog is non-empty, and retrying in a loop would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connection limit and failed accepts are logged at most once per this.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until `shutdown`, with at most [`MAX_CONNECTIONS`] connections
/// open and each bounded by [`HEADER_READ_TIMEOUT`] and [`MAX_CONNECTION_AGE`].
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    debug: Option<DebugTraces>,
    shutdown: CancellationToken,
) {
    let debug = debug.map(Arc::new);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (mut saturated, mut accept_errors) = (Throttled::default(), Throttled::default());
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(unlogged) = saturated.due() {
                    tracing::warn!(
                        max = MAX_CONNECTIONS,
                        unlogged,
                        "admin connection limit reached; new connections wait"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    if let Some(unlogged) = accept_errors.due() {
                        tracing::warn!(%error, unlogged, backoff = ?ACCEPT_BACKOFF, "admin accept failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let debug = debug.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let ready = ready.clone();
                let debug = debug.clone();
                async move { Ok::<_, Infallible>(respond(req, metrics, ready, debug, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(MAX_CONNECTION_AGE, conn).await;
        });
    }
}

/// At most one log line per [`LOG_EVERY`] for a condition a client can cause at will (a full
/// connection table, failed accepts), counting the occurrences it leaves out.
#[derive(Default)]
struct Throttled {
    last_logged: Option<Instant>,
    unlogged: u64,
}

// === impl Throttled ===

impl Throttled {
    /// `Some(occurrences left out since the last line)` when this one should be logged.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

async fn respond<B>(
    req: Request<B>,
    metrics: Metrics,
    ready: Readiness,
    debug: Option<Arc<DebugTraces>>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if let Some(rsp) = traces::respond(req.uri().path(), debug.as_deref(), peer.ip()) {
        return rsp;
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if ready.get() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Rendering reads /proc (process_* metrics): keep it off the async workers.
            let rendered =
                tokio::task::spawn_blocking(move || metrics.render(accept.as_deref())).await;
            match rendered {
                Ok((content_type, body)) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static(content_type),
                    );
                    r
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
