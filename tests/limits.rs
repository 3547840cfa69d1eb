//! Limits that protect the proxy from its clients: the request-head size (431), the time a
//! client may take to send a head (slowloris), the open-connection cap, and trace-context
//! headers too large to be valid. After each, the proxy still serves the next client.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::{
    apps::{App, Behaviour},
    body::{self, BoxBody},
    client, eventually,
    otlp::{tree, OtlpReceiver, ReceivedSpan},
    process::{Proxy, ProxyBuilder},
    DEADLINE,
};
use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};

use support::process::metric_value as metric;

/// A proxy in front of `app` that exports nothing.
fn untraced(name: &str, app: SocketAddr) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.to_string())
}

/// Asserts that `GET /after` through `p` is served normally.
async fn still_serves(p: &Proxy) {
    let (status, _, body) = client::http1_get(p.inbound(), "/after", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
}

/// Reads until the peer closes or resets the connection, keeping what arrived before a reset
/// (a server that answers and closes with request bytes unread makes the kernel send RST).
///
/// # Panics
/// If the connection is still open after `timeout`.
async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let (out, closed) = client::read_until_closed(stream, timeout).await;
    assert!(
        closed,
        "connection still open after {timeout:?}; got {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_the_limit_gets_431_and_the_proxy_stays_healthy() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("head-limit", app.addr())
        .arg("--max-header-bytes")
        .arg("16384")
        .start()
        .await;

    let big = "a".repeat(20 * 1024);
    let request = format!(
        "GET /big HTTP/1.1\r\nHost: {}\r\nx-big: {big}\r\nConnection: close\r\n\r\n",
        p.inbound()
    );
    let mut stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("writing the request");
    let answer = read_until_closed(&mut stream, DEADLINE).await;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or("");
    assert_eq!(
        status_line, "HTTP/1.1 431 Request Header Fields Too Large",
        "{answer:?}"
    );
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());

    // A head just under the limit is fine, and so is the next ordinary request.
    let under = "b".repeat(12 * 1024);
    let (status, _, _) = client::http1_get(p.inbound(), "/under", &[("x-big", &under)]).await;
    assert_eq!(status, StatusCode::OK);
    still_serves(&p).await;
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_cut_off_after_the_header_read_timeout() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("slowloris", app.addr())
        .arg("--header-read-timeout")
        .arg("300ms")
        .start()
        .await;

    // The request line and one header, then nothing: the head never ends.
    let started = Instant::now();
    let mut stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: slow\r\nx-drip: 1\r\n")
        .await
        .expect("writing a partial head");
    let answer = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    // hyper closes without a response (no 408): the client gets nothing at all.
    assert_eq!(answer, "", "a partial head was answered");
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());

    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_inside_the_request_line_is_cut_off_too() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("slowloris-line", app.addr())
        .arg("--detect-timeout")
        .arg("200ms")
        .arg("--header-read-timeout")
        .arg("300ms")
        .start()
        .await;

    // Not even a whole request line: detection waits, calls it HTTP/1, and hyper's timeout
    // applies (rather than an idle opaque relay to the app that never ends).
    let started = Instant::now();
    let mut stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    stream
        .write_all(b"GET /slow-line")
        .await
        .expect("writing a partial request line");
    let answer = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    // hyper closes without a response (no 408): the client gets nothing at all.
    assert_eq!(answer, "", "a partial request line was answered");
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());

    still_serves(&p).await;
}

