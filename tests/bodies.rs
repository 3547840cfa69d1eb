//! Bodies and HTTP framing through the proxy: gigabyte uploads and downloads byte-exact in flat
//! memory, chunked bodies streamed chunk by chunk in both directions, `Expect: 100-continue`,
//! keep-alive, bodiless responses (HEAD, 204, 304) and large h2c bodies; and the span of each
//! exchange ends when its response body ends (RFC 9112 for HTTP/1.1 framing, RFC 9113 for h2).
//!
//! Not here: gRPC (`grpc.rs`), span attributes in general (`tracing.rs`).

mod support;

use std::{
    net::SocketAddr,
    pin::pin,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    apps::{App, Behaviour},
    body::{self, fnv1a64, pattern_body, pattern_chunk, pattern_digest, BoxBody, PATTERN_CHUNK},
    client,
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus},
    process::Proxy,
    serve::BoxError,
    DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

const MIB: u64 = 1024 * 1024;

/// The size of the big upload and download: `TRACEMESH_TEST_BIG_BODY_MIB` MiB, 1 GiB unless set.
fn big_body_len() -> u64 {
    let mib = match std::env::var("TRACEMESH_TEST_BIG_BODY_MIB") {
        Ok(v) => v
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("TRACEMESH_TEST_BIG_BODY_MIB {v:?}: {e}")),
        Err(_) => 1024,
    };
    mib * MIB
}

/// How long one big transfer may take before the test fails rather than hangs.
const BIG_TRANSFER_DEADLINE: Duration = Duration::from_secs(300);

/// The proxy's peak resident memory must stay under this while it streams a body many times
/// larger: bodies flow through bounded buffers, never whole.
const PEAK_RSS_LIMIT_KIB: u64 = 100 * 1024;

async fn inbound_proxy(otlp: &OtlpReceiver, name: &str, app: SocketAddr) -> Proxy {
    Proxy::exporting_to(otlp, name)
        .arg("--app-addr")
        .arg(app.to_string())
        .start()
        .await
}

/// `VmHWM` (peak resident set size) of `pid`, in KiB.
async fn peak_rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = tokio::fs::read_to_string(&path)
        .await
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM line in {path}:\n{status}"))
}

/// Reads `body` to its end within `timeout`, comparing every byte with the first `len` bytes of
/// the pattern as it arrives (nothing is held): a memcmp per piece, much faster than a digest.
///
/// # Panics
/// At the first byte that differs, on a body error, or at the deadline; each with the offset.
async fn expect_pattern_body(body: Incoming, len: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = pin!(body);
    let mut offset = 0u64;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("body stalled: {offset} of {len} bytes in {timeout:?}"));
        let Some(frame) = frame else { break };
        let frame = frame.unwrap_or_else(|e| panic!("body failed after {offset} bytes: {e}"));
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for piece in data.chunks(PATTERN_CHUNK) {
            let end = offset + piece.len() as u64;
            assert!(end <= len, "body longer than {len} bytes");
            let expected = pattern_chunk(offset, piece.len());
            if piece != &expected[..] {
                let at = piece
                    .iter()
                    .zip(&expected[..])
                    .position(|(a, b)| a != b)
                    .expect("slices differ somewhere");
                panic!(
                    "body differs from the pattern at byte {}",
                    offset + at as u64
                );
            }
            offset = end;
        }
    }
    assert_eq!(offset, len, "body ended early");
}

/// A request body fed by the test, one frame per message; unknown length, so HTTP/1.1 sends it
/// chunked. Dropping the sender ends it.
fn channel_body() -> (mpsc::Sender<Bytes>, BoxBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(data)), rx))
    });
    (tx, StreamBody::new(frames).boxed_unsync())
}

/// Reads exactly `n` bytes of `body` (across frames), within [`DEADLINE`].
async fn read_exactly(body: &mut Incoming, n: usize, what: &str) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{what}: {} of {n} bytes within {DEADLINE:?}", got.len()))
            .unwrap_or_else(|| panic!("{what}: body ended after {} of {n} bytes", got.len()))
            .unwrap_or_else(|e| panic!("{what}: body failed: {e}"));
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(got.len(), n, "{what}: more bytes than were sent");
    got
}

/// One client connection that carries several requests: HTTP/1.1 keep-alive or one h2c
/// connection with a stream per request.
enum Conn {
    Http1(hyper::client::conn::http1::SendRequest<BoxBody>),
    Http2(hyper::client::conn::http2::SendRequest<BoxBody>),
}

