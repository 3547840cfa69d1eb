//! The access log (`--access-log json`) through a running proxy: every line decoded and matched
//! field by field with the span exported for the same request (same trace and span IDs), a
//! probe's line (logged, not exported), the query string left out, a failing upstream's
//! `error_type`; and a stdout nobody reads: requests are still answered, lines are dropped and
//! counted, and logging resumes once stdout drains.

mod support;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use support::{
    apps::{App, Behaviour},
    body, client,
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind},
    process::{metric_value, reserve_outbound, Proxy, ProxyBuilder},
    DEADLINE,
};

/// The proxy's stdout lines, decoded, once there are `n`.
async fn lines(proxy: &Proxy, n: usize) -> Vec<Value> {
    support::eventually(DEADLINE, "access-log lines", || async {
        let out = proxy.stdout();
        (out.len() >= n).then(|| {
            out.iter()
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))
                })
                .collect::<Vec<_>>()
        })
    })
    .await
}

fn field<'a>(line: &'a Value, key: &str) -> &'a Value {
    line.get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
}

/// Checks one line against the span exported for it.
fn assert_matches_span(line: &Value, span: &ReceivedSpan) {
    let ctx = format!("{line}\n{span:#?}");
    assert_eq!(field(line, "trace_id"), span.trace_id.as_str(), "{ctx}");
    assert_eq!(field(line, "span_id"), span.span_id.as_str(), "{ctx}");
    let direction = match span.kind {
        SpanKind::Server => "inbound",
        SpanKind::Client => "outbound",
        other => panic!("{other:?}"),
    };
    assert_eq!(field(line, "direction"), direction, "{ctx}");
    assert_eq!(
        field(line, "method"),
        span.attr_str("http.request.method").unwrap(),
        "{ctx}"
    );
    assert_eq!(
        field(line, "path"),
        span.attr_str("url.path").unwrap(),
        "{ctx}"
    );
    assert_eq!(
        field(line, "route").as_str(),
        span.attr_str("http.route"),
        "{ctx}"
    );
    assert_eq!(
        field(line, "status").as_i64(),
        span.attr_int("http.response.status_code"),
        "{ctx}"
    );
    assert_eq!(
        field(line, "error_type").as_str(),
        span.attr_str("error.type"),
        "{ctx}"
    );
    assert_eq!(field(line, "sampled"), true, "{ctx}");
    assert_eq!(field(line, "sampling_reason"), "head", "{ctx}");
    // The same record: the duration is the span's, to the microsecond it is printed with.
    let span_ms = (span.end_unix_nanos - span.start_unix_nanos) as f64 / 1e6;
    let line_ms = field(line, "duration_ms").as_f64().unwrap();
    assert!(
        (span_ms - line_ms).abs() <= 0.001,
        "{span_ms} vs {line_ms}: {ctx}"
    );
    // `time` is the span's start, in RFC 3339 with microseconds.
    let time = field(line, "time").as_str().unwrap();
    let start = humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{time}: {e}"));
    let start_us = start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert_eq!(start_us, span.start_unix_nanos / 1000, "{ctx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_match_the_exported_spans_field_by_field() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::custom(|_| {
        http::Response::builder()
            .status(201)
            .body(http_body_util::Full::new(Bytes::from_static(b"created!")))
            .unwrap()
    }))
    .await;
    let out = reserve_outbound();
    let proxy = Proxy::exporting_to(&otlp, "logged")
        .args(out.flag())
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--access-log")
        .arg("json")
        .start()
        .await;

    // Inbound: a POST with an 11-byte body, its query string left out of `path`.
    let reply = client::http1_request(
        proxy.inbound(),
        Method::POST,
        "/users/42/orders?token=secret",
        &[],
        body::full(&b"hello world"[..]),
    )
    .await;
    assert_eq!(reply.status, 201);
    // A probe: logged, never exported.
    let (status, _, _) = client::http1_get(proxy.inbound(), "/healthz", &[]).await;
    assert_eq!(status, 201);
    // Outbound to a port nobody listens on: 502, with the span's error.type.
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (status, _, _) =
        client::http1_proxy_get(proxy.outbound(), &format!("http://{dead}/x/7"), &[]).await;
    assert_eq!(status, 502);

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    let log = lines(&proxy, 3).await;
    assert_eq!(log.len(), 3, "{log:#?}");
    let by_span: BTreeMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    assert_eq!(spans.len(), 2, "{}", tree(&spans));

    let post = &log[0];
    assert_matches_span(post, by_span[field(post, "span_id").as_str().unwrap()]);
    assert_eq!(field(post, "path"), "/users/42/orders");
    assert_eq!(field(post, "route"), "/users/{id}/orders");
    assert_eq!(field(post, "bytes_in"), 11);
    assert_eq!(field(post, "bytes_out"), 8);
    assert_eq!(field(post, "upstream"), app.addr().to_string().as_str());
    assert_eq!(field(post, "grpc_status"), &Value::Null);
    assert!(field(post, "client")
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    let probe = &log[1];
    assert_eq!(field(probe, "path"), "/healthz");
    assert_eq!(field(probe, "status"), 201);
    assert_eq!(field(probe, "sampled"), false, "{probe}");
    assert_eq!(field(probe, "sampling_reason"), &Value::Null);
    assert!(
        !by_span.contains_key(field(probe, "span_id").as_str().unwrap()),
        "a probe is not exported"
    );
    assert_eq!(field(probe, "trace_id").as_str().unwrap().len(), 32);

    let failed = &log[2];
    assert_matches_span(failed, by_span[field(failed, "span_id").as_str().unwrap()]);
    assert_eq!(field(failed, "direction"), "outbound");
    assert_eq!(field(failed, "status"), 502);
    assert_eq!(field(failed, "route"), "/x/{id}");
    assert_eq!(
        field(failed, "error_type"),
        "connection_refused",
        "{failed}"
    );
    assert_eq!(field(failed, "bytes_in"), 0);
}

