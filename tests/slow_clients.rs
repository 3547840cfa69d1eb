//! Clients that say nothing, or too little too slowly, and relays that go quiet. None of them
//! may hold a connection slot, an app connection or the listener: a client that sends nothing
//! (or too little to decide) within `--detect-timeout` is closed, with no upstream connection
//! and counted as `reason="detect_timeout"`; once a method token and SP have arrived the
//! connection is HTTP/1, and hyper's `--header-read-timeout` cuts off the rest of a slow head;
//! an opaque relay with no bytes either way for `--idle-timeout` is closed. Server-first
//! protocols say nothing by design, so their ports are listed in `--opaque-ports` and relayed
//! at once (the banner test is in `tests/opaque.rs`).
//!
//! The app is a [`TcpRecorder`] (or a TCP echo) so that "no connection reached the app" is a
//! count of accepted connections, not an absence of HTTP requests.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::StatusCode;
use support::{
    client,
    echo::TcpEcho,
    process::{Proxy, ProxyBuilder},
    recorder::TcpRecorder,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedReadHalf, TcpStream},
};

const DETECT_TIMEOUT: Duration = Duration::from_millis(500);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// What a deadline adds to the timeout it checks, for a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// The trickling client's pace.
const TRICKLE: Duration = Duration::from_millis(300);

const DETECT_TIMEOUTS: &str =
    "tracemesh_refused_connections_total{direction=\"inbound\",reason=\"detect_timeout\"}";

/// A proxy in front of `app` that exports nothing, with the detect timeout above.
fn untraced(name: &str, app: SocketAddr) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.to_string())
        .arg("--detect-timeout")
        .arg(millis(DETECT_TIMEOUT))
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Reads until the peer closes (EOF or reset) or `within` passes: what arrived, and when it
/// closed (`None`: still open).
async fn read_until_closed(rd: &mut OwnedReadHalf, within: Duration) -> (Vec<u8>, Option<Instant>) {
    let (out, closed) = support::client::read_until_closed(rd, within).await;
    (out, closed.then(Instant::now))
}

/// Polls `series` for up to `within` until it equals `want`; its last value.
async fn series_settles(p: &Proxy, series: &str, want: f64, within: Duration) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = p.metric(series).await;
        if v == Some(want) || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(support::POLL).await;
    }
}

