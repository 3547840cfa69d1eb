//! `/debug/traces` in a real headless Chromium: a known trace (a SERVER span whose app calls a
//! slow dependency, then a failing one) loads without console errors, shows one bar per span
//! with widths proportional to the spans' exported durations, marks the failing span and the
//! critical path, and a screenshot goes to `target/debug-traces.png`. The JSON view matches the
//! exported spans, and the page works with no collector at all.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    apps::{App, Behaviour},
    chromium::Chromium,
    client,
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind},
    process::{reserve_outbound, Proxy, ProxyBuilder},
    DEADLINE,
};

/// `/checkout` → slow inventory (150 ms) → failing payment (500), each call a CLIENT span.
struct Scene {
    _inventory: App,
    _payment: App,
    _app: App,
    proxy: Proxy,
}

async fn scene(builder: ProxyBuilder) -> Scene {
    let inventory = App::start(Behaviour::Delay(Duration::from_millis(150))).await;
    let payment = App::start(Behaviour::status(500, "card declined")).await;
    let out = reserve_outbound();
    let app = App::start(Behaviour::CallAll {
        calls: vec![
            format!("http://{}/stock/4", inventory.addr()),
            format!("http://{}/pay", payment.addr()),
        ],
        via_proxy: out.addr(),
    })
    .await;
    let proxy = builder
        .args(out.flag())
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let (status, _, body) = client::http1_get(proxy.inbound(), "/checkout", &[]).await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"200,500"[..]));
    Scene {
        _inventory: inventory,
        _payment: payment,
        _app: app,
        proxy,
    }
}

