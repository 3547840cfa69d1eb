//! A real Prometheus (Debian's `prometheus` package, installed by scripts/install-test-deps.sh)
//! scrapes a proxy that is carrying traffic, and the RED metrics are asserted through its HTTP
//! API: `rate()` of the request counter, `histogram_quantile()` over the duration histogram, the
//! error ratio per route, and `/api/v1/query_exemplars`, whose trace IDs must be exactly trace
//! IDs the test's OTLP receiver got as spans from that proxy.
//!
//! Prometheus runs as a child on `127.0.0.1:<free port>` with `--enable-feature=exemplar-storage`
//! and a data directory under cargo's per-test temporary directory; a guard kills it by PID,
//! reaps it and removes the directory on `Drop`, pass or fail. Prometheus asks for OpenMetrics
//! by default (2.x), which is the only format with exemplars, so the exemplar assertions also
//! show the negotiation worked against a real scraper.
//!
//! Prometheus HTTP API: https://prometheus.io/docs/prometheus/latest/querying/api/

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::{
    apps::{App, Behaviour},
    body, client,
    otlp::{OtlpReceiver, ReceivedSpan},
    process::{reserve_port, Proxy},
};

/// The whole test, Prometheus's start-up included.
const OVERALL: Duration = Duration::from_secs(60);
/// Each wait for Prometheus (ready, scraped, a query answering as expected).
const WAIT: Duration = Duration::from_secs(30);
/// How often the traffic task sends a request.
const EVERY: Duration = Duration::from_millis(20);
/// The service name the proxy exports as; exemplars must name its spans.
const SERVICE: &str = "prom-scraped";

// --- the Prometheus child --------------------------------------------------------------------

/// A running Prometheus; killed (by PID), reaped and its directory removed on `Drop`.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

// === impl Prometheus ===

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second.
    ///
    /// # Panics
    /// If `prometheus` is not on `PATH` (run scripts/install-test-deps.sh) or cannot be spawned.
    fn start(target: SocketAddr) -> Self {
        let binary = find_on_path("prometheus").unwrap_or_else(|| {
            panic!(
                "`prometheus` is not on PATH: run scripts/install-test-deps.sh, which installs \
                 Debian's prometheus package"
            )
        });
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "prometheus-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(dir.join("data")).expect("creating Prometheus's directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tracemesh\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("creating the log file");
        let addr = reserve_port();
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        eprintln!(
            "[prometheus] pid {} on {addr}, directory {}",
            child.id(),
            dir.display()
        );
        Self { child, dir, addr }
    }

    /// `GET path` on Prometheus: status and body, or why it could not be had.
    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), String> {
        let req = client::request(
            Method::GET,
            path,
            &self.addr.to_string(),
            &[],
            body::empty(),
        );
        let rsp = tokio::time::timeout(Duration::from_secs(5), async {
            let rsp = client::try_send_http1(self.addr, req).await?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await?.to_bytes();
            Ok::<_, support::serve::BoxError>((status, body))
        })
        .await;
        match rsp {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("GET {path}: {e}")),
            Err(_) => Err(format!("GET {path}: no answer within 5s")),
        }
    }

    /// Waits for `GET /-/ready` → 200.
    ///
    /// # Panics
    /// If Prometheus exits, or is not ready within [`WAIT`], with its log.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok((StatusCode::OK, _)) = self.get("/-/ready").await {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("polling Prometheus") {
                panic!(
                    "Prometheus exited before it was ready: {status}\n{}",
                    self.log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus not ready within {WAIT:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An API call: its `data`.
    ///
    /// # Panics
    /// If the call fails or does not answer `"status": "success"`.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await.unwrap_or_else(|e| panic!("{e}"));
        let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {path} → {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(
            status == StatusCode::OK && json["status"] == "success",
            "GET {path} → {status}: {json}"
        );
        json["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", url_encode(promql)))
            .await;
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().expect("a result array").clone()
    }

    /// Polls `promql` every 250 ms until `check` accepts its result; returns what `check` made
    /// of it.
    ///
    /// # Panics
    /// After [`WAIT`], with the last result and Prometheus's log.
    async fn wait_for<T>(&self, promql: &str, check: impl Fn(&[Value]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let result = self.query(promql).await;
            if let Some(v) = check(&result) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{promql} never gave the expected result within {WAIT:?}; last: {}\n{}",
                Value::Array(result),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Exemplars of `series_selector` in `[start, end]` (Unix seconds): `(series labels,
    /// exemplar)` pairs.
    async fn exemplars(&self, selector: &str, start: f64, end: f64) -> Vec<(Value, Value)> {
        let data = self
            .api(&format!(
                "/api/v1/query_exemplars?query={}&start={start:.3}&end={end:.3}",
                url_encode(selector)
            ))
            .await;
        let mut out = Vec::new();
        for series in data.as_array().expect("an array of series") {
            for ex in series["exemplars"].as_array().expect("exemplars") {
                out.push((series["seriesLabels"].clone(), ex.clone()));
            }
        }
        out
    }

    fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- prometheus log (last 40 lines) ---\n{}",
            tail.join("\n")
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        // Child::kill signals exactly this PID (SIGKILL); wait reaps it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// A sample's value from an instant-vector element (`"value": [ts, "1.5"]`).
fn sample_value(v: &Value) -> f64 {
    v["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no value in {v}"))
}

fn label<'a>(v: &'a Value, name: &str) -> &'a str {
    v["metric"][name].as_str().unwrap_or("")
}

