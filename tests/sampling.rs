//! Trace Context Level 2 and consistent probability sampling through running proxies: what the
//! app receives (`traceparent` flags, `tracestate` bytes) for every Level 2 rule, two proxies
//! deciding identically for a thousand traces, `rv` deciding instead of the trace ID, probes
//! never sampled, the force-trace header honoured only from trusted sources, and the rules file
//! replaced under load.

mod support;

use std::{collections::BTreeSet, time::Duration};

use support::{
    apps::{App, Behaviour, SeenRequest},
    client,
    otlp::{OtlpReceiver, ReceivedSpan},
    process::{Proxy, ProxyBuilder},
    DEADLINE,
};

/// What one request looked like when it reached the app.
fn header<'a>(seen: &'a SeenRequest, name: &str) -> Option<&'a str> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

/// `traceparent` split into (trace ID, span ID, flags).
fn traceparent(seen: &SeenRequest) -> (String, String, String) {
    let tp = header(seen, "traceparent").expect("the app got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "always version 00 on output: {tp}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

struct Setup {
    otlp: OtlpReceiver,
    app: App,
    proxy: Proxy,
}

async fn setup(name: &str, configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> Setup {
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let builder = Proxy::exporting_to(&otlp, name)
        .arg("--app-addr")
        .arg(app.addr().to_string());
    let proxy = configure(builder).start().await;
    Setup { otlp, app, proxy }
}

impl Setup {
    /// Sends `GET path` with `headers` (repeated names become repeated header lines), expects
    /// 200, and returns what the app saw.
    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> SeenRequest {
        let before = self.app.seen().len();
        let (status, _, _) = client::http1_get(self.proxy.inbound(), path, headers).await;
        assert_eq!(status, 200, "{path} {headers:?}");
        self.app.wait_for_requests(before + 1, DEADLINE).await[before].clone()
    }

    fn span(&self, span_id: &str) -> Option<ReceivedSpan> {
        self.otlp.spans().into_iter().find(|s| s.span_id == span_id)
    }
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn tp(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

/// Every Level 2 rule, through the proxy: incoming headers, then the flags and `tracestate` the
/// app must get. `continues` says whether the incoming trace goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_2_rule_holds_for_what_the_app_receives() {
    let s = setup("level2", |b| b).await;
    let key256 = "k".repeat(256);
    let key257 = "k".repeat(257);
    let at_key = format!("t@{}", "v".repeat(15));
    let value256 = format!("v={}", "x".repeat(256));
    let value257 = format!("v={}", "x".repeat(257));
    let m32: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
    let m33: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let chunks = |m: &[String]| -> Vec<String> { m.chunks(10).map(|c| c.join(",")).collect() };
    let (c32, c33) = (chunks(&m32), chunks(&m33));
    let m32_joined = m32.join(",");
    let member = |k: &str| format!("{k}=1,bar=2");
    let (k256, k257, katv) = (member(&key256), member(&key257), member(&at_key));

    type Row<'a> = (
        &'a str,
        Vec<(&'a str, String)>,
        bool,
        &'a str,
        Option<&'a str>,
    );
    let v1 = format!("01-{TRACE}-{PARENT}-03-whatever-comes-next");
    let rows: Vec<Row> = vec![
        // traceparent flags: random carried, sampled followed (parent-based), reserved zeroed.
        (
            "flags 02",
            vec![("traceparent", tp("02"))],
            true,
            "02",
            None,
        ),
        (
            "flags 03",
            vec![("traceparent", tp("03"))],
            true,
            "03",
            None,
        ),
        (
            "flags 01",
            vec![("traceparent", tp("01"))],
            true,
            "01",
            None,
        ),
        (
            "flags 00",
            vec![("traceparent", tp("00"))],
            true,
            "00",
            None,
        ),
        (
            "flags ff: reserved bits zeroed",
            vec![("traceparent", tp("ff"))],
            true,
            "03",
            None,
        ),
        (
            "flags 09: reserved bit zeroed",
            vec![("traceparent", tp("09"))],
            true,
            "01",
            None,
        ),
        (
            "flags fe",
            vec![("traceparent", tp("fe"))],
            true,
            "02",
            None,
        ),
        (
            "version 01, longer: downgraded to 00",
            vec![("traceparent", v1.clone())],
            true,
            "03",
            None,
        ),
        // tracestate grammar and limits.
        (
            "duplicate key",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "foo=1,foo=1".into()),
            ],
            true,
            "01",
            Some("foo=1"),
        ),
        (
            "duplicate key, other value",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "foo=1,bar=3,foo=2".into()),
            ],
            true,
            "01",
            Some("foo=1,bar=3"),
        ),
        (
            "duplicate across lines",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "foo=1".into()),
                ("tracestate", "foo=2".into()),
            ],
            true,
            "01",
            Some("foo=1"),
        ),
        (
            "key ending in @",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "foo@=1,bar=2".into()),
            ],
            true,
            "01",
            Some("foo@=1,bar=2"),
        ),
        (
            "key with @@",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "foo@@bar=1,bar=2".into()),
            ],
            true,
            "01",
            Some("foo@@bar=1,bar=2"),
        ),
        (
            "long system after @",
            vec![("traceparent", tp("01")), ("tracestate", katv.clone())],
            true,
            "01",
            Some(katv.as_str()),
        ),
        (
            "256-character key",
            vec![("traceparent", tp("01")), ("tracestate", k256.clone())],
            true,
            "01",
            Some(k256.as_str()),
        ),
        (
            "257-character key drops the header",
            vec![("traceparent", tp("01")), ("tracestate", k257.clone())],
            true,
            "01",
            None,
        ),
        (
            "key starting with @ drops the header",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "@foo=1,bar=2".into()),
            ],
            true,
            "01",
            None,
        ),
        (
            "uppercase key drops the header",
            vec![("traceparent", tp("01")), ("tracestate", "FOO=1".into())],
            true,
            "01",
            None,
        ),
        (
            "256-character value",
            vec![("traceparent", tp("01")), ("tracestate", value256.clone())],
            true,
            "01",
            Some(value256.as_str()),
        ),
        (
            "257-character value drops the header",
            vec![("traceparent", tp("01")), ("tracestate", value257.clone())],
            true,
            "01",
            None,
        ),
        (
            "value with , or = in it",
            vec![("traceparent", tp("01")), ("tracestate", "foo=a=b".into())],
            true,
            "01",
            None,
        ),
        (
            "leading spaces of a value kept",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "foo=  bar".into()),
            ],
            true,
            "01",
            Some("foo=  bar"),
        ),
        (
            "32 members over 4 lines, joined in order",
            [
                vec![("traceparent", tp("01"))],
                c32.iter().map(|c| ("tracestate", c.clone())).collect(),
            ]
            .concat(),
            true,
            "01",
            Some(m32_joined.as_str()),
        ),
        (
            "33 members drop the header",
            [
                vec![("traceparent", tp("01"))],
                c33.iter().map(|c| ("tracestate", c.clone())).collect(),
            ]
            .concat(),
            true,
            "01",
            None,
        ),
        (
            "lines combined in order",
            vec![
                ("traceparent", tp("01")),
                ("tracestate", "a=1".into()),
                ("tracestate", "".into()),
                ("tracestate", "b=2,c=3".into()),
            ],
            true,
            "01",
            Some("a=1,b=2,c=3"),
        ),
        // New roots: random trace ID, flag 02, our own th.
        (
            "no context: a new root",
            vec![],
            false,
            "03",
            Some("ot=th:0"),
        ),
        (
            "tracestate alone is ignored",
            vec![("tracestate", "foo=1".into())],
            false,
            "03",
            Some("ot=th:0"),
        ),
        (
            "invalid traceparent: a new root",
            vec![("traceparent", tp("1"))],
            false,
            "03",
            Some("ot=th:0"),
        ),
        // B3: X-B3-Flags other than 1 is ignored; the context stays valid.
        (
            "X-B3-Flags: 2",
            vec![
                ("X-B3-TraceId", TRACE.into()),
                ("X-B3-SpanId", PARENT.into()),
                ("X-B3-Sampled", "1".into()),
                ("X-B3-Flags", "2".into()),
            ],
            true,
            "01",
            None,
        ),
        (
            "X-B3-Flags: 0 with sampled 0",
            vec![
                ("X-B3-TraceId", TRACE.into()),
                ("X-B3-SpanId", PARENT.into()),
                ("X-B3-Sampled", "0".into()),
                ("X-B3-Flags", "0".into()),
            ],
            true,
            "00",
            None,
        ),
    ];

    let mut exported = Vec::new();
    for (name, headers, continues, flags, tracestate) in &rows {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = s.send("/level2", &pairs).await;
        let (trace, span, got_flags) = traceparent(&seen);
        assert_eq!(&got_flags, flags, "{name}: flags");
        assert_eq!(trace == TRACE, *continues, "{name}: trace {trace}");
        assert_ne!(span, PARENT, "{name}: our own span ID, never the parent's");
        assert_eq!(
            header(&seen, "tracestate"),
            *tracestate,
            "{name}: tracestate"
        );
        assert_eq!(
            seen.headers.get_all("tracestate").iter().count(),
            usize::from(tracestate.is_some()),
            "{name}: one tracestate line"
        );
        if u8::from_str_radix(flags, 16).unwrap() & 1 == 1 {
            exported.push((name, span, tracestate.unwrap_or("")));
        }
    }
    // The exported spans carry the tracestate that was propagated, byte for byte.
    s.otlp.wait_for_spans(exported.len(), DEADLINE).await;
    for (name, span_id, tracestate) in exported {
        let span = s
            .span(&span_id)
            .unwrap_or_else(|| panic!("{name}: no span {span_id}"));
        assert_eq!(span.trace_state, tracestate, "{name}: exported trace_state");
    }
    assert_eq!(
        s.otlp.spans().len(),
        rows.iter()
            .filter(|r| u8::from_str_radix(r.3, 16).unwrap() & 1 == 1)
            .count()
    );
}

