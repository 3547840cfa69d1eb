//! `tracemesh init` for real: a "pod" network namespace joined to a "client" namespace by a veth
//! pair (addresses from 198.18.0.0/15, the benchmarking range, inside namespaces this test
//! creates). init writes the NAT rules in the pod (twice: one set remains), a plain app with no
//! tracing code and the proxy under its own UID run there, and traffic from the client, and from
//! the app to the client, goes through the proxy by redirection alone.
//!
//! Needs root (namespaces, iptables, UIDs), so it is `#[ignore]`d: `scripts/test.sh` runs it with
//! `--include-ignored` as root, and CI runs as root. Asked to run without root, it fails rather
//! than pass. Namespaces and processes are removed pass or fail.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const SCRIPT: &str = r#"
set -euo pipefail
POD="tm-pod-$SUFFIX"; CLIENT="tm-cli-$SUFFIX"
cleanup() {
  ip netns pids "$POD" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns pids "$CLIENT" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$POD" 2>/dev/null || true
  ip netns del "$CLIENT" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$POD"; ip netns add "$CLIENT"
ip link add "tmp$SUFFIX" type veth peer name "tmc$SUFFIX"
ip link set "tmp$SUFFIX" netns "$POD"; ip link set "tmc$SUFFIX" netns "$CLIENT"
ip -n "$POD" addr add 198.18.0.2/24 dev "tmp$SUFFIX"
ip -n "$CLIENT" addr add 198.18.0.1/24 dev "tmc$SUFFIX"
for ns in "$POD" "$CLIENT"; do ip -n "$ns" link set lo up; done
ip -n "$POD" link set "tmp$SUFFIX" up; ip -n "$CLIENT" link set "tmc$SUFFIX" up

# Without NET_ADMIN (an unprivileged UID), init must fail with a clear reason.
if ip netns exec "$POD" setpriv --reuid=1337 --regid=1337 --clear-groups "$BIN" init --proxy-uid 1337 \
     >"$DIR/noperm.out" 2>"$DIR/noperm.err"; then
  echo "init succeeded without NET_ADMIN" >&2; exit 1
fi

ip netns exec "$POD" "$BIN" init --proxy-uid 1337 --skip-inbound-ports 2222 >"$DIR/init1.out"
ip netns exec "$POD" "$BIN" init --proxy-uid 1337 --skip-inbound-ports 2222 >"$DIR/init2.out"
ip netns exec "$POD" iptables-save -t nat >"$DIR/rules.txt"

mkdir -p "$DIR/pod-www" "$DIR/client-www"
printf 'served by the pod app\n' >"$DIR/pod-www/hello.txt"
printf 'served outside the pod\n' >"$DIR/client-www/remote.txt"
ip netns exec "$POD" python3 -m http.server 8080 --bind 0.0.0.0 --directory "$DIR/pod-www" >/dev/null 2>&1 &
ip netns exec "$CLIENT" python3 -m http.server 9090 --bind 0.0.0.0 --directory "$DIR/client-www" >/dev/null 2>&1 &
ip netns exec "$POD" setpriv --reuid=1337 --regid=1337 --clear-groups env \
  OTEL_TRACES_EXPORTER=console OTEL_BSP_SCHEDULE_DELAY=50 OTEL_SERVICE_NAME=pod RUST_LOG=info \
  "$BIN" proxy --drain-delay 0s >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
proxy=$!
for i in $(seq 1 100); do
  ip netns exec "$POD" curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:4191/ready 2>/dev/null && break
  sleep 0.1
done
for i in $(seq 1 100); do  # the app and the remote server are up (the proxy's UID is not redirected)
  ip netns exec "$POD" setpriv --reuid=1337 --regid=1337 --clear-groups \
    curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8080/hello.txt 2>/dev/null \
  && ip netns exec "$POD" setpriv --reuid=1337 --regid=1337 --clear-groups \
    curl -fsS -o /dev/null --max-time 1 http://198.18.0.1:9090/remote.txt 2>/dev/null && break
  sleep 0.1
done
# Inbound: a client outside the pod calls the app's port.
ip netns exec "$CLIENT" curl -fsS --max-time 5 http://198.18.0.2:8080/hello.txt -o "$DIR/inbound.body"
# Outbound: the app (root in the pod, not the proxy's UID) calls out.
ip netns exec "$POD" curl -fsS --max-time 5 http://198.18.0.1:9090/remote.txt -o "$DIR/outbound.body"
# The admin port is reachable from outside without going through the inbound listener.
ip netns exec "$CLIENT" curl -fsS --max-time 5 http://198.18.0.2:4191/ready -o "$DIR/admin.body"
ip netns exec "$POD" iptables-save -c -t nat >"$DIR/counters.txt"
kill -TERM "$proxy"; wait "$proxy" || true
"#;

#[test]
#[ignore = "needs root: network namespaces, iptables, setpriv (CI runs it as root)"]
fn init_redirects_a_pods_traffic_through_the_proxy_idempotently() {
    // Ignored tests run only when asked for: without root that is a mistake, never a pass.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root for network namespaces and iptables: \
         `sudo -E cargo test --test init -- --include-ignored`"
    );
    let dir = std::env::temp_dir().join(format!("tracemesh-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // veth names are at most 15 bytes: "tmp" + suffix.
    let suffix = format!("{}", std::process::id() % 1_000_000);

    let mut child = Command::new("bash")
        .args(["-c", SCRIPT])
        .env("BIN", env!("CARGO_BIN_EXE_tracemesh"))
        .env("DIR", &dir)
        .env("SUFFIX", &suffix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the namespace script");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            for ns in ["tm-pod-", "tm-cli-"] {
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("{ns}{suffix}")])
                    .status();
            }
            panic!("the namespace script did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let out = child.wait_with_output().unwrap();
    let context = format!(
        "script stderr:\n{}\nproxy stderr:\n{}\nproxy stdout:\n{}\nrules:\n{}\ncounters:\n{}",
        String::from_utf8_lossy(&out.stderr),
        read("proxy.err"),
        read("proxy.out"),
        read("rules.txt"),
        read("counters.txt"),
    );
    assert!(status.success(), "{context}");

    // No NET_ADMIN: a clear reason.
    assert!(
        read("noperm.err").contains("NET_ADMIN"),
        "{}",
        read("noperm.err")
    );

    // Twice applied, one set of rules: each rule appears exactly once.
    let rules = read("rules.txt");
    for rule in [
        "-A PREROUTING -p tcp -j TRACEMESH_INBOUND",
        "-A OUTPUT -p tcp -j TRACEMESH_OUTBOUND",
        "-A TRACEMESH_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
        "-A TRACEMESH_INBOUND -p tcp -m tcp --dport 4140 -j RETURN",
        "-A TRACEMESH_INBOUND -p tcp -m tcp --dport 2222 -j RETURN",
        "-A TRACEMESH_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A TRACEMESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
        "-A TRACEMESH_OUTBOUND -o lo -j RETURN",
        "-A TRACEMESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert_eq!(rules.matches(rule).count(), 1, "{rule:?} in\n{rules}");
    }
    // The second run found the jumps in place and only re-flushed its own chains.
    assert!(
        read("init1.out").contains("-A PREROUTING"),
        "{}",
        read("init1.out")
    );
    assert!(
        !read("init2.out").contains("-A PREROUTING"),
        "{}",
        read("init2.out")
    );

    // Byte-exact bodies through both redirects.
    assert_eq!(read("inbound.body"), "served by the pod app\n", "{context}");
    assert_eq!(
        read("outbound.body"),
        "served outside the pod\n",
        "{context}"
    );
    assert_eq!(read("admin.body"), "ready\n", "{context}");

    // Spans from the console exporter: SERVER for the client's call, CLIENT for the app's.
    let spans = read("proxy.out");
    let server = spans
        .lines()
        .find(|l| l.contains("kind=Server") && l.contains("url.path=/hello.txt"))
        .unwrap_or_else(|| panic!("no SERVER span\n{context}"));
    assert!(server.contains("client.address=198.18.0.1"), "{server}");
    assert!(server.contains("http.response.status_code=200"), "{server}");
    let client = spans
        .lines()
        .find(|l| l.contains("kind=Client") && l.contains("url.path=/remote.txt"))
        .unwrap_or_else(|| panic!("no CLIENT span\n{context}"));
    assert!(
        client.contains("network.peer.address=198.18.0.1"),
        "{client}"
    );
    assert!(client.contains("network.peer.port=9090"), "{client}");
    assert!(client.contains("http.response.status_code=200"), "{client}");
    // The admin probe was not proxied.
    assert!(!spans.contains("url.path=/ready"), "{spans}");

    let _ = std::fs::remove_dir_all(&dir);
}