fn lossy(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_detect_timeout_and_never_reaches_the_app() {
    let app = TcpRecorder::start().await;
    let p = untraced("silent", app.addr()).start().await;

    let started = Instant::now();
    let stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    let (mut rd, _wr) = stream.into_split();
    let (answer, closed) = read_until_closed(&mut rd, 3 * DETECT_TIMEOUT).await;

    let mut problems = Vec::new();
    match closed {
        None => problems.push(format!(
            "still open {:?} after connecting (detect timeout {DETECT_TIMEOUT:?})",
            3 * DETECT_TIMEOUT
        )),
        Some(at) if at - started < DETECT_TIMEOUT * 8 / 10 => problems.push(format!(
            "closed after {:?}, before the detect timeout",
            at - started
        )),
        Some(_) => {}
    }
    if !answer.is_empty() {
        problems.push(format!("the silent client was sent {}", lossy(&answer)));
    }
    // A relay would have dialled the app before the proxy closed the client.
    if app.accepted() != 0 {
        problems.push(format!("{} connections reached the app", app.accepted()));
    }
    let counted = series_settles(&p, DETECT_TIMEOUTS, 1.0, Duration::from_secs(2)).await;
    if counted != Some(1.0) {
        problems.push(format!("{DETECT_TIMEOUTS} is {counted:?}, want 1"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Writes `bytes` one at a time, [`TRICKLE`] apart, until they run out or the proxy closes.
fn trickle(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    bytes: &'static [u8],
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(TRICKLE);
        for (i, b) in bytes.iter().enumerate() {
            pace.tick().await;
            if wr.write_all(&[*b]).await.is_err() {
                return i;
            }
        }
        bytes.len()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_trickled_from_the_first_byte_is_closed_and_never_reaches_the_app() {
    let app = TcpRecorder::start().await;
    let p = untraced("trickle", app.addr())
        .arg("--header-read-timeout")
        .arg(millis(HEADER_READ_TIMEOUT))
        .start()
        .await;

    // One byte per 300 ms: at the 500 ms detect timeout only `GE` has arrived, too little to
    // decide, so the proxy may close then; if it waits for `GET ` (HTTP), hyper's header-read
    // timeout ends it. Either way: closed within the header-read timeout plus a margin.
    let started = Instant::now();
    let stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    let (mut rd, wr) = stream.into_split();
    let writer = trickle(wr, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n");
    let within = DETECT_TIMEOUT + HEADER_READ_TIMEOUT + MARGIN;
    let (answer, closed) = read_until_closed(&mut rd, within).await;
    writer.abort();

    let mut problems = Vec::new();
    match closed {
        None => problems.push(format!("still open {within:?} after connecting")),
        Some(at) => eprintln!("trickler closed after {:?}", at - started),
    }
    if String::from_utf8_lossy(&answer).contains(" 200 ") {
        problems.push(format!("the trickler was answered {}", lossy(&answer)));
    }
    if app.accepted() != 0 {
        problems.push(format!(
            "{} connections reached the app, holding {}",
            app.accepted(),
            lossy(&app.received().concat())
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_after_the_method_is_cut_off_by_the_header_read_timeout() {
    let app = TcpRecorder::start().await;
    let p = untraced("trickle-head", app.addr())
        .arg("--header-read-timeout")
        .arg(millis(HEADER_READ_TIMEOUT))
        .start()
        .await;

    // `GET ` at once: a method token and SP, so this IS HTTP/1 from the start and hyper's
    // header-read timeout (counted from the first byte) applies to the rest.
    let started = Instant::now();
    let stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"GET ").await.expect("writing the method");
    let writer = trickle(wr, b"/slow HTTP/1.1\r\nHost: app\r\n\r\n");
    let within = HEADER_READ_TIMEOUT + MARGIN;
    let (answer, closed) = read_until_closed(&mut rd, within).await;
    writer.abort();

    let mut problems = Vec::new();
    match closed {
        None => problems.push(format!("still open {within:?} after `GET `")),
        Some(at) if at - started < HEADER_READ_TIMEOUT * 8 / 10 => problems.push(format!(
            "closed after {:?}, before the header-read timeout",
            at - started
        )),
        Some(at) => eprintln!("slow head closed after {:?}", at - started),
    }
    if String::from_utf8_lossy(&answer).contains(" 200 ") {
        problems.push(format!("the slow head was answered {}", lossy(&answer)));
    }
    if app.accepted() != 0 {
        problems.push(format!("{} connections reached the app", app.accepted()));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_connection_limit_do_not_stop_a_normal_request() {
    const LIMIT: usize = 100;
    let app = TcpRecorder::start().await;
    let p = untraced("silent-flood", app.addr())
        .arg("--max-connections")
        .arg(LIMIT.to_string())
        .start()
        .await;

    let mut silent = Vec::with_capacity(LIMIT);
    for i in 0..LIMIT {
        let stream = TcpStream::connect(p.inbound())
            .await
            .unwrap_or_else(|e| panic!("connecting silent connection {i}: {e}"));
        silent.push(stream);
    }
    // Accepted in order, the normal request waits behind the silent ones for a free slot: one
    // frees when a silent connection is closed at the detect timeout.
    let started = Instant::now();
    // A few seconds: the detect timeout, plus time to serve on a loaded machine.
    let within = DETECT_TIMEOUT + 2 * MARGIN;
    let served = tokio::time::timeout(within, client::http1_get(p.inbound(), "/normal", &[])).await;
    let took = started.elapsed();

    let mut problems = Vec::new();
    match served {
        Ok((status, _, body)) if status == StatusCode::OK && &body[..] == b"ok" => {
            eprintln!("normal request served after {took:?}");
        }
        Ok((status, _, body)) => {
            problems.push(format!("normal request answered {status} {}", lossy(&body)));
        }
        Err(_) => problems.push(format!(
            "normal request not served within {within:?} behind {LIMIT} silent connections"
        )),
    }
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT + MARGIN;
    let mut still_open = 0;
    for stream in silent {
        let (mut rd, _wr) = stream.into_split();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if read_until_closed(&mut rd, left).await.1.is_none() {
            still_open += 1;
        }
    }
    if still_open > 0 {
        problems.push(format!(
            "{still_open} of {LIMIT} silent connections still open {:?} after connecting",
            started.elapsed()
        ));
    }
    // The normal request's connection, and nothing else (once a slot frees, even a request
    // the client gave up on may still be forwarded: at most one).
    if app.accepted() > 1 {
        problems.push(format!(
            "{} connections reached the app; want only the normal request's",
            app.accepted()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Keeps `stream` busy past the idle timeout (a message every quarter of it, each echoed),
/// then stops sending; returns how long after the last byte the proxy closed it, or `None`.
async fn busy_then_idle(stream: TcpStream, first: &[u8]) -> Option<Duration> {
    let (mut rd, mut wr) = stream.into_split();
    let mut pace = tokio::time::interval(IDLE_TIMEOUT / 4);
    let busy_for = IDLE_TIMEOUT * 2;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < busy_for {
        pace.tick().await;
        let mut msg = first.to_vec();
        msg.extend_from_slice(format!("tick {n}\n").as_bytes());
        wr.write_all(&msg).await.expect("writing while busy");
        let mut echoed = vec![0u8; msg.len()];
        tokio::time::timeout(IDLE_TIMEOUT, rd.read_exact(&mut echoed))
            .await
            .unwrap_or_else(|_| panic!("tick {n} not echoed within {IDLE_TIMEOUT:?}"))
            .unwrap_or_else(|e| {
                panic!(
                    "tick {n} after {:?}: a busy relay was closed: {e}",
                    started.elapsed()
                )
            });
        assert_eq!(echoed, msg, "tick {n}");
        n += 1;
    }
    let idle_since = Instant::now();
    let (rest, closed) = read_until_closed(&mut rd, IDLE_TIMEOUT + MARGIN).await;
    assert!(rest.is_empty(), "bytes after going idle: {}", lossy(&rest));
    closed.map(|at| at - idle_since)
}

fn assert_closed_after_idle(closed_after: Option<Duration>) {
    let Some(after) = closed_after else {
        panic!(
            "the idle relay is still open {:?} after its last byte (--idle-timeout {IDLE_TIMEOUT:?})",
            IDLE_TIMEOUT + MARGIN
        );
    };
    assert!(
        after >= IDLE_TIMEOUT * 7 / 10,
        "closed {after:?} after the last byte, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_on_an_opaque_port_is_closed_after_the_idle_timeout() {
    let echo = TcpEcho::start().await;
    let p = Proxy::builder()
        .name("opaque-idle")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(echo.addr().to_string())
        .arg("--opaque-ports")
        .arg(echo.addr().port().to_string())
        .arg("--idle-timeout")
        .arg(millis(IDLE_TIMEOUT))
        .start()
        .await;

    let stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    assert_closed_after_idle(busy_then_idle(stream, b"").await);
    assert_eq!(echo.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_detected_opaque_relay_is_closed_after_the_idle_timeout() {
    let echo = TcpEcho::start().await;
    let p = Proxy::builder()
        .name("detected-idle")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(echo.addr().to_string())
        .arg("--idle-timeout")
        .arg(millis(IDLE_TIMEOUT))
        .start()
        .await;

    // A first byte no HTTP request, preface or TLS record starts with: opaque at once.
    let stream = TcpStream::connect(p.inbound()).await.expect("connecting");
    assert_closed_after_idle(busy_then_idle(stream, b"\x00\x01binary ").await);
    assert_eq!(echo.connections(), 1);
}
