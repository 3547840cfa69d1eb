//! The proxy: listeners, the accept loop, per-connection protocol detection, and drain on
//! shutdown.
//!
//! For each connection: accept → resolve peer and original destination once → [`detect`] the
//! protocol from the first bytes → HTTP/1 or HTTP/2 served by hyper through the stack of
//! [`stack`] (span → rescue → forward), or opaque TCP relayed byte for byte. Inbound and outbound
//! run the same code with a different [`Direction`]; they differ only in how the target is
//! resolved ([`inbound::target`], [`outbound::target`]) and in the span kind.

mod conn;
pub mod detect;
pub mod forward;
mod head;
pub mod inbound;
pub mod io;
pub mod opaque;
pub mod outbound;
pub mod workers;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Layer;

pub use self::forward::{
    Connector, Forward, ForwardError, ProxyBody, Rescue, Sanitize, SelfAddrs, StreamContext, Target,
};
use self::{
    conn::{Activity, ConnGuard, Expired, Mode, Watched, WhenWoken},
    detect::Protocol,
    io::PrefixedIo,
};
pub use crate::metrics::Direction;
use crate::{
    config::Limits,
    context::Propagators,
    metrics::Metrics,
    telemetry::{SpanLayer, Telemetry},
};

/// HTTP/2 limits per connection. Streams a client may open at once (Envoy and Go's default is
/// 100-250; gRPC clients rarely need more); streams a client may reset before the proxy accepts
/// them, and streams the proxy may reset for the client's protocol errors, before the connection
/// is closed with ENHANCE_YOUR_CALM (the rapid-reset and "MadeYouReset" floods).
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Response bytes the proxy buffers per HTTP/2 stream for a client that has window left but is
/// not reading; past it, the app waits on the proxy's upstream windows instead of being read
/// into memory. hyper's default is 400 KiB: a client that advertised a 2 GiB window on 128
/// downloads and read nothing made the proxy hold 32-68 MiB, against 7.5-17.6 MiB at 64 KiB
/// (four full frames; `tests/h2_abuse.rs`).
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// What the proxy listens on and where inbound traffic goes.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub inbound_listen: SocketAddr,
    pub outbound_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub app_addr: Option<SocketAddr>,
    pub propagators: Propagators,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    /// Route templates and sampling rules, reloaded while the proxy runs.
    pub policy: crate::telemetry::policy::Sources,
    /// Sources whose force-trace header is honoured.
    pub trusted_cidrs: Vec<ipnet::IpNet>,
    /// Deferred sampling: keep errors, slow and downstream-kept traces.
    pub retention: crate::telemetry::retention::RetentionConfig,
    /// Route inference, access log, debug traces.
    pub observe: crate::telemetry::ObserveConfig,
    pub red_metrics: bool,
    /// Destination ports relayed as opaque TCP without detection (server-first protocols).
    pub opaque_ports: Vec<u16>,
    /// On shutdown, how long to keep accepting before the listeners close (see [`start`]).
    pub drain_delay: Duration,
    /// Data-path threads, each with its own listener sockets (see [`workers`]); at least one.
    pub workers: usize,
}

