//! Traffic that is not plain request/response HTTP: opaque TCP (client-first, server-first, TLS
//! the proxy does not terminate), WebSocket upgrades and `CONNECT` tunnels. Every byte must
//! arrive exactly as sent, and the relayed connections and bytes are counted on `/metrics`.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{
    client,
    echo::{ws_echo, TcpEcho, WsEcho},
    otlp::{tree, OtlpReceiver, SpanKind, SpanStatus},
    process::{reserve_port, Proxy, ProxyBuilder},
    serve, DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use support::process::metric_value as metric;

const OPAQUE_IN: &str = "tracemesh_opaque_connections_total{direction=\"inbound\"}";
const OPAQUE_OUT: &str = "tracemesh_opaque_connections_total{direction=\"outbound\"}";
const RECEIVED_IN: &str = "tracemesh_opaque_received_bytes_total{direction=\"inbound\"}";
const SENT_IN: &str = "tracemesh_opaque_sent_bytes_total{direction=\"inbound\"}";
const RECEIVED_OUT: &str = "tracemesh_opaque_received_bytes_total{direction=\"outbound\"}";
const SENT_OUT: &str = "tracemesh_opaque_sent_bytes_total{direction=\"outbound\"}";

/// A proxy in front of `app` that exports nothing.
fn untraced(name: &str, app: SocketAddr) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.to_string())
}

/// Deterministic noise (xorshift64): no structure a detector could mistake for a protocol.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Asserts `got == want` without printing a megabyte on failure.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, sent {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

/// Reads an HTTP/1 response head (up to and including the blank line), byte by byte so that
/// nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let b = stream.read_u8().await.unwrap_or_else(|e| {
                panic!(
                    "reading a response head after {:?}: {e}",
                    String::from_utf8_lossy(&head)
                )
            });
            head.push(b);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no response head within {DEADLINE:?}"));
    String::from_utf8(head).expect("an ASCII response head")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_bytes_pass_through_inbound_byte_for_byte_and_are_counted() {
    let echo = TcpEcho::start().await;
    let p = untraced("opaque-in", echo.addr()).start().await;

    let mut big = noise(1024 * 1024, 0x9e37_79b9_7f4a_7c15);
    big[0] = 0x00; // not a request line, preface or TLS record from the first byte
    let blob = b"\xde\xad\xbe\xef\x00\x01\x02\x03tracemesh\r\n\xff".to_vec();
    // A text protocol that starts like a request line (a token) but is not one (Redis RESP).
    let resp = b"*1\r\n$4\r\nPING\r\n".to_vec();

    let mut total = 0u64;
    for (what, sent) in [
        ("1 MiB of noise", &big),
        ("binary blob", &blob),
        ("RESP", &resp),
    ] {
        let got = client::tcp_roundtrip(p.inbound(), sent, DEADLINE).await;
        assert_same_bytes(&got, sent, what);
        total += sent.len() as u64;
    }
    assert_eq!(echo.connections(), 3);

    // Bytes are counted when a relay ends, which can be just after the client saw the close.
    p.wait_for_series(SENT_IN, |v| v == total as f64).await;
    let text = p.metrics().await;
    assert_eq!(metric(&text, OPAQUE_IN), Some(3.0));
    assert_eq!(metric(&text, RECEIVED_IN), Some(total as f64));
    assert_eq!(metric(&text, OPAQUE_OUT), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocol_on_an_opaque_port_gets_its_banner_at_once() {
    const BANNER: &[u8] = b"220 mail.test ESMTP ready\r\n";
    // An SMTP-like server: it speaks first, then answers QUIT and closes.
    let app = serve::accept_loop(serve::bind_loopback().await, |mut stream, _| async move {
        if stream.write_all(BANNER).await.is_err() {
            return;
        }
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            match stream.read_u8().await {
                Ok(b) => line.push(b),
                Err(_) => return,
            }
        }
        let reply: &[u8] = if line == b"QUIT\r\n" {
            b"221 bye\r\n"
        } else {
            b"500 what?\r\n"
        };
        let _ = stream.write_all(reply).await;
        let _ = stream.shutdown().await;
    });
    // A server-first port is configured as opaque: no detection, so no wait for client bytes.
    let p = untraced("server-first", app.addr())
        .arg("--opaque-ports")
        .arg(app.addr().port().to_string())
        .arg("--detect-timeout")
        .arg("5s")
        .start()
        .await;

    let started = Instant::now();
    let mut stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    let mut banner = vec![0u8; BANNER.len()];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut banner))
        .await
        .expect("no banner within the deadline")
        .expect("reading the banner");
    let took = started.elapsed();
    assert_eq!(banner, BANNER, "{:?}", String::from_utf8_lossy(&banner));
    // Relayed at once, not after the 5 s detect timeout.
    assert!(took < Duration::from_secs(4), "banner after {took:?}");

    stream.write_all(b"QUIT\r\n").await.expect("writing QUIT");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("the server's close did not come through")
        .expect("reading the reply");
    assert_eq!(rest, b"221 bye\r\n", "{:?}", String::from_utf8_lossy(&rest));
    drop(stream);

    p.wait_for_series(SENT_IN, |v| v == (BANNER.len() + 9) as f64)
        .await;
    let text = p.metrics().await;
    assert_eq!(metric(&text, OPAQUE_IN), Some(1.0));
    assert_eq!(metric(&text, RECEIVED_IN), Some(6.0));
}