// --- traffic ---------------------------------------------------------------------------------

/// Sends a sampled request every [`EVERY`] until aborted: of every five, three `GET
/// /orders/{i}` answered 200, one answered 500, and one `GET /missing/{i}` answered 500 (an
/// unmatched route). Counts the requests sent and the failures to send one.
fn traffic(inbound: SocketAddr, sent: Arc<AtomicUsize>, failed: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0.. {
            tick.tick().await;
            let (path, status) = match i % 5 {
                4 => (format!("/missing/{i}"), "500"),
                2 => (format!("/orders/{i}"), "500"),
                _ => (format!("/orders/{i}"), "200"),
            };
            let req = client::request(
                Method::GET,
                &path,
                &inbound.to_string(),
                &[("x-status", status)],
                body::empty(),
            );
            let ok = match client::try_send_http1(inbound, req).await {
                Ok(rsp) => {
                    let want = rsp.status().as_str() == status;
                    want && rsp.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            let counter = if ok { &sent } else { &failed };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// --- the test --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_rates_quantiles_and_exemplars_naming_exported_traces() {
    tokio::time::timeout(OVERALL, scrape_and_query())
        .await
        .unwrap_or_else(|_| panic!("the Prometheus test took longer than {OVERALL:?}"));
}

async fn scrape_and_query() {
    let started = unix_now();
    let otlp = OtlpReceiver::start_grpc().await;
    let app = App::start(Behaviour::custom(|req| {
        let status = req
            .headers
            .get("x-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(200);
        let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        *rsp.status_mut() = StatusCode::from_u16(status).expect("a valid x-status");
        rsp
    }))
    .await;
    let proxy = Proxy::exporting_to(&otlp, SERVICE)
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .args(["--route", "/orders/{id}"])
        .start()
        .await;

    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The task lives as long as the runtime, i.e. this test.
    traffic(proxy.inbound(), sent.clone(), failed.clone());

    let mut prom = Prometheus::start(proxy.admin());
    prom.wait_ready().await;
    prom.wait_for(r#"up{job="tracemesh"}"#, |r| {
        (r.len() == 1 && sample_value(&r[0]) == 1.0).then_some(())
    })
    .await;

    // rate(): one series per (status, route), with the proxy's labels plus job and instance.
    let instance = proxy.admin().to_string();
    let rates = prom
        .wait_for(
            r#"rate(tracemesh_requests_total{job="tracemesh"}[5s])"#,
            |r| {
                let positive: HashMap<(String, String), f64> = r
                    .iter()
                    .map(|s| {
                        let key = (label(s, "status_code").into(), label(s, "route").into());
                        (key, sample_value(s))
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect();
                (positive.len() == 3).then(|| r.to_vec())
            },
        )
        .await;
    let mut keys = BTreeSet::new();
    for s in &rates {
        let names: BTreeSet<&str> = s["metric"]
            .as_object()
            .expect("labels")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "direction",
                "instance",
                "job",
                "method",
                "route",
                "status_code"
            ]),
            "{s}"
        );
        assert_eq!(label(s, "direction"), "inbound", "{s}");
        assert_eq!(label(s, "method"), "GET", "{s}");
        assert_eq!(label(s, "instance"), instance, "{s}");
        let v = sample_value(s);
        assert!(v.is_finite() && v > 0.0, "{s}");
        keys.insert((label(s, "status_code"), label(s, "route")));
    }
    assert_eq!(
        keys,
        BTreeSet::from([
            ("200", "/orders/{id}"),
            ("500", "/orders/{id}"),
            ("500", "_unmatched"),
        ])
    );

    // histogram_quantile(): a finite, positive p90, within the buckets' range.
    let p90 = prom
        .wait_for(
            "histogram_quantile(0.9, sum by (le) \
             (rate(tracemesh_request_duration_seconds_bucket[5s])))",
            |r| (r.len() == 1).then(|| sample_value(&r[0])),
        )
        .await;
    assert!(p90.is_finite() && p90 > 0.0 && p90 <= 10.0, "p90 = {p90}");
    let per_route = prom
        .query(
            "histogram_quantile(0.9, sum by (direction, route, le) \
             (rate(tracemesh_request_duration_seconds_bucket[5s])))",
        )
        .await;
    let routes: BTreeSet<&str> = per_route.iter().map(|s| label(s, "route")).collect();
    assert_eq!(
        routes,
        BTreeSet::from(["/orders/{id}", "_unmatched"]),
        "{per_route:?}"
    );
    for s in &per_route {
        let v = sample_value(s);
        assert!(v.is_finite() && v > 0.0, "{s}");
    }

    // The README's error ratio per route: a quarter of /orders/{id} fails, all of _unmatched.
    let ratios = prom
        .query(
            r#"sum by (direction, route) (
                   rate(tracemesh_requests_total{status_code=~"5.."}[5s])
                or rate(tracemesh_requests_total{grpc_status=~"2|4|12|13|14|15"}[5s])
                or rate(tracemesh_requests_total{error_type!="", error_type!="cancelled"}[5s])
               )
               / sum by (direction, route) (rate(tracemesh_requests_total[5s]))"#,
        )
        .await;
    let ratio: HashMap<&str, f64> = ratios
        .iter()
        .map(|s| (label(s, "route"), sample_value(s)))
        .collect();
    assert_eq!(ratio.len(), 2, "{ratios:?}");
    assert!((ratio["_unmatched"] - 1.0).abs() < 1e-9, "{ratios:?}");
    assert!(
        (0.1..0.45).contains(&ratio["/orders/{id}"]),
        "a quarter expected: {ratios:?}"
    );

    // Exemplars: at least one for each RED family, every one naming a span this proxy exported.
    let mut exemplars = Vec::new();
    for selector in [
        "tracemesh_request_duration_seconds_bucket",
        "tracemesh_requests_total",
    ] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let found = loop {
            let found = prom
                .exemplars(selector, started - 60.0, unix_now() + 60.0)
                .await;
            if !found.is_empty() {
                break found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no exemplars of {selector} within {WAIT:?}\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        for (series, ex) in &found {
            assert_eq!(series["job"], "tracemesh", "{series}");
            let names: BTreeSet<&str> = ex["labels"]
                .as_object()
                .unwrap_or_else(|| panic!("exemplar labels: {ex}"))
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(names, BTreeSet::from(["span_id", "trace_id"]), "{ex}");
            if let Some(le) = series["le"].as_str() {
                let le: f64 = le.parse().expect("a numeric le");
                let v: f64 = ex["value"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("value");
                assert!(v > 0.0 && v <= le, "exemplar {ex} in bucket {series}");
            }
        }
        exemplars.extend(found);
    }

    // Spans leave in batches; give the last ones time to arrive, then require every pair.
    let wanted: BTreeSet<(String, String)> = exemplars
        .iter()
        .map(|(_, ex)| {
            let id = |k: &str| ex["labels"][k].as_str().expect("a string label").to_owned();
            (id("trace_id"), id("span_id"))
        })
        .collect();
    let exported = |spans: &[ReceivedSpan]| -> BTreeSet<(String, String)> {
        spans
            .iter()
            .filter(|s| s.resource.get("service.name").map(String::as_str) == Some(SERVICE))
            .map(|s| (s.trace_id.clone(), s.span_id.clone()))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let have = exported(&otlp.spans());
        let missing: Vec<_> = wanted.difference(&have).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} exemplars name no span {SERVICE} exported (of {} received): {missing:?}",
            missing.len(),
            wanted.len(),
            have.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed; {} succeeded",
        sent.load(Ordering::Relaxed)
    );
    eprintln!(
        "[prometheus test] {} requests, {} exemplars checked, p90 {p90}s, {:.1}s",
        sent.load(Ordering::Relaxed),
        wanted.len(),
        unix_now() - started
    );
}
