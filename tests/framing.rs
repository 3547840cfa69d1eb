//! HTTP/1 framing that must never reach the app ambiguously: request smuggling through both
//! `Content-Length` and `Transfer-Encoding`, conflicting lengths, transfer codings the proxy
//! cannot frame by, invalid chunk sizes, and request lines hyper rejects (RFC 9112 §3, §6.1,
//! §6.3, §7.1 and §11.2). Each request is written raw, in one write, to the inbound listener in
//! front of a [`TcpRecorder`] that keeps every byte the proxy sent it.
//!
//! The contract: the client gets exactly one `HTTP/1.1 400`, the proxy closes the connection,
//! and the app receives zero bytes. "Zero" is checked without sleeping: after each refused
//! request, a valid probe on a new connection must reach the recorder, and by then the recorder
//! must hold nothing but probes. Cases are collected, so one run reports every form that fails.
//!
//! A body that fails part-way (a bad chunk after a good one) is the client's fault: 400 and
//! `error_type="client_body_error"` on `tracemesh_requests_total`, never a 502 blamed on the app.

mod support;

use std::{net::SocketAddr, time::Duration};

use http::StatusCode;
use support::{
    client,
    process::{Proxy, ProxyBuilder},
    recorder::TcpRecorder,
    DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long the proxy may take to answer a refused request and close the connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// A proxy in front of `app` that exports nothing.
fn untraced(name: &str, app: SocketAddr) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.to_string())
}

/// One malformed request, as the client writes it.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        bytes: bytes.into(),
    }
}

/// What came back on one connection.
struct Answer {
    bytes: Vec<u8>,
    /// Whether the proxy closed (EOF or reset) within [`CLOSE_WITHIN`].
    closed: bool,
}

impl Answer {
    fn text(&self) -> String {
        format!("{:?}", String::from_utf8_lossy(&self.bytes))
    }

    /// The status line of each response in the answer, read one after another by their
    /// `content-length` (a response without one runs to the end; a cut-off head is shown raw).
    fn status_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = &self.bytes[..];
        while !rest.is_empty() {
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                lines.push(format!(
                    "a partial head {:?}",
                    String::from_utf8_lossy(rest)
                ));
                break;
            };
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let body = &rest[end + 4..];
            let len = head
                .split("\r\n")
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(body.len());
            lines.push(head.split("\r\n").next().unwrap_or_default().to_owned());
            rest = &body[len.min(body.len())..];
        }
        lines
    }
}

/// Writes `bytes` in one write on a new connection, then reads until the proxy closes or
/// [`CLOSE_WITHIN`] passes. A reset counts as a close, keeping what arrived before it.
async fn send_once(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    let (bytes, closed) = support::client::read_until_closed(&mut stream, CLOSE_WITHIN).await;
    Answer { bytes, closed }
}

/// Whether `status_line` is exactly an HTTP/1.1 400.
fn is_400(status_line: &str) -> bool {
    let mut parts = status_line.splitn(3, ' ');
    parts.next() == Some("HTTP/1.1") && parts.next() == Some("400")
}

/// Sends a valid `GET /probe-{n}` on a new connection and waits for the recorder to hold it:
/// anything the proxy forwarded for an earlier, refused request was written before this.
async fn probe(p: &Proxy, app: &TcpRecorder, n: usize) {
    let path = format!("/probe-{n}");
    let (status, _, body) =
        tokio::time::timeout(DEADLINE, client::http1_get(p.inbound(), &path, &[]))
            .await
            .unwrap_or_else(|_| panic!("probe {path} not answered within {DEADLINE:?}"));
    assert_eq!(status, StatusCode::OK, "probe {path}");
    assert_eq!(&body[..], b"ok", "probe {path}");
    let line = format!("GET {path} HTTP/1.1\r\n");
    assert!(
        app.received()
            .iter()
            .any(|c| c.starts_with(line.as_bytes())),
        "probe {path} answered, but the recorder does not hold it"
    );
}

