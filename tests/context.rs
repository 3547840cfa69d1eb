//! Trace context through a real proxy: B3 in, W3C out (the translation users rely on), exact
//! header values the app sees, tracestate handling, and malformed headers of every kind that
//! never fail a request and always start a new trace.

mod support;

use support::{
    apps::{App, Behaviour, SeenRequest},
    client,
    otlp::{tree, OtlpReceiver, ReceivedSpan},
    process::{Proxy, ProxyBuilder},
    DEADLINE,
};

struct Setup {
    otlp: OtlpReceiver,
    app: App,
    proxy: Proxy,
}

async fn setup(configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> Setup {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let builder = Proxy::exporting_to(&otlp, "ctx")
        .arg("--app-addr")
        .arg(app.addr().to_string());
    let proxy = configure(builder).start().await;
    Setup { otlp, app, proxy }
}

impl Setup {
    /// Sends one request with `headers`, expects 200, returns what the app saw and the span.
    async fn exchange(&self, headers: &[(&str, &str)]) -> (SeenRequest, ReceivedSpan) {
        let before = self.app.seen().len();
        let (status, _, _) = client::http1_get(self.proxy.inbound(), "/ctx", headers).await;
        assert_eq!(status, 200, "request with {headers:?} failed");
        let seen = self.app.wait_for_requests(before + 1, DEADLINE).await[before].clone();
        let span_count = self.otlp.spans().len();
        let spans = self.otlp.wait_for_spans(span_count + 1, DEADLINE).await;
        (seen, spans[span_count].clone())
    }
}

fn header<'a>(seen: &'a SeenRequest, name: &str) -> Option<&'a str> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_multi_with_64bit_trace_id_reaches_the_app_as_w3c_of_the_same_trace() {
    let s = setup(|b| b).await;
    let (seen, span) = s
        .exchange(&[
            ("X-B3-TraceId", "463ac35c9f6413ad"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
            ("X-B3-ParentSpanId", "0020000000000001"),
            ("X-B3-Sampled", "1"),
        ])
        .await;
    // 64-bit B3 trace IDs are left-padded with zeros to 128 bits.
    assert_eq!(span.trace_id, "0000000000000000463ac35c9f6413ad");
    assert_eq!(span.parent_span_id, "a2fb4a1d1a96d312");
    assert_eq!(
        header(&seen, "traceparent"),
        Some(format!("00-0000000000000000463ac35c9f6413ad-{}-01", span.span_id).as_str())
    );
    // Default propagators are W3C only: stale B3 headers are removed, not passed on.
    for h in [
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "b3",
    ] {
        assert_eq!(header(&seen, h), None, "{h} should be removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_single_in_and_b3_single_plus_w3c_out_when_configured() {
    let s = setup(|b| b.arg("--propagators").arg("tracecontext,b3")).await;
    let (seen, span) = s
        .exchange(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )])
        .await;
    assert_eq!(span.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(span.parent_span_id, "e457b5a2e4d86bd1");
    assert_eq!(
        header(&seen, "traceparent"),
        Some(format!("00-80f198ee56343ba864fe8b2a57d3eff7-{}-01", span.span_id).as_str())
    );
    assert_eq!(
        header(&seen, "b3"),
        Some(format!("80f198ee56343ba864fe8b2a57d3eff7-{}-1", span.span_id).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3multi_propagator_writes_x_b3_headers() {
    let s = setup(|b| b.env("OTEL_PROPAGATORS", "b3multi")).await;
    let (seen, span) = s
        .exchange(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )])
        .await;
    assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        header(&seen, "x-b3-traceid"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(header(&seen, "x-b3-spanid"), Some(span.span_id.as_str()));
    assert_eq!(header(&seen, "x-b3-sampled"), Some("1"));
    // W3C is not configured: no traceparent reaches the app.
    assert_eq!(header(&seen, "traceparent"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_debug_flag_means_sampled() {
    let s = setup(|b| b.env("OTEL_TRACES_SAMPLER", "parentbased_always_off")).await;
    let (seen, span) = s
        .exchange(&[
            ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
            ("X-B3-Flags", "1"),
        ])
        .await;
    assert_eq!(span.trace_id, "463ac35c9f6413ad48485a3953bb6124");
    assert!(header(&seen, "traceparent").unwrap().ends_with("-01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_passes_through_unchanged_with_a_valid_traceparent() {
    let s = setup(|b| b).await;
    let (seen, span) = s
        .exchange(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ])
        .await;
    assert_eq!(
        header(&seen, "tracestate"),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
    assert_eq!(span.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    assert_eq!(span.parent_span_id, "b7ad6b7169203331");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tracestate_is_dropped_but_the_trace_continues() {
    let s = setup(|b| b).await;
    let (seen, span) = s
        .exchange(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "UPPER=case,=novalue"),
        ])
        .await;
    assert_eq!(header(&seen, "tracestate"), None);
    assert_eq!(span.trace_id, "0af7651916cd43dd8448eb211c80319c");
    let metrics = s.proxy.metrics().await;
    assert!(
        metrics.contains("tracemesh_invalid_context_headers_total{format=\"tracecontext\""),
        "{metrics}"
    );
}

/// Every malformed context header: the request succeeds, a new root trace starts, the app sees
/// a fresh, valid `traceparent`, and the invalid header is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_context_headers_never_fail_a_request_and_start_a_new_trace() {
    let s = setup(|b| b).await;
    let huge = format!("00-{}-b7ad6b7169203331-01", "a".repeat(8 * 1024));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "version ff",
            vec![(
                "traceparent",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        ),
        (
            "version 00 too long",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            )],
        ),
        (
            "short trace id",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            )],
        ),
        (
            "short span id",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
            )],
        ),
        (
            "uppercase hex",
            vec![(
                "traceparent",
                "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            )],
        ),
        (
            "all-zero trace id",
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            )],
        ),
        (
            "all-zero span id",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            )],
        ),
        (
            "non-hex",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
            )],
        ),
        (
            "wrong separators",
            vec![(
                "traceparent",
                "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            )],
        ),
        ("empty", vec![("traceparent", "")]),
        ("huge", vec![("traceparent", huge.as_str())]),
        (
            "duplicate traceparent",
            vec![
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
        ),
        ("b3 junk", vec![("b3", "not-a-b3-header-at-all")]),
        (
            "b3 uppercase",
            vec![("b3", "80F198EE56343BA864FE8B2A57D3EFF7-E457B5A2E4D86BD1-1")],
        ),
        (
            "b3 bad sampling",
            vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x")],
        ),
        (
            "b3 multi zero span",
            vec![
                ("X-B3-TraceId", "463ac35c9f6413ad"),
                ("X-B3-SpanId", "0000000000000000"),
            ],
        ),
        (
            "b3 multi missing span",
            vec![("X-B3-TraceId", "463ac35c9f6413ad")],
        ),
        (
            "junk tracestate without traceparent",
            vec![("tracestate", ",,,===,,,")],
        ),
    ];

    let mut trace_ids = std::collections::HashSet::new();
    for (name, headers) in &cases {
        let (seen, span) = s.exchange(headers).await;
        assert!(
            span.is_root(),
            "{name}: span should be a new root:\n{}",
            tree(std::slice::from_ref(&span))
        );
        let tp = header(&seen, "traceparent").unwrap_or_else(|| panic!("{name}: no traceparent"));
        // A new root: sampled, and its trace ID random (Level 2's random flag).
        assert_eq!(
            tp,
            format!("00-{}-{}-03", span.trace_id, span.span_id),
            "{name}"
        );
        // The default sampler (parent-based always_on) is a probability sampler with T = 0:
        // the new root's tracestate is ours alone, nothing of the malformed trace's.
        assert_eq!(header(&seen, "tracestate"), Some("ot=th:0"), "{name}");
        assert_eq!(span.trace_state, "ot=th:0", "{name}");
        for bad in [
            "0af7651916cd43dd8448eb211c80319c",
            "80f198ee56343ba864fe8b2a57d3eff7",
        ] {
            assert_ne!(
                span.trace_id, bad,
                "{name}: the malformed trace was continued"
            );
        }
        assert!(
            trace_ids.insert(span.trace_id.clone()),
            "{name}: trace id reused"
        );
    }

    let metrics = s.proxy.metrics().await;
    let invalid: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tracemesh_invalid_context_headers_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // The tracestate-only case is not an invalid header (there is no trace for it to join).
    assert!(
        invalid >= (cases.len() - 1) as u64,
        "counted {invalid}:\n{metrics}"
    );
}
