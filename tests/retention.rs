//! Deferred sampling across the mesh, through running proxies: a chain of three services at 1%
//! head sampling whose last hop fails now and then while the middle app handles the failure,
//! kept whole by the mesh's own response signal; siblings exported with the failing branch;
//! slow requests kept by a configured and by a learned threshold; the ring's overwrite counter;
//! the exact response headers; a plain client; the edge that strips them.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::StatusCode;
use support::{
    apps::{App, Behaviour},
    client,
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind},
    process::{reserve_outbound, Proxy, ProxyBuilder},
    DEADLINE,
};

/// A sidecar at `ratio` head sampling, named `name`, exporting to `otlp`. Nothing counts as slow
/// (a 60 s floor, no threshold), so a scheduling hiccup on a loaded machine never keeps a span
/// in a test about another reason; [`slow_sidecar`] is the one that learns.
fn sidecar(otlp: &OtlpReceiver, name: &str, ratio: &str) -> ProxyBuilder {
    slow_sidecar(otlp, name, ratio, "60s")
}

fn slow_sidecar(otlp: &OtlpReceiver, name: &str, ratio: &str, floor: &str) -> ProxyBuilder {
    Proxy::exporting_to(otlp, name)
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", ratio)
        .arg("--slow-floor")
        .arg(floor)
}

fn reason(span: &ReceivedSpan) -> Option<&str> {
    span.attr_str("tracemesh.sampling.reason")
}

fn by_trace(spans: &[ReceivedSpan]) -> BTreeMap<String, Vec<ReceivedSpan>> {
    let mut out: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        out.entry(s.trace_id.clone()).or_default().push(s.clone());
    }
    out
}

fn service(span: &ReceivedSpan) -> &str {
    span.resource.get("service.name").map_or("", String::as_str)
}

