//! `/metrics` on the admin listener, scraped from the real binary: `Accept` negotiation between
//! OpenMetrics 1.0 and the classic Prometheus text format, both checked by the Python
//! `prometheus-client` parsers (the OpenMetrics one is strict); RED labels (status code, method
//! folding, route templates, direction, `error_type` on answers the proxy made up, gRPC
//! service/method/status); exemplars that name exactly the spans the OTLP receiver got, and none
//! for unsampled requests; bounded cardinality under 10,000 distinct paths; the health and
//! `process_*` metrics, with and without `--disable-red-metrics`.
//!
//! Follows OpenMetrics 1.0 (https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md)
//! and the Prometheus text format 0.0.4.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use support::{
    apps::{App, Behaviour},
    body, client, eventually,
    grpc::{self, EchoClient, GrpcServer, KNOWN_SERVICE},
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind},
    process::{reserve_port, Proxy},
    DEADLINE,
};
use tokio::io::AsyncWriteExt;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The `Accept` header Prometheus 2.x scrapes with.
const PROMETHEUS_SCRAPE_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const REQUESTS: &str = "tracemesh_requests_total";
const BUCKETS: &str = "tracemesh_request_duration_seconds_bucket";

/// The Python side of the parser checks (see its docstring).
const PARSE_EXPOSITION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/parse_exposition.py"
);

// --- the exposition, parsed ------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

/// One sample line: `name{labels} value [timestamp] [# {labels} value [timestamp]]`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
    exemplar: Option<Exemplar>,
}

#[derive(Debug, Clone, PartialEq)]
struct Exemplar {
    labels: Labels,
    value: f64,
    timestamp: Option<f64>,
}

/// Every sample in `text` (comment lines skipped).
///
/// # Panics
/// On a line this small parser cannot read, naming it.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line {l:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(rest) => parse_labels(rest)?,
        None => (Labels::new(), &line[name_end..]),
    };
    let (sample, exemplar) = match rest.split_once(" # {") {
        Some((sample, exemplar)) => (sample, Some(exemplar)),
        None => (rest, None),
    };
    let value = sample.split_whitespace().next()?.parse().ok()?;
    let exemplar = match exemplar {
        None => None,
        Some(e) => {
            let (labels, rest) = parse_labels(e)?;
            let mut fields = rest.split_whitespace();
            let value = fields.next()?.parse().ok()?;
            let timestamp = match fields.next() {
                Some(t) => Some(t.parse().ok()?),
                None => None,
            };
            Some(Exemplar {
                labels,
                value,
                timestamp,
            })
        }
    };
    Some(Sample {
        name,
        labels,
        value,
        exemplar,
    })
}

/// Reads `a="x",b="y"}` (after the `{`); returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = Labels::new();
    loop {
        s = s.strip_prefix(',').unwrap_or(s);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        s = &rest[end + 1..];
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The sample named `name` whose label set is exactly `want`.
fn find<'a>(all: &'a [Sample], name: &str, want: &Labels) -> Option<&'a Sample> {
    all.iter().find(|s| s.name == name && &s.labels == want)
}

/// The value of the sample named `name` with exactly `want` as labels.
fn value(all: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    find(all, name, &labels(want)).map(|s| s.value)
}

/// The `_bucket` samples of the histogram series with labels `series` (plus `le`).
fn buckets<'a>(all: &'a [Sample], series: &Labels) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == BUCKETS)
        .filter(|s| {
            let mut l = s.labels.clone();
            l.remove("le").is_some() && &l == series
        })
        .collect()
}

fn total_requests(all: &[Sample]) -> f64 {
    all.iter()
        .filter(|s| s.name == REQUESTS)
        .map(|s| s.value)
        .sum()
}

/// Every `tracemesh_requests_total` series, by its labels, for readable failure messages.
fn request_series(all: &[Sample]) -> BTreeMap<Labels, f64> {
    all.iter()
        .filter(|s| s.name == REQUESTS)
        .map(|s| (s.labels.clone(), s.value))
        .collect()
}

// --- scraping --------------------------------------------------------------------------------

/// `GET /metrics` with `accept` (none when `None`): the content type and the body.
async fn scrape(p: &Proxy, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let (status, headers, body) = client::http1_get(p.admin(), "/metrics", &headers).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /metrics with Accept {accept:?}"
    );
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("an ASCII content type").to_owned())
        .unwrap_or_default();
    (
        content_type,
        String::from_utf8(body.to_vec()).expect("UTF-8 metrics"),
    )
}

/// The OpenMetrics exposition, asserting it was served as such.
async fn openmetrics(p: &Proxy) -> String {
    let (content_type, text) = scrape(p, Some("application/openmetrics-text")).await;
    assert_eq!(content_type, OPENMETRICS);
    text
}

/// Scrapes (OpenMetrics) until the RED counter has counted `n` requests in all, as the counter
/// is bumped when the response body ends, which can be just after the client read it.
///
/// # Panics
/// If the total passes `n`, or does not reach it within [`DEADLINE`].
async fn wait_for_total(p: &Proxy, n: usize) -> (String, Vec<Sample>) {
    let what = format!("{n} requests counted in {REQUESTS}");
    eventually(DEADLINE, &what, || async {
        let text = openmetrics(p).await;
        let all = samples(&text);
        let total = total_requests(&all);
        assert!(
            total <= n as f64,
            "counted {total} requests, sent {n}:\n{:#?}",
            request_series(&all)
        );
        (total == n as f64).then_some((text, all))
    })
    .await
}

