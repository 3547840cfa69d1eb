//! SIGTERM, drained as a sidecar should: `/ready` answers 503 at once; for `--drain-delay` the
//! listeners keep accepting and serving new connections (Kubernetes is still removing the
//! endpoint); then they close, so new connects are refused; requests in flight (HTTP/1.1 and
//! HTTP/2) finish within `--shutdown-grace` with their whole bodies; their spans are flushed; and
//! the proxy exits 0. A request that outlives the grace period does not hold the exit.
//!
//! Every in-flight request is provably in flight before the signal: the app holds it at a gate
//! ([`Behaviour::Gated`]) after recording its arrival, the test waits for every arrival before
//! it sends SIGTERM, and opens the gate only once the proxy has logged that its listeners are
//! closed, so each held request is answered across the whole drain. No step waits by sleeping.

mod support;

use std::{
    collections::BTreeSet,
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    apps::{App, Behaviour, Gate, HELD_PREFIX},
    body::{self, BoxBody},
    client, eventually,
    otlp::{tree, OtlpReceiver, SpanKind},
    process::Proxy,
    DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What the proxy logs once both accept loops have returned and dropped their listeners.
const LISTENERS_CLOSED: &str = "listeners closed";

/// The default `--drain-delay` (Istio's), which the first test runs with.
const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);

/// Every answer's body: larger than HTTP/2's initial 64 KiB connection window once a few streams
/// answer at once, so the drain also has to carry WINDOW_UPDATEs after its GOAWAY.
fn answer_body() -> Bytes {
    body::pattern_chunk(0, 24 * 1024)
}

/// One drain: the traffic around it and the proxy's settings.
struct Drain {
    /// `--drain-delay`; `None` leaves the default.
    drain_delay: Option<&'static str>,
    /// What the delay is, to check the listeners stayed open that long.
    expect_delay: Duration,
    /// How long the app takes once a held request passes the gate.
    app_delay: Duration,
    h1: usize,
    h2_connections: usize,
    h2_streams: usize,
    /// Whether to open new HTTP/1.1 and h2c connections during the drain delay (they must be
    /// served). Only with a delay long enough to be sure the test gets its requests in.
    new_during_delay: bool,
}

/// What a request ended with: status and body, or why it failed.
type Outcome = Result<(StatusCode, Bytes), String>;

/// One h2c connection that several requests share as streams.
async fn h2c_connection(addr: SocketAddr) -> SendRequest<BoxBody> {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("h2c handshake with {addr}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A response read to its end, or what went wrong, for a report listing every failure.
async fn outcome(rsp: Result<http::Response<Incoming>, impl std::fmt::Display>) -> Outcome {
    let rsp = rsp.map_err(|e| format!("no response: {e}"))?;
    let status = rsp.status();
    let body = tokio::time::timeout(DEADLINE, rsp.into_body().collect())
        .await
        .map_err(|_| format!("{status}: body not complete within {DEADLINE:?}"))?
        .map_err(|e| format!("{status}: body failed: {e}"))?;
    Ok((status, body.to_bytes()))
}

async fn h1_get(addr: SocketAddr, path: &str) -> Outcome {
    let req = client::request(Method::GET, path, &addr.to_string(), &[], body::empty());
    outcome(client::try_send_http1(addr, req).await).await
}

async fn h2_get(sender: &mut SendRequest<BoxBody>, addr: SocketAddr, path: &str) -> Outcome {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(body::empty())
        .expect("valid request parts");
    outcome(sender.send_request(req).await).await
}

/// `GET /ready` on a fresh connection: its status, or `None` when the admin listener is gone.
async fn ready_status(admin: SocketAddr) -> Option<StatusCode> {
    let req = client::request(
        Method::GET,
        "/ready",
        &admin.to_string(),
        &[],
        body::empty(),
    );
    let rsp = client::try_send_http1(admin, req).await.ok()?;
    Some(rsp.status())
}

/// A connect and request after the listeners closed: `Ok(())` if the proxy refused it, or
/// accepted nothing and answered nothing (a connect racing the close can land in the backlog
/// and be reset, which tokio reports from `connect` itself), else what it got.
async fn refused_or_unanswered(addr: SocketAddr) -> Result<(), String> {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(format!("connect failed oddly: {e}")),
    };
    let req = format!("GET /late HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    if stream.write_all(req.as_bytes()).await.is_ok() {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => return Err(format!("neither answered nor closed in {DEADLINE:?}")),
            }
        }
    }
    if answer.is_empty() {
        Ok(())
    } else {
        Err(format!("answered {:?}", String::from_utf8_lossy(&answer)))
    }
}