/// Recorded connections that are not probes.
fn not_probes(app: &TcpRecorder) -> Vec<Vec<u8>> {
    app.received()
        .into_iter()
        .filter(|c| !c.is_empty() && !c.starts_with(b"GET /probe-"))
        .collect()
}

/// Runs each case against one proxy; returns one line per broken expectation.
async fn refuse_all(p: &Proxy, app: &TcpRecorder, cases: &[Case]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut leaked = 0;
    for (n, c) in cases.iter().enumerate() {
        let answer = send_once(p.inbound(), &c.bytes).await;
        let lines = answer.status_lines();
        if !lines.first().is_some_and(|l| is_400(l)) || lines.len() != 1 {
            problems.push(format!(
                "{}: want exactly one `HTTP/1.1 400` status line, got {lines:?} in {}",
                c.name,
                answer.text()
            ));
        }
        if !answer.closed {
            problems.push(format!(
                "{}: connection still open {CLOSE_WITHIN:?} after the request",
                c.name
            ));
        }
        probe(p, app, n).await;
        let seen = not_probes(app);
        for bytes in &seen[leaked..] {
            problems.push(format!(
                "{}: the app received {} bytes: {:?}",
                c.name,
                bytes.len(),
                String::from_utf8_lossy(bytes)
            ));
        }
        leaked = seen.len();
    }
    problems
}

