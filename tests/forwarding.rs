//! Requests reach the upstream as the client sent them, and timeouts mean what they say:
//! HTTP/1 `Host` and HTTP/2 `:authority` are preserved inbound and outbound; a client's
//! `Connection` header cannot strip the context the proxy injects; `--response-timeout` counts
//! from the end of the request body (a slow upload and a long client stream both succeed);
//! `--idle-timeout`, not the header-read timeout, closes an idle keep-alive connection; and an
//! upgraded connection holds its place in `tracemesh_open_connections` until it closes. Every
//! response is dated (RFC 9110 §6.6.1): the app's `Date` passes unchanged, and one the app did
//! not date, or the proxy wrote itself, gets the proxy's.

mod support;

use std::{
    convert::Infallible,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    apps::{App, Behaviour},
    body::{digest_line, fnv1a64, BoxBody},
    client,
    grpc::{EchoClient, GrpcServer},
    otlp::{OtlpReceiver, SpanKind},
    process::{reserve_port, Proxy, ProxyBuilder},
    serve, DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn untraced(name: &str) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_host_reaches_the_app_inbound_and_the_upstream_outbound_as_sent() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("host")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    // Inbound: a virtual host the app serves, not the address the proxy dialled.
    let (status, _, _) =
        client::http1_get(p.inbound(), "/in", &[("host", "orders.shop.svc:8080")]).await;
    assert_eq!(status, StatusCode::OK);
    // Outbound, origin-form: the destination comes from Host, which travels on unchanged.
    let host = format!("localhost:{}", app.addr().port());
    let (status, _, _) = client::http1_get(p.outbound(), "/out", &[("host", &host)]).await;
    assert_eq!(status, StatusCode::OK);
    // Outbound, absolute-form: RFC 9112 §3.2.2, the URI's authority replaces Host.
    let url = format!("http://localhost:{}/abs", app.addr().port());
    let (status, _, _) = client::http1_proxy_get(p.outbound(), &url, &[]).await;
    assert_eq!(status, StatusCode::OK);

    let seen = app.wait_for_requests(3, DEADLINE).await;
    let hosts: Vec<_> = seen
        .iter()
        .map(|r| (r.uri.to_string(), r.headers[header::HOST].clone()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("/in".to_owned(), "orders.shop.svc:8080".parse().unwrap()),
            ("/out".to_owned(), host.parse().unwrap()),
            ("/abs".to_owned(), host.parse().unwrap()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_reaches_the_app_inbound_and_the_upstream_outbound_as_sent() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("authority")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    let (status, _, _) = client::h2c_get(p.inbound(), "http://orders.shop.svc/in", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let authority = format!("localhost:{}", app.addr().port());
    let (status, _, _) =
        client::h2c_get(p.outbound(), &format!("http://{authority}/out"), &[]).await;
    assert_eq!(status, StatusCode::OK);

    let seen = app.wait_for_requests(2, DEADLINE).await;
    let got: Vec<_> = seen
        .iter()
        .map(|r| {
            assert_eq!(r.version, http::Version::HTTP_2, "{r:?}");
            r.uri.authority().map(|a| a.to_string())
        })
        .collect();
    assert_eq!(
        got,
        [Some("orders.shop.svc".to_owned()), Some(authority.clone())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_nominating_traceparent_cannot_strip_the_injected_context() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = Proxy::exporting_to(&otlp, "nominate")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, _) = client::http1_get(
        p.inbound(),
        "/x",
        &[
            ("connection", "keep-alive, traceparent, tracestate"),
            ("traceparent", traceparent),
            ("tracestate", "k=v"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = app.seen_one();
    let span = otlp
        .wait_until(DEADLINE, "the SERVER span", |s| !s.is_empty())
        .await
        .remove(0);
    assert_eq!(span.kind, SpanKind::Server);
    // The client declared its traceparent hop-by-hop: it is gone before extraction, so the
    // proxy starts a trace, and the app still gets the proxy's own context.
    let sent = seen
        .headers
        .get("traceparent")
        .expect("the injected traceparent reached the app")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sent,
        format!("00-{}-{}-03", span.trace_id, span.span_id),
        "{seen:?}"
    );
    assert!(span.is_root(), "{span:?}");
    assert!(!seen.headers.contains_key(header::CONNECTION), "{seen:?}");
    // A new root's tracestate is ours alone (the default sampler's threshold, th:0).
    assert_eq!(seen.headers["tracestate"], "ot=th:0", "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_streams_of_an_h2_connection_share_one_upstream_connection() {
    let app = App::start(Behaviour::Delay(Duration::from_millis(100))).await;
    let p = untraced("h2-single")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let stream = TcpStream::connect(p.inbound()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake with the proxy");
    tokio::spawn(conn);
    let calls = (0..20).map(|i| {
        let mut sender = sender.clone();
        async move {
            let req = client::request(
                Method::GET,
                &format!("http://app/{i}"),
                "",
                &[],
                support::body::empty(),
            );
            let rsp = sender.send_request(req).await.expect("a stream");
            rsp.status()
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let seen = app.wait_for_requests(20, DEADLINE).await;
    let mut peers: Vec<_> = seen.iter().map(|r| r.peer).collect();
    peers.sort();
    peers.dedup();
    assert_eq!(
        peers.len(),
        1,
        "one downstream connection, upstream connections: {peers:?}"
    );
}

/// A request body that sends one chunk every `every`, `chunks` times.
fn paced_body(chunks: usize, every: Duration) -> (BoxBody, Vec<u8>) {
    let chunk = Bytes::from_static(b"0123456789abcdef");
    let all = chunk.repeat(chunks);
    let stream = futures_util::stream::unfold(0, move |i| {
        let chunk = chunk.clone();
        async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok::<_, support::serve::BoxError>(Frame::data(chunk)), i + 1))
        }
    });
    (StreamBody::new(stream).boxed_unsync(), all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_outlasting_the_response_timeout_succeeds() {
    let app = App::start(Behaviour::UploadDigest).await;
    let p = untraced("slow-upload")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--response-timeout")
        .arg("1s")
        .start()
        .await;
    for h2 in [false, true] {
        let (body, sent) = paced_body(6, Duration::from_millis(500));
        let started = Instant::now();
        let reply = if h2 {
            client::h2c_request(p.inbound(), Method::POST, "/upload", &[], body).await
        } else {
            client::http1_request(p.inbound(), Method::POST, "/upload", &[], body).await
        };
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::OK, "h2={h2}: {reply:?}");
        assert_eq!(
            reply.body,
            digest_line(sent.len() as u64, fnv1a64(&sent)),
            "h2={h2}"
        );
        assert!(
            took >= Duration::from_secs(3),
            "h2={h2}: the upload took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_outliving_the_response_timeout_succeeds_and_a_silent_server_still_times_out(
) {
    let grpc = GrpcServer::start().await;
    let p = untraced("client-stream")
        .arg("--app-addr")
        .arg(grpc.addr().to_string())
        .arg("--response-timeout")
        .arg("1s")
        .start()
        .await;
    let mut echo = EchoClient::connect(p.inbound(), None).await;
    let messages: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("m{i};"))).collect();
    let started = Instant::now();
    let reply = echo
        .client_stream_paced(messages, Duration::from_millis(500))
        .await
        .expect("a 2.5 s client stream with a 1 s response timeout");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert_eq!(&reply[..], b"m0;m1;m2;m3;m4;");

    // The timeout still applies once the request is done: a server that never answers.
    let hung = App::start(Behaviour::Hang).await;
    let q = untraced("client-stream-hung")
        .arg("--app-addr")
        .arg(hung.addr().to_string())
        .arg("--response-timeout")
        .arg("300ms")
        .start()
        .await;
    let (body, _) = paced_body(3, Duration::from_millis(200));
    let started = Instant::now();
    let reply = client::h2c_request(q.inbound(), Method::POST, "/hang", &[], body).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}: 600 ms of body, then 300 ms of silence"
    );
}

/// Reads until the peer closes or `timeout`; `None` if it was still open then.
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let (out, closed) = client::read_until_closed(stream, timeout).await;
    closed.then_some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_at_the_idle_timeout_not_the_header_timeout() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("idle")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--header-read-timeout")
        .arg("300ms")
        .arg("--idle-timeout")
        .arg("1500ms")
        .start()
        .await;
    let mut stream = TcpStream::connect(p.inbound()).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let idle_from = Instant::now();
    // Longer than the header-read timeout: still open, since no head has started.
    assert!(
        closed_within(&mut stream, Duration::from_millis(900))
            .await
            .is_none(),
        "closed while idle for less than the idle timeout"
    );
    let rest = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("the idle connection was not closed");
    let idle = idle_from.elapsed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        idle >= Duration::from_millis(1400) && idle < Duration::from_secs(4),
        "closed after {idle:?} idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_announced_body_never_comes_is_closed_as_stalled() {
    let app = App::start(Behaviour::UploadDigest).await;
    // The watchdog looks at a connection when its head deadline passes (it is not woken per
    // request, to keep the request path free of wake-ups), so a stall is seen within
    // header-read timeout + idle timeout.
    let p = untraced("stalled")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--header-read-timeout")
        .arg("300ms")
        .arg("--idle-timeout")
        .arg("1s")
        .arg("--response-timeout")
        .arg("500ms")
        .start()
        .await;
    let mut stream = TcpStream::connect(p.inbound()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\nsome")
        .await
        .unwrap();
    let rest = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("a request that stopped sending its body held the connection");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}; answered {:?}",
        String::from_utf8_lossy(&rest)
    );
    p.wait_for_series(
        r#"tracemesh_refused_connections_total{direction="inbound",reason="stalled"}"#,
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_counts_as_open_until_it_closes() {
    let ws = support::echo::WsEcho::start().await;
    let p = untraced("upgrade")
        .arg("--app-addr")
        .arg(ws.addr().to_string())
        .start()
        .await;
    const OPEN: &str = r#"tracemesh_open_connections{direction="inbound"}"#;
    let mut stream = TcpStream::connect(p.inbound()).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("reading the 101"));
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The HTTP phase of the connection is over; the upgraded stream still holds its place.
    p.wait_for_series(OPEN, |v| v == 1.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.metric(OPEN).await, Some(1.0));
    drop(stream);
    p.wait_for_series(OPEN, |v| v == 0.0).await;
}

/// The `Date` an app stamps on `/dated`; `/bare` gets none.
const APP_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// An app on HTTP/1.1 and h2c whose server adds no `Date` of its own.
fn undated_app(listener: tokio::net::TcpListener) -> serve::Served {
    serve::accept_loop(listener, |stream, _| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok")));
            if req.uri().path() == "/dated" {
                rsp.headers_mut()
                    .insert(header::DATE, HeaderValue::from_static(APP_DATE));
            }
            Ok::<_, Infallible>(rsp)
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().auto_date_header(false);
        builder.http2().auto_date_header(false);
        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
    })
}

/// The one `Date` of `headers`, as text.
#[track_caller]
fn one_date(headers: &HeaderMap) -> String {
    let dates: Vec<_> = headers.get_all(header::DATE).iter().collect();
    assert_eq!(dates.len(), 1, "{headers:?}");
    dates[0].to_str().expect("an ASCII Date").to_owned()
}

/// `date` is an IMF-fixdate within a minute of now.
#[track_caller]
fn assert_recent(date: &str) {
    let t = httpdate::parse_http_date(date).expect("an HTTP date");
    let off = SystemTime::now()
        .duration_since(t)
        .unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(60), "{date} is {off:?} from now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_one_date_and_the_apps_own_passes_unchanged() {
    let app = undated_app(serve::bind_loopback().await);
    let p = untraced("date")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    // The same proxy's outbound side, sent to a port where nothing listens: the proxy's own 502.
    let closed = reserve_port();

    let (status, h, body) = client::http1_get(p.inbound(), "/bare", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_recent(&one_date(&h));
    let (status, h, _) = client::http1_get(p.inbound(), "/dated", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one_date(&h), APP_DATE);

    let (status, h, body) = client::h2c_get(p.inbound(), "http://app/bare", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_recent(&one_date(&h));
    let (status, h, _) = client::h2c_get(p.inbound(), "http://app/dated", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one_date(&h), APP_DATE);

    let (status, h, _) = client::h2c_get(p.outbound(), &format!("http://{closed}/"), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_recent(&one_date(&h));
    let (status, h, _) =
        client::http1_get(p.outbound(), "/", &[("host", &closed.to_string())]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_recent(&one_date(&h));
}