/// Runs `tests/peers/parse_exposition.py <format>` on `text`: the parser's view as JSON.
///
/// # Panics
/// If python3 or prometheus-client is missing (run scripts/install-test-deps.sh), or if the
/// parser rejects the text (with its message and the text).
async fn python_parse(format: &str, text: &str) -> serde_json::Value {
    let mut child = tokio::process::Command::new("python3")
        .arg(PARSE_EXPOSITION)
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `python3` for {PARSE_EXPOSITION}: {e}; run scripts/install-test-deps.sh")
        });
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = text.to_owned();
    let writer = tokio::spawn(async move {
        stdin.write_all(input.as_bytes()).await?;
        stdin.shutdown().await
    });
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the parser finishes within 30s")
        .expect("waiting for python3");
    writer
        .await
        .expect("the stdin writer task")
        .expect("writing the exposition to python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!("{stderr}"),
        _ => panic!(
            "{format} parse failed ({}): {stderr}\n--- text ---\n{text}",
            out.status
        ),
    }
    serde_json::from_slice(&out.stdout).expect("the parser prints JSON")
}

/// (sample name, labels) → (value, has exemplar), from [`python_parse`]'s output; also the
/// family each sample sits in, with its type and unit.
struct Parsed {
    samples: BTreeMap<(String, Labels), (f64, bool)>,
    family_of: HashMap<String, (String, String, String)>,
}

fn parsed(json: &serde_json::Value) -> Parsed {
    let mut out = Parsed {
        samples: BTreeMap::new(),
        family_of: HashMap::new(),
    };
    let str_of = |v: &serde_json::Value| v.as_str().expect("a string").to_owned();
    for family in json["families"].as_array().expect("families") {
        let meta = (
            str_of(&family["name"]),
            str_of(&family["type"]),
            str_of(&family["unit"]),
        );
        for s in family["samples"].as_array().expect("samples") {
            let name = str_of(&s["name"]);
            let labels: Labels = s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), str_of(v)))
                .collect();
            let value: f64 = str_of(&s["value"]).parse().expect("a float");
            out.family_of.insert(name.clone(), meta.clone());
            let previous = out
                .samples
                .insert((name, labels), (value, !s["exemplar"].is_null()));
            assert!(previous.is_none(), "a sample appears twice: {s}");
        }
    }
    out
}

// --- peers and traffic -----------------------------------------------------------------------

/// An app answering the status named by the request's `x-status` header (200 without one).
async fn status_app() -> App {
    App::start(Behaviour::custom(|req| {
        let status = req
            .headers
            .get("x-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(200);
        let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        *rsp.status_mut() = StatusCode::from_u16(status).expect("a valid x-status");
        rsp
    }))
    .await
}

/// A sampled proxy in front of `app`, exporting to `otlp`; `extra` flags appended.
async fn proxy(otlp: &OtlpReceiver, name: &str, app: &App, extra: &[&str]) -> Proxy {
    Proxy::exporting_to(otlp, name)
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .args(extra)
        .start()
        .await
}

/// One HTTP/1.1 request to `addr` (`uri` origin- or absolute-form); asserts the status.
async fn send(addr: SocketAddr, method: &str, uri: &str, headers: &[(&str, &str)], want: u16) {
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let reply = client::http1_request(addr, method.clone(), uri, headers, body::empty()).await;
    assert_eq!(reply.status.as_u16(), want, "{method} {uri} via {addr}");
}

/// `(method, uri, headers, expected status)`.
type Call<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);

/// Mixed traffic touching every RED label and an invalid-header series: inbound 200/201/404/
/// 500, an app's own 502, `PURGE`, a query string, an unmatched path, invalid `traceparent`
/// and `b3`, an unsampled request; outbound absolute-form to the app and to a closed port.
/// Returns the number of requests sent.
async fn varied_traffic(p: &Proxy, app: &App) -> usize {
    let unsampled = format!("00-{}-{}-00", hex(16), hex(8));
    let inbound: [Call<'_>; 10] = [
        ("GET", "/orders/1", &[], 200),
        ("GET", "/orders/2?card=4111", &[("x-status", "404")], 404),
        ("POST", "/orders/3", &[("x-status", "201")], 201),
        ("PURGE", "/orders/4", &[], 200),
        ("GET", "/elsewhere", &[("x-status", "500")], 500),
        ("GET", "/orders/5", &[("x-status", "502")], 502),
        ("GET", "/orders/6", &[("traceparent", "00-xyz-01")], 200),
        ("GET", "/orders/7", &[("b3", "not-b3")], 200),
        ("DELETE", "/orders/8", &[("traceparent", &unsampled)], 200),
        ("HEAD", "/", &[], 200),
    ];
    for (method, path, headers, status) in inbound {
        send(p.inbound(), method, path, headers, status).await;
    }
    let closed = reserve_port();
    send(p.outbound(), "GET", &app.url("/orders/9"), &[], 200).await;
    send(
        p.outbound(),
        "GET",
        &format!("http://{closed}/orders/10"),
        &[],
        502,
    )
    .await;
    inbound.len() + 2
}

/// `n` random bytes as lowercase hex.
fn hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

