//! `tracemesh demo`: the local, no-cluster showcase.
//!
//! Starts three small services on loopback — `checkout`, which calls `inventory` and
//! `payment` — each behind its own tracemesh proxy, exactly as sidecars would sit in three
//! pods. The apps have no tracing code: checkout only copies the trace headers of its inbound
//! request onto its outbound calls (as most frameworks do) and uses its proxy's outbound
//! listener as its HTTP proxy. The demo sends a few requests (one carrying Zipkin B3 headers,
//! which the proxies translate to W3C), collects the spans in process (no collector needed),
//! and prints each trace as a tree.
//!
//! Then the same three services again at 1% head sampling, with a payment service that fails
//! every tenth call and is slow once: deferred sampling keeps the error and slow traces whole
//! (checkout answers 502 to its client, payment's own sidecar sees the 500 or the delay), and
//! the demo prints them with the reason each span was kept, next to a head-sampled trace.
//!
//! Last, a `recommend` service that does not pass trace headers on: its call to inventory
//! starts a trace of its own, and its sidecar detects the gap (counted by route) and links the
//! new trace to the request it was serving. Every trace is drawn as a waterfall in the terminal
//! ([`render`]); with `--keep-running` these services stay up and the demo prints each proxy's
//! `/debug/traces` address until Ctrl-C.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

mod render;

pub use self::render::render_traces;

use crate::{
    config::{Limits, TelemetryConfig},
    context::Propagators,
    proxy::{self, ProxyConfig},
    telemetry::{Exporter, SpanSink},
};

/// Options of `tracemesh demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many plain requests to send (one more carries B3 headers).
    #[arg(long, default_value_t = 2)]
    pub requests: usize,
    /// Keep the last scene's services running and print their `/debug/traces` addresses, until
    /// Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// Headers a well-behaved app copies from its inbound request onto its outbound calls.
const FORWARDED: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-parentspanid",
];

