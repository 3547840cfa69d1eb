//! Failures the proxy answers for itself: an upstream that refuses (502) or does not answer in
//! time (504), each with an ERROR span that says why; gRPC callers get a `grpc-status`; and a
//! collector that is down or stalled never slows or fails a request, while the lost spans are
//! counted on `/metrics`.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use support::{
    apps::{App, Behaviour},
    body, client,
    grpc::{self, HealthCheckRequest},
    otlp::{tree, Mode, OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus},
    process::{reserve_port, Proxy},
    DEADLINE,
};

use support::process::metric_value as metric;

/// The only span received, after waiting for it.
async fn one_span(otlp: &OtlpReceiver) -> ReceivedSpan {
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    spans.into_iter().next().expect("one span")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_app_gets_502_and_an_error_server_span_naming_the_address() {
    let otlp = OtlpReceiver::start_grpc().await;
    // Free and never listened on: connecting is refused.
    let app = reserve_port();
    let p = Proxy::exporting_to(&otlp, "refused-in")
        .arg("--app-addr")
        .arg(app.to_string())
        .start()
        .await;

    let (status, headers, body) = client::http1_get(p.inbound(), "/orders/7", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(&body[..], b"tracemesh: upstream connection refused\n");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(!headers.contains_key("grpc-status"), "{headers:?}");

    let s = one_span(&otlp).await;
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.status_code, SpanStatus::Error, "{s:?}");
    assert_eq!(s.status_message, format!("connection to {app} refused"));
    assert_eq!(s.attr_str("error.type"), Some("connection_refused"));
    assert_eq!(s.attr_int("http.response.status_code"), Some(502));
    assert_eq!(s.attr_str("url.path"), Some("/orders/7"));
    assert!(s.is_root(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destination_gets_502_and_an_error_client_span_naming_the_address() {
    let otlp = OtlpReceiver::start_grpc().await;
    let closed = reserve_port();
    let p = Proxy::exporting_to(&otlp, "refused-out").start().await;

    let url = format!("http://{closed}/pay");
    let (status, _, body) = client::http1_proxy_get(p.outbound(), &url, &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(&body[..], b"tracemesh: upstream connection refused\n");

    let s = one_span(&otlp).await;
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(s.status_code, SpanStatus::Error, "{s:?}");
    assert_eq!(s.status_message, format!("connection to {closed} refused"));
    assert_eq!(s.attr_str("error.type"), Some("connection_refused"));
    assert_eq!(s.attr_int("http.response.status_code"), Some(502));
    assert_eq!(s.attr_str("url.full"), Some(url.as_str()));
    assert_eq!(s.attr_int("server.port"), Some(i64::from(closed.port())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_app_gets_504_after_the_response_timeout_and_an_error_span() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Hang).await;
    let p = Proxy::exporting_to(&otlp, "timeout")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--response-timeout")
        .arg("200ms")
        .start()
        .await;

    let started = Instant::now();
    let (status, _, body) = client::http1_get(p.inbound(), "/slow", &[]).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(&body[..], b"tracemesh: upstream response timed out\n");
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // The request did reach the app: this is a response timeout, not a connect failure.
    assert_eq!(app.seen_one().uri.path(), "/slow");

    let s = one_span(&otlp).await;
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.status_code, SpanStatus::Error, "{s:?}");
    assert_eq!(
        s.status_message,
        format!(
            "no response headers from {} within 200ms of the request's end",
            app.addr()
        )
    );
    assert_eq!(s.attr_str("error.type"), Some("timeout"));
    assert_eq!(s.attr_int("http.response.status_code"), Some(504));
    assert!(s.duration() >= Duration::from_millis(200), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_to_a_refused_app_gets_grpc_status_unavailable() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = reserve_port();
    let p = Proxy::exporting_to(&otlp, "grpc-refused")
        .sample_health_checks()
        .arg("--app-addr")
        .arg(app.to_string())
        .start()
        .await;

    // The raw exchange: a gRPC-shaped h2c request gets the status in its headers.
    let empty_message = vec![0u8; 5]; // uncompressed, length 0: an empty HealthCheckRequest
    let reply = client::h2c_request(
        p.inbound(),
        Method::POST,
        "/grpc.health.v1.Health/Check",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        body::full(empty_message),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.headers["grpc-status"], "14", "{:?}", reply.headers);
    assert_eq!(reply.headers["grpc-message"], "connection_refused");

    // What a real gRPC client makes of it.
    let mut health = grpc::health_client(p.inbound()).await;
    let err = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("the app is down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    for s in &spans {
        assert_eq!(s.name, "grpc.health.v1.Health/Check");
        assert_eq!(s.attr_str("rpc.system"), Some("grpc"));
        assert_eq!(s.attr_int("rpc.grpc.status_code"), Some(14));
        assert_eq!(s.attr_str("error.type"), Some("connection_refused"));
        assert_eq!(s.status_code, SpanStatus::Error, "{s:?}");
        assert_eq!(s.status_message, format!("connection to {app} refused"));
    }
}

/// A listener that never accepts, with its accept queue already full: Linux drops further SYNs,
/// so a connect to it hangs (until the connector gives up). The streams keep the queue full.
async fn unresponsive_listener() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("binding 127.0.0.1:0");
    let listener = socket.listen(0).expect("listening");
    let addr = listener.local_addr().expect("a bound address");
    let mut queued = Vec::new();
    for _ in 0..16 {
        let attempt = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        );
        match attempt.await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connecting to {addr}: {e}"),
            // This SYN was dropped: the queue is full.
            Err(_) => return (listener, queued),
        }
    }
    panic!(
        "{addr}'s accept queue took {} connections and is not full",
        queued.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_app_gets_504_after_the_connect_timeout_and_an_error_span() {
    let otlp = OtlpReceiver::start_grpc().await;
    let (app, _queued) = unresponsive_listener().await;
    let app = app.local_addr().expect("a bound address");
    let p = Proxy::exporting_to(&otlp, "connect-timeout")
        .arg("--app-addr")
        .arg(app.to_string())
        .arg("--connect-timeout")
        .arg("200ms")
        .start()
        .await;

    let started = Instant::now();
    let (status, _, body) = client::http1_get(p.inbound(), "/", &[]).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(&body[..], b"tracemesh: upstream connect timed out\n");
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");

    let s = one_span(&otlp).await;
    assert_eq!(s.status_code, SpanStatus::Error, "{s:?}");
    assert_eq!(
        s.status_message,
        format!("no connection to {app} within 200ms")
    );
    assert_eq!(s.attr_str("error.type"), Some("connect_timeout"));
    assert_eq!(s.attr_int("http.response.status_code"), Some(504));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_to_a_hung_app_gets_grpc_status_deadline_exceeded() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Hang).await;
    let p = Proxy::exporting_to(&otlp, "grpc-timeout")
        .sample_health_checks()
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--response-timeout")
        .arg("200ms")
        .start()
        .await;

    let reply = client::h2c_request(
        p.inbound(),
        Method::POST,
        "/tracemesh.test.Echo/Unary",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        body::full(vec![0u8; 5]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.headers["grpc-status"], "4", "{:?}", reply.headers);
    assert_eq!(reply.headers["grpc-message"], "timeout");

    let s = one_span(&otlp).await;
    assert_eq!(s.name, "tracemesh.test.Echo/Unary");
    assert_eq!(s.attr_int("rpc.grpc.status_code"), Some(4));
    assert_eq!(s.attr_str("error.type"), Some("timeout"));
    assert_eq!(s.status_code, SpanStatus::Error, "{s:?}");
}

/// Sends `total` requests from `workers` concurrent clients (one connection each time) and
/// returns the slowest; every request must be answered 200 `ok`.
async fn load(inbound: SocketAddr, workers: usize, total: usize) -> Duration {
    let per_worker = total / workers;
    let tasks = (0..workers).map(|w| {
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for i in 0..per_worker {
                let path = format!("/load/{w}/{i}");
                let started = Instant::now();
                let (status, _, body) = client::http1_get(inbound, &path, &[]).await;
                slowest = slowest.max(started.elapsed());
                assert_eq!(status, StatusCode::OK, "{path}");
                assert_eq!(&body[..], b"ok", "{path}");
            }
            slowest
        })
    });
    let mut slowest = Duration::ZERO;
    for t in futures_util::future::join_all(tasks).await {
        slowest = slowest.max(t.expect("a load worker panicked"));
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_collector_never_slows_requests_and_every_lost_span_is_counted() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let builder = Proxy::exporting_to(&otlp, "collector-refused")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "8")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
        .arg("--app-addr")
        .arg(app.addr().to_string());
    // The collector is gone before the proxy starts: every export is refused.
    drop(otlp);
    let p = builder.start().await;

    let slowest = load(p.inbound(), 8, 200).await;
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert_eq!(app.seen().len(), 200);

    p.wait_for_series("tracemesh_span_export_errors_total", |v| v > 0.0)
        .await;
    // Each of the 200 spans is lost, either at the full queue or in a failed export, and each
    // is counted exactly once.
    p.wait_for_series("tracemesh_spans_dropped_total", |v| v == 200.0)
        .await;
    let text = p.metrics().await;
    assert_eq!(metric(&text, "tracemesh_spans_exported_total"), Some(0.0));
    assert_eq!(
        metric(&text, "tracemesh_span_export_queue_depth"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_collector_never_slows_requests_drops_are_counted_and_export_resumes() {
    let otlp = OtlpReceiver::start_grpc().await;
    otlp.set_mode(Mode::Stall);
    let app = App::start(Behaviour::status(200, "ok")).await;
    // An export timeout far above the latency bound below: a request that waited for export
    // (or for room in the queue) would show.
    let p = Proxy::exporting_to(&otlp, "collector-stalled")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "8")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "3000")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    let slowest = load(p.inbound(), 8, 200).await;
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert_eq!(app.seen().len(), 200);

    // At most one batch is stalled in export and 8 spans wait in the queue; the rest are dropped.
    let dropped = p
        .wait_for_series("tracemesh_spans_dropped_total", |v| v > 0.0)
        .await;
    assert!(dropped >= 200.0 - 16.0, "only {dropped} spans dropped");
    assert!(otlp.requests() >= 1, "no export reached the collector");
    // The stalled call times out after 3 s and is counted as an export error.
    p.wait_for_series("tracemesh_span_export_errors_total", |v| v > 0.0)
        .await;
    assert_eq!(
        metric(&p.metrics().await, "tracemesh_spans_exported_total"),
        Some(0.0)
    );

    // The collector recovers: new spans get through again.
    otlp.set_mode(Mode::Ok);
    let (status, _, _) = client::http1_get(p.inbound(), "/after-recovery", &[]).await;
    assert_eq!(status, StatusCode::OK);
    otlp.wait_until(DEADLINE, "the span of /after-recovery", |spans| {
        spans
            .iter()
            .any(|s| s.attr_str("url.path") == Some("/after-recovery"))
    })
    .await;
    p.wait_for_series("tracemesh_spans_exported_total", |v| v >= 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_gives_up_before_the_response_is_recorded_as_cancelled() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Hang).await;
    let p = Proxy::exporting_to(&otlp, "cancel")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    // The client sends a request, waits until the app has it, then hangs up.
    let mut conn = tokio::net::TcpStream::connect(p.inbound()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    app.wait_for_requests(1, DEADLINE).await;
    drop(conn);

    let span = one_span(&otlp).await;
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.attr_str("error.type"), Some("cancelled"));
    assert_eq!(span.attr_int("http.response.status_code"), None);
    // Not the server's fault: the span says why but is not an error.
    assert_eq!(span.status_code, SpanStatus::Unset, "{span:?}");
    let series = "tracemesh_requests_total{direction=\"inbound\",method=\"GET\",status_code=\"0\",route=\"/slow\",error_type=\"cancelled\"}";
    assert_eq!(p.wait_for_series(series, |v| v >= 1.0).await, 1.0);
}
