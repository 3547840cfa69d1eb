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
//! Addresses come from 198.18.0.0/15, the benchmarking range; `N` is picked from the test's PID
//! among /24s the root namespace does not route yet, so parallel runs do not clash. The root
//! namespace's firewall must accept TCP from that /24 to the receiver's port.
//!
//! Needs root (namespaces, iptables, switching UIDs); CI runs as root. Elsewhere the test says
//! loudly that it did not run: `sudo -E cargo test --test mesh`. Processes, namespaces and the
//! root-side link are removed on `Drop`, pass or fail; on failure every log is printed first.

mod support;

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::Duration,
};

use http::{Method, StatusCode};
use support::{
    body::pattern_byte,
    client,
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
/// Bounds every command the test runs to completion.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The root namespace's host number on the bridge; it runs the OTLP receiver.
const ROOT_HOST: u8 = 1;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/plain_app.py");

/// The namespaces with something running in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Client,
    PodA,
    PodB,
}

// === impl Host ===

impl Host {
    const ALL: [Host; 3] = [Host::Client, Host::PodA, Host::PodB];

    fn role(self) -> &'static str {
        match self {
            Host::Client => "cli",
            Host::PodA => "a",
            Host::PodB => "b",
        }
    }

    /// The last octet of its address.
    fn octet(self) -> u8 {
        match self {
            Host::Client => 10,
            Host::PodA => 11,
            Host::PodB => 12,
        }
    }

    /// `OTEL_SERVICE_NAME` of the pod's proxy.
    fn service(self) -> &'static str {
        match self {
            Host::Client => "client",
            Host::PodA => "pod-a",
            Host::PodB => "pod-b",
        }
    }
}