/// `checkout → orders → payment`, each app behind its own sidecar (1% head sampling). Payment
/// fails every 10th request with 500; orders calls it, ignores the failure and answers 200, and
/// forwards no response header, so only the mesh can carry "keep this" back to checkout's hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_deep_in_a_chain_are_kept_whole_at_one_percent_head_sampling() {
    const N: usize = 400;
    let otlp = OtlpReceiver::start_grpc().await;

    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let payment = App::start(Behaviour::custom(move |_| {
        let n = c.fetch_add(1, Ordering::Relaxed);
        let status = if n % 10 == 9 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        http::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"paid",
            )))
            .unwrap()
    }))
    .await;
    let payment_proxy = sidecar(&otlp, "payment", "0.01")
        .arg("--app-addr")
        .arg(payment.addr().to_string())
        .start()
        .await;

    let orders_out = reserve_outbound();
    let orders = App::start(Behaviour::CallAll {
        calls: vec![format!("http://{}/pay", payment_proxy.inbound())],
        via_proxy: orders_out.addr(),
    })
    .await;
    let orders_proxy = sidecar(&otlp, "orders", "0.01")
        .args(orders_out.flag())
        .arg("--app-addr")
        .arg(orders.addr().to_string())
        .start()
        .await;

    let checkout_out = reserve_outbound();
    let checkout = App::start(Behaviour::Forward {
        next: format!("http://{}/orders", orders_proxy.inbound()),
        via_proxy: checkout_out.addr(),
    })
    .await;
    let checkout_proxy = sidecar(&otlp, "checkout", "0.01")
        .args(checkout_out.flag())
        .arg("--app-addr")
        .arg(checkout.addr().to_string())
        .start()
        .await;

    // Sequential, so "every 10th payment fails" is every 10th request.
    let mut failed_traces = BTreeSet::new();
    for i in 0..N {
        let (status, headers, body) =
            client::http1_get(checkout_proxy.inbound(), "/buy", &[]).await;
        assert_eq!(status, 200, "request {i}: orders handles payment's failure");
        let failed = body.as_ref() == b"500";
        assert_eq!(failed, i % 10 == 9, "request {i}: {body:?}");
        if failed {
            // The caller learns the trace was kept: the response context of checkout's span.
            let tr = headers["traceresponse"].to_str().unwrap().to_owned();
            assert!(tr.starts_with("00-") && tr.ends_with("-01"), "{tr}");
            failed_traces.insert(tr[3..35].to_owned());
        }
    }
    assert_eq!(failed_traces.len(), N / 10);

    // Every failed trace arrives whole: SERVER and CLIENT on checkout and orders, SERVER on
    // payment, each the parent of the next.
    let spans = otlp
        .wait_until(DEADLINE, "five spans of every failed trace", |s| {
            let t = by_trace(s);
            failed_traces
                .iter()
                .all(|id| t.get(id).is_some_and(|v| v.len() >= 5))
        })
        .await;
    let traces = by_trace(&spans);
    let mut ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no span is exported twice");
    for id in &failed_traces {
        let t = &traces[id];
        let find = |svc: &str, kind: SpanKind| {
            t.iter()
                .find(|s| service(s) == svc && s.kind == kind)
                .unwrap_or_else(|| panic!("trace {id}: no {svc} {kind:?} span\n{}", tree(t)))
        };
        let (cs, cc) = (
            find("checkout", SpanKind::Server),
            find("checkout", SpanKind::Client),
        );
        let (os, oc) = (
            find("orders", SpanKind::Server),
            find("orders", SpanKind::Client),
        );
        let ps = find("payment", SpanKind::Server);
        assert!(cs.is_root(), "{}", tree(t));
        for (child, parent) in [(cc, cs), (os, cc), (oc, os), (ps, oc)] {
            assert_eq!(
                child.parent_span_id,
                parent.span_id,
                "parents intact\n{}",
                tree(t)
            );
        }
        // Why each was kept: payment failed; orders' call failed; the rest heard it from below.
        if reason(cs) != Some("head") {
            assert_eq!(reason(ps), Some("error"), "{}", tree(t));
            assert_eq!(reason(oc), Some("error"), "{}", tree(t));
            assert_eq!(reason(os), Some("downstream"), "{}", tree(t));
            assert_eq!(reason(cc), Some("downstream"), "{}", tree(t));
            assert_eq!(reason(cs), Some("downstream"), "{}", tree(t));
        }
        assert_eq!(
            t.len(),
            5,
            "exactly the five spans of the path\n{}",
            tree(t)
        );
    }

    // Successful requests: about 1% (head-sampled only). Binomial(360, 0.01): mean 3.6.
    let ok_traces: Vec<_> = traces
        .keys()
        .filter(|id| !failed_traces.contains(*id))
        .collect();
    assert!(
        ok_traces.len() <= 15,
        "{} successful traces exported",
        ok_traces.len()
    );
    for id in ok_traces {
        assert!(
            traces[id].iter().all(|s| reason(s) == Some("head")),
            "{}",
            tree(&traces[id])
        );
    }
    // Spans kept for a reason other than the head carry no ot threshold.
    for s in &spans {
        if reason(s) != Some("head") {
            assert!(!s.trace_state.contains("th:"), "{}", s.trace_state);
        }
    }
    let m = orders_proxy.metrics().await;
    assert!(
        m.contains("tracemesh_spans_kept_total{reason=\"error\"}"),
        "{m}"
    );
}

/// An app that first calls `inventory` (succeeds) and then `payment` (fails): the inventory
/// call ended unkept, and is taken from the ring and exported when payment's failure keeps the
/// trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_that_ended_before_the_failure_are_exported_with_it() {
    let otlp = OtlpReceiver::start_grpc().await;
    let inventory = App::start(Behaviour::Echo).await;
    let payment = App::start(Behaviour::status(503, "down")).await;
    let out = reserve_outbound();
    let app = App::start(Behaviour::CallAll {
        calls: vec![
            format!("http://{}/stock", inventory.addr()),
            format!("http://{}/pay", payment.addr()),
        ],
        via_proxy: out.addr(),
    })
    .await;
    let proxy = sidecar(&otlp, "shop", "0")
        .args(out.flag())
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let (status, headers, body) = client::http1_get(proxy.inbound(), "/order", &[]).await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"200,503"[..]));
    assert!(headers.contains_key("traceresponse"));
    let spans = otlp.wait_for_spans(3, DEADLINE).await;
    assert_eq!(spans.len(), 3, "{}", tree(&spans));
    let path = |p: &str| {
        spans
            .iter()
            .find(|s| s.attr_str("url.path") == Some(p))
            .unwrap_or_else(|| panic!("{p}\n{}", tree(&spans)))
    };
    assert_eq!(reason(path("/pay")), Some("error"));
    assert_eq!(
        reason(path("/stock")),
        Some("error"),
        "the sibling, kept with the failing branch"
    );
    assert_eq!(reason(path("/order")), Some("downstream"));
    assert_eq!(path("/stock").parent_span_id, path("/order").span_id);
}