/// A TLS 1.2-record ClientHello for `host` with a few cipher suites and SNI, followed by
/// `extra` bytes (as if the client pipelined more records).
fn client_hello(host: &str, extra: &[u8]) -> Vec<u8> {
    let host = host.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes()); // server_name_list length
    sni.push(0); // host_name
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut extensions = vec![0x00, 0x00]; // server_name
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);

    let mut hello = vec![0x03, 0x03]; // legacy_version TLS 1.2
    hello.extend_from_slice(&noise(32, 7)); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]); // 3 suites
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);

    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record.extend_from_slice(extra);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_hello_is_passed_through_untouched() {
    let echo = TcpEcho::start().await;
    let p = untraced("tls-passthrough", echo.addr()).start().await;

    let hello = client_hello("payments.shop.svc.cluster.local", &noise(4096, 3));
    let got = client::tcp_roundtrip(p.inbound(), &hello, DEADLINE).await;
    assert_same_bytes(&got, &hello, "ClientHello");

    p.wait_for_series(SENT_IN, |v| v == hello.len() as f64)
        .await;
    let text = p.metrics().await;
    assert_eq!(metric(&text, OPAQUE_IN), Some(1.0));
    assert_eq!(metric(&text, RECEIVED_IN), Some(hello.len() as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_relayed_and_traced_as_101() {
    let otlp = OtlpReceiver::start_grpc().await;
    let ws = WsEcho::start().await;
    let p = Proxy::exporting_to(&otlp, "ws")
        .arg("--app-addr")
        .arg(ws.addr().to_string())
        .start()
        .await;

    let large = "x".repeat(100 * 1024);
    let messages = ["hello", "wörld ✓", "", large.as_str()];
    let authority = p.inbound().to_string();
    let exchange = ws_echo(p.inbound(), &authority, "/chat?room=1", &[], &messages).await;
    assert_eq!(exchange.status, 101);
    assert_eq!(exchange.echoed, messages);
    assert!(
        exchange.headers.contains_key("sec-websocket-accept"),
        "{:?}",
        exchange.headers
    );

    // The upgrade request is one SERVER span, answered 101, and the app saw it as its child.
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    let s = &spans[0];
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.attr_int("http.response.status_code"), Some(101), "{s:?}");
    assert_eq!(s.attr_str("url.path"), Some("/chat"));
    assert_eq!(s.status_code, SpanStatus::Unset, "{s:?}");
    let handshakes = ws.handshakes();
    assert_eq!(handshakes.len(), 1);
    let (uri, headers) = &handshakes[0];
    assert_eq!(uri.path(), "/chat");
    assert_eq!(
        headers["traceparent"],
        format!("00-{}-{}-03", s.trace_id, s.span_id)
    );

    // After the 101 the connection is an opaque stream, counted as such.
    let payload: usize = messages.iter().map(|m| m.len()).sum();
    p.wait_for_series(RECEIVED_IN, |v| v > payload as f64).await;
    let text = p.metrics().await;
    assert_eq!(metric(&text, OPAQUE_IN), Some(1.0));
    assert!(
        metric(&text, SENT_IN).is_some_and(|v| v > payload as f64),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_through_outbound_carries_bytes_both_ways() {
    let otlp = OtlpReceiver::start_grpc().await;
    let echo = TcpEcho::start().await;
    let p = Proxy::exporting_to(&otlp, "tunnel").start().await;

    let target = echo.addr();
    let mut stream = TcpStream::connect(p.outbound()).await.expect("connecting");
    let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(connect.as_bytes())
        .await
        .expect("writing CONNECT");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head:?}");

    let payload = noise(256 * 1024, 11);
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(&payload)
            .await
            .expect("writing through the tunnel");
        wr.shutdown().await.expect("half-closing the tunnel");
    };
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut got));
    let ((), read) = tokio::join!(write, read);
    read.expect("the tunnel did not close")
        .expect("reading from the tunnel");
    assert_same_bytes(&got, &payload, "tunnelled bytes");
    assert_eq!(echo.connections(), 1);

    p.wait_for_series(SENT_OUT, |v| v == payload.len() as f64)
        .await;
    let text = p.metrics().await;
    assert_eq!(metric(&text, OPAQUE_OUT), Some(1.0));
    assert_eq!(metric(&text, RECEIVED_OUT), Some(payload.len() as f64));
    assert_eq!(metric(&text, OPAQUE_IN), Some(0.0));

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    let s = &spans[0];
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(s.attr_str("http.request.method"), Some("CONNECT"));
    assert_eq!(s.attr_int("http.response.status_code"), Some(200));
    assert_eq!(s.attr_int("server.port"), Some(i64::from(target.port())));
    assert_eq!(s.status_code, SpanStatus::Unset, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_is_answered_502() {
    let p = Proxy::builder()
        .name("tunnel-refused")
        .env("OTEL_TRACES_EXPORTER", "none")
        .start()
        .await;
    let closed = reserve_port();
    let request =
        format!("CONNECT {closed} HTTP/1.1\r\nHost: {closed}\r\nConnection: close\r\n\r\n");
    let answer = client::raw_request(p.outbound(), request.as_bytes(), DEADLINE).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer:?}");
    assert!(
        answer.ends_with("\r\n\r\ntracemesh: upstream connection refused\n"),
        "{answer:?}"
    );
    assert_eq!(
        metric(&p.metrics().await, OPAQUE_OUT),
        Some(0.0),
        "a refused tunnel is not an opaque connection"
    );
}
