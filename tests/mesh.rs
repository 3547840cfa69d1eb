//! Transparent interception end to end, with no cluster. Network namespaces joined by veth pairs
//! on a bridge stand in for a client and two pods; the test itself (the root namespace) is on the
//! same bridge and runs the OTLP receiver. In each pod the real `tracemesh init` writes the NAT
//! rules, a plain app with no tracing code (`tests/peers/plain_app.py`) listens on 8080, and
//! `tracemesh proxy` runs on its default ports under the dedicated UID 2102. The client calls
//! pod-a's app; pod-a's app calls pod-b's app by address. Neither app knows a proxy exists: the
//! spans, linked across the hop, and the byte-exact response show that both directions of both
//! pods went through the proxies by redirection alone.
//!
//! ```text
//! root namespace (this test, OTLP receiver)   198.19.N.1   veth ─┐
//! tm-mesh-cli-PID (curl)                      198.19.N.10  veth ─┤ br0 in tm-mesh-net-PID
//! tm-mesh-a-PID   (init, app → pod-b, proxy)  198.19.N.11  veth ─┤
//! tm-mesh-b-PID   (init, app, proxy)          198.19.N.12  veth ─┘
//! ```
//!
//! The namespaces, links and processes are `tests/support/netns.rs`'s (addresses from
//! 198.19.N.0/24, `N` picked so parallel runs do not clash); the root namespace's firewall must
//! accept TCP from that /24 to the receiver's port.
//!
//! Needs root (namespaces, iptables, switching UIDs), so it is `#[ignore]`d: `scripts/test.sh`
//! runs it with `--include-ignored` as root, and CI runs as root. Without root, an
//! `--include-ignored` run fails instead of passing: `sudo -E cargo test --test mesh --
//! --include-ignored`. Processes, namespaces and the root-side link are removed on `Drop`, pass
//! or fail; on failure every log is printed first.

mod support;

use std::{ffi::OsStr, net::SocketAddr, os::unix::fs::MetadataExt, path::Path};

use support::{
    body::pattern_byte,
    netns::{self, Net, Vantage},
    otlp::{tree, OtlpReceiver, ReceivedSpan, SpanKind},
    process::BIN,
    DEADLINE,
};
use tokio::net::TcpListener;

/// The UID both proxies run as: `tracemesh init`'s default, and the chart's.
const PROXY_UID: u32 = 2102;
/// Where both apps listen, and so the port every hop dials.
const APP_PORT: u16 = 8080;
/// The proxy's admin port: `tracemesh init` leaves it unredirected, so the test probes `/ready`.
const ADMIN_PORT: u16 = 4191;
/// pod-b's answer: many TCP segments and HTTP frames of non-ASCII bytes.
const BODY_BYTES: usize = 100 * 1024;
/// The client's sampled context: the W3C Trace Context specification's example IDs.
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/plain_app.py");

/// The hosts, in address order: the client is .10, pod-a .11, pod-b .12.
const CLIENT: &str = "cli";
const POD_A: &str = "a";
const POD_B: &str = "b";
const PODS: [&str; 2] = [POD_A, POD_B];

/// `OTEL_SERVICE_NAME` of the pod's proxy, and the prefix of its processes' names.
fn service(pod: &str) -> &'static str {
    match pod {
        POD_A => "pod-a",
        POD_B => "pod-b",
        other => panic!("{other:?} is not a pod"),
    }
}

/// Starts pod's app: `upstream` makes it call that address and path, else it serves the pattern.
async fn start_app(net: &mut Net, pod: &str, upstream: Option<(SocketAddr, &str)>) -> u32 {
    let port = APP_PORT.to_string();
    let what = match upstream {
        Some((next, path)) => ["--next".to_owned(), format!("http://{next}{path}")],
        None => ["--body-bytes".to_owned(), BODY_BYTES.to_string()],
    };
    let args: [&OsStr; 5] = [
        "python3".as_ref(),
        APP.as_ref(),
        port.as_ref(),
        what[0].as_ref(),
        what[1].as_ref(),
    ];
    let cmd = net.command(pod, args);
    net.spawn(&format!("{}-app", service(pod)), cmd).await
}

/// Starts pod's proxy on its default ports under [`PROXY_UID`], exporting to `otlp`.
async fn start_proxy(net: &mut Net, pod: &str, otlp: &OtlpReceiver) -> u32 {
    let mut cmd = net.proxy_command(pod, PROXY_UID, [] as [&str; 0]);
    cmd.env("OTEL_SERVICE_NAME", service(pod))
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", otlp.protocol().as_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    net.spawn(&format!("{}-proxy", service(pod)), cmd).await
}