/// Sends `n` requests through `a`'s outbound listener to `b`'s inbound, 8 at a time; returns
/// what the app behind `b` saw.
async fn through_chain(a: &Proxy, b: &Proxy, app: &App, n: usize) -> Vec<SeenRequest> {
    let url = format!("http://{}/chain", b.inbound());
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(8);
        let calls = (0..batch).map(|_| client::http1_proxy_get(a.outbound(), &url, &[]));
        for (status, _, _) in futures_util::future::join_all(calls).await {
            assert_eq!(status, 200);
        }
        sent += batch;
    }
    app.wait_for_requests(n, DEADLINE).await
}

/// Two proxies with ratio 0.25 in a chain, the second deciding on its own (not parent-based):
/// for a thousand new traces they make the same decision every time, and the fraction kept is
/// within five standard deviations of 0.25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_with_the_same_ratio_decide_identically_for_a_thousand_traces() {
    const N: usize = 1000;
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::Echo).await;
    let b = Proxy::exporting_to(&otlp, "chain-b")
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .env("OTEL_TRACES_SAMPLER", "traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0.25")
        .start()
        .await;
    let a = Proxy::exporting_to(&otlp, "chain-a")
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0.25")
        .start()
        .await;
    let seen = through_chain(&a, &b, &app, N).await;

    let mut sampled_at_app = BTreeSet::new();
    for r in &seen {
        let (trace, _, flags) = traceparent(r);
        let kept = flags == "03";
        assert!(
            flags == "03" || flags == "02",
            "flags {flags}: a new root is random"
        );
        // B's tracestate: its own th when it kept the trace, nothing otherwise.
        assert_eq!(
            header(r, "tracestate"),
            kept.then_some("ot=th:c"),
            "trace {trace}"
        );
        if kept {
            sampled_at_app.insert(trace);
        }
    }
    // Mean 250, sd 13.7: five sd either side.
    let kept = sampled_at_app.len();
    assert!((182..=318).contains(&kept), "kept {kept} of {N}");

    let spans = otlp
        .wait_until(DEADLINE, "both proxies' spans of every kept trace", |s| {
            s.len() >= 2 * kept
        })
        .await;
    let of = |service: &str| -> BTreeSet<String> {
        spans
            .iter()
            .filter(|s| s.resource.get("service.name").map(String::as_str) == Some(service))
            .map(|s| s.trace_id.clone())
            .collect()
    };
    assert_eq!(
        of("chain-a"),
        sampled_at_app,
        "A kept exactly the traces B kept"
    );
    assert_eq!(
        of("chain-b"),
        sampled_at_app,
        "B exported exactly what it propagated as kept"
    );
    assert_eq!(spans.len(), 2 * kept);
    assert!(
        spans.iter().all(|s| s.trace_state == "ot=th:c"),
        "every kept span says th:c"
    );
}