/// A long-running process: its stdout and stderr go to files in the test's directory.
struct Spawned {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Everything the test creates. `Drop` kills and reaps the processes, deletes the root-side link
/// and the namespaces (with anything still running in them), and on failure prints every log
/// and the pods' NAT rules with counters first.
struct Mesh {
    pid: u32,
    /// `N` in 198.19.N.0/24.
    subnet: u8,
    dir: PathBuf,
    namespaces: Vec<String>,
    root_link: Option<String>,
    spawned: Vec<Spawned>,
}

// === impl Mesh ===

impl Mesh {
    /// Creates the namespaces, the bridge and the links, with addresses and loopback up.
    ///
    /// # Panics
    /// If any `ip` command fails; whatever was created is removed.
    async fn create() -> Self {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("tracemesh-mesh-{pid}"));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir)
            .await
            .expect("creating the test directory");
        let mut mesh = Mesh {
            pid,
            subnet: free_subnet(pid).await,
            dir,
            namespaces: Vec::new(),
            root_link: None,
            spawned: Vec::new(),
        };
        let net = mesh.netns_add("net").await;
        ip(&["-n", &net, "link", "add", "br0", "type", "bridge"]).await;
        ip(&["-n", &net, "link", "set", "br0", "up"]).await;
        for host in Host::ALL {
            let ns = mesh.netns_add(host.role()).await;
            // The bridge side is named after the host; inside, the pod sees `eth0`.
            let port = format!("to-{}", host.role());
            ip(&[
                "-n", &net, "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])
            .await;
            ip(&["-n", &net, "link", "set", &port, "master", "br0", "up"]).await;
            let cidr = format!("{}/24", mesh.addr(host.octet()));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]).await;
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).await;
            ip(&["-n", &ns, "link", "set", "lo", "up"]).await;
        }
        // The root namespace joins the bridge too, so the receiver is reachable from the pods.
        let link = format!("tmm{pid}");
        mesh.root_link = Some(link.clone());
        ip(&[
            "link", "add", "name", &link, "type", "veth", "peer", "name", "root", "netns", &net,
        ])
        .await;
        ip(&["-n", &net, "link", "set", "root", "master", "br0", "up"]).await;
        let cidr = format!("{}/24", mesh.addr(ROOT_HOST));
        ip(&["addr", "add", &cidr, "dev", &link]).await;
        ip(&["link", "set", &link, "up"]).await;
        mesh
    }

    async fn netns_add(&mut self, role: &str) -> String {
        let ns = format!("tm-mesh-{role}-{}", self.pid);
        // Recorded first: even a half-made namespace is deleted.
        self.namespaces.push(ns.clone());
        ip(&["netns", "add", &ns]).await;
        ns
    }

    fn ns(&self, host: Host) -> String {
        format!("tm-mesh-{}-{}", host.role(), self.pid)
    }

    fn addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.subnet, octet)
    }

    fn ip_of(&self, host: Host) -> Ipv4Addr {
        self.addr(host.octet())
    }

    /// `ip netns exec NS args..` with the test's environment minus `OTEL_*`, `TRACEMESH_*` and
    /// `RUST_LOG`, so a developer's shell cannot change the test.
    fn exec_in(&self, host: Host, args: &[&OsStr]) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("OTEL_") || k.starts_with("TRACEMESH_") || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Spawns `cmd`, owned by the mesh from here on; returns its process ID.
    async fn spawn(&mut self, name: &str, mut cmd: std::process::Command) -> u32 {
        let stdout = self.dir.join(format!("{name}.stdout"));
        let stderr = self.dir.join(format!("{name}.stderr"));
        let file = |path: PathBuf| async move {
            let file = tokio::fs::File::create(&path)
                .await
                .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
            Stdio::from(file.into_std().await)
        };
        cmd.stdout(file(stdout.clone()).await)
            .stderr(file(stderr.clone()).await);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: spawning {cmd:?}: {e}"));
        let pid = child.id();
        self.spawned.push(Spawned {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        });
        pid
    }

    /// Runs `tracemesh init` in the pod, as root (the init container has `NET_ADMIN`).
    async fn init(&self, pod: Host) {
        let uid = PROXY_UID.to_string();
        let cmd = self.exec_in(
            pod,
            &[
                BIN.as_ref(),
                "init".as_ref(),
                "--proxy-uid".as_ref(),
                uid.as_ref(),
            ],
        );
        run(tokio::process::Command::from(cmd)).await;
    }

    /// Starts pod's app: `upstream` makes it call that pod's app, else it serves the pattern.
    async fn start_app(&mut self, pod: Host, upstream: Option<(Host, &str)>) -> u32 {
        let port = APP_PORT.to_string();
        let what = match upstream {
            Some((next, path)) => [
                "--next".to_owned(),
                format!("http://{}:{APP_PORT}{path}", self.ip_of(next)),
            ],
            None => ["--body-bytes".to_owned(), BODY_BYTES.to_string()],
        };
        let args: [&OsStr; 5] = [
            "python3".as_ref(),
            APP.as_ref(),
            port.as_ref(),
            what[0].as_ref(),
            what[1].as_ref(),
        ];
        let cmd = self.exec_in(pod, &args);
        self.spawn(&format!("{}-app", pod.service()), cmd).await
    }

    /// Starts pod's proxy on its default ports under [`PROXY_UID`], exporting to `otlp`.
    async fn start_proxy(&mut self, pod: Host, otlp: &OtlpReceiver) -> u32 {
        let uid = PROXY_UID.to_string();
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let args: [&OsStr; 6] = [
            "setpriv".as_ref(),
            reuid.as_ref(),
            regid.as_ref(),
            "--clear-groups".as_ref(),
            BIN.as_ref(),
            "proxy".as_ref(),
        ];
        let mut cmd = self.exec_in(pod, &args);
        cmd.env("OTEL_SERVICE_NAME", pod.service())
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", otlp.protocol().as_env())
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env(
                "RUST_LOG",
                std::env::var("TRACEMESH_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        self.spawn(&format!("{}-proxy", pod.service()), cmd).await
    }

    /// Panics, naming `what`, if the process called `name` has exited.
    fn fail_if_exited(&mut self, name: &str, what: &str) {
        let spawned = self
            .spawned
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("nothing spawned as {name}"));
        let status: Option<ExitStatus> = spawned.child.try_wait().expect("polling a child");
        if let Some(status) = status {
            panic!("{name} exited {what}: {status}");
        }
    }

    /// Waits for the app to print `listening`.
    async fn wait_app(&mut self, pod: Host) {
        let name = format!("{}-app", pod.service());
        let stdout = self.dir.join(format!("{name}.stdout"));
        let what = format!("{name} to print `listening`");
        support::eventually(DEADLINE, &what, || {
            self.fail_if_exited(&name, "before listening");
            let stdout = stdout.clone();
            async move {
                let text = tokio::fs::read_to_string(stdout).await.ok()?;
                text.contains("listening").then_some(())
            }
        })
        .await;
    }

    /// Waits for `GET /ready` on the pod's admin port to answer 200, from the root namespace.
    async fn wait_proxy(&mut self, pod: Host) {
        let name = format!("{}-proxy", pod.service());
        let admin = SocketAddr::from((self.ip_of(pod), ADMIN_PORT));
        let what = format!("{name}: GET http://{admin}/ready → 200");
        support::eventually(DEADLINE, &what, || {
            self.fail_if_exited(&name, "before /ready answered 200");
            async move {
                let req = client::request(
                    Method::GET,
                    "/ready",
                    &admin.to_string(),
                    &[],
                    support::body::empty(),
                );
                let probe = client::try_send_http1(admin, req);
                match tokio::time::timeout(Duration::from_secs(1), probe).await {
                    Ok(Ok(rsp)) if rsp.status() == StatusCode::OK => Some(()),
                    _ => None,
                }
            }
        })
        .await;
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            for s in &self.spawned {
                for path in [&s.stderr, &s.stdout] {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    eprintln!("--- {} ---\n{text}", path.display());
                }
            }
            for pod in [Host::PodA, Host::PodB] {
                let rules = std::process::Command::new("ip")
                    .args(["netns", "exec", &self.ns(pod), "iptables-save", "-c", "-t"])
                    .arg("nat")
                    .output();
                if let Ok(out) = rules {
                    let rules = String::from_utf8_lossy(&out.stdout);
                    eprintln!("--- {} NAT rules ---\n{rules}", pod.service());
                }
            }
        }
        for s in &mut self.spawned {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if let Some(link) = &self.root_link {
            quiet(&["link", "del", link]);
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a curl, a stray child of an app) goes first.
            if let Ok(out) = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .stderr(Stdio::null())
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            quiet(&["netns", "del", ns]);
        }
        if failed {
            eprintln!("[mesh] logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`]; returns its stdout.
///
/// # Panics
/// If it cannot start, outlives the timeout (it is killed), or fails; with its stderr.
async fn run(mut cmd: tokio::process::Command) -> String {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let shown = format!("{:?}", cmd.as_std());
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{shown}: still running after {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn ip(args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(args);
    run(cmd).await
}

/// A `N` for 198.19.N.0/24 that no route of the root namespace mentions yet, starting from the
/// test's PID.
async fn free_subnet(pid: u32) -> u8 {
    let routes = ip(&["-4", "route", "show", "table", "all"]).await;
    (0..256u32)
        .map(|k| ((pid + k) % 256) as u8)
        .find(|n| !routes.contains(&format!("198.19.{n}.")))
        .expect("a free /24 in 198.19.0.0/16")
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
async fn a_request_across_two_pods_is_traced_hop_by_hop_by_interception_alone() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "\n*** mesh test NOT RUN: it needs root for network namespaces, iptables and \
             switching UIDs (CI runs as root). Run `sudo -E cargo test --test mesh`. ***\n"
        );
        return;
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-restore",
        "setpriv",
        "curl",
        "python3",
    ] {
        let found = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is missing: run scripts/install-test-deps.sh");
    }

    let mut mesh = Mesh::create().await;
    let (a, b, client_ip) = (
        mesh.ip_of(Host::PodA),
        mesh.ip_of(Host::PodB),
        mesh.ip_of(Host::Client),
    );
    let listener = TcpListener::bind((mesh.addr(ROOT_HOST), 0))
        .await
        .expect("binding the OTLP receiver on the root namespace's bridge address");
    let otlp = OtlpReceiver::start_grpc_on(listener);

    // As in a pod: the init container first, then the app and the sidecar.
    for pod in [Host::PodA, Host::PodB] {
        mesh.init(pod).await;
    }
    let app_a = mesh.start_app(Host::PodA, Some((Host::PodB, "/y"))).await;
    mesh.start_app(Host::PodB, None).await;
    let proxies = [
        mesh.start_proxy(Host::PodA, &otlp).await,
        mesh.start_proxy(Host::PodB, &otlp).await,
    ];
    for pod in [Host::PodA, Host::PodB] {
        mesh.wait_app(pod).await;
        mesh.wait_proxy(pod).await;
    }

    // The client calls pod-a's app at its own address, carrying a sampled context.
    let body_path = mesh.dir.join("response.body");
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
    let status = run(tokio::process::Command::from(
        mesh.exec_in(Host::Client, &curl),
    ))
    .await;
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
    for (pod, pid) in [Host::PodA, Host::PodB].into_iter().zip(proxies) {
        let exe = tokio::fs::read_link(format!("/proc/{pid}/exe"))
            .await
            .expect("reading the proxy's /proc/PID/exe");
        assert_eq!(exe, bin, "{} proxy", pod.service());
        assert_eq!(ids(pid, "Uid:").await, [PROXY_UID; 4], "{}", pod.service());
        assert_eq!(ids(pid, "Gid:").await, [PROXY_UID; 4], "{}", pod.service());
        assert_eq!(
            netns_inode(format!("/proc/{pid}/ns/net")).await,
            netns_inode(format!("/run/netns/{}", mesh.ns(pod))).await,
            "{} proxy's network namespace",
            pod.service()
        );
    }
    assert_ne!(ids(app_a, "Uid:").await[1], PROXY_UID, "pod-a's app");
}