// --- negotiation -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_is_served_to_an_openmetrics_accept_with_exemplars_and_eof() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(&otlp, "negotiate-om", &app, &[]).await;
    send(p.inbound(), "GET", "/", &[], 200).await;
    wait_for_total(&p, 1).await;

    for accept in [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        PROMETHEUS_SCRAPE_ACCEPT,
    ] {
        let (content_type, text) = scrape(&p, Some(accept)).await;
        assert_eq!(content_type, OPENMETRICS, "Accept: {accept}");
        assert!(text.ends_with("\n# EOF\n"), "Accept: {accept}:\n{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(
            text.lines().any(
                |l| l.starts_with("tracemesh_requests_total{") && l.contains(" # {trace_id=\"")
            ),
            "no exemplar on the request counter:\n{text}"
        );
        assert!(
            text.contains("\n# TYPE tracemesh_requests counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\n# UNIT tracemesh_request_duration_seconds seconds\n"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_text_is_served_without_accept_or_for_text_plain_and_has_no_openmetrics_syntax() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(&otlp, "negotiate-text", &app, &[]).await;
    send(p.inbound(), "GET", "/", &[], 200).await;
    send(p.inbound(), "GET", "/", &[("x-status", "503")], 503).await;
    let (_, om) = wait_for_total(&p, 2).await;

    for accept in [
        None,
        Some("text/plain"),
        Some("text/plain; version=0.0.4"),
        Some("*/*"),
    ] {
        let (content_type, text) = scrape(&p, accept).await;
        assert_eq!(content_type, PROMETHEUS_TEXT, "Accept: {accept:?}");
        for forbidden in ["# EOF", " # {", "# UNIT"] {
            assert!(
                !text.contains(forbidden),
                "{forbidden:?} in the classic text (Accept: {accept:?}):\n{text}"
            );
        }
        for line in [
            "# TYPE tracemesh_requests_total counter",
            "# TYPE tracemesh_request_duration_seconds histogram",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?}:\n{text}");
        }
        // The same RED series and values as the OpenMetrics exposition, minus exemplars.
        let red = |all: Vec<Sample>| -> Vec<Sample> {
            all.into_iter()
                .filter(|s| s.name.starts_with("tracemesh_request"))
                .map(|s| Sample {
                    exemplar: None,
                    ..s
                })
                .collect()
        };
        assert_eq!(red(samples(&text)), red(om.clone()), "Accept: {accept:?}");
    }
}

// --- parsers ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_exposition_parses_in_the_strict_openmetrics_parser() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(&otlp, "strict", &app, &["--route", "/orders/{id}"]).await;
    let sent = varied_traffic(&p, &app).await;
    let (text, ours) = wait_for_total(&p, sent).await;

    let json = python_parse("openmetrics", &text).await;
    let theirs = parsed(&json);

    // Both parsers read the same samples and values (which vouches for the small parser the
    // other tests use).
    let ours_map: BTreeMap<(String, Labels), (f64, bool)> = ours
        .iter()
        .map(|s| {
            (
                (s.name.clone(), s.labels.clone()),
                (s.value, s.exemplar.is_some()),
            )
        })
        .collect();
    assert_eq!(ours_map.len(), ours.len(), "duplicate samples in:\n{text}");
    assert_eq!(theirs.samples, ours_map);

    let family = |sample: &str| {
        theirs
            .family_of
            .get(sample)
            .cloned()
            .unwrap_or_else(|| panic!("no {sample} in the parsed exposition:\n{text}"))
    };
    assert_eq!(
        family(REQUESTS),
        ("tracemesh_requests".into(), "counter".into(), "".into())
    );
    assert_eq!(
        family(BUCKETS),
        (
            "tracemesh_request_duration_seconds".into(),
            "histogram".into(),
            "seconds".into()
        )
    );
    assert_eq!(family("process_cpu_seconds_total").1, "counter");
    assert_eq!(family("process_resident_memory_bytes").2, "bytes");
    assert_eq!(family("tracemesh_span_export_queue_depth").1, "gauge");
    assert_eq!(
        family("tracemesh_invalid_context_headers_total").1,
        "counter"
    );

    // Exemplars reached the strict parser on both RED families.
    let with_exemplar = |name: &str| {
        theirs
            .samples
            .iter()
            .filter(|((n, _), (_, ex))| n == name && *ex)
            .count()
    };
    assert!(with_exemplar(REQUESTS) > 0, "{text}");
    assert!(with_exemplar(BUCKETS) > 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_text_parses_in_the_prometheus_text_parser_with_typed_families() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(&otlp, "classic", &app, &["--route", "/orders/{id}"]).await;
    let sent = varied_traffic(&p, &app).await;
    let (_, om) = wait_for_total(&p, sent).await;

    let (content_type, text) = scrape(&p, None).await;
    assert_eq!(content_type, PROMETHEUS_TEXT);
    let theirs = parsed(&python_parse("prometheus", &text).await);

    // Typed, not `unknown`: each TYPE line names the family its samples belong to.
    for (sample, kind) in [
        (REQUESTS, "counter"),
        (BUCKETS, "histogram"),
        ("tracemesh_request_duration_seconds_count", "histogram"),
        ("tracemesh_spans_exported_total", "counter"),
        ("tracemesh_invalid_context_headers_total", "counter"),
        ("tracemesh_open_connections", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        let (family, got, _) = theirs
            .family_of
            .get(sample)
            .unwrap_or_else(|| panic!("no {sample} in the parsed text:\n{text}"));
        assert_eq!(got, kind, "{sample} (family {family}):\n{text}");
    }
    // The RED samples are the OpenMetrics ones.
    for s in om
        .iter()
        .filter(|s| s.name.starts_with("tracemesh_request"))
    {
        let got = theirs.samples.get(&(s.name.clone(), s.labels.clone()));
        assert_eq!(
            got.map(|(v, _)| *v),
            Some(s.value),
            "{s:?} in the classic text:\n{text}"
        );
    }
}

// --- exemplars -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemplars_name_the_trace_and_span_exported_for_each_sampled_request() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(&otlp, "exemplars", &app, &[]).await;
    let started = unix_now();

    // New roots, and continued traces whose IDs the test chose: the exemplar must name the
    // proxy's span, not the caller's.
    let mut callers = HashMap::new();
    let statuses = ["200", "404", "500", "503"];
    let n = 24;
    for i in 0..n {
        let status = statuses[i % statuses.len()];
        let code: u16 = status.parse().expect("a status");
        if i % 2 == 0 {
            send(p.inbound(), "GET", "/", &[("x-status", status)], code).await;
        } else {
            let (trace, parent) = (hex(16), hex(8));
            let tp = format!("00-{trace}-{parent}-01");
            send(
                p.inbound(),
                "GET",
                "/",
                &[("x-status", status), ("traceparent", &tp)],
                code,
            )
            .await;
            callers.insert(trace, parent);
        }
    }
    let (text, all) = wait_for_total(&p, n).await;
    let spans = otlp.wait_for_spans(n, DEADLINE).await;
    let finished = unix_now();
    let by_trace: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.trace_id.as_str(), s)).collect();
    assert_eq!(
        by_trace.len(),
        n,
        "one trace per request:\n{}",
        tree(&spans)
    );

    let mut checked = 0;
    for s in all
        .iter()
        .filter(|s| s.name == REQUESTS || s.name == BUCKETS)
    {
        let Some(ex) = &s.exemplar else { continue };
        let keys: Vec<&str> = ex.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["span_id", "trace_id"], "{s:?}");
        let (trace_id, span_id) = (&ex.labels["trace_id"], &ex.labels["span_id"]);
        assert!(
            is_lower_hex(trace_id, 32) && is_lower_hex(span_id, 16),
            "{s:?}"
        );
        let span = by_trace.get(trace_id.as_str()).unwrap_or_else(|| {
            panic!(
                "exemplar {s:?} names a trace never exported:\n{}",
                tree(&spans)
            )
        });
        assert_eq!(&span.span_id, span_id, "{s:?} vs {span:?}");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("exemplars")
        );
        if let Some(caller) = callers.get(trace_id) {
            assert_eq!(&span.parent_span_id, caller, "{span:?}");
        }
        // The exemplar sits in the series of its own request.
        assert_eq!(
            span.attr_int("http.response.status_code")
                .map(|c| c.to_string()),
            Some(s.labels["status_code"].clone()),
            "{s:?} vs {span:?}"
        );
        let ts = ex
            .timestamp
            .unwrap_or_else(|| panic!("no timestamp: {s:?}"));
        assert!(ts >= started - 1.0 && ts <= finished + 1.0, "{s:?}");
        if s.name == REQUESTS {
            assert_eq!(ex.value, 1.0, "{s:?}");
        } else {
            // A bucket's exemplar is an observation that falls in that bucket.
            let le: f64 = s.labels["le"].parse().expect("a numeric le");
            assert!(ex.value > 0.0 && ex.value <= le, "{s:?}");
        }
        checked += 1;
    }
    // Every series saw only sampled requests: its counter and at least one bucket carry one.
    for status in statuses {
        let series = labels(&[
            ("direction", "inbound"),
            ("method", "GET"),
            ("status_code", status),
            ("route", "/"),
        ]);
        let counter = find(&all, REQUESTS, &series)
            .unwrap_or_else(|| panic!("no series {series:?}:\n{text}"));
        assert!(counter.exemplar.is_some(), "{counter:?}");
        assert!(
            buckets(&all, &series).iter().any(|b| b.exemplar.is_some()),
            "no bucket exemplar for {series:?}:\n{text}"
        );
    }
    assert!(checked >= 2 * statuses.len(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_are_counted_without_exemplars() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;

    // Never sampled: counted, and not one exemplar anywhere.
    let off = Proxy::exporting_to(&otlp, "always-off")
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    for _ in 0..5 {
        send(off.inbound(), "GET", "/", &[], 200).await;
    }
    let (text, all) = wait_for_total(&off, 5).await;
    let series = [
        ("direction", "inbound"),
        ("method", "GET"),
        ("status_code", "200"),
        ("route", "/"),
    ];
    assert_eq!(value(&all, REQUESTS, &series), Some(5.0), "{text}");
    assert!(!text.contains(" # {"), "{text}");

    // A remote parent's "not sampled" (flags 00) is followed: counted without exemplars, next to
    // a sampled series that has them.
    let p = proxy(&otlp, "parent-decides", &app, &[]).await;
    for _ in 0..5 {
        let trace = hex(16);
        let tp = format!("00-{trace}-{}-00", hex(8));
        let headers = [("x-status", "201"), ("traceparent", tp.as_str())];
        send(p.inbound(), "GET", "/", &headers, 201).await;
    }
    send(p.inbound(), "GET", "/", &[], 200).await;
    // In one series, unsampled requests after a sampled one leave its exemplar in place.
    let (kept_trace, kept_parent) = (hex(16), hex(8));
    let sampled_tp = format!("00-{kept_trace}-{kept_parent}-01");
    let mixed_headers = [("x-status", "202"), ("traceparent", sampled_tp.as_str())];
    send(p.inbound(), "GET", "/", &mixed_headers, 202).await;
    wait_for_total(&p, 7).await;
    for _ in 0..3 {
        let tp = format!("00-{}-{}-00", hex(16), hex(8));
        let headers = [("x-status", "202"), ("traceparent", tp.as_str())];
        send(p.inbound(), "GET", "/", &headers, 202).await;
    }
    let (text, all) = wait_for_total(&p, 10).await;
    let mixed = labels(&[
        ("direction", "inbound"),
        ("method", "GET"),
        ("status_code", "202"),
        ("route", "/"),
    ]);
    let counter = find(&all, REQUESTS, &mixed).expect("the 202 series");
    assert_eq!(counter.value, 4.0, "{counter:?}");
    let kept = counter
        .exemplar
        .as_ref()
        .map(|e| e.labels["trace_id"].as_str());
    assert_eq!(kept, Some(kept_trace.as_str()), "{counter:?}");
    let bucket_traces: BTreeSet<&str> = buckets(&all, &mixed)
        .iter()
        .filter_map(|b| Some(b.exemplar.as_ref()?.labels["trace_id"].as_str()))
        .collect();
    assert_eq!(
        bucket_traces,
        BTreeSet::from([kept_trace.as_str()]),
        "{text}"
    );
    let unsampled_series = labels(&[
        ("direction", "inbound"),
        ("method", "GET"),
        ("status_code", "201"),
        ("route", "/"),
    ]);
    let counter = find(&all, REQUESTS, &unsampled_series).expect("the 201 series");
    assert_eq!(counter.value, 5.0);
    assert_eq!(counter.exemplar, None, "{counter:?}");
    let bucket_list = buckets(&all, &unsampled_series);
    assert_eq!(bucket_list.len(), 17, "16 bounds and +Inf:\n{text}");
    assert!(
        bucket_list.iter().all(|b| b.exemplar.is_none()),
        "{bucket_list:#?}"
    );
    let sampled = find(&all, REQUESTS, &labels(&series)).expect("the 200 series");
    assert!(sampled.exemplar.is_some(), "{sampled:?}");

    // Only the two sampled requests were exported (the always-off proxy's requests were sent
    // earlier, through the same receiver and export delay).
    let sampled_span = &sampled.exemplar.as_ref().expect("checked above").labels["span_id"];
    let spans = otlp
        .wait_until(DEADLINE, "the sampled requests' spans", |spans| {
            spans.iter().any(|s| &s.span_id == sampled_span)
                && spans.iter().any(|s| s.trace_id == kept_trace)
        })
        .await;
    assert_eq!(spans.len(), 2, "only the sampled spans:\n{}", tree(&spans));
}

// --- labels ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_labels_carry_status_folded_method_route_direction_and_error_type() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(
        &otlp,
        "labels",
        &app,
        &["--route", "/orders/{id}", "--route", "/static/{*path}"],
    )
    .await;
    let sent = varied_traffic(&p, &app).await;
    send(p.inbound(), "GET", "/static/css/site.css", &[], 200).await;
    let (text, all) = wait_for_total(&p, sent + 1).await;

    let want: &[(&[(&str, &str)], f64)] = &[
        // GET /orders/1, /orders/6 (bad traceparent), /orders/7 (bad b3): one templated series.
        (
            &[
                ("direction", "inbound"),
                ("method", "GET"),
                ("status_code", "200"),
                ("route", "/orders/{id}"),
            ],
            3.0,
        ),
        // The query string is not part of the route.
        (
            &[
                ("direction", "inbound"),
                ("method", "GET"),
                ("status_code", "404"),
                ("route", "/orders/{id}"),
            ],
            1.0,
        ),
        (
            &[
                ("direction", "inbound"),
                ("method", "POST"),
                ("status_code", "201"),
                ("route", "/orders/{id}"),
            ],
            1.0,
        ),
        // PURGE is not a method the conventions name.
        (
            &[
                ("direction", "inbound"),
                ("method", "_OTHER"),
                ("status_code", "200"),
                ("route", "/orders/{id}"),
            ],
            1.0,
        ),
        (
            &[
                ("direction", "inbound"),
                ("method", "GET"),
                ("status_code", "500"),
                ("route", "_unmatched"),
            ],
            1.0,
        ),
        // The app's own 502: no error_type.
        (
            &[
                ("direction", "inbound"),
                ("method", "GET"),
                ("status_code", "502"),
                ("route", "/orders/{id}"),
            ],
            1.0,
        ),
        (
            &[
                ("direction", "inbound"),
                ("method", "DELETE"),
                ("status_code", "200"),
                ("route", "/orders/{id}"),
            ],
            1.0,
        ),
        (
            &[
                ("direction", "inbound"),
                ("method", "HEAD"),
                ("status_code", "200"),
                ("route", "_unmatched"),
            ],
            1.0,
        ),
        (
            &[
                ("direction", "inbound"),
                ("method", "GET"),
                ("status_code", "200"),
                ("route", "/static/{*path}"),
            ],
            1.0,
        ),
        // Absolute-form through the outbound listener.
        (
            &[
                ("direction", "outbound"),
                ("method", "GET"),
                ("status_code", "200"),
                ("route", "/orders/{id}"),
            ],
            1.0,
        ),
        // The 502 the proxy made up when the destination refused: error_type says why.
        (
            &[
                ("direction", "outbound"),
                ("method", "GET"),
                ("status_code", "502"),
                ("route", "/orders/{id}"),
                ("error_type", "connection_refused"),
            ],
            1.0,
        ),
    ];
    let want_series: BTreeMap<Labels, f64> = want.iter().map(|(l, v)| (labels(l), *v)).collect();
    assert_eq!(request_series(&all), want_series, "{text}");

    // The histogram has the same series, each with a count equal to the counter.
    for (series, count) in &want_series {
        let got = find(&all, "tracemesh_request_duration_seconds_count", series)
            .unwrap_or_else(|| panic!("no histogram series {series:?}:\n{text}"));
        assert_eq!(got.value, *count, "{series:?}");
        let inf = buckets(&all, series)
            .into_iter()
            .find(|b| b.labels["le"] == "+Inf")
            .unwrap_or_else(|| panic!("no +Inf bucket for {series:?}"));
        assert_eq!(inf.value, *count, "{series:?}");
    }

    // The invalid headers were counted by format.
    let invalid: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.name == "tracemesh_invalid_context_headers_total")
        .map(|s| s.labels["format"].as_str())
        .collect();
    assert_eq!(invalid, BTreeSet::from(["b3", "tracecontext"]), "{text}");
    // No request-derived text leaks into labels.
    for raw in ["card=", "/orders/1\"", "/elsewhere", "site.css", "PURGE"] {
        assert!(!text.contains(raw), "{raw:?} in /metrics:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_carry_service_method_and_status_labels() {
    let otlp = OtlpReceiver::start_grpc().await;
    let server = GrpcServer::start().await;
    let p = Proxy::exporting_to(&otlp, "grpc-labels")
        .sample_health_checks()
        .arg("--app-addr")
        .arg(server.addr().to_string())
        .start()
        .await;

    let mut echo = EchoClient::connect(p.inbound(), None).await;
    assert_eq!(
        &echo.unary(b"hello", &[]).await.expect("unary")[..],
        b"hello"
    );
    let err = echo.unary(b"fail:5", &[]).await.expect_err("asked to fail");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let lines = echo
        .server_stream(b"a\nb", &[])
        .await
        .expect("server stream");
    assert_eq!(lines.len(), 2);
    let mut health = grpc::health_client(p.inbound()).await;
    assert_eq!(
        grpc::check(&mut health, KNOWN_SERVICE)
            .await
            .expect("check"),
        grpc::ServingStatus::Serving
    );
    let (text, all) = wait_for_total(&p, 4).await;

    let grpc_series = |service: &str, method: &str, status: &str| {
        labels(&[
            ("direction", "inbound"),
            ("method", "POST"),
            ("status_code", "200"),
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_status", status),
        ])
    };
    let want: BTreeMap<Labels, f64> = [
        (grpc_series("tracemesh.test.Echo", "Unary", "0"), 1.0),
        // Trailers-only answer: the status rides in the headers.
        (grpc_series("tracemesh.test.Echo", "Unary", "5"), 1.0),
        // Status in the trailers after a streamed body.
        (grpc_series("tracemesh.test.Echo", "ServerStream", "0"), 1.0),
        (grpc_series("grpc.health.v1.Health", "Check", "0"), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(request_series(&all), want, "{text}");
    for series in want.keys() {
        let counter = find(&all, REQUESTS, series).expect("listed above");
        assert!(
            counter.exemplar.is_some(),
            "sampled, so an exemplar: {counter:?}"
        );
        assert_eq!(buckets(&all, series).len(), 17, "{series:?}");
    }
}

// --- cardinality -----------------------------------------------------------------------------

/// Sends `GET` for each of `paths` to `addr` over `in_flight` kept-alive HTTP/1.1 connections,
/// so at most `in_flight` requests are outstanding. Every answer must be 200.
///
/// # Panics
/// On any failure or other status, or if it takes longer than two minutes.
async fn send_all(addr: SocketAddr, paths: Vec<String>, in_flight: usize) {
    let paths = Arc::new(paths);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (paths, next) = (paths.clone(), next.clone());
        workers.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            loop {
                let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let req = Request::get(path.as_str())
                    .header(http::header::HOST, addr.to_string())
                    .body(Empty::new())
                    .expect("a valid request");
                sender.ready().await.expect("the connection stays open");
                let rsp = sender
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("GET {path} via {addr}: {e}"));
                assert_eq!(rsp.status(), StatusCode::OK, "GET {path}");
                rsp.into_body()
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("GET {path}: body: {e}"));
            }
        });
    }
    let all = async {
        while let Some(done) = workers.join_next().await {
            done.expect("a request worker panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("all requests answered within 2 minutes");
}

/// Sends 10 then 9,990 more requests, each to a distinct path with a distinct query (`path(i)`),
/// and checks that the second batch added no series at all, anywhere in `/metrics`, and that
/// no path text became a label. Returns the RED series after the first batch.
async fn series_do_not_grow(p: &Proxy, path: impl Fn(usize) -> String) -> BTreeMap<Labels, f64> {
    const FIRST: usize = 10;
    const ALL: usize = 10_000;
    let paths: Vec<String> = (0..ALL).map(path).collect();
    assert_eq!(paths.iter().collect::<BTreeSet<_>>().len(), ALL);
    assert!(paths.iter().all(|p| p.contains("zq9x") && p.contains('?')));

    send_all(p.inbound(), paths[..FIRST].to_vec(), 4).await;
    let (first_text, first) = wait_for_total(p, FIRST).await;
    send_all(p.inbound(), paths[FIRST..].to_vec(), 32).await;
    let (text, all) = wait_for_total(p, ALL).await;

    let series_of = |all: &[Sample]| -> BTreeSet<(String, Labels)> {
        all.iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect()
    };
    assert_eq!(
        series_of(&all),
        series_of(&first),
        "series changed between 10 and 10,000 distinct paths:\n--- after 10 ---\n{first_text}\
        \n--- after 10,000 ---\n{text}"
    );
    assert!(
        !text.contains("zq9x"),
        "a raw path or query in /metrics:\n{text}"
    );
    request_series(&all)
}

/// With no templates configured, routes are inferred: 10,000 distinct paths of four ID-bearing
/// shapes (numbers, 24-hex object IDs, UUIDs, 40-hex digests) are four routes, known exactly
/// after the first ten requests, and no ID or query reaches a label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_id_bearing_paths_make_four_inferred_routes_without_routes() {
    let app = App::start(Behaviour::status(200, "")).await;
    let p = Proxy::builder()
        .name("cardinality")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let hex = |i: usize, n: usize| -> String {
        let h = format!(
            "{:016x}{:016x}{:016x}",
            i * 7919 + 1,
            i * 104_729 + 3,
            i + 11
        );
        h[h.len() - n..].to_owned()
    };
    let series = series_do_not_grow(&p, |i| match i % 4 {
        0 => format!("/users/{i}?q=zq9x{i}"),
        1 => format!("/users/{i}/orders/{}?q=zq9x", hex(i, 24)),
        2 => {
            let h = hex(i, 32);
            format!(
                "/sessions/{}-{}-{}-{}-{}?q=zq9x",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        _ => format!("/blobs/{}7?zq9x", hex(i, 39)),
    })
    .await;
    let series_for = |route: &str| {
        labels(&[
            ("direction", "inbound"),
            ("method", "GET"),
            ("status_code", "200"),
            ("route", route),
        ])
    };
    let want: BTreeMap<Labels, f64> = [
        "/users/{id}",
        "/users/{id}/orders/{id}",
        "/sessions/{id}",
        "/blobs/{id}",
    ]
    .into_iter()
    .map(|r| (series_for(r), 2500.0))
    .collect();
    assert_eq!(series, want);
}

/// Paths that look like nothing (a new word each time) cannot grow the label set past
/// `--route-learn-limit`: after it, they share `_unmatched`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_routes_are_bounded_by_the_learn_limit() {
    let app = App::start(Behaviour::status(200, "")).await;
    let p = Proxy::builder()
        .name("learn-limit")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .args(["--route-learn-limit", "20"])
        .start()
        .await;
    let words: Vec<String> = (0..500)
        .map(|i| {
            // Letters only: never an identifier, so each is its own template.
            let w: String = format!("{i:03}")
                .bytes()
                .map(|d| char::from(b'a' + (d - b'0')))
                .collect();
            format!("/word-{w}")
        })
        .collect();
    send_all(p.inbound(), words, 8).await;
    let (text, all) = wait_for_total(&p, 500).await;
    let series = request_series(&all);
    let routes: BTreeSet<&str> = series.keys().map(|l| l["route"].as_str()).collect();
    assert_eq!(routes.len(), 21, "20 learned and _unmatched:\n{text}");
    assert!(routes.contains("_unmatched"), "{routes:?}");
    let unmatched: f64 = series
        .iter()
        .filter(|(l, _)| l["route"] == "_unmatched")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(unmatched, 480.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_paths_add_no_series_with_routes() {
    let app = App::start(Behaviour::status(200, "")).await;
    let p = Proxy::builder()
        .name("cardinality-routes")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .args(["--route", "/orders/{id}", "--route", "/static/{*path}"])
        .start()
        .await;
    let series = series_do_not_grow(&p, |i| match i % 3 {
        0 => format!("/orders/zq9x{i}?page=zq9x{i}"),
        1 => format!("/static/zq9x/{i}/site.css?v=zq9x{i}"),
        _ => format!("/zq9x-{i}/x?q=zq9x{i}"),
    })
    .await;
    let series_for = |route: &str| {
        labels(&[
            ("direction", "inbound"),
            ("method", "GET"),
            ("status_code", "200"),
            ("route", route),
        ])
    };
    let got: BTreeSet<Labels> = series.keys().cloned().collect();
    let want = BTreeSet::from([
        series_for("/orders/{id}"),
        series_for("/static/{*path}"),
        series_for("_unmatched"),
    ]);
    assert_eq!(got, want);
    assert_eq!(series[&series_for("/orders/{id}")], 3334.0);
}

/// gRPC method labels come from the request path, so they are only bounded if a path becomes a
/// label when the service really has that method. Here a client calls 300 methods the service
/// does not have (each answered `UNIMPLEMENTED`), then one it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_paths_the_service_does_not_implement_add_no_series() {
    let server = GrpcServer::start().await;
    let p = Proxy::builder()
        .name("grpc-cardinality")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(server.addr().to_string())
        .start()
        .await;
    let inbound = p.inbound();
    let bogus = |i: usize| async move {
        let reply = client::h2c_request(
            inbound,
            Method::POST,
            &format!("/zq9x.Scan{i}/Probe{i}"),
            &[("content-type", "application/grpc"), ("te", "trailers")],
            body::full(vec![0u8; 5]),
        )
        .await;
        assert_eq!(reply.headers["grpc-status"], "12", "{:?}", reply.headers);
    };
    for i in 0..10 {
        bogus(i).await;
    }
    let (_, first) = wait_for_total(&p, 10).await;
    for i in 10..300 {
        bogus(i).await;
    }
    let mut echo = EchoClient::connect(p.inbound(), None).await;
    echo.unary(b"hello", &[]).await.expect("unary");
    let (text, all) = wait_for_total(&p, 301).await;

    let after_10: BTreeSet<Labels> = request_series(&first).into_keys().collect();
    let unimplemented: BTreeSet<Labels> = request_series(&all)
        .into_keys()
        .filter(|l| l.get("grpc_status").map(String::as_str) == Some("12"))
        .collect();
    let unary = labels(&[
        ("direction", "inbound"),
        ("method", "POST"),
        ("status_code", "200"),
        ("grpc_service", "tracemesh.test.Echo"),
        ("grpc_method", "Unary"),
        ("grpc_status", "0"),
    ]);
    // Every symptom at once, briefly: the whole exposition would be thousands of lines.
    let mut problems = Vec::new();
    if unimplemented != after_10 {
        let added: Vec<&Labels> = unimplemented.difference(&after_10).take(3).collect();
        problems.push(format!(
            "UNIMPLEMENTED series went from {} (after 10 calls) to {} (after 300), e.g. {added:?}",
            after_10.len(),
            unimplemented.len()
        ));
    }
    let leaked = text.lines().filter(|l| l.contains("zq9x")).count();
    if leaked > 0 {
        problems.push(format!(
            "{leaked} lines of /metrics hold raw path text (zq9x...)"
        ));
    }
    if find(&all, REQUESTS, &unary).map(|s| s.value) != Some(1.0) {
        let unary_like: Vec<Labels> = request_series(&all)
            .into_keys()
            .filter(|l| l.get("grpc_status").map(String::as_str) == Some("0"))
            .collect();
        problems.push(format!(
            "the service's own Unary is not labelled as such; grpc_status=0 series: {unary_like:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --- health and process metrics --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_red_metrics_removes_the_red_families_and_keeps_the_health_metrics() {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = status_app().await;
    let p = proxy(&otlp, "red-off", &app, &["--disable-red-metrics"]).await;
    send(p.inbound(), "GET", "/", &[], 200).await;
    send(
        p.inbound(),
        "GET",
        "/",
        &[("traceparent", "00-bad-01")],
        200,
    )
    .await;
    // The span is exported and counted, so the exposition below is after both requests ended.
    otlp.wait_for_spans(2, DEADLINE).await;
    let what = "tracemesh_spans_exported_total 2";
    let text = eventually(DEADLINE, what, || async {
        let text = openmetrics(&p).await;
        let all = samples(&text);
        (value(&all, "tracemesh_spans_exported_total", &[]) == Some(2.0)).then_some(text)
    })
    .await;

    assert!(!text.contains("tracemesh_request"), "{text}");
    let all = samples(&text);
    for name in [
        "tracemesh_spans_dropped_total",
        "tracemesh_span_export_errors_total",
        "tracemesh_span_export_queue_depth",
        "process_resident_memory_bytes",
    ] {
        assert!(value(&all, name, &[]).is_some(), "no {name}:\n{text}");
    }
    for direction in ["inbound", "outbound"] {
        for name in [
            "tracemesh_open_connections",
            "tracemesh_opaque_connections_total",
        ] {
            assert!(
                value(&all, name, &[("direction", direction)]).is_some(),
                "no {name}{{direction={direction:?}}}:\n{text}"
            );
        }
    }
    let invalid: f64 = all
        .iter()
        .filter(|s| s.name == "tracemesh_invalid_context_headers_total")
        .filter(|s| s.labels["format"] == "tracecontext")
        .map(|s| s.value)
        .sum();
    assert_eq!(invalid, 1.0, "{text}");
    // Still a valid OpenMetrics exposition, and still classic text when not asked.
    python_parse("openmetrics", &text).await;
    let (content_type, classic) = scrape(&p, None).await;
    assert_eq!(content_type, PROMETHEUS_TEXT);
    assert!(!classic.contains("tracemesh_request"), "{classic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_proxy_process() {
    let started = unix_now();
    let app = status_app().await;
    let p = Proxy::builder()
        .name("process")
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    send(p.inbound(), "GET", "/", &[], 200).await;
    let all = samples(&openmetrics(&p).await);
    let get =
        |name: &str| value(&all, name, &[]).unwrap_or_else(|| panic!("no {name} in {all:#?}"));

    let rss = get("process_resident_memory_bytes");
    let vsz = get("process_virtual_memory_bytes");
    assert!(rss > 0.0 && vsz >= rss, "rss {rss}, virtual {vsz}");
    // The proxy's own memory, not a constant: the kernel's view of that pid agrees.
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).expect("/proc");
    let vm_rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let ratio = rss / (vm_rss_kib * 1024.0);
    assert!(
        (0.5..2.0).contains(&ratio),
        "rss {rss} vs VmRSS {vm_rss_kib} KiB"
    );

    let cpu = get("process_cpu_seconds_total");
    assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
    let threads = get("process_threads");
    assert!(threads >= 2.0, "a multi-threaded runtime: {threads}");
    let (open, max) = (get("process_open_fds"), get("process_max_fds"));
    assert!(open >= 3.0 && max >= open, "open {open}, max {max}");
    // Derived from boot time plus clock ticks, which may drift from the wall clock a little
    // (e.g. across a VM's suspend); the margin still tells this process from the machine's boot.
    let start = get("process_start_time_seconds");
    assert!(
        start >= started - 30.0 && start <= unix_now() + 30.0,
        "start time {start}, test started at {started}"
    );
}