/// With a ratio sampler deciding a continued trace, an incoming `rv` is the randomness, not the
/// trace ID; `rv` travels on unchanged and `th` is ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_rv_decides_instead_of_the_trace_id() {
    let s = setup("rv", |b| {
        b.env("OTEL_TRACES_SAMPLER", "traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0.25")
    })
    .await;
    // Trace ID randomness ff… (kept at 0.25), rv 10… (dropped): rv wins.
    let keepable = "4bf92f3577b34da6a3ffffffffffffff";
    let seen = s
        .send(
            "/rv",
            &[
                ("traceparent", &format!("00-{keepable}-{PARENT}-03")),
                ("tracestate", "rojo=1,ot=rv:10000000000000"),
            ],
        )
        .await;
    let (trace, _, flags) = traceparent(&seen);
    assert_eq!((trace.as_str(), flags.as_str()), (keepable, "02"));
    assert_eq!(
        header(&seen, "tracestate"),
        Some("rojo=1,ot=rv:10000000000000")
    );
    // Trace ID randomness 00… (dropped), rv c0… (kept exactly at T): rv wins, th is written.
    let droppable = "4bf92f3577b34da6a300000000000000";
    let seen = s
        .send(
            "/rv",
            &[
                ("traceparent", &format!("00-{droppable}-{PARENT}-00")),
                ("tracestate", "rojo=1,ot=rv:c0000000000000"),
            ],
        )
        .await;
    let (_, span, flags) = traceparent(&seen);
    assert_eq!(flags, "01");
    assert_eq!(
        header(&seen, "tracestate"),
        Some("ot=th:c;rv:c0000000000000,rojo=1")
    );
    let spans = s.otlp.wait_for_spans(1, DEADLINE).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_id, span);
    assert_eq!(spans[0].trace_state, "ot=th:c;rv:c0000000000000,rojo=1");
}