/// The spans that `service` (the resource's `service.name`) reported with `kind`.
fn spans_of<'a>(
    spans: &'a [ReceivedSpan],
    service: &'a str,
    kind: SpanKind,
) -> impl Iterator<Item = &'a ReceivedSpan> {
    spans.iter().filter(move |s| {
        s.kind == kind && s.resource.get("service.name").map(String::as_str) == Some(service)
    })
}

/// The one span that `service` reported with `kind`.
///
/// # Panics
/// If there is not exactly one.
fn only<'a>(spans: &'a [ReceivedSpan], service: &'a str, kind: SpanKind) -> &'a ReceivedSpan {
    let found: Vec<_> = spans_of(spans, service, kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind:?} span from {service}:\n{}",
        tree(spans)
    );
    found[0]
}

/// The `Uid:` or `Gid:` line of `/proc/PID/status`: real, effective, saved and filesystem IDs.
async fn ids(pid: u32, which: &str) -> Vec<u32> {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(which))
        .unwrap_or_else(|| panic!("no {which} line in /proc/{pid}/status"))
        .split_whitespace()
        .map(|id| id.parse().expect("numeric id"))
        .collect()
}

/// The inode of a network namespace, for comparing a process's with a named one.
async fn netns_inode(path: impl AsRef<Path>) -> u64 {
    let path = path.as_ref();
    tokio::fs::metadata(path)
        .await
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, iptables, setpriv (CI runs it as root)"]
async fn a_request_across_two_pods_is_traced_hop_by_hop_by_interception_alone() {
    netns::require_root("mesh");
    netns::require_tools(&[
        "ip",
        "iptables",
        "iptables-restore",
        "setpriv",
        "curl",
        "python3",
    ])
    .await;

    let mut mesh = Net::builder("mesh")
        .host(CLIENT)
        .host(POD_A)
        .host(POD_B)
        .root_link()
        .create()
        .await;
    let (a, b, client_ip) = (mesh.ip(POD_A), mesh.ip(POD_B), mesh.ip(CLIENT));
    let listener = TcpListener::bind((mesh.root_ip(), 0))
        .await
        .expect("binding the OTLP receiver on the root namespace's bridge address");
    let otlp = OtlpReceiver::start_grpc_on(listener);

    // As in a pod: the init container first, then the app and the sidecar.
    for pod in PODS {
        mesh.init(pod, PROXY_UID).await;
    }
    let pod_b_app = SocketAddr::from((b, APP_PORT));
    let app_a = start_app(&mut mesh, POD_A, Some((pod_b_app, "/y"))).await;
    start_app(&mut mesh, POD_B, None).await;
    let proxies = [
        start_proxy(&mut mesh, POD_A, &otlp).await,
        start_proxy(&mut mesh, POD_B, &otlp).await,
    ];
    for pod in PODS {
        let (app, proxy) = (
            format!("{}-app", service(pod)),
            format!("{}-proxy", service(pod)),
        );
        mesh.wait_stdout(&app, "listening").await;
        let admin = SocketAddr::from((mesh.ip(pod), ADMIN_PORT));
        mesh.wait_ready(&proxy, Vantage::Root, admin).await;
    }

    // The client calls pod-a's app at its own address, carrying a sampled context.
    let body_path = mesh.dir().join("response.body");
    let traceparent = format!("traceparent: 00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let url = format!("http://{a}:{APP_PORT}/x");
    let body_arg = body_path.as_os_str();
    let curl: [&OsStr; 10] = [
        "curl".as_ref(),
        "-sS".as_ref(),
        "--max-time".as_ref(),
        "8".as_ref(),
        "-H".as_ref(),
        traceparent.as_ref(),
        "-o".as_ref(),
        body_arg,
        "-w%{http_code}".as_ref(),
        url.as_ref(),
    ];
    let status = mesh.run(CLIENT, curl).await;
    assert_eq!(status, "200", "curl {url}");

    // Byte-exact: pod-a's framing around pod-b's 100 KiB, through four proxy legs.
    let body = tokio::fs::read(&body_path).await.expect("reading the body");
    let mut expected = b"upstream 200\n".to_vec();
    expected.extend((0..BODY_BYTES as u64).map(pattern_byte));
    assert_eq!(body.len(), expected.len(), "response length");
    assert!(
        body == expected,
        "response bytes differ from pod-b's pattern"
    );

    let spans = otlp
        .wait_until(DEADLINE, "pod-a SERVER and CLIENT, pod-b SERVER", |spans| {
            spans_of(spans, "pod-a", SpanKind::Server).next().is_some()
                && spans_of(spans, "pod-a", SpanKind::Client).next().is_some()
                && spans_of(spans, "pod-b", SpanKind::Server).next().is_some()
        })
        .await;
    // Nothing else: one interception per leg (the proxies' own connections are not redirected
    // again), and the readiness probes on the admin port were not proxied. Each proxy exports
    // in the order its spans end, and pod-a's SERVER span ends last, so a stray span from
    // either pod would have arrived by now.
    assert_eq!(spans.len(), 3, "{}", tree(&spans));

    // pod-a, inbound: continues the client's trace, as a child of the client's span.
    let a_server = only(&spans, "pod-a", SpanKind::Server);
    assert_eq!(a_server.trace_id, CLIENT_TRACE_ID, "{a_server:#?}");
    assert_eq!(a_server.parent_span_id, CLIENT_SPAN_ID, "{a_server:#?}");
    assert_eq!(a_server.attr_str("url.path"), Some("/x"), "{a_server:#?}");
    let client_addr = client_ip.to_string();
    assert_eq!(
        a_server.attr_str("client.address"),
        Some(client_addr.as_str()),
        "{a_server:#?}"
    );
    assert_eq!(
        a_server.attr_int("http.response.status_code"),
        Some(200),
        "{a_server:#?}"
    );

    // pod-a, outbound: the app dialled pod-b's address with no proxy settings; the proxy got the
    // connection by redirection and went to its original destination. The app forwards no
    // headers, so nothing ties its call to the request it was serving: the CLIENT span starts
    // a trace of its own.
    let a_client = only(&spans, "pod-a", SpanKind::Client);
    let b_addr = b.to_string();
    assert_eq!(a_client.attr_str("url.path"), Some("/y"), "{a_client:#?}");
    assert_eq!(
        a_client.attr_str("network.peer.address"),
        Some(b_addr.as_str()),
        "original destination: {a_client:#?}"
    );
    assert_eq!(
        a_client.attr_int("network.peer.port"),
        Some(i64::from(APP_PORT)),
        "original destination: {a_client:#?}"
    );
    assert_eq!(
        a_client.attr_str("server.address"),
        Some(b_addr.as_str()),
        "{a_client:#?}"
    );
    assert_eq!(
        a_client.attr_int("server.port"),
        Some(i64::from(APP_PORT)),
        "{a_client:#?}"
    );
    assert_eq!(
        a_client.attr_str("url.full"),
        Some(format!("http://{b}:{APP_PORT}/y").as_str()),
        "{a_client:#?}"
    );
    assert_eq!(
        a_client.attr_int("http.response.status_code"),
        Some(200),
        "{a_client:#?}"
    );
    assert!(a_client.is_root(), "{a_client:#?}");
    assert_ne!(a_client.trace_id, CLIENT_TRACE_ID, "{a_client:#?}");

    // pod-b, inbound: the parent link across the hop. pod-a's proxy injected its CLIENT span's
    // context, and pod-b's proxy continued it.
    let b_server = only(&spans, "pod-b", SpanKind::Server);
    assert_eq!(b_server.trace_id, a_client.trace_id, "{}", tree(&spans));
    assert_eq!(
        b_server.parent_span_id,
        a_client.span_id,
        "{}",
        tree(&spans)
    );
    assert_eq!(b_server.attr_str("url.path"), Some("/y"), "{b_server:#?}");
    let a_addr = a.to_string();
    assert_eq!(
        b_server.attr_str("client.address"),
        Some(a_addr.as_str()),
        "{b_server:#?}"
    );
    assert_eq!(
        b_server.attr_int("http.response.status_code"),
        Some(200),
        "{b_server:#?}"
    );
    // Time nests across the hop: pod-b served within pod-a's call.
    assert!(
        a_client.start_unix_nanos <= b_server.start_unix_nanos
            && b_server.end_unix_nanos <= a_client.end_unix_nanos,
        "{}",
        tree(&spans)
    );

    // Who did what: the proxies are the binary itself, under the dedicated UID and GID, in
    // their pod's namespace; the app is another UID, which is why its calls were redirected.
    let bin = tokio::fs::canonicalize(BIN)
        .await
        .expect("canonical binary path");
    for (pod, pid) in PODS.into_iter().zip(proxies) {
        let exe = tokio::fs::read_link(format!("/proc/{pid}/exe"))
            .await
            .expect("reading the proxy's /proc/PID/exe");
        assert_eq!(exe, bin, "{} proxy", service(pod));
        assert_eq!(ids(pid, "Uid:").await, [PROXY_UID; 4], "{}", service(pod));
        assert_eq!(ids(pid, "Gid:").await, [PROXY_UID; 4], "{}", service(pod));
        assert_eq!(
            netns_inode(format!("/proc/{pid}/ns/net")).await,
            netns_inode(format!("/run/netns/{}", mesh.ns(pod))).await,
            "{} proxy's network namespace",
            service(pod)
        );
    }
    assert_ne!(ids(app_a, "Uid:").await[1], PROXY_UID, "pod-a's app");
}