fn assert_no_problems(problems: &[String], cases: usize) {
    assert!(
        problems.is_empty(),
        "{} problems over {cases} cases:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_body_framing_is_refused_400_and_never_reaches_the_app() {
    let app = TcpRecorder::start().await;
    let p = untraced("framing", app.addr()).start().await;

    let cases = [
        case(
            "Content-Length then Transfer-Encoding: chunked, a request smuggled in the body",
            format!(
                "POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
        ),
        case(
            "Transfer-Encoding: chunked then Content-Length, a request smuggled in the body",
            format!(
                "POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 4\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            ),
        ),
        case(
            "two conflicting Content-Length headers",
            "POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        case(
            "one Content-Length with two values",
            "POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        case(
            "Transfer-Encoding: gzip (chunked not final)",
            "POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        ),
        case(
            "Transfer-Encoding: chunked, gzip",
            "POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, gzip\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "Transfer-Encoding: identity",
            "POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: identity\r\n\r\nhello",
        ),
        case(
            "Transfer-Encoding on an HTTP/1.0 request",
            "POST /a HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    let problems = refuse_all(&p, &app, &cases).await;
    assert_no_problems(&problems, cases.len());
}

/// A later request on a keep-alive connection gets the same answer as a first one: hyper, left
/// alone, would forward it with chunked framing; the proxy refuses it, and the app sees only
/// the first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_on_a_later_keep_alive_request_is_refused_400() {
    let app = TcpRecorder::start().await;
    let p = untraced("framing-later", app.addr()).start().await;

    let forms = [
        format!(
            "POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
            5 + SMUGGLED.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: app\r\ntransfer-encoding: chunked\r\n\
             content-length: 4\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
            SMUGGLED.len()
        ),
    ];
    let mut problems = Vec::new();
    for (n, smuggle) in forms.iter().enumerate() {
        let mut stream = TcpStream::connect(p.inbound()).await.unwrap();
        let first = format!("GET /first-{n} HTTP/1.1\r\nHost: app\r\n\r\n");
        stream.write_all(first.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
                .await
                .expect("the first request's answer")
                .unwrap();
            assert!(n > 0, "closed after the first request: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
        stream.write_all(smuggle.as_bytes()).await.unwrap();
        let (bytes, closed) = client::read_until_closed(&mut stream, CLOSE_WITHIN).await;
        let answer = Answer { bytes, closed };
        let lines = answer.status_lines();
        if lines.len() != 1 || !is_400(&lines[0]) {
            problems.push(format!(
                "form {n}: want one `HTTP/1.1 400`, got {lines:?} in {}",
                answer.text()
            ));
        }
        if !answer.closed {
            problems.push(format!("form {n}: connection still open"));
        }
        probe(&p, &app, n).await;
    }
    let seen: Vec<String> = not_probes(&app)
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    if seen.len() != forms.len() || seen.iter().any(|c| !c.starts_with("GET /first-")) {
        problems.push(format!(
            "the app may see only the first requests, saw {seen:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_sizes_are_refused_400_and_never_reach_the_app() {
    let app = TcpRecorder::start().await;
    let p = untraced("chunk-sizes", app.addr()).start().await;

    let chunked = |size: &str| {
        format!(
            "POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             {size}\r\nhello\r\n0\r\n\r\n"
        )
    };
    let cases = [
        case("chunk size `zz`", chunked("zz")),
        case("chunk size `-5`", chunked("-5")),
        case(
            "chunk size `ffffffffffffffffffff` (overflows 64 bits)",
            chunked("ffffffffffffffffffff"),
        ),
    ];
    let problems = refuse_all(&p, &app, &cases).await;
    assert_no_problems(&problems, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_hyper_rejects_are_400_and_never_relayed_as_opaque() {
    let app = TcpRecorder::start().await;
    let p = untraced("request-lines", app.addr()).start().await;

    let with_head = |line: &[u8]| {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"\r\nHost: app\r\nContent-Length: 0\r\n\r\n");
        bytes
    };
    let cases = [
        case(
            "`POST /a b HTTP/1.1` (SP in the target)",
            with_head(b"POST /a b HTTP/1.1"),
        ),
        case(
            "`GET /a HTTP/1.1 ` (trailing SP)",
            with_head(b"GET /a HTTP/1.1 "),
        ),
        case("tab in the target", with_head(b"GET /a\tb HTTP/1.1")),
        case("NUL in the target", with_head(b"GET /a\0b HTTP/1.1")),
        case(
            "`GET  /a HTTP/1.1` (two SPs)",
            with_head(b"GET  /a HTTP/1.1"),
        ),
        case("lowercase `http/1.1`", with_head(b"GET /a http/1.1")),
        // What laxer servers accept: a lone CR before the line (nginx, llhttp), HTAB after the
        // method (Tomcat). Relayed raw, each could carry a smuggled request past the proxy.
        case(
            "a lone CR before the request line, with a smuggled request",
            format!(
                "\rPOST / HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
        ),
        case("HTAB after the method", with_head(b"GET\t/a HTTP/1.1")),
        // The reproduction: a line detection used to call opaque, carrying a smuggle.
        case(
            "`POST /a b HTTP/1.1` with Content-Length, Transfer-Encoding and a smuggled request",
            format!(
                "POST /a b HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
        ),
    ];
    let problems = refuse_all(&p, &app, &cases).await;
    assert_no_problems(&problems, cases.len());
}

/// `Content-Length: 5` followed by ten bytes and a second request. HTTP/1.1 pipelining makes
/// the surplus the start of the next request, so `WORLD` + `GET /second HTTP/1.1` is parsed
/// (by hyper, as by any HTTP/1.1 server) as a request with the extension method `WORLDGET`.
/// That is not ambiguous: the proxy parsed it, answers it and counts it. What must never
/// happen is the app seeing bytes the proxy did not parse as a request: the surplus glued to
/// the first body, or relayed raw. So: the first request reaches the app with exactly 5 body
/// bytes, anything else only as the proxy's own re-framed `WORLDGET /second`, and the client
/// gets one answer per request the app saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_body_than_content_length_reaches_the_app_only_as_requests_the_proxy_parsed() {
    let app = TcpRecorder::start().await;
    let p = untraced("cl-surplus", app.addr()).start().await;

    let answer = send_once(
        p.inbound(),
        b"POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhelloWORLD\
          GET /second HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.closed,
        "not closed after `Connection: close`: {}",
        answer.text()
    );
    probe(&p, &app, 0).await;

    let seen = not_probes(&app);
    let mut problems = Vec::new();
    let first: Vec<&Vec<u8>> = seen
        .iter()
        .filter(|c| c.starts_with(b"POST /a HTTP/1.1\r\n"))
        .collect();
    match first[..] {
        [c] => {
            let end = c.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
            let body = end.map(|i| &c[i..]);
            if body != Some(&b"hello"[..]) {
                problems.push(format!(
                    "the first request's body is not exactly `hello`: {:?}",
                    String::from_utf8_lossy(c)
                ));
            }
        }
        _ => problems.push(format!(
            "want one `POST /a` at the app, saw {}",
            first.len()
        )),
    }
    let others: Vec<String> = seen
        .iter()
        .filter(|c| !c.starts_with(b"POST /a HTTP/1.1\r\n"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    if others.len() > 1
        || others
            .iter()
            .any(|c| !c.starts_with("WORLDGET /second HTTP/1.1\r\n"))
    {
        problems.push(format!(
            "besides `POST /a`, the app may see only the parsed `WORLDGET /second`: {others:?}"
        ));
    }
    let oks = answer
        .status_lines()
        .iter()
        .filter(|l| l.starts_with("HTTP/1.1 200 "))
        .count();
    if oks != seen.len() {
        problems.push(format!(
            "the client got {oks} answers from the app for {} requests it saw: {}",
            seen.len(),
            answer.text()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `tracemesh_requests_total` lines of inbound `POST`s.
fn post_series(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("tracemesh_requests_total{") && l.contains("method=\"POST\""))
        .map(str::to_owned)
        .collect()
}

fn series_sum(lines: &[String], labels: &[&str]) -> f64 {
    lines
        .iter()
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_part_way_is_a_client_400_not_an_upstream_502() {
    let app = TcpRecorder::start().await;
    let p = untraced("body-error", app.addr()).start().await;

    let cases = [
        case(
            "a good chunk, then chunk size `zz`",
            "POST /part-way HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        ),
        case(
            "a chunk with more data than its size announced",
            "POST /part-way HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhelloWORLD\r\n0\r\n\r\n",
        ),
    ];
    let mut problems = Vec::new();
    for c in &cases {
        let answer = send_once(p.inbound(), &c.bytes).await;
        let lines = answer.status_lines();
        if !lines.first().is_some_and(|l| is_400(l)) {
            problems.push(format!(
                "{}: want `HTTP/1.1 400`, got {lines:?} in {}",
                c.name,
                answer.text()
            ));
        }
        if !answer.closed {
            problems.push(format!(
                "{}: connection still open after {CLOSE_WITHIN:?}",
                c.name
            ));
        }
    }

    // RED is observed when the response ends, just after the client read it: poll (bounded
    // scrapes, all small) until both requests are counted, then look at how.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let lines = loop {
        let lines = post_series(&p.metrics().await);
        if series_sum(&lines, &[]) >= cases.len() as f64 || tokio::time::Instant::now() >= deadline
        {
            break lines;
        }
        tokio::time::sleep(support::POLL).await;
    };
    let client_errors = series_sum(
        &lines,
        &["status_code=\"400\"", "error_type=\"client_body_error\""],
    );
    if client_errors != cases.len() as f64 {
        problems.push(format!(
            "want {} requests with status_code=\"400\",error_type=\"client_body_error\", \
             got {client_errors}",
            cases.len()
        ));
    }
    if lines
        .iter()
        .any(|l| l.contains("status_code=\"502\"") || l.contains("error_type=\"upstream_error\""))
    {
        problems.push("a client's bad body was counted as the app's 502/upstream_error".into());
    }
    assert!(
        problems.is_empty(),
        "{}\ninbound POST series:\n{}",
        problems.join("\n"),
        lines.join("\n")
    );
}
