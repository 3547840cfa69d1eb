//! HTTP/2 clients that attack rather than ask, against the inbound listener: rapid reset
//! (CVE-2023-44487: HEADERS immediately followed by RST_STREAM, thousands of times), a header
//! list over `--max-header-bytes`, an endless CONTINUATION chain (the 2024 "CONTINUATION
//! flood"), a client that opens a window of 2 GiB on 128 downloads and then never reads, and
//! gRPC method names made to inflate `/metrics`. In each, the proxy's memory stays
//! bounded, a well-behaved client keeps being served promptly, and `/metrics` stays small.
//!
//! The attacking clients are the `h2` crate (the one hyper uses), which lets a test reset a
//! stream it has just opened, and raw frames (RFC 9113 §4.1) where even `h2` would be polite.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    apps::{App, Behaviour},
    body::{self, BoxBody},
    client,
    grpc::BytesCodec,
    process::{Proxy, ProxyBuilder},
    serve::{self, Served},
    DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: u64 = 1024 * 1024;

/// A proxy in front of `app` that exports nothing.
fn untraced(name: &str, app: SocketAddr) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.to_string())
}

/// The proxy's resident set size, from `/proc/PID/status`.
async fn rss_bytes(p: &Proxy) -> u64 {
    let path = format!("/proc/{}/status", p.pid());
    let status = tokio::fs::read_to_string(&path)
        .await
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no VmRSS in {path}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// One h2c (prior knowledge) connection for a well-behaved client.
async fn h2c_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
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

/// `GET /{path}` on `sender`: the status and how long the whole exchange took.
async fn timed_get(
    sender: &mut hyper::client::conn::http2::SendRequest<BoxBody>,
    addr: SocketAddr,
    path: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let req = client::request(
        Method::GET,
        &format!("http://{addr}{path}"),
        "",
        &[],
        body::empty(),
    );
    let exchange = async {
        let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let reply = client::read_reply(rsp).await;
        if status != StatusCode::OK || &reply.body[..] != b"ok" {
            return Err(format!("answered {status} {:?}", reply.body));
        }
        Ok(started.elapsed())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

// --- rapid reset -----------------------------------------------------------------------------

/// Pairs the attack sends at least, and at most.
const RESET_PAIRS: usize = 5_000;
const MAX_RESET_PAIRS: usize = 50_000;

/// What the attacker got done.
#[derive(Debug, Default)]
struct Attack {
    pairs: usize,
    connections: usize,
    /// Why each connection ended (GOAWAY, reset, refused), first few kept.
    endings: Vec<String>,
}

/// An untraced proxy in front of `app`, a normal client's connection that has had one answer
/// through it, and the proxy's RSS after that answer.
async fn warm_proxy(
    name: &str,
    app: SocketAddr,
) -> (Proxy, hyper::client::conn::http2::SendRequest<BoxBody>, u64) {
    let p = untraced(name, app).start().await;
    let addr = p.inbound();
    let mut normal = h2c_connection(addr).await;
    timed_get(&mut normal, addr, "/warm-up")
        .await
        .unwrap_or_else(|e| panic!("warm-up request: {e}"));
    let rss = rss_bytes(&p).await;
    (p, normal, rss)
}

/// HEADERS + RST_STREAM(CANCEL) pairs over `h2`, as fast as the connection takes them, on one
/// connection at a time (a new one when the proxy sends GOAWAY or closes). Stops once
/// [`RESET_PAIRS`] are sent and `enough()` says so, or at [`MAX_RESET_PAIRS`].
async fn rapid_reset(addr: SocketAddr, enough: impl Fn() -> bool) -> Attack {
    let mut attack = Attack::default();
    let done = |a: &Attack| a.pairs >= MAX_RESET_PAIRS || (a.pairs >= RESET_PAIRS && enough());
    while !done(&attack) && attack.connections < MAX_RESET_PAIRS {
        attack.connections += 1;
        let ending = match reset_on_one_connection(addr, &mut attack, &done).await {
            Ok(()) => break,
            Err(e) => e,
        };
        if attack.endings.len() < 5 {
            attack.endings.push(ending);
        }
    }
    attack
}

async fn reset_on_one_connection(
    addr: SocketAddr,
    attack: &mut Attack,
    done: &impl Fn(&Attack) -> bool,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(async move { conn.await.map_err(|e| e.to_string()) });
    let result = loop {
        if done(attack) {
            break Ok(());
        }
        sender = match sender.ready().await {
            Ok(s) => s,
            Err(e) => break Err(format!("after {} pairs: {e}", attack.pairs)),
        };
        let req = Request::get(format!("http://{addr}/reset-{}", attack.pairs))
            .body(())
            .expect("a valid request");
        match sender.send_request(req, false) {
            Ok((response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
                attack.pairs += 1;
            }
            Err(e) => break Err(format!("after {} pairs: {e}", attack.pairs)),
        }
        // Let the connection task (and the well-behaved client) run now and then: the attack
        // is one client, not a scheduler starving the test.
        if attack.pairs.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    };
    conn.abort();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_stays_bounded_while_a_normal_client_is_served_promptly() {
    const MIN_SAMPLES: usize = 25;
    const EVERY: Duration = Duration::from_millis(20);
    let app = App::start(Behaviour::status(200, "ok")).await;
    let (p, mut normal, rss_before) = warm_proxy("rapid-reset", app.addr()).await;
    let addr = p.inbound();

    let samples = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = samples.clone();
    let attacker = tokio::spawn(async move {
        rapid_reset(addr, move || {
            counted.load(std::sync::atomic::Ordering::SeqCst) >= MIN_SAMPLES
        })
        .await
    });

    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut rss_peak = rss_before;
    let mut pace = tokio::time::interval(EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    while !attacker.is_finished() && started.elapsed() < Duration::from_secs(60) {
        pace.tick().await;
        let n = latencies.len() + failures.len();
        match timed_get(&mut normal, addr, &format!("/normal-{n}")).await {
            Ok(took) => latencies.push(took),
            Err(e) => failures.push(format!("/normal-{n} at {:?}: {e}", started.elapsed())),
        }
        samples.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        rss_peak = rss_peak.max(rss_bytes(&p).await);
    }
    let attack = tokio::time::timeout(DEADLINE, attacker)
        .await
        .expect("the attack did not stop within 60 s")
        .expect("the attacking task panicked");
    let rss_after = rss_bytes(&p).await;
    let attack_took = started.elapsed();

    latencies.sort();
    let median = latencies.get(latencies.len() / 2).copied();
    let report = format!(
        "{} pairs over {} connections in {attack_took:?} (endings: {:?}); \
         {} normal requests ok, {} failed; median {median:?}, max {:?}; \
         RSS before {}, peak {}, after {}",
        attack.pairs,
        attack.connections,
        attack.endings,
        latencies.len(),
        failures.len(),
        latencies.last(),
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after),
    );
    eprintln!("rapid reset: {report}");

    let mut problems = Vec::new();
    if attack.pairs < RESET_PAIRS {
        problems.push(format!("the attack sent only {} pairs", attack.pairs));
    }
    if !failures.is_empty() {
        let first: Vec<&String> = failures.iter().take(5).collect();
        problems.push(format!("normal requests failed: {first:?}"));
    }
    if latencies.len() < MIN_SAMPLES / 2 {
        problems.push(format!("only {} normal requests answered", latencies.len()));
    }
    if median.is_none_or(|m| m > Duration::from_millis(100)) {
        problems.push(format!("median normal latency {median:?} > 100 ms"));
    }
    if rss_after.saturating_sub(rss_before) >= 64 * MIB {
        problems.push("RSS grew by 64 MiB or more".into());
    }
    assert!(problems.is_empty(), "{}\n{report}", problems.join("\n"));

    // And afterwards, a new connection is served as ever.
    let (status, _, body) = client::h2c_get(addr, "/after", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

// --- header lists: too large, and never ending -----------------------------------------------

const MAX_HEADER_BYTES: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_over_max_header_bytes_is_refused_and_the_proxy_keeps_serving() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("h2-big-head", app.addr())
        .arg("--max-header-bytes")
        .arg(MAX_HEADER_BYTES.to_string())
        .start()
        .await;
    let addr = p.inbound();

    // 32 headers of 1 KiB: twice the limit, so `h2` sends HEADERS and CONTINUATION frames.
    let tcp = TcpStream::connect(addr).await.expect("connecting");
    let (sender, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut req = Request::get(format!("http://{addr}/big"))
        .body(())
        .expect("a request");
    let value = http::HeaderValue::from_str(&"v".repeat(1024)).expect("a header value");
    for i in 0..32 {
        let name: http::HeaderName = format!("x-big-{i}").parse().expect("a header name");
        req.headers_mut().insert(name, value.clone());
    }
    let mut sender = sender.ready().await.expect("h2 ready");
    let outcome = match sender.send_request(req, true) {
        Err(e) => format!("refused on send: {e}"),
        Ok((response, _)) => match tokio::time::timeout(DEADLINE, response).await {
            Err(_) => panic!("neither an answer nor a reset within {DEADLINE:?}"),
            Ok(Ok(rsp)) => {
                assert_eq!(
                    rsp.status(),
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "a header list over the limit was answered"
                );
                "431".into()
            }
            Ok(Err(e)) => format!("stream or connection error: {e}"),
        },
    };
    eprintln!("oversized header list: {outcome}");
    conn.abort();
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());

    let (status, _, body) = client::h2c_get(addr, "/after", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

/// An HTTP/2 frame header (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
/// The default SETTINGS_MAX_FRAME_SIZE: no larger frame is allowed before the peer says so.
const MAX_FRAME: usize = 16_384;

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), the prefix byte's other bits 0.
fn hpack_int(out: &mut Vec<u8>, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(v as u8);
        return;
    }
    out.push(max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 7, value.len());
    out.extend_from_slice(value);
}

/// What the proxy did about the flood.
#[derive(Debug)]
enum CutOff {
    GoAway(u32),
    Reset(u32),
    Answered,
    Closed,
}

impl std::fmt::Display for CutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GoAway(code) => write!(f, "GOAWAY (error code {code:#x})"),
            Self::Reset(code) => write!(f, "RST_STREAM on stream 1 (error code {code:#x})"),
            Self::Answered => f.write_str("a response HEADERS on stream 1"),
            Self::Closed => f.write_str("the connection closed"),
        }
    }
}

/// Reads frames until the proxy cuts stream 1 or the connection off.
async fn wait_for_cut_off(rd: &mut tokio::net::tcp::OwnedReadHalf) -> CutOff {
    let mut head = [0u8; 9];
    loop {
        if rd.read_exact(&mut head).await.is_err() {
            return CutOff::Closed;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            return CutOff::Closed;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let code = |at: usize| {
            payload
                .get(at..at + 4)
                .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        };
        match head[3] {
            GOAWAY => return CutOff::GoAway(code(4)),
            RST_STREAM if stream == 1 => return CutOff::Reset(code(0)),
            HEADERS if stream == 1 => return CutOff::Answered,
            _ => {}
        }
    }
}

const END_HEADERS: u8 = 0x4;

/// A request's header block: `:method GET`, `:scheme http`, `:path /` (static table),
/// `:authority`, then 1 KiB `x-flood-N` headers until it is at least `len` bytes.
fn header_block(authority: &str, len: usize) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84];
    hpack_literal(&mut block, b":authority", authority.as_bytes());
    let value = vec![b'v'; 1024];
    let mut i = 0;
    while block.len() < len {
        hpack_literal(&mut block, format!("x-flood-{i}").as_bytes(), &value);
        i += 1;
    }
    block
}

/// A connection's opening for stream 1: the preface, an empty SETTINGS and `block` in a
/// HEADERS frame (END_STREAM) and CONTINUATION frames of `fragment` bytes each, the last with
/// END_HEADERS only if `end`. One element per write.
fn request_frames(block: &[u8], fragment: usize, end: bool) -> Vec<Vec<u8>> {
    let fragments: Vec<&[u8]> = block.chunks(fragment).collect();
    let last = fragments.len() - 1;
    let end_headers = |i: usize| if end && i == last { END_HEADERS } else { 0 };
    let mut writes = Vec::with_capacity(fragments.len());
    let mut first = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    first.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
    first.extend_from_slice(&frame(
        HEADERS,
        END_STREAM | end_headers(0),
        1,
        fragments[0],
    ));
    writes.push(first);
    for (i, f) in fragments.iter().enumerate().skip(1) {
        writes.push(frame(CONTINUATION, end_headers(i), 1, f));
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_the_proxy_keeps_serving() {
    /// Header block bytes the flood offers: 256 times the limit, never ending the block.
    const FLOOD_BYTES: usize = 4 * 1024 * 1024;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = untraced("continuation-flood", app.addr())
        .arg("--max-header-bytes")
        .arg(MAX_HEADER_BYTES.to_string())
        .start()
        .await;
    let addr = p.inbound();

    // The same frames, ended under the limit, are a request: so the flood below is refused
    // for its size, not for a mistake in these hand-made frames.
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut rd, mut wr) = stream.into_split();
    for w in request_frames(&header_block(&addr.to_string(), 4096), 1024, true) {
        wr.write_all(&w)
            .await
            .expect("writing a small header block");
    }
    let answered = tokio::time::timeout(DEADLINE, wait_for_cut_off(&mut rd)).await;
    assert!(
        matches!(answered, Ok(CutOff::Answered)),
        "a 4 KiB header block in CONTINUATION frames was not answered: {:?}",
        answered.map(|c| c.to_string())
    );
    let seen = app.seen_one();
    assert!(seen.headers.contains_key("x-flood-0"), "{seen:?}");
    drop((rd, wr));
    let rss_before = rss_bytes(&p).await;

    let flood = request_frames(
        &header_block(&addr.to_string(), FLOOD_BYTES),
        MAX_FRAME,
        false,
    );
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for w in flood {
            if wr.write_all(&w).await.is_err() {
                break;
            }
            sent += w.len();
        }
        sent
    });
    let cut_off = tokio::time::timeout(DEADLINE, wait_for_cut_off(&mut rd)).await;
    let sent = tokio::time::timeout(DEADLINE, writer)
        .await
        .map(|r| r.expect("the flooding task panicked"));
    let rss_after = rss_bytes(&p).await;
    let outcome = match &cut_off {
        Ok(c) => c.to_string(),
        Err(_) => "nothing".into(),
    };
    let report = format!(
        "cut off: {outcome}; bytes written: {sent:?} of a {FLOOD_BYTES}-byte header block; \
         RSS before {}, after {}",
        mib(rss_before),
        mib(rss_after)
    );
    eprintln!("continuation flood: {report}");

    let mut problems = Vec::new();
    if cut_off.is_err() {
        problems.push(format!(
            "no GOAWAY, RST_STREAM, answer or close within {DEADLINE:?} of an endless header block"
        ));
    }
    if rss_after.saturating_sub(rss_before) >= 64 * MIB {
        problems.push("RSS grew by 64 MiB or more".into());
    }
    if app.seen().len() != 1 {
        problems.push(format!("the app saw the flood: {:?}", app.seen().get(1)));
    }
    assert!(problems.is_empty(), "{}\n{report}", problems.join("\n"));

    let (status, _, body) = client::h2c_get(addr, "/after", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

// --- a client that asks for everything and reads nothing -----------------------------------

const WINDOW_UPDATE: u8 = 0x8;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_WINDOW: u32 = 0x7fff_ffff;

/// Until the proxy's RSS has stayed within 512 KiB for 2 s (at most 30 s): the peak it saw.
async fn rss_settled(p: &Proxy) -> u64 {
    let started = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    loop {
        samples.push(rss_bytes(p).await);
        let last = &samples[samples.len().saturating_sub(8)..];
        let spread = last.iter().max().unwrap() - last.iter().min().unwrap();
        if (last.len() == 8 && spread < MIB / 2) || started.elapsed() > Duration::from_secs(30) {
            return *samples.iter().max().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_downloads_holds_a_bounded_share_of_the_proxys_memory() {
    /// Downloads on the one connection, each larger than anything the proxy should buffer.
    const STREAMS: u32 = 128;
    const BODY: usize = 16 << 20;
    let big = Bytes::from(vec![b'x'; BODY]);
    let app = App::start(Behaviour::custom(move |seen| {
        let body = match seen.uri.path().starts_with("/unread") {
            true => big.clone(),
            false => Bytes::from_static(b"ok"),
        };
        http::Response::new(http_body_util::Full::new(body))
    }))
    .await;
    let (p, mut normal, rss_before) = warm_proxy("h2-unread", app.addr()).await;
    let addr = p.inbound();

    // A window as large as HTTP/2 allows, for every stream and the connection, so that only
    // the proxy's own limits stop it sending; then 128 GETs, and not one byte read.
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (rd, mut wr) = stream.into_split();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend_from_slice(&MAX_WINDOW.to_be_bytes());
    opening.extend_from_slice(&frame(SETTINGS, 0, 0, &settings));
    opening.extend_from_slice(&frame(
        WINDOW_UPDATE,
        0,
        0,
        &(MAX_WINDOW - 65_535).to_be_bytes(),
    ));
    for i in 0..STREAMS {
        let mut block = vec![0x82, 0x86];
        hpack_literal(&mut block, b":path", format!("/unread-{i}").as_bytes());
        hpack_literal(&mut block, b":authority", addr.to_string().as_bytes());
        opening.extend_from_slice(&frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    wr.write_all(&opening).await.expect("writing the requests");
    let rss_stalled = rss_settled(&p).await;
    let seen = (app.seen().iter())
        .filter(|r| r.uri.path().starts_with("/unread"))
        .count();

    // Meanwhile a client that reads is served as ever.
    let served = timed_get(&mut normal, addr, "/ok").await;
    drop((rd, wr));

    let held = rss_stalled.saturating_sub(rss_before);
    let report = format!(
        "{seen} of {STREAMS} downloads reached the app; RSS before {}, stalled {} \
         ({} held, {} per stream); a reading client: {served:?}",
        mib(rss_before),
        mib(rss_stalled),
        mib(held),
        mib(held / u64::from(STREAMS)),
    );
    eprintln!("unread downloads: {report}");
    let mut problems = Vec::new();
    if seen < STREAMS as usize {
        problems.push(format!("only {seen} downloads reached the app"));
    }
    // With 64 KiB of send buffer per stream this held 7.5-17.6 MiB in ten runs (the buffered
    // frames pin the read buffers they were cut from); with hyper's default 400 KiB, 32-68 MiB.
    if held >= 24 * MIB {
        problems.push("the stalled downloads held 24 MiB or more".into());
    }
    if let Err(e) = &served {
        problems.push(format!("a reading client was not served: {e}"));
    }
    assert!(problems.is_empty(), "{}\n{report}", problems.join("\n"));
}

// --- /metrics amplification ------------------------------------------------------------------

/// A gRPC server whose every path is a raw-bytes unary echo (status OK), so that a method name
/// the client makes up is one the "service" answers for, and the proxy names it in RED labels.
/// Its header list limit is 1 MiB, so 60 KB paths reach it.
fn any_method_echo(listener: tokio::net::TcpListener) -> Served {
    serve::accept_loop(listener, |stream, _| async move {
        let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            let echo = tower::service_fn(|r: tonic::Request<Bytes>| async move {
                Ok::<_, tonic::Status>(tonic::Response::new(r.into_inner()))
            });
            Ok::<_, Infallible>(grpc.unary(echo, req).await)
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.max_header_list_size(1 << 20);
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
}

/// `GET /metrics` with `accept`, read up to `limit` body bytes: the body's size (from
/// `content-length` when given, so it is known even when not read to the end) and what was read.
async fn bounded_scrape(p: &Proxy, accept: &str, limit: usize) -> (u64, String) {
    let admin = p.admin();
    let mut stream = TcpStream::connect(admin)
        .await
        .expect("connecting to admin");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("writing the scrape");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
            if head_end.is_some_and(|h| got.len() - h - 4 > limit) {
                break;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the scrape took over 30 s");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = &got[head_end + 4..];
    let len = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(body.len() as u64);
    (len, String::from_utf8_lossy(body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_with_60_kb_method_names_leave_metrics_under_1_mib() {
    const CALLS: usize = 300;
    const NAME_BYTES: usize = 60 * 1024;
    const LIMIT: usize = MIB as usize;
    const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";
    const TEXT: &str = "text/plain;version=0.0.4";

    let app = any_method_echo(serve::bind_loopback().await);
    // Headers as large as the names need: this is about label values, not head limits.
    let p = untraced("metrics-amplification", app.addr())
        .arg("--max-header-bytes")
        .arg((128 * 1024).to_string())
        .start()
        .await;
    let addr = p.inbound();

    let mut sender = h2c_connection(addr).await;
    let message: &[u8] = b"\x00\x00\x00\x00\x02hi"; // one uncompressed gRPC message, "hi"
    for i in 0..CALLS {
        let method = format!("M{i:03}{}", "m".repeat(NAME_BYTES - 4));
        let uri = format!("http://{addr}/tracemesh.test.Flood/{method}");
        let req = client::request(
            Method::POST,
            &uri,
            "",
            &[("content-type", "application/grpc"), ("te", "trailers")],
            body::full(message),
        );
        let rsp = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("call {i} not answered within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        let reply = client::read_reply(rsp).await;
        let status = reply
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| reply.headers.get("grpc-status"));
        assert_eq!(
            status.map(|s| s.as_bytes()),
            Some(&b"0"[..]),
            "call {i}: {} {:?}",
            reply.status,
            reply.headers
        );
    }

    // RED is observed as each response ends; poll until all calls are counted. Every scrape is
    // bounded, so a /metrics that has already blown up is measured, not downloaded.
    let ok_calls = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("tracemesh_requests_total{") && l.contains("grpc_status=\"0\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (text_len, text) = loop {
        let (len, text) = bounded_scrape(&p, TEXT, LIMIT).await;
        let done = len > LIMIT as u64 || ok_calls(&text) >= CALLS as f64;
        if done || tokio::time::Instant::now() >= deadline {
            break (len, text);
        }
        tokio::time::sleep(support::POLL).await;
    };
    let (om_len, om) = bounded_scrape(&p, OPENMETRICS, LIMIT).await;
    let rss = rss_bytes(&p).await;
    let report = format!(
        "text /metrics {text_len} bytes, OpenMetrics {om_len} bytes, proxy RSS {}",
        mib(rss)
    );
    eprintln!("metrics amplification: {report}");

    let mut problems = Vec::new();
    if text_len >= LIMIT as u64 {
        problems.push(format!(
            "text /metrics is {text_len} bytes, not under 1 MiB"
        ));
    }
    if om_len >= LIMIT as u64 {
        problems.push(format!(
            "OpenMetrics /metrics is {om_len} bytes, not under 1 MiB"
        ));
    }
    if text_len < LIMIT as u64 {
        if ok_calls(&text) != CALLS as f64 {
            problems.push(format!(
                "want {CALLS} calls counted with grpc_status=\"0\", got {}",
                ok_calls(&text)
            ));
        }
        let longest = text
            .lines()
            .chain(om.lines())
            .map(str::len)
            .max()
            .unwrap_or(0);
        if longest > 2048 {
            problems.push(format!("a /metrics line is {longest} bytes long"));
        }
    }
    assert!(problems.is_empty(), "{}\n{report}", problems.join("\n"));
}
