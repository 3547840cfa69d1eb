//! gRPC through the proxy, with tonic on both ends: unary and every streaming shape pass through
//! byte for byte and in order, `grpc-status`/`grpc-message` reach the client exactly as the server
//! sent them (trailers and trailers-only), and each call becomes one span named
//! `package.Service/Method` with the RPC attributes and the status the OpenTelemetry RPC semantic
//! conventions give it (https://opentelemetry.io/docs/specs/semconv/rpc/grpc/). Trace context
//! travels as gRPC metadata, which is HTTP/2 headers.
//!
//! Not here: plain HTTP/2 bodies and framing edges (`bodies.rs`), context header formats
//! (`context` unit tests).

mod support;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{uri::PathAndQuery, HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use prost::Message as _;
use support::{
    body,
    client::{self, Reply},
    grpc::{
        channel, check, health_client, watch, BytesCodec, EchoClient, GrpcServer,
        HealthCheckRequest, ServingStatus, ECHO_BIDI, ECHO_SERVER_STREAM, KNOWN_SERVICE,
    },
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus},
    process::Proxy,
    serve::{self, Served},
    DEADLINE,
};
use tonic::Code;

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A proxy named `name` whose inbound listener forwards to `app`.
async fn inbound_proxy(otlp: &OtlpReceiver, name: &str, app: SocketAddr) -> Proxy {
    Proxy::exporting_to(otlp, name)
        .sample_health_checks()
        .arg("--app-addr")
        .arg(app.to_string())
        .start()
        .await
}

/// The only span received, after waiting for it.
async fn one_span(otlp: &OtlpReceiver) -> ReceivedSpan {
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    spans.into_iter().next().expect("one span")
}

fn span_named<'a>(spans: &'a [ReceivedSpan], kind: SpanKind, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == kind && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span {name:?}:\n{}",
        tree(spans)
    );
    found[0]
}

/// The RPC attributes every gRPC span carries, per the semantic conventions.
fn assert_rpc_span(span: &ReceivedSpan, service: &str, method: &str, code: i64) {
    assert_eq!(span.name, format!("{service}/{method}"), "{span:#?}");
    assert_eq!(span.attr_str("rpc.system"), Some("grpc"), "{span:#?}");
    assert_eq!(span.attr_str("rpc.service"), Some(service), "{span:#?}");
    assert_eq!(span.attr_str("rpc.method"), Some(method), "{span:#?}");
    assert_eq!(
        span.attr_int("rpc.grpc.status_code"),
        Some(code),
        "{span:#?}"
    );
    assert_eq!(
        span.attr_str("http.request.method"),
        Some("POST"),
        "{span:#?}"
    );
    assert_eq!(
        span.attr_str("url.path"),
        Some(format!("/{service}/{method}").as_str()),
        "{span:#?}"
    );
    assert_eq!(
        span.attr_int("http.response.status_code"),
        Some(200),
        "{span:#?}"
    );
    assert_eq!(
        span.attr_str("network.protocol.version"),
        Some("2"),
        "{span:#?}"
    );
}

fn assert_unset(span: &ReceivedSpan) {
    assert_eq!(span.status_code, SpanStatus::Unset, "{span:#?}");
    assert_eq!(span.status_message, "", "{span:#?}");
    assert_eq!(span.attr("error.type"), None, "{span:#?}");
}

fn assert_error(span: &ReceivedSpan, code: i64) {
    assert_eq!(span.status_code, SpanStatus::Error, "{span:#?}");
    assert!(
        span.status_message
            .starts_with(&format!("grpc-status {code}")),
        "{span:#?}"
    );
    assert_eq!(
        span.attr_str("error.type"),
        Some(code.to_string().as_str()),
        "{span:#?}"
    );
}

/// A length-prefixed gRPC message (uncompressed), as it goes on the wire.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).expect("a test message fits a gRPC frame"));
    frame.put_slice(message);
    frame.freeze()
}

/// One gRPC call written by hand over a fresh h2c connection: headers, body and trailers come
/// back exactly as they were on the wire, with no gRPC library interpreting them.
async fn raw_grpc_call(addr: SocketAddr, path: &str, message: &[u8]) -> Reply {
    client::h2c_request(
        addr,
        Method::POST,
        path,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        body::full(grpc_frame(message)),
    )
    .await
}

/// Every response header except `date` (each server stamps its own), as comparable text.
fn headers_without_date(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name != http::header::DATE {
            out.entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
    }
    out
}

