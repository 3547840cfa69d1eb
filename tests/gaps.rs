//! Propagation-gap detection through a running sidecar: an app that calls out without passing
//! on the trace context yields `tracemesh_propagation_gaps_total{route}` and, when it was serving
//! exactly one request, an inferred link from the new root to that request's SERVER span (a
//! link, never a parent); with two requests in flight nothing is inferred; an app that does
//! propagate yields no gap.

mod support;

use std::time::Duration;

use support::{
    apps::{App, Behaviour, Gate, HELD_PREFIX},
    client,
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind},
    process::{metric_value, reserve_outbound, Proxy},
    DEADLINE,
};

/// The route the proxy infers for `/held/orders/N`.
const ROUTE_HELD: &str = "/held/orders/{id}";

fn gaps(metrics: &str, route: &str) -> f64 {
    metric_value(
        metrics,
        &format!("tracemesh_propagation_gaps_total{{route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

fn of_kind(spans: &[ReceivedSpan], kind: SpanKind) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.kind == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_context_is_counted_and_linked_to_the_one_request_in_flight() {
    let otlp = OtlpReceiver::start_grpc().await;
    let inventory = App::start(Behaviour::status(200, "in stock")).await;
    let out = reserve_outbound();
    let gate = Gate::new();
    let legacy = App::start(Behaviour::CallUntraced {
        next: format!("http://{}/stock", inventory.addr()),
        via_proxy: out.addr(),
        gate: gate.clone(),
    })
    .await;
    let proxy = Proxy::exporting_to(&otlp, "legacy")
        .args(out.flag())
        .arg("--app-addr")
        .arg(legacy.addr().to_string())
        .start()
        .await;

    // One request in flight: counted under its route, and the new root is linked to it.
    let (status, _, body) = client::http1_get(proxy.inbound(), "/orders/17", &[]).await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"in stock"[..]));
    let spans = otlp.wait_for_spans(2, DEADLINE).await;
    let server = of_kind(&spans, SpanKind::Server)[0];
    let client_span = of_kind(&spans, SpanKind::Client)[0];
    assert_ne!(client_span.trace_id, server.trace_id, "{}", tree(&spans));
    assert_eq!(client_span.parent_span_id, "", "a link, never a parent");
    assert_eq!(client_span.links.len(), 1, "{client_span:#?}");
    let link = &client_span.links[0];
    assert_eq!(
        (link.trace_id.as_str(), link.span_id.as_str()),
        (server.trace_id.as_str(), server.span_id.as_str())
    );
    assert_eq!(
        link.attributes.get("tracemesh.link.inferred"),
        Some(&support::otlp::Value::Bool(true))
    );
    let metrics = proxy.metrics().await;
    assert_eq!(gaps(&metrics, "/orders/{id}"), 1.0, "{metrics}");
}

/// Two requests in flight at once: both calls are gaps, neither is linked. Both are in flight
/// whenever a call reaches the outbound listener: the app holds each request until both have
/// arrived before it calls out, and the dependency holds each call until both have arrived, so
/// neither request can end before the other's call is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_requests_in_flight_gaps_are_counted_and_nothing_is_inferred() {
    let otlp = OtlpReceiver::start_grpc().await;
    let calls = Gate::new();
    let inventory = App::start(Behaviour::Gated {
        gate: calls.clone(),
        delay: Duration::ZERO,
        body: bytes::Bytes::from_static(b"in stock"),
    })
    .await;
    let out = reserve_outbound();
    let requests = Gate::new();
    let legacy = App::start(Behaviour::CallUntraced {
        next: format!("http://{}{HELD_PREFIX}stock", inventory.addr()),
        via_proxy: out.addr(),
        gate: requests.clone(),
    })
    .await;
    let proxy = Proxy::exporting_to(&otlp, "legacy-two")
        .args(out.flag())
        .arg("--app-addr")
        .arg(legacy.addr().to_string())
        .start()
        .await;
    let request = |n: u32| {
        let inbound = proxy.inbound();
        tokio::spawn(async move {
            client::http1_get(inbound, &format!("{HELD_PREFIX}orders/{n}"), &[]).await
        })
    };
    let (a, b) = (request(1), request(2));
    legacy.wait_for_requests(2, DEADLINE).await;
    requests.open();
    inventory.wait_for_requests(2, DEADLINE).await;
    calls.open();
    for t in [a, b] {
        assert_eq!(t.await.unwrap().0, 200);
    }
    let spans = otlp.wait_for_spans(4, DEADLINE).await;
    let clients = of_kind(&spans, SpanKind::Client);
    assert_eq!(clients.len(), 2, "{}", tree(&spans));
    assert!(
        clients
            .iter()
            .all(|c| c.links.is_empty() && c.parent_span_id.is_empty()),
        "nothing inferred with two in flight: {}",
        tree(&spans)
    );
    let metrics = proxy.metrics().await;
    assert_eq!(gaps(&metrics, ROUTE_HELD), 2.0, "{metrics}");

    // `/debug/traces` lists the routes whose calls lose context, in its JSON and on its page.
    let (status, _, body) = client::http1_get(proxy.admin(), "/debug/traces.json", &[]).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["propagation_gaps"],
        serde_json::json!([{ "route": ROUTE_HELD, "count": 2 }]),
        "{json:#}"
    );
    let (_, _, page) = client::http1_get(proxy.admin(), "/debug/traces", &[]).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("Routes whose outbound calls lose trace context")
            && page.contains(&format!("<td>{ROUTE_HELD}</td><td>2</td>")),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_propagates_makes_no_gap_and_a_call_with_nothing_in_flight_is_none() {
    let otlp = OtlpReceiver::start_grpc().await;
    let inventory = App::start(Behaviour::status(200, "in stock")).await;
    let out = reserve_outbound();
    let app = App::start(Behaviour::Forward {
        next: format!("http://{}/stock", inventory.addr()),
        via_proxy: out.addr(),
    })
    .await;
    let proxy = Proxy::exporting_to(&otlp, "propagating")
        .args(out.flag())
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let (status, _, _) = client::http1_get(proxy.inbound(), "/orders/17", &[]).await;
    assert_eq!(status, 200);
    // The request leaves the in-flight table when its span ends, which can be just after the
    // client has the response; its exported SERVER span says it has ended.
    otlp.wait_for_spans(2, DEADLINE).await;
    // A call of the app's own (no inbound request in flight): a root, not a gap.
    let (status, _, _) = client::http1_proxy_get(
        proxy.outbound(),
        &format!("http://{}/cron", inventory.addr()),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let spans = otlp.wait_for_spans(3, DEADLINE).await;
    let server = of_kind(&spans, SpanKind::Server)[0];
    let clients = of_kind(&spans, SpanKind::Client);
    let child = clients
        .iter()
        .find(|c| c.attr_str("url.path") == Some("/stock"))
        .expect("the propagated call");
    assert_eq!(child.parent_span_id, server.span_id);
    assert!(
        clients.iter().all(|c| c.links.is_empty()),
        "{}",
        tree(&spans)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = proxy.metrics().await;
    assert!(
        !metrics.contains("tracemesh_propagation_gaps_total{"),
        "no gap counted: {metrics}"
    );
}