// === impl Conn ===

impl Conn {
    /// Connects to `addr`; also returns the client's own address, which the proxy sees.
    async fn open(addr: SocketAddr, version: Version) -> (Self, SocketAddr) {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let local = stream
            .local_addr()
            .expect("a connected socket has an address");
        let io = TokioIo::new(stream);
        let conn = if version == Version::HTTP_2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap_or_else(|e| panic!("h2c handshake with {addr}: {e}"));
            tokio::spawn(conn);
            Conn::Http2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .unwrap_or_else(|e| panic!("HTTP/1.1 handshake with {addr}: {e}"));
            tokio::spawn(conn);
            Conn::Http1(sender)
        };
        (conn, local)
    }

    /// Sends `method path` to `addr` on this connection and reads the whole response, each
    /// step within [`DEADLINE`].
    async fn request(
        &mut self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: BoxBody,
    ) -> client::Reply {
        let what = format!("{method} {path}");
        let req = match self {
            Conn::Http1(_) => client::request(method, path, &addr.to_string(), headers, body),
            Conn::Http2(_) => {
                client::request(method, &format!("http://{addr}{path}"), "", headers, body)
            }
        };
        let send = async {
            match self {
                Conn::Http1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Conn::Http2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        };
        let rsp = tokio::time::timeout(DEADLINE, send)
            .await
            .unwrap_or_else(|_| panic!("{what}: no response headers within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{what} failed: {e}"));
        client::read_reply(rsp).await
    }
}

fn spans_by_path<'a>(spans: &'a [ReceivedSpan], path: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.attr_str("url.path") == Some(path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_is_byte_exact_and_proxy_memory_stays_flat() {
    let len = big_body_len();
    let expected = tokio::task::spawn_blocking(move || pattern_digest(len));
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::UploadDigest).await;
    let proxy = inbound_proxy(&otlp, "upload", app.addr()).await;
    let rss_at_start = peak_rss_kib(proxy.pid()).await;

    let started = Instant::now();
    let req = client::request(
        Method::POST,
        "/upload",
        &proxy.inbound().to_string(),
        &[],
        pattern_body(len),
    );
    let reply = tokio::time::timeout(BIG_TRANSFER_DEADLINE, async {
        client::read_reply(client::send_http1(proxy.inbound(), req).await).await
    })
    .await
    .unwrap_or_else(|_| panic!("{len}-byte upload not done within {BIG_TRANSFER_DEADLINE:?}"));
    let took = started.elapsed();
    let peak = peak_rss_kib(proxy.pid()).await;
    eprintln!(
        "upload of {} MiB took {took:?}; proxy VmHWM {rss_at_start} KiB at start, {peak} KiB after",
        len / MIB
    );

    assert_eq!(reply.status, StatusCode::OK);
    let expected = expected.await.expect("digesting the pattern");
    assert_eq!(String::from_utf8_lossy(&reply.body), expected);
    let seen = app.seen_one();
    assert_eq!(
        seen.headers[header::CONTENT_LENGTH],
        len.to_string().as_str()
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB (at start {rss_at_start} KiB) while streaming {len} bytes"
    );

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
    assert!(spans[0].duration() <= took, "{}", tree(&spans));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_download_is_byte_exact_and_proxy_memory_stays_flat() {
    let len = big_body_len();
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Stream { len }).await;
    let proxy = inbound_proxy(&otlp, "download", app.addr()).await;
    let rss_at_start = peak_rss_kib(proxy.pid()).await;

    let started = Instant::now();
    let req = client::request(
        Method::GET,
        "/download",
        &proxy.inbound().to_string(),
        &[],
        body::empty(),
    );
    let rsp = tokio::time::timeout(DEADLINE, client::send_http1(proxy.inbound(), req))
        .await
        .unwrap_or_else(|_| panic!("no response headers within {DEADLINE:?}"));
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.headers()[header::CONTENT_LENGTH],
        len.to_string().as_str()
    );
    expect_pattern_body(rsp.into_body(), len, BIG_TRANSFER_DEADLINE).await;
    let took = started.elapsed();
    let peak = peak_rss_kib(proxy.pid()).await;
    eprintln!(
        "download of {} MiB took {took:?}; proxy VmHWM {rss_at_start} KiB at start, {peak} KiB after",
        len / MIB
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB (at start {rss_at_start} KiB) while streaming {len} bytes"
    );

    // The span covers the whole download, not just the response headers.
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
    assert_eq!(spans[0].status_code, SpanStatus::Unset, "{}", tree(&spans));
    assert!(spans[0].duration() <= took, "{}", tree(&spans));
}