/// Slow requests are kept: over `--slow-threshold`, and over a route's learned p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_are_kept_by_a_configured_and_by_the_learned_threshold() {
    // Configured: 150 ms.
    let otlp = OtlpReceiver::start_grpc().await;
    let slow_app = App::start(Behaviour::Delay(Duration::from_millis(250))).await;
    let p = slow_sidecar(&otlp, "slow-fixed", "0", "60s")
        .arg("--app-addr")
        .arg(slow_app.addr().to_string())
        .arg("--slow-threshold")
        .arg("150ms")
        .start()
        .await;
    let (status, headers, _) = client::http1_get(p.inbound(), "/slow", &[]).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains_key("traceresponse"),
        "kept at the response head, so the caller hears it"
    );
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(reason(&spans[0]), Some("slow"));

    // Learned: the outbound side's p99 for one route is about 1 ms after 600 fast calls; with
    // the floor at 80 ms, one call of 250 ms is slow for it.
    let otlp = OtlpReceiver::start_grpc().await;
    let fast = App::start(Behaviour::Echo).await;
    // One second: far over the fast calls' p99 even if some stall on a loaded machine.
    let delayed = App::start(Behaviour::Delay(Duration::from_secs(1))).await;
    let p = slow_sidecar(&otlp, "slow-learned", "0", "80ms")
        .start()
        .await;
    let target = format!("http://{}/x", fast.addr());
    for _ in 0..600 {
        client::http1_proxy_get(p.outbound(), &target, &[]).await;
    }
    let slow_target = format!("http://{}/x", delayed.addr());
    client::http1_proxy_get(p.outbound(), &slow_target, &[]).await;
    let spans = otlp
        .wait_until(DEADLINE, "the slow call", |s| {
            s.iter()
                .any(|s| s.attr_int("server.port") == Some(i64::from(delayed.addr().port())))
        })
        .await;
    let slow: Vec<_> = spans
        .iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(delayed.addr().port())))
        .collect();
    assert_eq!(slow.len(), 1, "{}", tree(&spans));
    assert_eq!(slow[0].kind, SpanKind::Client);
    assert_eq!(reason(slow[0]), Some("slow"));
    // A fast call is kept only if it really was over the floor (a hiccup), never otherwise.
    for s in spans
        .iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(fast.addr().port())))
    {
        let took = Duration::from_nanos(s.end_unix_nanos - s.start_unix_nanos);
        assert!(
            took > Duration::from_millis(80),
            "a {took:?} call kept as {:?}",
            reason(s)
        );
    }
}