/// The proxy's listeners, bound before anything else starts: one inbound and one outbound
/// socket per worker (`SO_REUSEPORT`, all on the same address), and the admin listener.
pub struct Listeners {
    pub inbound: Vec<std::net::TcpListener>,
    pub outbound: Vec<std::net::TcpListener>,
    pub admin: TcpListener,
}

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Listeners {
    /// Binds all listeners: `workers` sockets each for inbound and outbound.
    ///
    /// # Errors
    /// Any bind failure, naming the listener.
    pub async fn bind(config: &ProxyConfig) -> Result<Self, BindError> {
        let workers = config.workers.max(1);
        let reuse = |name: &'static str, addr: SocketAddr| {
            let err = |source| BindError { name, addr, source };
            let first = workers::bind_reuseport(addr).map_err(err)?;
            // Port 0 is resolved by the first socket; the others join it.
            let at = first.local_addr().map_err(err)?;
            let mut all = vec![first];
            for _ in 1..workers {
                all.push(workers::bind_reuseport(at).map_err(err)?);
            }
            Ok::<_, BindError>(all)
        };
        let admin = config.admin_listen;
        Ok(Listeners {
            inbound: reuse("inbound", config.inbound_listen)?,
            outbound: reuse("outbound", config.outbound_listen)?,
            admin: TcpListener::bind(admin).await.map_err(|source| BindError {
                name: "admin",
                addr: admin,
                source,
            })?,
        })
    }

    pub fn bound(&self) -> Bound {
        let a =
            |l: &std::net::TcpListener| l.local_addr().expect("a bound listener has an address");
        Bound {
            inbound: a(&self.inbound[0]),
            outbound: a(&self.outbound[0]),
            admin: self
                .admin
                .local_addr()
                .expect("a bound listener has an address"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("binding the {name} listener on {addr}")]
pub struct BindError {
    name: &'static str,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// State shared by every connection of both listeners.
pub struct Shared {
    pub telemetry: Telemetry,
    pub metrics: Metrics,
    pub connector: Connector,
    pub limits: Limits,
    pub app_addr: Option<SocketAddr>,
    pub opaque_ports: Vec<u16>,
}

/// What one connection's request stack is built from.
struct ConnParts<'a> {
    direction: Direction,
    shared: &'a Shared,
    client: SocketAddr,
    target: Target,
    tracker: &'a TaskTracker,
    guard: Arc<ConnGuard>,
    h2: bool,
    activity: Arc<Activity>,
}

/// The request stack for one connection. Read top to bottom: the order in which a request
/// meets the layers. Hop-by-hop headers go first, so the span layer's context is the last word;
/// errors are answered by [`Rescue`] below the span layer, so the span sees every response,
/// synthesized or not, with the cause in an extension.
fn stack(
    parts: ConnParts<'_>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::telemetry::spans::ResponseBody<ProxyBody>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let kind = parts.direction;
    let shared = parts.shared;
    let upstream = parts.target.addr();
    let head_scan = (!parts.h2).then(|| parts.activity.clone());
    let stream = StreamContext {
        metrics: shared.metrics.connections(parts.direction).clone(),
        tracker: parts.tracker.clone(),
        guard: parts.guard,
        idle_timeout: shared.limits.idle_timeout,
    };
    let forward = Forward::new(
        parts.direction,
        parts.target,
        shared.connector.clone(),
        parts.h2,
        stream,
        parts.activity,
    );
    let span = SpanLayer::new(kind, shared.telemetry.clone(), parts.client, upstream);
    Sanitize::new(span.layer(Rescue::new(forward)), head_scan)
}

/// Accepts connections until `shutdown`, serving each on `tracker`. `permits` holds the
/// listener's `--max-connections`, shared by every worker's socket of this listener.
pub async fn serve(
    direction: Direction,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, listener = direction.as_str(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the connection limit, the connection just accepted waits, unserved, for a slot, and
        // this socket accepts no more: later clients wait in the kernel's backlog. (The permit
        // is taken after accept: taken before, each worker's socket would hold one in reserve.)
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let conn_tracker = tracker.clone();
        tracker.spawn(async move {
            let open = shared.metrics.connections(direction).open.clone();
            let guard = ConnGuard::new(open, Some(permit));
            serve_connection(
                direction,
                stream,
                peer,
                &shared,
                shutdown,
                &conn_tracker,
                guard,
            )
            .await;
        });
    }
}

async fn serve_connection(
    direction: Direction,
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
    guard: Arc<ConnGuard>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let orig_dst = io::original_dst(&stream, local);
    let refuse = |reason: &'static str| {
        shared.metrics.refused_connection(direction, reason);
        tracing::debug!(%peer, ?orig_dst, reason, "connection refused");
    };
    // The inbound side only ever reaches the app: a connection redirected to it from one of the
    // proxy's own ports (the outbound listener, say) would turn it into an open proxy.
    if direction == Direction::Inbound
        && orig_dst.is_some_and(|d| shared.connector.own.is_own_port(d.port()))
    {
        return refuse("own_port");
    }
    let target = match direction {
        // The address the client reached is this socket's own (REDIRECT rewrote it to the
        // incoming interface's address): only the port is taken from the original destination,
        // so a packet addressed elsewhere (a metadata endpoint, say) cannot name a destination.
        Direction::Inbound => inbound::target(
            shared.app_addr,
            orig_dst.map(|d| SocketAddr::new(local.ip(), d.port())),
        ),
        Direction::Outbound => outbound::target(orig_dst),
    };
    let limits = &shared.limits;
    if target
        .addr()
        .is_some_and(|a| shared.opaque_ports.contains(&a.port()))
    {
        let io = PrefixedIo::new(bytes::Bytes::new(), stream);
        return opaque::forward(io, target, shared, direction, guard).await;
    }

    let detected = tokio::select! {
        _ = shutdown.cancelled() => return,
        d = detect_protocol(&mut stream, limits.detect_timeout) => d,
    };
    let (protocol, buf) = match detected {
        Ok(Detected::Protocol(p, buf)) => (p, buf),
        Ok(Detected::TimedOut) => return refuse("detect_timeout"),
        Ok(Detected::Closed) => return,
        Err(error) => {
            tracing::debug!(%error, %peer, "connection closed during detection");
            return;
        }
    };

    let parts = |h2, activity| ConnParts {
        direction,
        shared,
        client: peer,
        target: target.clone(),
        tracker,
        guard: guard.clone(),
        h2,
        activity,
    };
    match protocol {
        Protocol::Http1 => {
            // A request in flight may be quiet while the app thinks: never less than the
            // response timeout before it counts as stalled.
            let stall = limits.idle_timeout.max(limits.response_timeout);
            let activity = Activity::new(
                Mode::Http1,
                limits.idle_timeout,
                limits.header_read_timeout,
                stall,
            );
            activity.head_started();
            let svc = TowerToHyperService::new(stack(parts(false, activity.clone())));
            let io = Watched::new(PrefixedIo::new(buf.freeze(), stream), activity.clone());
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // The connection's watchdog applies the head deadline from a head's first
                // byte, and the idle timeout between requests (hyper's would start at idle).
                .header_read_timeout(None)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .max_header_size(limits.max_header_bytes);
            let conn = builder
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let expired = WhenWoken::new(activity.expired());
            tokio::pin!(expired);
            let res = tokio::select! {
                biased;
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    // A head still trickling in must not hold the drain.
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = &mut expired => return,
                    }
                }
                why = &mut expired => {
                    match why {
                        Expired::HeaderRead => refuse("header_read_timeout"),
                        Expired::Stalled => refuse("stalled"),
                        Expired::Idle => {}
                    }
                    tracing::debug!(?why, %peer, "closing http/1 connection");
                    return;
                }
            };
            if let Err(error) = res {
                tracing::debug!(%error, %peer, "http/1 connection error");
            }
        }
        Protocol::Http2 => {
            let activity = Activity::new(
                Mode::Http2,
                limits.idle_timeout,
                limits.header_read_timeout,
                limits.idle_timeout,
            );
            let svc = TowerToHyperService::new(stack(parts(true, activity.clone())));
            let io = PrefixedIo::new(buf.freeze(), stream);
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
                .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
                .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
                .max_send_buf_size(H2_MAX_SEND_BUF)
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .keep_alive_interval(Some(limits.idle_timeout / 2))
                .keep_alive_timeout(Duration::from_secs(20));
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let expired = WhenWoken::new(activity.expired());
            tokio::pin!(expired);
            let res = tokio::select! {
                biased;
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                why = &mut expired => {
                    tracing::debug!(?why, %peer, "closing http/2 connection");
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = res {
                tracing::debug!(%error, %peer, "http/2 connection error");
            }
        }
        Protocol::Tls | Protocol::Opaque => {
            let io = PrefixedIo::new(buf.freeze(), stream);
            opaque::forward(io, target, shared, direction, guard).await;
        }
    }
}

/// Drives a hyper connection; on `shutdown`, asks it to finish gracefully (HTTP/1: after the
/// request in flight; HTTP/2: GOAWAY, then the open streams) and keeps driving it to the end.
pub(crate) async fn until_shutdown<C, T, E>(
    conn: C,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<T, E>
where
    C: std::future::Future<Output = Result<T, E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// What detection made of a connection's first bytes.
enum Detected {
    Protocol(Protocol, BytesMut),
    /// Nothing decidable within the detect timeout: closed, never relayed.
    TimedOut,
    /// The client closed before anything decidable.
    Closed,
}

/// Reads until [`detect::detect`] decides, the client closes its side, or `timeout` passes.
async fn detect_protocol(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(detect::MAX_DETECT_BYTES);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = detect::detect(&buf) {
            return Ok(Detected::Protocol(p, buf));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok(Detected::TimedOut),
            Ok(Ok(0)) => return Ok(Detected::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A started proxy: listeners bound, admin ready, traffic flowing.
pub struct Running {
    pub bound: Bound,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A token that, once cancelled, starts the drain.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the proxy has drained and flushed its spans.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds, starts telemetry, the admin listener and both proxy listeners, and marks the proxy
/// ready. On shutdown (the token of [`Running::shutdown_token`]), drains like a sidecar:
///
/// 1. `/ready` answers 503 at once, and for `drain_delay` the listeners keep accepting and
///    serving new connections: Kubernetes needs that long to take the endpoint out of rotation,
///    and clients that still pick this pod meanwhile are served, not refused.
/// 2. The listeners close (new connects are refused) and every connection is asked to finish:
///    HTTP/1 after its request in flight, HTTP/2 with GOAWAY after its open streams.
/// 3. In-flight requests get `shutdown_grace`; whatever is left after it is cut.
/// 4. Spans are flushed, then the admin listener stops and [`Running::wait`] returns.
///
/// # Errors
/// A listener could not be bound.
pub async fn start(
    config: ProxyConfig,
    telemetry_config: &crate::config::TelemetryConfig,
    exporter: Option<crate::telemetry::Exporter>,
) -> Result<Running, BindError> {
    let listeners = Listeners::bind(&config).await?;
    let bound = listeners.bound();
    let metrics = Metrics::new(config.red_metrics);
    let (reloader, policy) =
        crate::telemetry::policy::Reloader::start(config.policy.clone(), metrics.config.clone())
            .await;
    let (telemetry, export) = crate::telemetry::start(
        telemetry_config,
        crate::telemetry::Setup {
            sampler: crate::telemetry::Sampler::new(
                telemetry_config.sampler,
                config.trusted_cidrs.clone().into(),
            ),
            propagators: config.propagators,
            policy,
            retention: crate::telemetry::retention::Retention::new(
                config.retention,
                config.workers,
            ),
            observe: config.observe,
        },
        metrics.clone(),
        exporter,
    );
    let shared = Arc::new(Shared {
        telemetry,
        metrics: metrics.clone(),
        connector: Connector {
            connect_timeout: config.limits.connect_timeout,
            response_timeout: config.limits.response_timeout,
            own: SelfAddrs::new(
                [
                    bound.inbound.port(),
                    bound.outbound.port(),
                    bound.admin.port(),
                ],
                SelfAddrs::interface_ips(),
            ),
        },
        limits: config.limits,
        app_addr: config.app_addr,
        opaque_ports: config.opaque_ports.clone(),
    });

    // Two tokens: `shutdown` (handed out) starts the drain; `stop`, cancelled once the drain
    // delay is over, is the one the accept loops and connections watch.
    let shutdown = CancellationToken::new();
    let stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let ready = crate::admin::Readiness::default();
    tokio::spawn(reloader.run(admin_stop.clone()));
    let debug = export.store().map(|store| crate::admin::DebugTraces {
        store: store.clone(),
        gaps: shared.telemetry.gaps().clone(),
        service: Arc::from(telemetry_config.service_name()),
        remote: config.observe.debug_traces_remote,
    });
    tokio::spawn(crate::admin::serve(
        listeners.admin,
        metrics,
        ready.clone(),
        debug,
        admin_stop.clone(),
    ));
    let tracker = TaskTracker::new();
    // Cancelled when the grace period is over: workers stop waiting for their connections.
    let halt = CancellationToken::new();
    let pairs = listeners
        .inbound
        .into_iter()
        .zip(listeners.outbound)
        .collect();
    let mut workers =
        workers::Workers::start(pairs, &shared, &stop, &halt, &tracker).map_err(|source| {
            BindError {
                name: "worker",
                addr: bound.inbound,
                source,
            }
        })?;
    drop(shared);
    ready.set(true);
    tracing::info!(
        inbound = %bound.inbound,
        outbound = %bound.outbound,
        admin = %bound.admin,
        "listening"
    );

    let (delay, grace) = (config.drain_delay, config.shutdown_grace);
    let token = shutdown.clone();
    let done = tokio::spawn(async move {
        token.cancelled().await;
        ready.set(false);
        tracing::info!(
            ?delay,
            "not ready; serving new connections during the drain delay"
        );
        tokio::time::sleep(delay).await;
        stop.cancel();
        workers.listeners_closed().await;
        tracing::info!("listeners closed; no new connections");
        tracker.close();
        tracing::info!(connections = tracker.len(), ?grace, "draining");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                connections = tracker.len(),
                "grace period over; closing remaining connections"
            );
        }
        halt.cancel();
        // Off the runtime: the workers' threads end once their runtimes have stopped.
        let _ = tokio::task::spawn_blocking(move || workers.join()).await;
        export.shutdown().await;
        admin_stop.cancel();
        tracing::info!("stopped");
    });
    Ok(Running {
        bound,
        shutdown,
        done,
    })
}
