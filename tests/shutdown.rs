//! SIGTERM with `--drain-delay 0s`: the proxy reports not-ready, stops accepting, lets in-flight requests (HTTP/1.1 and
//! HTTP/2) finish within `--shutdown-grace`, flushes their spans, and exits 0; a request that
//! outlives the grace period does not hold the exit.

mod support;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    apps::{App, Behaviour},
    body::{self, BoxBody},
    client::{self, Reply},
    otlp::{tree, OtlpReceiver, SpanKind},
    process::Proxy,
    DEADLINE, POLL,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long the app takes to answer each in-flight request: the drain window the test observes.
const APP_DELAY: Duration = Duration::from_millis(300);

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

/// What a client that connects to `addr` and sends a request gets: `Err` when the connection
/// is refused, else every byte the proxy answered before closing (or resetting) it.
async fn fresh_request(addr: SocketAddr) -> Result<Vec<u8>, std::io::Error> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET /late HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    if stream.write_all(req.as_bytes()).await.is_ok() {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!("{addr} neither answered nor closed within {DEADLINE:?}"),
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_h1_and_h2_requests_then_flushes_spans_and_exits_0() {
    const H1: usize = 25;
    const H2_CONNECTIONS: usize = 5;
    const H2_STREAMS: usize = 5;
    const TOTAL: usize = H1 + H2_CONNECTIONS * H2_STREAMS;
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Delay(APP_DELAY)).await;
    let mut p = Proxy::exporting_to(&otlp, "drain")
        // No scheduled export during the test: the spans can only arrive through the flush
        // at shutdown.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--drain-delay")
        .arg("0s")
        .arg("--shutdown-grace")
        .arg("5s")
        .start()
        .await;
    let inbound = p.inbound();

    let mut in_flight = Vec::with_capacity(TOTAL);
    for i in 0..H1 {
        let path = format!("/h1/{i}");
        in_flight.push(tokio::spawn(async move {
            let reply =
                client::http1_request(inbound, Method::GET, &path, &[], body::empty()).await;
            (path, reply)
        }));
    }
    for c in 0..H2_CONNECTIONS {
        let sender = h2c_connection(inbound).await;
        for s in 0..H2_STREAMS {
            let path = format!("/h2/{c}/{s}");
            let mut sender = sender.clone();
            in_flight.push(tokio::spawn(async move {
                let req = Request::get(format!("http://{inbound}{path}"))
                    .body(body::empty())
                    .expect("valid request parts");
                let rsp = sender
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("h2c {path} failed: {e}"));
                (path, client::read_reply(rsp).await)
            }));
        }
    }
    // Every request has reached the app and is waiting there.
    app.wait_for_requests(TOTAL, DEADLINE).await;
    assert_eq!(otlp.spans().len(), 0, "spans left before the flush");

    let terminated = Instant::now();
    p.terminate();

    // Not ready while draining (the admin listener stays up until the spans are flushed).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match ready_status(p.admin()).await {
            Some(StatusCode::SERVICE_UNAVAILABLE) => break,
            Some(StatusCode::OK) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            other => panic!(
                "/ready answered {other:?} {:?} after SIGTERM, expected 503 during the drain",
                terminated.elapsed()
            ),
        }
    }
    // New connections get no service: refused (the listener is closed), or closed unanswered.
    match fresh_request(inbound).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(answer) => assert!(
            answer.is_empty(),
            "a connection made during the drain was answered: {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    assert!(
        in_flight.iter().any(|t| !t.is_finished()),
        "the drain was over before /ready and the listener were checked; the test saw nothing"
    );

    // Every in-flight request completes, whatever its protocol.
    let mut paths = BTreeSet::new();
    for t in in_flight {
        let (path, reply): (String, Reply) = t.await.expect("an in-flight request panicked");
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        assert_eq!(reply.body, Bytes::new(), "{path}");
        paths.insert(path);
    }
    assert_eq!(paths.len(), TOTAL);

    let status = p
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("still running 5 s (the grace period) after SIGTERM"));
    let took = terminated.elapsed();
    assert_eq!(status.code(), Some(0), "{status}\n{:#?}", p.logs());
    assert!(took >= APP_DELAY / 2, "exited {took:?} after SIGTERM");
    assert_eq!(app.seen().len(), TOTAL, "a request got in after SIGTERM");

    // The spans were flushed before the exit: they are all here, no waiting needed.
    let spans = otlp.spans();
    assert_eq!(spans.len(), TOTAL, "{}", tree(&spans));
    let span_paths: BTreeSet<String> = spans
        .iter()
        .map(|s| {
            assert_eq!(s.kind, SpanKind::Server, "{s:?}");
            assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s:?}");
            assert!(s.duration() >= APP_DELAY, "{s:?}");
            s.attr_str("url.path").expect("url.path").to_owned()
        })
        .collect();
    assert_eq!(span_paths, paths);
    let h2 = spans
        .iter()
        .filter(|s| s.attr_str("network.protocol.version") == Some("2"))
        .count();
    assert_eq!(h2, H2_CONNECTIONS * H2_STREAMS, "{}", tree(&spans));
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
async fn idle_proxy_exits_0_promptly_on_sigterm() {
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