/// The same call answered directly and through the proxy: status, headers, body and trailers
/// must be identical.
fn assert_same_reply(direct: &Reply, proxied: &Reply) {
    assert_eq!(proxied.status, direct.status);
    // The one addition is the proxy's own response context on a kept span (`traceresponse`
    // and `server-timing: trace;desc=…`, checked in tests/retention.rs).
    let mut proxied_headers = headers_without_date(&proxied.headers);
    for added in ["traceresponse", "server-timing"] {
        if !direct.headers.contains_key(added) {
            proxied_headers.remove(added);
        }
    }
    assert_eq!(proxied_headers, headers_without_date(&direct.headers));
    assert_eq!(proxied.body, direct.body);
    assert_eq!(
        proxied.trailers.as_ref().map(headers_without_date),
        direct.trailers.as_ref().map(headers_without_date)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_is_a_server_span_named_for_the_rpc_method() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;

    let mut health = health_client(proxy.inbound()).await;
    let status = check(&mut health, KNOWN_SERVICE).await;
    assert_eq!(status.ok(), Some(ServingStatus::Serving));

    let span = one_span(&otlp).await;
    assert_eq!(span.kind, SpanKind::Server);
    assert!(span.is_root(), "{span:#?}");
    assert_rpc_span(&span, "grpc.health.v1.Health", "Check", 0);
    assert_unset(&span);
    assert!(
        span.attr_str("user_agent.original")
            .is_some_and(|ua| ua.starts_with("tonic/")),
        "{span:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_reaches_the_client_unchanged_and_is_not_a_server_fault() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;

    let mut health = health_client(proxy.inbound()).await;
    let status = check(&mut health, "no.such.Service")
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "service not registered", "{status:?}");

    let span = one_span(&otlp).await;
    assert_eq!(span.kind, SpanKind::Server);
    assert_rpc_span(&span, "grpc.health.v1.Health", "Check", 5);
    // NOT_FOUND is the caller's problem, not the server's: no ERROR on a SERVER span.
    assert_unset(&span);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_from_the_server_is_an_error_on_the_server_span() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;

    let mut echo = EchoClient::connect(proxy.inbound(), None).await;
    let status = echo
        .unary(b"fail:13", &[])
        .await
        .expect_err("fail:13 asks for INTERNAL");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "asked to fail", "{status:?}");

    let span = one_span(&otlp).await;
    assert_eq!(span.kind, SpanKind::Server);
    assert_rpc_span(&span, "tracemesh.test.Echo", "Unary", 13);
    assert_error(&span, 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_code_reaches_the_client_and_server_faults_alone_are_errors() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;
    let mut echo = EchoClient::connect(proxy.inbound(), None).await;

    // Each call carries its own trace ID, so its span can be told apart from the others.
    let trace_of = |code: i32| format!("{:032x}", 0x7e57_0000 + code);
    for code in 1..=16 {
        let traceparent = format!("00-{}-00000000000000aa-01", trace_of(code));
        let status = echo
            .unary(
                format!("fail:{code}").as_bytes(),
                &[("traceparent", &traceparent)],
            )
            .await
            .expect_err("fail:<code> ends the call with that code");
        assert_eq!(status.code(), Code::from_i32(code), "{status:?}");
        assert_eq!(status.message(), "asked to fail", "{status:?}");
    }

    let spans = otlp.wait_for_spans(16, DEADLINE).await;
    assert_eq!(spans.len(), 16, "{}", tree(&spans));
    for code in 1..=16 {
        let trace = trace_of(code);
        let span = spans
            .iter()
            .find(|s| s.trace_id == trace)
            .unwrap_or_else(|| panic!("no span for code {code}:\n{}", tree(&spans)));
        assert_rpc_span(span, "tracemesh.test.Echo", "Unary", i64::from(code));
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
        if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
            assert_error(span, i64::from(code));
        } else {
            assert_unset(span);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_and_message_pass_through_exactly_in_trailers_and_trailers_only() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;

    // Trailers-only: NOT_FOUND arrives in the response headers, with an empty body.
    let unknown = HealthCheckRequest {
        service: "no.such.Service".into(),
    }
    .encode_to_vec();
    let direct = raw_grpc_call(server.addr(), HEALTH_CHECK, &unknown).await;
    let proxied = raw_grpc_call(proxy.inbound(), HEALTH_CHECK, &unknown).await;
    assert_eq!(proxied.status, StatusCode::OK);
    assert_eq!(proxied.headers["content-type"], "application/grpc");
    assert_eq!(proxied.headers["grpc-status"], "5");
    assert_eq!(
        proxied.headers["grpc-message"],
        "service%20not%20registered"
    );
    assert_eq!(&proxied.body[..], b"");
    assert_same_reply(&direct, &proxied);

    // Real trailers: two messages, then INTERNAL after the body.
    let lines = b"one\ntwo\nfail:13";
    let direct = raw_grpc_call(server.addr(), ECHO_SERVER_STREAM, lines).await;
    let proxied = raw_grpc_call(proxy.inbound(), ECHO_SERVER_STREAM, lines).await;
    assert_eq!(proxied.status, StatusCode::OK);
    assert!(!proxied.headers.contains_key("grpc-status"), "{proxied:?}");
    let expected_body = [grpc_frame(b"one"), grpc_frame(b"two")].concat();
    assert_eq!(&proxied.body[..], &expected_body[..]);
    let trailers = proxied.trailers.as_ref().expect("trailers after the body");
    assert_eq!(trailers["grpc-status"], "13");
    assert_eq!(trailers["grpc-message"], "asked%20to%20fail");
    assert_same_reply(&direct, &proxied);

    // Only the two proxied calls are spans; their codes came from headers and trailers.
    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    let check = span_named(&spans, SpanKind::Server, "grpc.health.v1.Health/Check");
    assert_rpc_span(check, "grpc.health.v1.Health", "Check", 5);
    assert_unset(check);
    let stream = span_named(&spans, SpanKind::Server, "tracemesh.test.Echo/ServerStream");
    assert_rpc_span(stream, "tracemesh.test.Echo", "ServerStream", 13);
    assert_error(stream, 13);
}

/// Message `i` of a test stream: binary, of a size that varies from 1 byte to about 64 KiB.
fn message(i: usize) -> Bytes {
    let len = 1 + (i * 7919) % (64 * 1024);
    let offset = (i as u64) * 13;
    body::pattern_chunk(offset, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_client_and_bidi_streams_pass_through_byte_exact_and_in_order() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;
    let mut echo = EchoClient::connect(proxy.inbound(), None).await;

    // Server streaming: one reply per line, in order.
    let lines: Vec<String> = (0..50)
        .map(|i| format!("line {i} {}", "x".repeat(i * 31)))
        .collect();
    let replies = echo
        .server_stream(lines.join("\n").as_bytes(), &[])
        .await
        .expect("ServerStream succeeds");
    let replies: Vec<&[u8]> = replies.iter().map(|r| &r[..]).collect();
    let expected: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    assert_eq!(replies, expected);

    // Client streaming: every message, concatenated in order (about 1.6 MiB in all).
    let messages: Vec<Bytes> = (0..50).map(message).collect();
    let reply = echo
        .client_stream(messages.clone(), &[])
        .await
        .expect("ClientStream succeeds");
    assert_eq!(reply.len(), messages.iter().map(Bytes::len).sum::<usize>());
    assert!(reply == messages.concat(), "ClientStream reply differs");

    // Bidi: each message back, in order.
    let messages: Vec<Bytes> = (0..200).map(message).collect();
    let replies = echo
        .bidi(messages.clone(), &[])
        .await
        .expect("Bidi succeeds");
    assert_eq!(replies.len(), messages.len());
    for (i, (got, sent)) in replies.iter().zip(&messages).enumerate() {
        assert!(got == sent, "Bidi reply {i} differs from message {i}");
    }

    let spans = otlp.wait_for_spans(3, DEADLINE).await;
    assert_eq!(spans.len(), 3, "{}", tree(&spans));
    for method in ["ServerStream", "ClientStream", "Bidi"] {
        let span = span_named(
            &spans,
            SpanKind::Server,
            &format!("tracemesh.test.Echo/{method}"),
        );
        assert_rpc_span(span, "tracemesh.test.Echo", method, 0);
        assert_unset(span);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_span_lasts_until_the_stream_ends() {
    const MESSAGES: u32 = 5;
    const GAP: Duration = Duration::from_millis(80);
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;

    let mut grpc = tonic::client::Grpc::new(channel(proxy.inbound(), None).await);
    grpc.ready().await.expect("channel ready");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });

    // Ping-pong: each message is sent only after the previous one came back, GAP later, so the
    // stream lives at least (MESSAGES - 1) * GAP and the server cannot end it any earlier.
    let started = Instant::now();
    let mut replies = grpc
        .streaming(
            tonic::Request::new(outgoing),
            PathAndQuery::from_static(ECHO_BIDI),
            BytesCodec,
        )
        .await
        .expect("Bidi accepted")
        .into_inner();
    for i in 0..MESSAGES {
        if i > 0 {
            // Spacing the messages is the point of the test, not a wait for something.
            tokio::time::sleep(GAP).await;
        }
        let sent = Bytes::from(format!("ping {i}"));
        tx.send(sent.clone()).await.expect("request stream open");
        let got = tokio::time::timeout(DEADLINE, replies.message())
            .await
            .expect("reply within the deadline")
            .expect("stream healthy")
            .expect("a reply, not the end");
        assert_eq!(got, sent);
    }
    drop(tx);
    let end = tokio::time::timeout(DEADLINE, replies.message())
        .await
        .expect("stream ends within the deadline")
        .expect("stream ends with OK");
    assert_eq!(end, None);
    let lifetime = started.elapsed();

    let span = one_span(&otlp).await;
    assert_rpc_span(&span, "tracemesh.test.Echo", "Bidi", 0);
    assert_unset(&span);
    let floor = GAP * (MESSAGES - 1);
    assert!(
        span.duration() >= floor,
        "span {:?} ended before the stream could have ({floor:?})",
        span.duration()
    );
    assert!(
        span.duration() <= lifetime,
        "span {:?} is longer than the call the client saw ({lifetime:?})",
        span.duration()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_span_covers_the_server_stream_until_the_client_cancels() {
    const GAP: Duration = Duration::from_millis(100);
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;
    let mut health = health_client(proxy.inbound()).await;

    let started = Instant::now();
    let mut stream = watch(&mut health, KNOWN_SERVICE).await;
    assert_eq!(stream.next(DEADLINE).await, ServingStatus::Serving);
    tokio::time::sleep(GAP).await;
    server
        .set_status(KNOWN_SERVICE, tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(stream.next(DEADLINE).await, ServingStatus::NotServing);
    tokio::time::sleep(GAP).await;
    server
        .set_status(KNOWN_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    assert_eq!(stream.next(DEADLINE).await, ServingStatus::Serving);
    // A Watch never ends by itself: the client cancels it (RST_STREAM), and that ends the span.
    drop(stream);

    let span = one_span(&otlp).await;
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.name, "grpc.health.v1.Health/Watch");
    assert_eq!(span.attr_str("rpc.method"), Some("Watch"));
    assert!(
        span.duration() >= GAP * 2,
        "span {:?} ended before the stream's changes ({:?})",
        span.duration(),
        GAP * 2
    );
    assert!(
        span.duration() <= started.elapsed(),
        "span {:?} is longer than the test",
        span.duration()
    );
    // No trailers were ever sent: the span says it was cancelled rather than inventing a code.
    assert_eq!(span.attr("rpc.grpc.status_code"), None, "{span:#?}");
    assert_eq!(span.attr_str("error.type"), Some("cancelled"), "{span:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_routed_by_authority_is_the_parent_of_the_next_server_span() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let b = inbound_proxy(&otlp, "b", server.addr()).await;
    let a = Proxy::exporting_to(&otlp, "a")
        .sample_health_checks()
        .start()
        .await;

    // The channel dials A's outbound listener; `:authority` names B, which is where it goes.
    let authority = b.inbound().to_string();
    let mut echo = EchoClient::connect(a.outbound(), Some(&authority)).await;
    let reply = echo
        .unary(b"across two proxies", &[])
        .await
        .expect("Unary succeeds");
    assert_eq!(&reply[..], b"across two proxies");

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    let client_span = span_named(&spans, SpanKind::Client, "tracemesh.test.Echo/Unary");
    let server_span = span_named(&spans, SpanKind::Server, "tracemesh.test.Echo/Unary");
    assert_eq!(client_span.resource["service.name"], "a");
    assert_eq!(server_span.resource["service.name"], "b");
    assert!(client_span.is_root(), "{}", tree(&spans));
    assert_eq!(
        server_span.trace_id,
        client_span.trace_id,
        "{}",
        tree(&spans)
    );
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_id,
        "{}",
        tree(&spans)
    );
    for span in [client_span, server_span] {
        assert_rpc_span(span, "tracemesh.test.Echo", "Unary", 0);
        assert_unset(span);
    }
    assert_eq!(
        client_span.attr_str("url.full"),
        Some(format!("http://{authority}/tracemesh.test.Echo/Unary").as_str())
    );
    assert_eq!(client_span.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client_span.attr_int("server.port"),
        Some(i64::from(b.inbound().port()))
    );
    assert!(
        client_span.duration() >= server_span.duration(),
        "{}",
        tree(&spans)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ok_code_is_an_error_on_the_client_span_but_not_the_server_span() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let b = inbound_proxy(&otlp, "b", server.addr()).await;
    let a = Proxy::exporting_to(&otlp, "a")
        .sample_health_checks()
        .start()
        .await;

    let authority = b.inbound().to_string();
    let mut echo = EchoClient::connect(a.outbound(), Some(&authority)).await;
    let status = echo
        .unary(b"fail:5", &[])
        .await
        .expect_err("fail:5 asks for NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "asked to fail", "{status:?}");

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    let client_span = span_named(&spans, SpanKind::Client, "tracemesh.test.Echo/Unary");
    let server_span = span_named(&spans, SpanKind::Server, "tracemesh.test.Echo/Unary");
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_id,
        "{}",
        tree(&spans)
    );
    assert_rpc_span(client_span, "tracemesh.test.Echo", "Unary", 5);
    assert_rpc_span(server_span, "tracemesh.test.Echo", "Unary", 5);
    assert_error(client_span, 5);
    assert_unset(server_span);
}

/// A gRPC server with one method, a raw-bytes unary echo (any path), that records the request
/// headers (the metadata) it received: the harness's server does not show them.
struct RecordingGrpcServer {
    served: Served,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

// === impl RecordingGrpcServer ===

impl RecordingGrpcServer {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            record
                .lock()
                .expect("seen lock")
                .push(req.headers().clone());
            async move {
                let echo = tower::service_fn(|r: tonic::Request<Bytes>| async move {
                    Ok::<_, tonic::Status>(tonic::Response::new(r.into_inner()))
                });
                let mut grpc = tonic::server::Grpc::new(BytesCodec);
                Ok::<_, Infallible>(grpc.unary(echo, req).await)
            }
        });
        let served = serve::serve_http(serve::bind_loopback().await, service);
        Self { served, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().expect("seen lock").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_in_metadata_is_continued_and_rewritten_for_the_server() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = RecordingGrpcServer::start().await;
    let proxy = inbound_proxy(&otlp, "grpc-in", server.addr()).await;
    let mut echo = EchoClient::connect(proxy.inbound(), None).await;

    // W3C metadata.
    let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = echo
        .unary(
            b"w3c",
            &[
                (
                    "traceparent",
                    &format!("00-{w3c_trace}-00f067aa0ba902b7-01"),
                ),
                ("tracestate", "vendor=abc,other=1"),
            ],
        )
        .await
        .expect("Unary succeeds");
    assert_eq!(&reply[..], b"w3c");
    // B3 single-header metadata from a legacy client.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let reply = echo
        .unary(b"b3", &[("b3", &format!("{b3_trace}-e457b5a2e4d86bd1-1"))])
        .await
        .expect("Unary succeeds");
    assert_eq!(&reply[..], b"b3");

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    let by_trace = |trace: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == trace)
            .unwrap_or_else(|| panic!("no span in trace {trace}:\n{}", tree(&spans)))
    };
    let w3c_span = by_trace(w3c_trace);
    let b3_span = by_trace(b3_trace);
    assert_eq!(w3c_span.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(w3c_span.trace_state, "vendor=abc,other=1");
    assert_eq!(b3_span.parent_span_id, "e457b5a2e4d86bd1");
    for span in [w3c_span, b3_span] {
        assert_eq!(span.kind, SpanKind::Server);
        assert_rpc_span(span, "tracemesh.test.Echo", "Unary", 0);
    }

    // The server saw this proxy's span as the parent, in W3C form for both callers.
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[0]["traceparent"],
        format!("00-{w3c_trace}-{}-01", w3c_span.span_id).as_str()
    );
    assert_eq!(seen[0]["tracestate"], "vendor=abc,other=1");
    assert_eq!(
        seen[1]["traceparent"],
        format!("00-{b3_trace}-{}-01", b3_span.span_id).as_str()
    );
    assert!(
        !seen[1].contains_key("b3"),
        "b3 is not a configured propagator, so it is removed: {:?}",
        seen[1]
    );
    for headers in &seen {
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
    }
}