/// Retention rules in the rules file: a per-route slow threshold, and a route whose errors are
/// not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_rules_set_slow_thresholds_and_error_keeping_per_route() {
    let dir = std::env::temp_dir().join(format!("tracemesh-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        "retention:\n  - match: { path_prefix: /checkout }\n    slow: 100ms\n  - match: { path_prefix: /batch }\n    errors: false\n",
    )
    .unwrap();
    let otlp = OtlpReceiver::start_grpc().await;
    let slow_app = App::start(Behaviour::Delay(Duration::from_millis(200))).await;
    let p = sidecar(&otlp, "per-route", "0")
        .arg("--app-addr")
        .arg(slow_app.addr().to_string())
        .arg("--sampling-rules")
        .arg(&rules)
        .start()
        .await;
    client::http1_get(p.inbound(), "/checkout/1", &[]).await;
    client::http1_get(p.inbound(), "/browse", &[]).await;
    // A second /checkout after /browse: spans leave in order, so once it is in, /browse's would be.
    client::http1_get(p.inbound(), "/checkout/2", &[]).await;
    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    let paths: Vec<_> = spans
        .iter()
        .map(|s| s.attr_str("url.path").unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        ["/checkout/1", "/checkout/2"],
        "/browse is not slow at 200 ms"
    );
    assert!(spans.iter().all(|s| reason(s) == Some("slow")));

    let failing = App::start(Behaviour::status(500, "no")).await;
    let q = sidecar(&otlp, "per-route-errors", "0")
        .arg("--app-addr")
        .arg(failing.addr().to_string())
        .arg("--sampling-rules")
        .arg(&rules)
        .start()
        .await;
    client::http1_get(q.inbound(), "/batch/7", &[]).await;
    client::http1_get(q.inbound(), "/orders/7", &[]).await;
    let spans = otlp
        .wait_until(DEADLINE, "the /orders error", |s| {
            s.iter()
                .any(|s| s.attr_str("url.path") == Some("/orders/7"))
        })
        .await;
    // /orders ended after /batch on the same proxy: once its span is in, /batch's would be.
    assert!(
        !otlp
            .spans()
            .iter()
            .any(|s| s.attr_str("url.path") == Some("/batch/7")),
        "errors on /batch are not kept: {}",
        tree(&spans)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A burst larger than the ring overwrites unkept records, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_ring_size_counts_overwritten_records() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let p = sidecar(&otlp, "ring", "0")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--retention-ring-spans")
        .arg("64")
        .arg("--workers")
        .arg("1")
        .arg("--trusted-cidrs")
        .arg("127.0.0.1")
        .start()
        .await;
    for _ in 0..300 {
        client::http1_get(p.inbound(), "/r", &[]).await;
    }
    // 300 unkept records into 64 slots: the first 64 fill it, every later one overwrites.
    let overwritten = p
        .wait_for_series("tracemesh_retention_overwritten_total", |v| v >= 236.0)
        .await;
    assert_eq!(overwritten, 236.0);
    // A forced request last: once its span is in, any other would be; none is.
    client::http1_get(
        p.inbound(),
        "/sentinel",
        &[("x-tracemesh-force-trace", "1")],
    )
    .await;
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    assert_eq!(spans[0].attr_str("url.path"), Some("/sentinel"));
}

/// A request the sampling rules say never to sample (a readiness probe) is not kept even when
/// it fails; and keeps beyond `--retention-keep-rate` are refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_rules_and_the_keep_rate_bound_what_errors_can_export() {
    let otlp = OtlpReceiver::start_grpc().await;
    let down = App::start(Behaviour::status(503, "not ready")).await;
    let p = sidecar(&otlp, "bounded", "0")
        .arg("--app-addr")
        .arg(down.addr().to_string())
        .arg("--retention-keep-rate")
        .arg("2")
        .start()
        .await;
    client::http1_get(p.inbound(), "/readyz", &[("user-agent", "kube-probe/1.35")]).await;
    for i in 0..10 {
        client::http1_get(p.inbound(), &format!("/fail/{i}"), &[]).await;
    }
    let limited = p
        .wait_for_series("tracemesh_retention_limited_total", |v| v >= 1.0)
        .await;
    let kept = 10.0 - limited;
    // A burst of 2, and one more token per half second the loop took.
    assert!(
        (2.0..=6.0).contains(&kept),
        "kept {kept}, limited {limited}"
    );
    let spans = otlp.wait_for_spans(kept as usize, DEADLINE).await;
    assert_eq!(spans.len(), kept as usize, "{}", tree(&spans));
    assert!(
        spans.iter().all(|s| s
            .attr_str("url.path")
            .is_some_and(|p| p.starts_with("/fail/"))),
        "the probe is never kept: {}",
        tree(&spans)
    );
}

/// The response context's exact form; an app's own `server-timing` is kept; a plain client
/// works; `--response-context off` at the edge strips both headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_have_the_exact_format_and_the_edge_strips_them() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::custom(|_| {
        http::Response::builder()
            .status(500)
            .header("server-timing", "db;dur=53, cache;desc=\"hit\"")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"boom",
            )))
            .unwrap()
    }))
    .await;
    let p = sidecar(&otlp, "headers", "0")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    // A plain client, which knows nothing of these headers: the response is the app's.
    let (status, headers, body) = client::http1_get(p.inbound(), "/h", &[]).await;
    assert_eq!((status.as_u16(), body.as_ref()), (500, &b"boom"[..]));
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    let span = &spans[0];
    let expected = format!("00-{}-{}-01", span.trace_id, span.span_id);
    assert_eq!(headers["traceresponse"], expected.as_str());
    assert_eq!(headers.get_all("server-timing").iter().count(), 1);
    assert_eq!(
        headers["server-timing"],
        format!("db;dur=53, cache;desc=\"hit\", trace;desc={expected}").as_str()
    );

    // At the edge.
    let edge = sidecar(&otlp, "edge", "0")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .arg("--response-context")
        .arg("off")
        .start()
        .await;
    let (status, headers, _) = client::http1_get(edge.inbound(), "/h", &[]).await;
    assert_eq!(status, 500);
    assert!(!headers.contains_key("traceresponse"), "{headers:?}");
    assert_eq!(headers["server-timing"], "db;dur=53, cache;desc=\"hit\"");
    // Still kept and exported: only the headers are withheld.
    otlp.wait_for_spans(2, DEADLINE).await;
}