/// Chunk `i` of the chunked tests: pattern bytes, 1 byte to 128 KiB.
fn chunk(i: usize) -> Bytes {
    let len = 1 + (i * 40_503) % (128 * 1024);
    let mut out = Vec::with_capacity(len);
    let mut offset = (i as u64) * 1000;
    while out.len() < len {
        let n = (len - out.len()).min(PATTERN_CHUNK);
        out.extend_from_slice(&pattern_chunk(offset, n));
        offset += n as u64;
    }
    Bytes::from(out)
}

/// Sends a chunked request to an echo app through `via` and, for each chunk, waits for it to
/// come back before sending the next: this only completes if the proxy streams the request
/// and the response chunk by chunk (a proxy that buffered either whole would stall).
async fn chunked_ping_pong(via: SocketAddr, uri: &str, host: &str, app: &App) {
    const CHUNKS: usize = 40;
    let (tx, body) = channel_body();
    tx.send(chunk(0)).await.expect("request body open");
    let req = client::request(Method::POST, uri, host, &[], body);
    let rsp = tokio::time::timeout(DEADLINE, client::send_http1(via, req))
        .await
        .unwrap_or_else(|_| panic!("no response headers within {DEADLINE:?}"));
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()[header::TRANSFER_ENCODING], "chunked");
    assert!(
        !rsp.headers().contains_key(header::CONTENT_LENGTH),
        "{rsp:?}"
    );
    assert_eq!(rsp.headers()["x-app"], "echo");

    let mut body = rsp.into_body();
    for i in 0..CHUNKS {
        if i > 0 {
            tx.send(chunk(i)).await.expect("request body open");
        }
        let sent = chunk(i);
        let got = read_exactly(&mut body, sent.len(), &format!("echo of chunk {i}")).await;
        assert!(got == sent, "echo of chunk {i} differs");
    }
    drop(tx);
    let end = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap_or_else(|_| panic!("response did not end within {DEADLINE:?}"));
    assert!(end.is_none(), "bytes after the echo: {end:?}");

    let seen = app.seen_one();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers[header::TRANSFER_ENCODING], "chunked");
    assert!(
        !seen.headers.contains_key(header::CONTENT_LENGTH),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_and_response_stream_chunk_by_chunk_inbound() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let proxy = inbound_proxy(&otlp, "chunked", app.addr()).await;

    let inbound = proxy.inbound();
    chunked_ping_pong(inbound, "/echo", &inbound.to_string(), &app).await;

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    assert_eq!(spans[0].kind, SpanKind::Server);
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
    assert_eq!(spans[0].status_code, SpanStatus::Unset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_and_response_stream_chunk_by_chunk_outbound() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let proxy = Proxy::exporting_to(&otlp, "chunked-out").start().await;

    // The app-uses-an-HTTP-proxy shape: absolute-form to the outbound listener.
    let host = app.addr().to_string();
    chunked_ping_pong(proxy.outbound(), &app.url("/echo"), &host, &app).await;

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    assert_eq!(spans[0].kind, SpanKind::Client);
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
    assert_eq!(spans[0].status_code, SpanStatus::Unset);
}

/// Reads from `stream` until `buf` holds `needle`, within [`DEADLINE`].
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8], what: &str) {
    let read = async {
        while !buf.windows(needle.len()).any(|w| w == needle) {
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .expect("reading from the proxy");
            assert!(
                n > 0,
                "{what}: connection closed; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!(
            "{what}: not within {DEADLINE:?}; got {:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::UploadDigest).await;
    let proxy = inbound_proxy(&otlp, "expect", app.addr()).await;
    let payload = b"sent only after 100 Continue";

    let mut stream = TcpStream::connect(proxy.inbound())
        .await
        .expect("connecting to the proxy");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        proxy.inbound(),
        payload.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("writing the head");

    // Nothing of the body has been sent: the only way forward is an interim 100.
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"\r\n\r\n", "100 Continue").await;
    let interim = String::from_utf8_lossy(&got).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "expected an interim 100 first, got {interim:?}"
    );

    stream.write_all(payload).await.expect("writing the body");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("final response not complete within {DEADLINE:?}"))
        .expect("reading the final response");
    // The interim response's head may have arrived with more bytes after it.
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let mut response = got[head_end..].to_vec();
    response.extend_from_slice(&rest);
    let response = String::from_utf8(response).expect("a text response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no final response head in {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    let expected = body::digest_line(payload.len() as u64, fnv1a64(payload));
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-app: upload-digest"), "{response:?}");
    assert!(
        lower.contains(&format!("\r\ncontent-length: {}", expected.len())),
        "{response:?}"
    );
    assert_eq!(body, expected);

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_on_one_connection_each_get_their_own_span() {
    const REQUESTS: usize = 5;
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let proxy = inbound_proxy(&otlp, "keep-alive", app.addr()).await;

    // Request 2 continues a caller's trace; the others must not inherit it.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_parent = format!("00-{caller_trace}-b7ad6b7169203331-01");
    let (mut conn, local) = Conn::open(proxy.inbound(), Version::HTTP_11).await;
    for i in 0..REQUESTS {
        let headers: &[(&str, &str)] = if i == 2 {
            &[("traceparent", &caller_parent)]
        } else {
            &[]
        };
        let text = format!("request {i} on one connection");
        let reply = conn
            .request(
                proxy.inbound(),
                Method::POST,
                &format!("/ka/{i}"),
                headers,
                body::full(text.clone()),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, text.as_bytes());
    }

    let spans = otlp.wait_for_spans(REQUESTS, DEADLINE).await;
    assert_eq!(spans.len(), REQUESTS, "{}", tree(&spans));
    let seen = app.seen();
    assert_eq!(seen.len(), REQUESTS);
    let mut span_ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    span_ids.sort_unstable();
    span_ids.dedup();
    assert_eq!(
        span_ids.len(),
        REQUESTS,
        "span IDs repeat:\n{}",
        tree(&spans)
    );
    for i in 0..REQUESTS {
        let path = format!("/ka/{i}");
        let found = spans_by_path(&spans, &path);
        assert_eq!(found.len(), 1, "one span for {path}:\n{}", tree(&spans));
        let span = found[0];
        // One client connection: every span names the same client port.
        assert_eq!(span.attr_int("client.port"), Some(i64::from(local.port())));
        assert_eq!(span.attr_int("http.response.status_code"), Some(200));
        if i == 2 {
            assert_eq!(span.trace_id, caller_trace);
            assert_eq!(span.parent_span_id, "b7ad6b7169203331");
        } else {
            assert_ne!(span.trace_id, caller_trace, "trace leaked to {path}");
            assert!(span.is_root(), "{}", tree(&spans));
        }
        let request = seen
            .iter()
            .find(|r| r.uri.path() == path)
            .unwrap_or_else(|| panic!("the app never saw {path}"));
        // The caller's trace keeps its flags (01); new roots are sampled and random (03).
        let flags = if i == 2 { "01" } else { "03" };
        assert_eq!(
            request.headers["traceparent"],
            format!("00-{}-{}-{flags}", span.trace_id, span.span_id).as_str()
        );
    }
    let mut traces: Vec<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), REQUESTS, "each request is its own trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_lasts_until_a_slow_body_ends_over_http1_and_h2() {
    const CHUNKS: usize = 5;
    const EVERY: Duration = Duration::from_millis(60);
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::SlowBody {
        chunks: CHUNKS,
        every: EVERY,
    })
    .await;
    let proxy = inbound_proxy(&otlp, "slow", app.addr()).await;
    let expected: String = (0..CHUNKS).map(|i| format!("chunk {i}\n")).collect();

    let mut took = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let (mut conn, _) = Conn::open(proxy.inbound(), version).await;
        let started = Instant::now();
        let reply = conn
            .request(
                proxy.inbound(),
                Method::GET,
                &format!("/slow/{version:?}"),
                &[],
                body::empty(),
            )
            .await;
        took.push((version, started.elapsed()));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, expected.as_bytes());
    }

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    for (version, took) in took {
        let path = format!("/slow/{version:?}");
        let found = spans_by_path(&spans, &path);
        assert_eq!(found.len(), 1, "one span for {path}:\n{}", tree(&spans));
        let d = found[0].duration();
        let floor = EVERY * CHUNKS as u32;
        assert!(
            d >= floor,
            "{path}: span {d:?} ended before the body ({floor:?})"
        );
        assert!(
            d <= took,
            "{path}: span {d:?} outlasts the exchange ({took:?})"
        );
        assert_eq!(found[0].status_code, SpanStatus::Unset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_end_their_spans_and_keep_the_connection_usable() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::custom(|req| {
        let (status, body) = match req.uri.path() {
            "/no-content" => (StatusCode::NO_CONTENT, Bytes::new()),
            "/not-modified" => (StatusCode::NOT_MODIFIED, Bytes::new()),
            _ => (StatusCode::OK, Bytes::from(vec![b'x'; 1234])),
        };
        let mut rsp = Response::builder().status(status);
        if status == StatusCode::NOT_MODIFIED {
            rsp = rsp.header("etag", "\"v1\"");
        }
        if req.method == Method::HEAD {
            // The length a GET would have, and no body: hyper's h2 server does not drop a HEAD
            // response's body by itself (its h1 server does), so a correct app must.
            rsp = rsp.header(header::CONTENT_LENGTH, body.len());
            return rsp.body(Full::new(Bytes::new())).expect("a valid response");
        }
        rsp.body(Full::new(body)).expect("a valid response")
    }))
    .await;
    let proxy = inbound_proxy(&otlp, "bodiless", app.addr()).await;

    // What the app says to a HEAD directly: the proxy must say the same.
    let direct_head =
        client::http1_request(app.addr(), Method::HEAD, "/head", &[], body::empty()).await;
    assert_eq!(direct_head.headers[header::CONTENT_LENGTH], "1234");

    let mut expected_spans = 0;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let (mut conn, _) = Conn::open(proxy.inbound(), version).await;
        let inbound = proxy.inbound();

        let head = conn
            .request(inbound, Method::HEAD, "/head", &[], body::empty())
            .await;
        assert_eq!(head.status, StatusCode::OK, "{version:?}");
        assert_eq!(
            head.body.len(),
            0,
            "{version:?}: a HEAD response has no body"
        );
        assert_eq!(
            head.headers.get(header::CONTENT_LENGTH),
            direct_head.headers.get(header::CONTENT_LENGTH),
            "{version:?}: HEAD keeps the length a GET would have"
        );

        let no_content = conn
            .request(inbound, Method::GET, "/no-content", &[], body::empty())
            .await;
        assert_eq!(no_content.status, StatusCode::NO_CONTENT, "{version:?}");
        assert_eq!(no_content.body.len(), 0);
        assert!(!no_content.headers.contains_key(header::TRANSFER_ENCODING));

        let not_modified = conn
            .request(
                inbound,
                Method::GET,
                "/not-modified",
                &[("if-none-match", "\"v1\"")],
                body::empty(),
            )
            .await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED, "{version:?}");
        assert_eq!(not_modified.headers["etag"], "\"v1\"");
        assert_eq!(not_modified.body.len(), 0);

        // The connection's framing survived all three: a request with a body still works.
        let after = conn
            .request(inbound, Method::GET, "/after", &[], body::empty())
            .await;
        assert_eq!(after.status, StatusCode::OK, "{version:?}");
        assert_eq!(after.body, vec![b'x'; 1234]);
        expected_spans += 4;
    }

    let spans = otlp.wait_for_spans(expected_spans, DEADLINE).await;
    assert_eq!(spans.len(), expected_spans, "{}", tree(&spans));
    for (path, method, status) in [
        ("/head", "HEAD", 200),
        ("/no-content", "GET", 204),
        ("/not-modified", "GET", 304),
        ("/after", "GET", 200),
    ] {
        let found = spans_by_path(&spans, path);
        let mut versions: Vec<&str> = found
            .iter()
            .filter_map(|s| s.attr_str("network.protocol.version"))
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, ["1.1", "2"], "{path}:\n{}", tree(&spans));
        for span in found {
            assert_eq!(span.attr_str("http.request.method"), Some(method));
            assert_eq!(span.attr_int("http.response.status_code"), Some(status));
            assert_eq!(span.status_code, SpanStatus::Unset, "{span:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_64_mib_body_is_byte_exact_both_ways() {
    let len = 64 * MIB;
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let proxy = inbound_proxy(&otlp, "h2-big", app.addr()).await;

    // The app echoes while the client is still sending: both directions stream at once.
    let req = client::request(Method::POST, "/echo", "", &[], pattern_body(len));
    let rsp = tokio::time::timeout(DEADLINE, client::send_h2c(proxy.inbound(), req))
        .await
        .unwrap_or_else(|_| panic!("no response headers within {DEADLINE:?}"));
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.version(), Version::HTTP_2);
    expect_pattern_body(rsp.into_body(), len, BIG_TRANSFER_DEADLINE).await;

    let seen = app.seen_one();
    assert_eq!(seen.version, Version::HTTP_2);
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans[0].attr_str("network.protocol.version"), Some("2"));
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(200));
    assert_eq!(spans[0].status_code, SpanStatus::Unset);
}