fn duration_us(s: &ReceivedSpan) -> f64 {
    (s.end_unix_nanos - s.start_unix_nanos) as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waterfall_renders_in_chromium_with_bars_to_scale_and_the_failure_marked() {
    let otlp = OtlpReceiver::start_grpc().await;
    let s = scene(Proxy::exporting_to(&otlp, "checkout")).await;
    let spans = otlp.wait_for_spans(3, DEADLINE).await;
    assert_eq!(spans.len(), 3, "{}", tree(&spans));
    let trace = spans[0].trace_id.clone();
    let server = spans.iter().find(|x| x.kind == SpanKind::Server).unwrap();
    let failing = spans
        .iter()
        .find(|x| x.attr_str("url.path") == Some("/pay"))
        .unwrap();
    let slow = spans
        .iter()
        .find(|x| x.attr_str("url.path") == Some("/stock/4"))
        .unwrap();

    let mut browser = Chromium::start(1400, 900).await;
    let url = format!("http://{}/debug/traces/{trace}", s.proxy.admin());
    browser.load(&url).await;
    assert_eq!(browser.errors, Vec::<String>::new(), "page errors at {url}");

    // Every bar as the browser laid it out: its span, classes, colour, and pixel geometry.
    let bars = browser
        .eval(
            r#"(() => {
                const sec = document.querySelector(`section.trace`);
                return {
                    trace: sec.dataset.traceId,
                    copy: sec.querySelector("button.copy").dataset.copy,
                    spans: [...sec.querySelectorAll("li.span")].map(li => {
                        const bar = li.querySelector(".bar");
                        const track = li.querySelector(".track").getBoundingClientRect();
                        const b = bar.getBoundingClientRect();
                        return {
                            id: li.dataset.spanId,
                            cls: li.className,
                            label: li.querySelector(".label").textContent,
                            indent: parseFloat(getComputedStyle(li.querySelector(".label")).paddingLeft),
                            color: getComputedStyle(bar).backgroundColor,
                            left: b.left - track.left,
                            width: b.width,
                            track: track.width,
                        };
                    }),
                };
            })()"#,
        )
        .await;
    assert_eq!(bars["trace"], trace.as_str());
    assert_eq!(
        bars["copy"],
        trace.as_str(),
        "the trace ID is ready to copy"
    );
    let rows = bars["spans"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one bar per span: {bars:#}");
    let row = |id: &str| -> &Value {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no bar for span {id}: {bars:#}"))
    };
    // Bars are to scale on the trace's axis: from the first start to the last end (usually the
    // server span's, but the last call's span may end a little after it: the app has that
    // response, and answers, before the proxy has ended the call's span).
    let trace_start = spans.iter().map(|x| x.start_unix_nanos).min().unwrap();
    let trace_end = spans.iter().map(|x| x.end_unix_nanos).max().unwrap();
    let total = (trace_end - trace_start) as f64 / 1000.0;
    for span in [server, slow, failing] {
        let r = row(&span.span_id);
        let track = r["track"].as_f64().unwrap();
        let tolerance = 1.5_f64.max(0.01 * track);
        let want = duration_us(span) / total * track;
        let got = r["width"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= tolerance,
            "span {} ({:.1} ms): bar {got:.1}px, want {want:.1}px of {track:.0}px",
            span.name,
            duration_us(span) / 1000.0
        );
        let offset = (span.start_unix_nanos - trace_start) as f64 / 1000.0;
        let want = offset / total * track;
        let got = r["left"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= tolerance,
            "span {} starts {:.3} ms in: bar at {got:.1}px, want {want:.1}px",
            span.name,
            offset / 1000.0
        );
    }
    let (slow_row, failing_row, server_row) = (
        row(&slow.span_id),
        row(&failing.span_id),
        row(&server.span_id),
    );
    // The 150 ms call is most of the request.
    assert!(slow_row["width"].as_f64().unwrap() > 0.5 * server_row["width"].as_f64().unwrap());
    // The failing call comes after the slow one on the shared axis.
    assert!(
        failing_row["left"].as_f64().unwrap()
            > slow_row["left"].as_f64().unwrap() + 0.8 * slow_row["width"].as_f64().unwrap()
    );
    // Marked: the failure in red, server and client apart, the critical path, the indent.
    assert!(
        failing_row["cls"].as_str().unwrap().contains("error"),
        "{failing_row}"
    );
    assert_eq!(failing_row["color"], "rgb(214, 40, 40)");
    assert!(!slow_row["cls"].as_str().unwrap().contains("error"));
    assert_ne!(
        slow_row["color"], server_row["color"],
        "CLIENT and SERVER differ"
    );
    assert!(server_row["cls"].as_str().unwrap().contains("server"));
    assert!(slow_row["cls"].as_str().unwrap().contains("client"));
    for r in [server_row, slow_row, failing_row] {
        assert!(
            r["cls"].as_str().unwrap().contains("critical"),
            "sequential calls: all on it: {r}"
        );
    }
    assert!(slow_row["indent"].as_f64().unwrap() > server_row["indent"].as_f64().unwrap());
    assert!(failing_row["label"].as_str().unwrap().contains("500"));

    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug-traces.png");
    std::fs::write(&path, &png).unwrap();

    // The list page shows the same trace, and loads cleanly too.
    browser
        .load(&format!("http://{}/debug/traces", s.proxy.admin()))
        .await;
    assert_eq!(browser.errors, Vec::<String>::new());
    let listed = browser
        .eval("[...document.querySelectorAll('section.trace')].map(s => s.dataset.traceId)")
        .await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == trace.as_str()),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_view_matches_the_spans_and_needs_no_collector() {
    // A collector address where nothing listens: export fails, the page still has the trace.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = scene(
        ProxyBuilder::new()
            .name("no-collector")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{dead}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await;
    let admin = s.proxy.admin();
    let json: Value =
        support::eventually(DEADLINE, "three spans in /debug/traces.json", || async {
            let (status, headers, body) = client::http1_get(admin, "/debug/traces.json", &[]).await;
            assert_eq!(status, 200);
            assert_eq!(headers["content-type"], "application/json");
            let v: Value = serde_json::from_slice(&body).unwrap();
            (v["traces"][0]["spans"].as_array().map_or(0, Vec::len) == 3).then_some(v)
        })
        .await;
    let t = &json["traces"][0];
    let spans = t["spans"].as_array().unwrap();
    assert_eq!(spans[0]["kind"], "server");
    assert_eq!(spans[0]["depth"], 0);
    assert_eq!(spans[0]["name"], "GET /checkout");
    assert_eq!(spans[1]["path"], "/stock/4");
    assert_eq!(spans[1]["route"], "/stock/{id}");
    assert_eq!(spans[1]["parent_span_id"], spans[0]["span_id"]);
    assert_eq!(spans[2]["error"], true);
    assert_eq!(spans[2]["status_code"], 500);
    assert!(spans[1]["duration_ms"].as_f64().unwrap() >= 150.0);
    // Self time: the server's duration less the time its two calls cover. The calls are made
    // one after the other, but they may overlap a little: the app has the first response's
    // last bytes, and sends the second call, before the proxy has ended the first call's span
    // (on a loaded machine, the second call's worker can be first). So the covered time is the
    // union of the two intervals, clamped to the server's.
    let interval = |s: &Value| {
        let start = s["start_offset_ms"].as_f64().unwrap();
        (start, start + s["duration_ms"].as_f64().unwrap())
    };
    let (server_start, server_end) = interval(&spans[0]);
    let clamp = |(a, b): (f64, f64)| {
        (
            a.clamp(server_start, server_end),
            b.clamp(server_start, server_end),
        )
    };
    let (first, second) = (clamp(interval(&spans[1])), clamp(interval(&spans[2])));
    let ((a0, a1), (b0, b1)) = if first.0 <= second.0 {
        (first, second)
    } else {
        (second, first)
    };
    let covered = if b0 <= a1 {
        a1.max(b1) - a0
    } else {
        (a1 - a0) + (b1 - b0)
    };
    let server = server_end - server_start;
    let self_ms = spans[0]["self_ms"].as_f64().unwrap();
    assert!(
        (self_ms - (server - covered)).abs() < 0.01,
        "{self_ms} vs {server} - {covered} (calls {first:?}, {second:?})"
    );
    assert!(
        self_ms < server - 150.0,
        "the calls cover most of it: {self_ms}"
    );
    // The trace lasts from its first start to its last end. That is usually the server span,
    // but the second call's span can end a few microseconds after it (the overlap above).
    let last_end = spans.iter().map(|s| interval(s).1).fold(f64::MIN, f64::max);
    let trace_ms = t["duration_ms"].as_f64().unwrap();
    assert!(
        (trace_ms - last_end).abs() < 0.001,
        "{trace_ms} vs the last span end {last_end}"
    );
    assert!(trace_ms >= server - 0.001, "{trace_ms} vs {server}");

    // One trace by ID; an unknown one is 404; a malformed one 400.
    let id = t["trace_id"].as_str().unwrap();
    let (status, headers, body) =
        client::http1_get(admin, &format!("/debug/traces/{id}"), &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert!(String::from_utf8_lossy(&body).contains(id));
    let (status, _, _) =
        client::http1_get(admin, "/debug/traces/0af7651916cd43dd8448eb211c80319c", &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = client::http1_get(admin, "/debug/traces/not-a-trace-id", &[]).await;
    assert_eq!(status, 400);

    // Off: no page, no memory.
    let off = ProxyBuilder::new()
        .name("off")
        .env("OTEL_TRACES_EXPORTER", "console")
        .arg("--debug-traces")
        .arg("off")
        .start()
        .await;
    let (status, _, _) = client::http1_get(off.admin(), "/debug/traces", &[]).await;
    assert_eq!(status, 404);
}
