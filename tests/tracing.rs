//! Spans across hops: kinds, names, attributes, parent IDs, durations, resource, and export over
//! both OTLP transports, asserted on what a real OTLP receiver decoded.

mod support;

use std::time::Duration;

use support::{
    apps::{App, Behaviour},
    client,
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus},
    process::Proxy,
    DEADLINE,
};

fn find<'a>(spans: &'a [ReceivedSpan], kind: SpanKind, service: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| {
            s.kind == kind && s.resource.get("service.name").map(String::as_str) == Some(service)
        })
        .unwrap_or_else(|| panic!("no {kind:?} span from {service}:\n{}", tree(spans)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_span_on_a_is_parent_of_server_span_on_b() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Delay(Duration::from_millis(30))).await;
    let b = Proxy::exporting_to(&otlp, "b")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let a = Proxy::exporting_to(&otlp, "a").start().await;

    let url = format!("http://{}/orders/42?card=4111111111111111", b.inbound());
    let (status, _, body) =
        client::http1_proxy_get(a.outbound(), &url, &[("user-agent", "tests/1.0")]).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"");

    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    let client_span = find(&spans, SpanKind::Client, "a");
    let server_span = find(&spans, SpanKind::Server, "b");

    // One trace; A's CLIENT span is B's SERVER span's parent; the client started the trace.
    assert_eq!(client_span.trace_id, server_span.trace_id);
    assert_eq!(server_span.parent_span_id, client_span.span_id);
    assert_eq!(client_span.parent_span_id, "");
    assert_ne!(client_span.trace_id, "0".repeat(32));

    // The app saw B's span as its parent, sampled, with the random flag A set on the new trace.
    let seen = app.seen_one();
    assert_eq!(
        seen.headers["traceparent"],
        format!("00-{}-{}-03", server_span.trace_id, server_span.span_id)
    );

    // Timing: both spans contain the app's 30 ms, the client span contains the server span.
    assert!(
        server_span.duration() >= Duration::from_millis(30),
        "{server_span:?}"
    );
    assert!(client_span.duration() >= server_span.duration());
    assert!(client_span.start_unix_nanos <= server_span.start_unix_nanos);
    assert!(client_span.end_unix_nanos >= server_span.end_unix_nanos);

    // Semantic conventions; the query string (a card number here) is never recorded.
    for s in [client_span, server_span] {
        // No templates configured: the route is inferred from the path, and says so.
        assert_eq!(s.name, "GET /orders/{id}");
        assert_eq!(s.attr_str("http.route"), Some("/orders/{id}"));
        assert_eq!(s.attr_bool("tracemesh.route.inferred"), Some(true));
        assert_eq!(s.attr_str("http.request.method"), Some("GET"));
        assert_eq!(s.attr_str("url.path"), Some("/orders/42"));
        assert_eq!(s.attr_str("url.scheme"), Some("http"));
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(s.attr_str("network.protocol.version"), Some("1.1"));
        assert_eq!(s.attr_str("user_agent.original"), Some("tests/1.0"));
        assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(
            s.attr_int("server.port"),
            Some(i64::from(b.inbound().port()))
        );
        assert_eq!(s.status_code, SpanStatus::Unset);
        assert!(
            !s.attributes
                .values()
                .any(|v| format!("{v:?}").contains("4111")),
            "query string leaked into {s:?}"
        );
    }
    assert_eq!(
        client_span.attr_str("url.full"),
        Some(format!("http://{}/orders/42", b.inbound()).as_str())
    );
    assert_eq!(server_span.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(client_span.scope_name, "tracemesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_forwarding_app_makes_one_tree_server_client_server() {
    let otlp = OtlpReceiver::start_grpc().await;
    let backend = App::start(Behaviour::Delay(Duration::from_millis(10))).await;
    let b = Proxy::exporting_to(&otlp, "b")
        .arg("--app-addr")
        .arg(backend.addr().to_string())
        .start()
        .await;
    // A's app calls B through A's outbound listener, copying the trace headers it received.
    let a_app_outbound = support::process::reserve_outbound();
    let frontend = App::start(Behaviour::forward(
        format!("http://{}/inventory", b.inbound()),
        a_app_outbound.addr(),
    ))
    .await;
    let a = Proxy::exporting_to(&otlp, "a")
        .arg("--app-addr")
        .arg(frontend.addr().to_string())
        .args(a_app_outbound.flag())
        .start()
        .await;

    let (status, _, _) = client::http1_get(a.inbound(), "/checkout", &[]).await;
    assert_eq!(status, 200);

    let spans = otlp.wait_for_spans(3, DEADLINE).await;
    let a_server = find(&spans, SpanKind::Server, "a");
    let a_client = find(&spans, SpanKind::Client, "a");
    let b_server = find(&spans, SpanKind::Server, "b");
    assert!(a_server.is_root(), "{}", tree(&spans));
    assert_eq!(
        a_client.parent_span_id,
        a_server.span_id,
        "{}",
        tree(&spans)
    );
    assert_eq!(
        b_server.parent_span_id,
        a_client.span_id,
        "{}",
        tree(&spans)
    );
    assert!(spans.iter().all(|s| s.trace_id == a_server.trace_id));
    assert_eq!(a_server.attr_str("url.path"), Some("/checkout"));
    assert_eq!(b_server.attr_str("url.path"), Some("/inventory"));
    assert!(a_server.duration() >= a_client.duration());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_export_carries_resource_attributes() {
    let otlp = OtlpReceiver::start_http().await;
    let app = App::start(Behaviour::status(201, "made")).await;
    let p = Proxy::builder()
        .name("http-export")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=pay%20ments",
        )
        .env("TRACEMESH_POD_NAME", "checkout-7d9f8b6c5-x2kqz")
        .env("TRACEMESH_POD_NAMESPACE", "shop")
        .env("TRACEMESH_NODE_NAME", "node-1")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;

    let (status, _, body) = client::http1_get(p.inbound(), "/orders", &[]).await;
    assert_eq!(status, 201);
    assert_eq!(&body[..], b"made");

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    let s = &spans[0];
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.attr_int("http.response.status_code"), Some(201));
    let r = &s.resource;
    assert_eq!(r["service.name"], "checkout", "workload from the pod name");
    assert_eq!(r["k8s.pod.name"], "checkout-7d9f8b6c5-x2kqz");
    assert_eq!(r["k8s.namespace.name"], "shop");
    assert_eq!(r["k8s.node.name"], "node-1");
    assert_eq!(r["deployment.environment"], "test");
    assert_eq!(r["team"], "pay ments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_are_traced_with_protocol_version_2() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let p = Proxy::exporting_to(&otlp, "h2")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let reply = client::h2c_request(
        p.inbound(),
        http::Method::POST,
        "/echo",
        &[],
        support::body::full("over h2c"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"over h2c");
    assert_eq!(app.seen_one().version, http::Version::HTTP_2);

    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans[0].attr_str("network.protocol.version"), Some("2"));
    assert_eq!(spans[0].attr_str("http.request.method"), Some("POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_parent_propagates_flags_00_and_exports_nothing() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let p = Proxy::exporting_to(&otlp, "unsampled")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (status, _, _) = client::http1_get(p.inbound(), "/", &[("traceparent", parent)]).await;
    assert_eq!(status, 200);
    let tp = app.seen_one().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(tp.ends_with("-00"), "{tp}");
    assert_ne!(
        &tp[36..52],
        "b7ad6b7169203331",
        "the proxy's own span id replaces the parent's"
    );

    // A sampled request afterwards is exported; the unsampled one never is.
    let (status, _, _) = client::http1_get(p.inbound(), "/sampled", &[]).await;
    assert_eq!(status, 200);
    let spans = otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1, "{}", tree(&spans));
    assert_eq!(spans[0].attr_str("url.path"), Some("/sampled"));
}