/// kube-probe requests and health paths never start a sampled root, even at ratio 1.0, and are
/// still counted in RED; a rules file can switch the defaults off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_not_sampled_at_ratio_one_but_still_counted() {
    let s = setup("probes", |b| b).await;
    let probe_paths = [
        "/healthz",
        "/readyz",
        "/livez",
        "/ready",
        "/live",
        "/metrics",
        "/livez/ping",
    ];
    for path in probe_paths {
        let seen = s.send(path, &[]).await;
        assert_eq!(traceparent(&seen).2, "02", "{path} must not be sampled");
        assert_eq!(
            header(&seen, "tracestate"),
            None,
            "{path}: no th for a non-probability decision"
        );
    }
    let seen = s.send("/", &[("user-agent", "kube-probe/1.35")]).await;
    assert_eq!(traceparent(&seen).2, "02", "kube-probe user agent");
    let reply = client::h2c_request(
        s.proxy.inbound(),
        http::Method::POST,
        "/grpc.health.v1.Health/Check",
        &[("content-type", "application/grpc")],
        support::body::empty(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let grpc = s.app.seen().into_iter().last().unwrap();
    assert_eq!(traceparent(&grpc).2, "02", "gRPC health check");
    // A normal request is sampled, and it is the only span exported.
    let seen = s.send("/work", &[]).await;
    let (_, span, flags) = traceparent(&seen);
    assert_eq!(flags, "03");
    let spans = s.otlp.wait_for_spans(1, DEADLINE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans_later = s.otlp.spans();
    assert_eq!(
        spans_later.len(),
        1,
        "only /work is exported: {spans_later:?}"
    );
    assert_eq!(spans[0].span_id, span);
    // RED counts all ten.
    let metrics = s.proxy.metrics().await;
    let total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tracemesh_requests_total{"))
        .filter_map(|l| l.split(' ').nth(1)?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, (probe_paths.len() + 3) as f64, "{metrics}");

    // probe_defaults: false samples them like anything else.
    let dir = tempdir("probes-off");
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, "probe_defaults: false\n").unwrap();
    let off = setup("probes-off", |b| b.arg("--sampling-rules").arg(&rules)).await;
    let seen = off
        .send("/healthz", &[("user-agent", "kube-probe/1.35")])
        .await;
    assert_eq!(traceparent(&seen).2, "03");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `x-tracemesh-force-trace: 1` samples a request at ratio 0, but only from a trusted source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_trace_is_honoured_only_from_a_trusted_address() {
    let trusted = setup("force-trusted", |b| {
        b.env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
            .arg("--trusted-cidrs")
            .arg("10.0.0.0/8,127.0.0.1")
    })
    .await;
    let seen = trusted.send("/f", &[]).await;
    assert_eq!(
        traceparent(&seen).2,
        "02",
        "ratio 0 samples nothing by itself"
    );
    let seen = trusted
        .send("/f", &[("x-tracemesh-force-trace", "1")])
        .await;
    let (_, span, flags) = traceparent(&seen);
    assert_eq!(flags, "03", "forced from 127.0.0.1, which is trusted");
    assert_eq!(
        header(&seen, "tracestate"),
        None,
        "a forced decision carries no th"
    );
    // Forcing an unsampled parent: sampled, random bit as received, th erased, rv kept.
    let seen = trusted
        .send(
            "/f",
            &[
                ("x-tracemesh-force-trace", "1"),
                ("traceparent", &tp("00")),
                ("tracestate", "ot=th:fc;rv:00000000000001"),
            ],
        )
        .await;
    assert_eq!(traceparent(&seen).2, "01");
    assert_eq!(header(&seen, "tracestate"), Some("ot=rv:00000000000001"));
    let spans = trusted.otlp.wait_for_spans(2, DEADLINE).await;
    assert!(spans.iter().any(|s| s.span_id == span));

    let untrusted = setup("force-untrusted", |b| {
        b.env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
            .arg("--trusted-cidrs")
            .arg("10.0.0.0/8")
    })
    .await;
    let seen = untrusted
        .send("/f", &[("x-tracemesh-force-trace", "1")])
        .await;
    assert_eq!(traceparent(&seen).2, "02", "127.0.0.1 is not in 10.0.0.0/8");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(untrusted.otlp.spans().is_empty());
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tracemesh-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` whole, as a ConfigMap update does (write aside, then rename over).
fn replace(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn sha256(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The rules file replaced while 200 requests a second flow: no request fails, requests sent a
/// second after the swap all follow the new ratio, and a broken file later keeps the rules in
/// force, with one error counted and the loaded generation and hash on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_replaced_under_load_apply_within_a_second_and_a_broken_file_keeps_them() {
    let dir = tempdir("reload");
    let rules = dir.join("sampling-rules.yaml");
    let never = "rules:\n  - match: { path_prefix: / }\n    ratio: 0\n";
    let always = "rules:\n  - match: { path_prefix: / }\n    ratio: 1\n";
    std::fs::write(&rules, never).unwrap();
    let s = setup("reload", |b| b.arg("--sampling-rules").arg(&rules)).await;
    s.proxy
        .wait_for_metric(
            &format!(
                "tracemesh_config_generation{{file=\"sampling_rules\",sha256=\"{}\"}} 1",
                sha256(never)
            ),
            DEADLINE,
        )
        .await;

    // 200 requests a second for 4 s, each tagged with its number.
    let inbound = s.proxy.inbound();
    let started = tokio::time::Instant::now();
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut calls = Vec::new();
        for i in 0..800u32 {
            tick.tick().await;
            calls.push(tokio::spawn(async move {
                let tag = i.to_string();
                let sent_at = started.elapsed();
                let (status, _, _) = client::http1_get(inbound, "/load", &[("x-seq", &tag)]).await;
                (i, sent_at, started.elapsed(), status)
            }));
        }
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap());
        }
        out
    });
    tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    replace(&rules, always);
    let swapped = started.elapsed();
    // When the proxy says it has the new version (observed, so at or after the swap inside).
    let loaded = format!(
        "tracemesh_config_generation{{file=\"sampling_rules\",sha256=\"{}\"}} 2",
        sha256(always)
    );
    while !s.proxy.metrics().await.contains(&loaded) {
        assert!(
            started.elapsed() < swapped + Duration::from_secs(1),
            "not loaded within 1 s of the swap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = started.elapsed();
    tokio::time::sleep_until(started + Duration::from_millis(2500)).await;
    replace(
        &rules,
        "rules:\n  - match: { path_prefix: / }\n    ratio: 7\n",
    );
    let results = load.await.unwrap();

    assert_eq!(results.len(), 800);
    let failed: Vec<_> = results.iter().filter(|r| r.3 != 200).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let seen = s.app.wait_for_requests(800, DEADLINE).await;
    let mut before = 0;
    let mut after = 0;
    for r in &seen {
        let i: usize = header(r, "x-seq").unwrap().parse().unwrap();
        let (_, sent_at, answered_at, _) = results[i];
        let sampled = traceparent(r).2 == "03";
        if answered_at < swapped {
            assert!(
                !sampled,
                "request {i}, answered before the swap, was sampled"
            );
            before += 1;
        } else if sent_at > applied {
            assert!(
                sampled,
                "request {i}, sent {:?} after the new rules were in force, was not sampled",
                sent_at - applied
            );
            after += 1;
        }
    }
    assert!(
        before > 100 && after > 300,
        "before {before}, after {after}"
    );

    let metrics = s.proxy.metrics().await;
    let generation = format!(
        "tracemesh_config_generation{{file=\"sampling_rules\",sha256=\"{}\"}} 2",
        sha256(always)
    );
    assert!(metrics.contains(&generation), "{metrics}");
    assert!(
        metrics.contains("tracemesh_config_reload_errors_total{file=\"sampling_rules\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        s.proxy
            .logs()
            .iter()
            .filter(|l| l.contains("invalid sampling_rules"))
            .count(),
        1
    );
    std::fs::remove_dir_all(dir).unwrap();
}