/// An HTTP/1.1 keep-alive connection that has served one request and stays open. Dropping the
/// handle's sender and aborting its task closes it.
async fn keep_alive(addr: SocketAddr, path: &str) -> (SendRequest<BoxBody>, JoinHandle<()>) {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("handshake with {addr}: {e}"));
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = client::request(Method::GET, path, &addr.to_string(), &[], body::empty());
    let rsp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("{path} not answered within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{path} failed: {e}"));
    let reply = client::read_reply(rsp).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}");
    (sender, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_over_the_limit_waits_until_one_closes() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("conn-limit", app.addr())
        .arg("--max-connections")
        .arg("2")
        .start()
        .await;
    let inbound = p.inbound();

    let (first, first_task) = keep_alive(inbound, "/first").await;
    let (_second, _second_task) = keep_alive(inbound, "/second").await;

    // The third connects (the kernel's backlog takes it) but is not served.
    let third = tokio::spawn(async move {
        let req = client::request(
            Method::GET,
            "/third",
            &inbound.to_string(),
            &[],
            body::empty(),
        );
        let rsp = client::send_http1(inbound, req).await;
        let served = Instant::now();
        (client::read_reply(rsp).await, served)
    });
    // This test is about waiting: give the third request ample time to be (wrongly) served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "the third connection was served at the limit"
    );
    assert_eq!(app.seen().len(), 2);
    let open = "tracemesh_open_connections{direction=\"inbound\"}";
    assert_eq!(metric(&p.metrics().await, open), Some(2.0));

    // One closes; the third is accepted and served.
    let closed = Instant::now();
    drop(first);
    first_task.abort();
    let (reply, served) = tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("the third request was not served within 3 s of a slot freeing")
        .expect("the third request failed");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], b"ok");
    assert!(served >= closed);
    let paths: Vec<String> = app.seen().iter().map(|r| r.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/first", "/second", "/third"]);
}

const VALID_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VALID_PARENT: &str = "00f067aa0ba902b7";

/// The app's `traceparent`, split into (trace id, parent id, flags).
fn app_traceparent(app: &App) -> (String, String, String) {
    let seen = app.seen_one();
    let tp = seen.headers["traceparent"]
        .to_str()
        .expect("an ASCII traceparent")
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn only_span(otlp: &OtlpReceiver) -> ReceivedSpan {
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    spans.into_iter().next().expect("one span")
}

async fn wait_for_invalid(p: &Proxy, reason: &str) {
    let series = format!(
        "tracemesh_invalid_context_headers_total{{format=\"tracecontext\",reason=\"{reason}\"}}"
    );
    let what = format!("{series} == 1");
    let series = &series;
    eventually(DEADLINE, &what, || async move {
        (metric(&p.metrics().await, series) == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_traceparent_is_invalid_so_a_new_root_trace_starts() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = Proxy::exporting_to(&otlp, "huge-tp")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    // A valid version-00 traceparent with 8 KiB appended: version 00 has exactly 55 characters.
    let huge = format!(
        "00-{VALID_TRACE}-{VALID_PARENT}-01-{}",
        "a".repeat(8 * 1024)
    );
    let (status, _, body) =
        client::http1_get(p.inbound(), "/huge", &[("traceparent", &huge)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");

    let s = only_span(&otlp).await;
    assert!(s.is_root(), "{s:?}");
    assert_ne!(s.trace_id, VALID_TRACE);
    let (trace, parent, flags) = app_traceparent(&app);
    assert_eq!(trace, s.trace_id);
    assert_eq!(parent, s.span_id);
    // A new root: sampled, with a random trace ID.
    assert_eq!(flags, "03");
    wait_for_invalid(&p, "length").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_tracestate_is_dropped_but_the_valid_traceparent_is_continued() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = Proxy::exporting_to(&otlp, "huge-ts")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    // W3C: a tracestate value is at most 256 characters; an invalid tracestate is discarded
    // without touching the traceparent next to it.
    let traceparent = format!("00-{VALID_TRACE}-{VALID_PARENT}-01");
    let huge = format!("congo={}", "t".repeat(8 * 1024));
    let (status, _, _) = client::http1_get(
        p.inbound(),
        "/huge-state",
        &[("traceparent", &traceparent), ("tracestate", &huge)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let s = only_span(&otlp).await;
    assert_eq!(s.trace_id, VALID_TRACE);
    assert_eq!(s.parent_span_id, VALID_PARENT);
    assert_eq!(s.trace_state, "");
    let (trace, parent, _) = app_traceparent(&app);
    assert_eq!(trace, VALID_TRACE);
    assert_eq!(parent, s.span_id);
    assert!(
        !app.seen_one().headers.contains_key("tracestate"),
        "the invalid tracestate reached the app"
    );
    wait_for_invalid(&p, "tracestate_value").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_request_head_over_the_limit_gets_431_too() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("h2-head-limit", app.addr())
        .arg("--max-header-bytes")
        .arg("16384")
        .start()
        .await;

    let big = "a".repeat(20 * 1024);
    let req = client::request(Method::GET, "/big", "", &[("x-big", &big)], body::empty());
    let reply = client::read_reply(client::send_h2c(p.inbound(), req).await).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());

    let (status, _, body) = client::h2c_get(p.inbound(), "/after", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
}