/// A gRPC status in the trailers (not trailers-only) is known only after the response head has
/// gone: a SERVER span kept then tells its caller in the trailers, and a caller's sidecar reads
/// the response context from the trailers too, for the right trace only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_after_the_head_travels_in_the_grpc_trailers() {
    use http::{HeaderMap, HeaderValue, Method};
    use http_body::Frame;
    use support::{
        body,
        grpc::{GrpcServer, ECHO_SERVER_STREAM},
        serve,
    };

    let otlp = OtlpReceiver::start_grpc().await;

    // The SERVER side: one message, then UNAVAILABLE in the trailers.
    let grpc = GrpcServer::start().await;
    let backend = sidecar(&otlp, "backend", "0")
        .arg("--app-addr")
        .arg(grpc.addr().to_string())
        .start()
        .await;
    let lines = b"ok\nfail:14";
    let mut message = vec![0u8];
    message.extend_from_slice(&(lines.len() as u32).to_be_bytes());
    message.extend_from_slice(lines);
    let reply = client::h2c_request(
        backend.inbound(),
        Method::POST,
        ECHO_SERVER_STREAM,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        body::full(message),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.headers.contains_key("traceresponse"),
        "not kept at the head: {:?}",
        reply.headers
    );
    let trailers = reply.trailers.expect("a gRPC response with trailers");
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    assert_eq!(
        trailers["grpc-message"], "asked%20to%20fail",
        "{trailers:?}"
    );
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    let server = &spans[0];
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(reason(server), Some("error"), "{}", tree(&spans));
    let expected = format!("00-{}-{}-01", server.trace_id, server.span_id);
    assert_eq!(trailers["traceresponse"], expected.as_str(), "{trailers:?}");
    assert_eq!(
        trailers["server-timing"],
        format!("trace;desc={expected}").as_str()
    );
    otlp.clear();

    // The CLIENT side: an upstream that answers OK with a response context in its trailers,
    // for the request's own trace or, when asked, for another one.
    let upstream = serve::serve_http(
        serve::bind_loopback().await,
        hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let tp = req.headers()["traceparent"].to_str().unwrap().to_owned();
            let trace = if req.uri().path() == "/other" {
                "0af7651916cd43dd8448eb211c80319c".to_owned()
            } else {
                tp[3..35].to_owned()
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert(
                "traceresponse",
                HeaderValue::from_str(&format!("00-{trace}-00f067aa0ba902b7-01")).unwrap(),
            );
            let frames = vec![
                Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(
                    b"\0\0\0\0\x02ok",
                ))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap(),
            )
        }),
    );
    let out = reserve_outbound();
    let caller = sidecar(&otlp, "caller", "0").args(out.flag()).start().await;
    let call = |path: &'static str| {
        let url = format!("http://{}{path}", upstream.addr());
        let outbound = caller.outbound();
        async move {
            client::h2c_request(
                outbound,
                Method::POST,
                &url,
                &[("content-type", "application/grpc"), ("te", "trailers")],
                body::full(&b"\0\0\0\0\x02hi"[..]),
            )
            .await
        }
    };
    // Another trace's context is no signal; the request's own is.
    let other = call("/other").await;
    assert_eq!(other.trailers.unwrap()["grpc-status"], "0");
    let own = call("/own").await;
    assert_eq!(own.trailers.unwrap()["grpc-status"], "0");
    // `/other` ended first: had it been kept, its span would be in the same batch as `/own`'s
    // or an earlier one.
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    let client_span = &spans[0];
    assert_eq!(client_span.kind, SpanKind::Client);
    assert_eq!(
        client_span.attr_str("url.path"),
        Some("/own"),
        "{client_span:#?}"
    );
    assert_eq!(reason(client_span), Some("downstream"), "{}", tree(&spans));
}