/// One keep-alive connection sending `n` GETs in turn; each must be answered within `each`.
async fn keep_alive_gets(addr: SocketAddr, n: usize, each: Duration) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, body::BoxBody>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for i in 0..n {
        let req = client::request(Method::GET, "/load", &addr.to_string(), &[], body::empty());
        let rsp = tokio::time::timeout(each, sender.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("request {i} not answered within {each:?}"))
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let _ = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap();
    }
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_stdout_never_holds_up_requests_and_dropped_lines_are_counted() {
    let app = App::start(Behaviour::status(200, "ok")).await;
    let mut proxy = ProxyBuilder::new()
        .name("blocked")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--access-log")
        .arg("json")
        .hold_stdout()
        .start()
        .await;
    // More lines than the queue (4,096) and the pipe (64 KiB) hold together, over 8 connections.
    let each = Duration::from_secs(5);
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(keep_alive_gets(proxy.inbound(), 1500, each)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = proxy.metrics().await;
    let dropped = metric_value(&metrics, "tracemesh_access_log_dropped_total").unwrap();
    assert!(
        (1000.0..12_000.0).contains(&dropped),
        "12,000 requests, a blocked stdout: {dropped} lines dropped"
    );

    // Once stdout is read again, what was queued comes out (the queue drains below its
    // capacity before the next request, so that one is not dropped), and new requests are
    // logged again; every request was either logged or counted as dropped.
    proxy.release_stdout();
    lines(&proxy, 4096).await;
    let (status, _, _) = client::http1_get(proxy.inbound(), "/after", &[]).await;
    assert_eq!(status, 200);
    let log = support::eventually(DEADLINE, "the line of /after", || async {
        let log = lines(&proxy, 1).await;
        log.iter()
            .any(|l| field(l, "path") == "/after")
            .then_some(log)
    })
    .await;
    assert_eq!(
        log.len() as f64 + dropped,
        12_001.0,
        "every request is either logged or counted as dropped: {} lines, {dropped} dropped",
        log.len()
    );
}