/// Runs one drain (see the module docs) and asserts on everything it produced.
async fn drain(run: &str, d: &Drain) {
    let total = d.h1 + d.h2_connections * d.h2_streams;
    let body = answer_body();
    let otlp = OtlpReceiver::start_grpc().await;
    let gate = Gate::new();
    let app = App::start(Behaviour::Gated {
        gate: gate.clone(),
        delay: d.app_delay,
        body: body.clone(),
    })
    .await;
    let mut builder = Proxy::exporting_to(&otlp, "drain")
        .name(run)
        // No scheduled export during the test: the spans can only arrive through the flush
        // at shutdown.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--shutdown-grace")
        .arg("10s");
    if let Some(delay) = d.drain_delay {
        builder = builder.env("TRACEMESH_DRAIN_DELAY", delay);
    }
    let mut p = builder.start().await;
    let inbound = p.inbound();

    let mut in_flight = Vec::with_capacity(total);
    for i in 0..d.h1 {
        let path = format!("{HELD_PREFIX}h1/{i}");
        in_flight.push(tokio::spawn(async move {
            let outcome = h1_get(inbound, &path).await;
            (path, outcome)
        }));
    }
    for c in 0..d.h2_connections {
        let sender = h2c_connection(inbound).await;
        for s in 0..d.h2_streams {
            let path = format!("{HELD_PREFIX}h2/{c}/{s}");
            let mut sender = sender.clone();
            in_flight.push(tokio::spawn(async move {
                let outcome = h2_get(&mut sender, inbound, &path).await;
                (path, outcome)
            }));
        }
    }
    // Every request has reached the app and is held there.
    app.wait_for_requests(total, DEADLINE).await;
    assert_eq!(otlp.spans().len(), 0, "{run}: spans left before the flush");

    let terminated = Instant::now();
    p.terminate();

    // Not ready at once (the admin listener stays up until the spans are flushed).
    eventually(DEADLINE, "/ready to answer 503 after SIGTERM", || async {
        match ready_status(p.admin()).await {
            Some(StatusCode::SERVICE_UNAVAILABLE) => Some(()),
            Some(StatusCode::OK) => None,
            other => panic!("{run}: /ready answered {other:?} after SIGTERM, expected 503"),
        }
    })
    .await;

    // During the drain delay, new connections are still served, over either protocol.
    let mut served_during_delay = BTreeSet::new();
    if d.new_during_delay {
        let h1 = h1_get(inbound, "/during/h1").await;
        let h2 = h2_get(&mut h2c_connection(inbound).await, inbound, "/during/h2").await;
        let at = terminated.elapsed();
        for (path, outcome) in [("/during/h1", h1), ("/during/h2", h2)] {
            assert_eq!(
                outcome,
                Ok((StatusCode::OK, body.clone())),
                "{run}: {path}, a new connection {at:?} after SIGTERM, during the {:?} drain \
                 delay, was not served\n{}",
                d.expect_delay,
                p.logs().join("\n")
            );
            served_during_delay.insert(path.to_owned());
        }
        assert!(
            !p.logs_contain(LISTENERS_CLOSED),
            "{run}: listeners closed within {at:?}, before the {:?} drain delay was over",
            d.expect_delay
        );
    }

    // After the delay the listeners close: new connections are refused or go unanswered.
    p.wait_for_log(LISTENERS_CLOSED, d.expect_delay + DEADLINE)
        .await;
    let closed_after = terminated.elapsed();
    assert!(
        closed_after >= d.expect_delay,
        "{run}: listeners closed {closed_after:?} after SIGTERM, before the {:?} drain delay",
        d.expect_delay
    );
    let ended_early = in_flight.iter().filter(|t| t.is_finished()).count();
    assert_eq!(
        ended_early,
        0,
        "{run}: held requests ended before the gate opened\n{:#?}",
        p.logs()
    );
    for (listener, addr) in [("inbound", inbound), ("outbound", p.outbound())] {
        if let Err(got) = refused_or_unanswered(addr).await {
            panic!("{run}: a {listener} connection after the drain delay was served: {got}");
        }
    }

    // Every held request now completes, whatever its protocol, with its whole body.
    gate.open();
    let mut paths = BTreeSet::new();
    let mut failed = Vec::new();
    for t in in_flight {
        let (path, outcome) = t.await.expect("an in-flight request task panicked");
        match outcome {
            Ok((StatusCode::OK, got)) if got == body => {}
            Ok((status, got)) => failed.push(format!("{path}: {status}, {} bytes", got.len())),
            Err(e) => failed.push(format!("{path}: {e}")),
        }
        paths.insert(path);
    }
    let status = p.wait_exit(DEADLINE).await;
    assert!(
        failed.is_empty(),
        "{run}: {} of {total} in-flight requests failed:\n{}\n{:#?}",
        failed.len(),
        failed.join("\n"),
        p.logs()
    );
    let status =
        status.unwrap_or_else(|| panic!("{run}: still running {DEADLINE:?} after its requests"));
    assert_eq!(status.code(), Some(0), "{run}: {status}\n{:#?}", p.logs());
    assert_eq!(
        app.seen().len(),
        total + served_during_delay.len(),
        "{run}: a request got in after the listeners closed"
    );

    // The spans were flushed before the exit: they are all here, no waiting needed.
    paths.extend(served_during_delay);
    let spans = otlp.spans();
    assert_eq!(spans.len(), paths.len(), "{run}: {}", tree(&spans));
    let span_paths: BTreeSet<String> = spans
        .iter()
        .map(|s| {
            assert_eq!(s.kind, SpanKind::Server, "{run}: {s:?}");
            assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s:?}");
            s.attr_str("url.path").expect("url.path").to_owned()
        })
        .collect();
    assert_eq!(span_paths, paths, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_serves_during_the_drain_delay_then_refuses_and_finishes_in_flight_h1_h2() {
    drain(
        "drain",
        &Drain {
            drain_delay: None,
            expect_delay: DEFAULT_DRAIN_DELAY,
            app_delay: Duration::from_millis(50),
            h1: 25,
            h2_connections: 5,
            h2_streams: 5,
            new_during_delay: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_drains_in_a_row_lose_no_in_flight_request() {
    for i in 0..20 {
        drain(
            &format!("drain-{i}"),
            &Drain {
                drain_delay: Some("200ms"),
                expect_delay: Duration::from_millis(200),
                app_delay: Duration::from_millis(100),
                h1: 10,
                h2_connections: 3,
                h2_streams: 5,
                new_during_delay: false,
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_outliving_the_grace_period_does_not_hold_the_exit() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Hang).await;
    let mut p = Proxy::exporting_to(&otlp, "grace")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--drain-delay")
        .arg("0s")
        .arg("--shutdown-grace")
        .arg("300ms")
        .start()
        .await;
    let inbound = p.inbound();
    let hung = tokio::spawn(async move {
        let req = client::request(
            Method::GET,
            "/forever",
            &inbound.to_string(),
            &[],
            body::empty(),
        );
        client::try_send_http1(inbound, req)
            .await
            .map(|rsp| rsp.status())
    });
    app.wait_for_requests(1, DEADLINE).await;

    let terminated = Instant::now();
    p.terminate();
    let status = p
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("a hung request held the exit for 5 s\n{:#?}", p.logs()));
    let took = terminated.elapsed();
    assert_eq!(status.code(), Some(0), "{status}\n{:#?}", p.logs());
    assert!(
        took >= Duration::from_millis(300),
        "the grace period was not given: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM"
    );
    assert!(p.logs_contain("grace period over"), "{:#?}", p.logs());

    // The cut request ends without a response.
    let outcome = tokio::time::timeout(DEADLINE, hung)
        .await
        .expect("the hung request still open after the proxy exited")
        .expect("the request task panicked");
    assert!(
        outcome.is_err(),
        "the hung request was answered: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_proxy_with_no_drain_delay_exits_0_promptly_on_sigterm() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let mut p = Proxy::exporting_to(&otlp, "idle")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--drain-delay")
        .arg("0s")
        .start()
        .await;
    // One finished request; a keep-alive connection still open is idle and closed at once.
    let (status, _, _) = client::http1_get(p.inbound(), "/", &[]).await;
    assert_eq!(status, StatusCode::OK);

    let terminated = Instant::now();
    p.terminate();
    let status = p
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("idle proxy still running 5 s after SIGTERM"));
    assert_eq!(status.code(), Some(0), "{status}");
    // The default grace period is 25 s; nothing is in flight, so none of it is used.
    let took = terminated.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after SIGTERM"
    );
    // The span of the request made before SIGTERM was exported (flushed at the latest).
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
}