/// Runs the demo and prints the traces.
///
/// # Errors
/// A service or proxy could not start, or a request failed.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let sink = SpanSink::default();

    let (checkout, inventory, payment) = shop(&sink, None, Behaviour::Steady).await?;

    println!(
        "tracemesh demo: checkout → inventory, checkout → payment; each behind its own proxy\n"
    );
    for (name, s) in [
        ("checkout", &checkout),
        ("inventory", &inventory),
        ("payment", &payment),
    ] {
        println!(
            "  {name:<10} app {}  proxy inbound {}  outbound {}",
            s.app, s.proxy_inbound, s.proxy_outbound
        );
    }
    println!();

    let mut sent = Vec::new();
    for _ in 0..args.requests {
        let status = get(checkout.proxy_inbound, "/checkout", &[]).await?;
        sent.push(format!("GET /checkout → {status}"));
    }
    // A legacy Zipkin client: 64-bit B3 trace ID, multi-header form.
    let b3 = [
        ("x-b3-traceid", "463ac35c9f6413ad"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let status = get(checkout.proxy_inbound, "/checkout", &b3).await?;
    sent.push(format!(
        "GET /checkout with X-B3-TraceId: 463ac35c9f6413ad → {status} (B3 in, W3C out)"
    ));
    for s in &sent {
        println!("  sent {s}");
    }
    println!();

    // Draining each proxy flushes its spans into the sink.
    for s in [checkout, inventory, payment] {
        s.stop().await;
    }
    println!(
        "each trace as a waterfall: bars on the trace's time axis, the critical path solid (█), \
         the rest light (░), the slowest span (most self time) marked\n"
    );
    print!("{}", render_traces(&sink.spans()));
    deferred(args.requests.max(1) * 10).await?;
    gap(args.keep_running).await
}

/// A service that drops the trace context: `checkout → recommend`, and recommend calls
/// inventory without passing the headers on. Prints both traces, the inferred link and the gap
/// counter; with `keep_running`, leaves the services up for `/debug/traces`.
async fn gap(keep_running: bool) -> anyhow::Result<()> {
    let sink = SpanSink::default();
    let inventory = Service::start(
        "inventory",
        Duration::from_millis(2),
        vec![],
        &sink,
        None,
        Behaviour::Steady,
    )
    .await?;
    let recommend = Service::start(
        "recommend",
        Duration::from_millis(4),
        vec![("/inventory", inventory.proxy_inbound)],
        &sink,
        None,
        Behaviour::DropsContext,
    )
    .await?;
    let checkout = Service::start(
        "checkout",
        Duration::from_millis(1),
        vec![("/recommend", recommend.proxy_inbound)],
        &sink,
        None,
        Behaviour::Steady,
    )
    .await?;
    println!(
        "propagation gaps: checkout → recommend → inventory, and recommend's app does not pass \
         the trace headers on\n"
    );
    get(checkout.proxy_inbound, "/checkout", &[]).await?;
    let counted = gap_count(recommend.proxy_admin).await?;
    println!(
        "  recommend's sidecar saw an outbound call without trace context while one request was \
         in flight:\n  {counted}\n  and linked the new trace to that request's SERVER span \
         (a link, not a parent: it is an inference):\n"
    );
    let services = [checkout, recommend, inventory];
    if keep_running {
        // The spans are in the sink once exported (every 100 ms); wait for all five.
        for _ in 0..50 {
            if sink.spans().len() >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        print!("{}", render_traces(&sink.spans()));
        println!("running; each proxy's recent traces, as waterfalls, in a browser:");
        for (name, s) in ["checkout", "recommend", "inventory"].iter().zip(&services) {
            println!("  {name:<10} http://{}/debug/traces", s.proxy_admin);
        }
        println!(
            "  send more: curl http://{}/checkout\npress Ctrl-C to stop",
            services[0].proxy_inbound
        );
        tokio::signal::ctrl_c().await?;
    }
    for s in services {
        s.stop().await;
    }
    if !keep_running {
        print!("{}", render_traces(&sink.spans()));
    }
    Ok(())
}

/// The propagation-gap counter line of a proxy's `/metrics`.
async fn gap_count(admin: SocketAddr) -> anyhow::Result<String> {
    let (_, body) = fetch(admin, "/metrics", &[]).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    Ok(text
        .lines()
        .find(|l| l.starts_with("tracemesh_propagation_gaps_total{"))
        .unwrap_or("tracemesh_propagation_gaps_total: none counted")
        .to_owned())
}

/// The three services; `head_ratio` is their head sampling (`None`: always on).
async fn shop(
    sink: &SpanSink,
    head_ratio: Option<f64>,
    payment_behaviour: Behaviour,
) -> anyhow::Result<(Service, Service, Service)> {
    let inventory = Service::start(
        "inventory",
        Duration::from_millis(2),
        vec![],
        sink,
        head_ratio,
        Behaviour::Steady,
    )
    .await?;
    let payment = Service::start(
        "payment",
        Duration::from_millis(3),
        vec![],
        sink,
        head_ratio,
        payment_behaviour,
    )
    .await?;
    let checkout = Service::start(
        "checkout",
        Duration::from_millis(1),
        vec![
            ("/inventory", inventory.proxy_inbound),
            ("/payment", payment.proxy_inbound),
        ],
        sink,
        head_ratio,
        Behaviour::Steady,
    )
    .await?;
    Ok((checkout, inventory, payment))
}

/// Deferred sampling: `requests` checkouts at 1% head sampling, payment failing every tenth and
/// slow once, plus one request whose caller sampled it; prints the traces that were kept.
async fn deferred(requests: usize) -> anyhow::Result<()> {
    let sink = SpanSink::default();
    let (checkout, inventory, payment) = shop(
        &sink,
        Some(0.01),
        Behaviour::Flaky {
            fail_every: 10,
            slow_at: 4,
            slow: Duration::from_millis(300),
            seen: Arc::default(),
        },
    )
    .await?;
    println!(
        "deferred sampling: {requests} more checkouts at 1% head sampling; payment fails every \
         10th call and is slow once (300 ms, over the 200 ms threshold)\n"
    );
    let mut failed = 0;
    for _ in 0..requests {
        if get(checkout.proxy_inbound, "/checkout", &[]).await? != StatusCode::OK {
            failed += 1;
        }
    }
    // One whose caller sampled it: head-sampled, whatever the ratio.
    let caller = format!(
        "00-{}-{}-01",
        crate::context::TraceId::random(),
        crate::context::SpanId::random()
    );
    get(
        checkout.proxy_inbound,
        "/checkout",
        &[("traceparent", &caller)],
    )
    .await?;
    for s in [checkout, inventory, payment] {
        s.stop().await;
    }
    let spans = sink.spans();
    let traces: std::collections::BTreeSet<String> = spans
        .iter()
        .map(|s| s.1.span_context.trace_id().to_string())
        .collect();
    println!(
        "  sent {} requests, {failed} answered 502; kept {} traces ({} spans), each span marked \
         with why it was kept:\n",
        requests + 1,
        traces.len(),
        spans.len()
    );
    print!("{}", render_traces(&spans));
    Ok(())
}

/// What a demo app does besides its calls.
#[derive(Clone)]
enum Behaviour {
    Steady,
    /// Calls its dependencies without passing the trace headers on.
    DropsContext,
    /// Answers 500 on every `fail_every`-th request and sleeps `slow` on request `slow_at`.
    Flaky {
        fail_every: usize,
        slow_at: usize,
        slow: Duration,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    },
}

/// One "pod": an app and its proxy.
struct Service {
    app: SocketAddr,
    proxy_inbound: SocketAddr,
    proxy_outbound: SocketAddr,
    proxy_admin: SocketAddr,
    proxy: proxy::Running,
}

impl Service {
    async fn start(
        name: &'static str,
        work: Duration,
        calls: Vec<(&'static str, SocketAddr)>,
        sink: &SpanSink,
        head_ratio: Option<f64>,
        behaviour: Behaviour,
    ) -> anyhow::Result<Self> {
        let app_listener = TcpListener::bind("127.0.0.1:0").await?;
        let app = app_listener.local_addr()?;
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let config = ProxyConfig {
            inbound_listen: loopback,
            outbound_listen: loopback,
            admin_listen: loopback,
            app_addr: Some(app),
            propagators: Propagators::default(),
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(2),
            policy: Default::default(),
            trusted_cidrs: Vec::new(),
            retention: crate::telemetry::retention::RetentionConfig {
                slow_threshold: Some(Duration::from_millis(200)),
                ..Default::default()
            },
            observe: Default::default(),
            red_metrics: true,
            opaque_ports: Vec::new(),
            // Nothing routes to the demo's proxies through a load balancer: stop at once.
            drain_delay: Duration::ZERO,
            workers: 1,
        };
        let mut telemetry = TelemetryConfig::from_lookup(|k| match k {
            "OTEL_SERVICE_NAME" => Some(name.to_owned()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("100".to_owned()),
            "OTEL_TRACES_SAMPLER" if head_ratio.is_some() => {
                Some("parentbased_traceidratio".to_owned())
            }
            "OTEL_TRACES_SAMPLER_ARG" => head_ratio.map(|r| r.to_string()),
            _ => None,
        })?;
        telemetry.export_timeout = Duration::from_secs(2);
        let proxy = proxy::start(config, &telemetry, Some(Exporter::Sink(sink.clone())))
            .await
            .with_context(|| format!("starting {name}'s proxy"))?;
        let outbound = proxy.bound.outbound;
        let calls = Arc::new(calls);
        tokio::spawn(serve_app(app_listener, work, calls, outbound, behaviour));
        Ok(Service {
            app,
            proxy_inbound: proxy.bound.inbound,
            proxy_outbound: outbound,
            proxy_admin: proxy.bound.admin,
            proxy,
        })
    }

    async fn stop(self) {
        self.proxy.shutdown_token().cancel();
        self.proxy.wait().await;
    }
}

async fn serve_app(
    listener: TcpListener,
    work: Duration,
    calls: Arc<Vec<(&'static str, SocketAddr)>>,
    outbound: SocketAddr,
    behaviour: Behaviour,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let calls = calls.clone();
        let behaviour = behaviour.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let calls = calls.clone();
                let behaviour = behaviour.clone();
                async move {
                    tokio::time::sleep(work).await;
                    let mut status = StatusCode::OK;
                    if let Behaviour::Flaky {
                        fail_every,
                        slow_at,
                        slow,
                        seen,
                    } = &behaviour
                    {
                        let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n == *slow_at {
                            tokio::time::sleep(*slow).await;
                        }
                        if n % fail_every == fail_every - 1 {
                            status = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                    }
                    for (path, next) in calls.iter() {
                        let url = format!("http://{next}{path}");
                        let forwarded = match behaviour {
                            Behaviour::DropsContext => Vec::new(),
                            _ => forwarded_headers(req.headers()),
                        };
                        match call_via_proxy(outbound, &url, &forwarded).await {
                            Ok(s) if s.is_success() => {}
                            _ => status = StatusCode::BAD_GATEWAY,
                        }
                    }
                    let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                    *rsp.status_mut() = status;
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn forwarded_headers(h: &HeaderMap) -> Vec<(HeaderName, http::HeaderValue)> {
    FORWARDED
        .iter()
        .filter_map(|n| h.get(*n).map(|v| (HeaderName::from_static(n), v.clone())))
        .collect()
}

/// An HTTP/1.1 request in absolute form to `proxy`, as an app with `http_proxy` set sends it.
async fn call_via_proxy(
    proxy: SocketAddr,
    url: &str,
    headers: &[(HeaderName, http::HeaderValue)],
) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(proxy).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let uri: http::Uri = url.parse()?;
    let mut req = Request::get(uri.clone()).body(Empty::<Bytes>::new())?;
    if let Some(a) = uri.authority() {
        req.headers_mut()
            .insert(header::HOST, http::HeaderValue::from_str(a.as_str())?);
    }
    for (n, v) in headers {
        req.headers_mut().insert(n.clone(), v.clone());
    }
    let rsp = send.send_request(req).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    Ok(status)
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<StatusCode> {
    Ok(fetch(addr, path, headers).await?.0)
}

/// `GET path` over a new HTTP/1.1 connection to `addr`: the status and the whole body.
async fn fetch(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path)
        .header(header::HOST, "checkout.demo")
        .header(header::USER_AGENT, "tracemesh-demo")
        .body(Empty::<Bytes>::new())?;
    for (n, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(n.as_bytes())?,
            http::HeaderValue::from_str(v)?,
        );
    }
    let rsp = send.send_request(req).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
