//! Transparent mode behind real iptables: in a network namespace the test creates, NAT rules
//! redirect a plain client's TCP to the proxy, and the proxy finds where it was going with
//! `SO_ORIGINAL_DST` — outbound (the app's own calls) and inbound (traffic to the app's port).
//! The proxy runs under its own UID, which the rules exclude, so its forwarded connections are
//! not redirected again.
//!
//! Needs root (network namespaces, iptables, switching UIDs), so it is `#[ignore]`d:
//! `scripts/test.sh` runs it with `--include-ignored` as root, and CI runs as root. Asked to run
//! without root, it fails rather than pass. The multi-pod version, with `tracemesh init` writing
//! the rules and veth pairs between namespaces, is `tests/mesh.rs`.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

const SCRIPT: &str = r#"
set -euo pipefail
ip link set lo up
mkdir -p "$DIR/www"
printf 'hello through iptables\n' > "$DIR/www/hello.txt"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$DIR/www" >"$DIR/app.log" 2>&1 &
chmod 777 "$DIR"
setpriv --reuid=1337 --regid=1337 --clear-groups env \
  OTEL_TRACES_EXPORTER=console OTEL_BSP_SCHEDULE_DELAY=50 OTEL_SERVICE_NAME=transparent \
  RUST_LOG=info "$BIN" proxy \
  --inbound-listen 127.0.0.1:15006 --outbound-listen 127.0.0.1:15001 --admin-listen 127.0.0.1:15090 --drain-delay 0s \
  >"$DIR/proxy.out" 2>"$DIR/proxy.err" &
proxy=$!
# The proxy's own traffic is never redirected; UID 2000 plays a client outside the pod (inbound);
# everyone else is the app calling out (outbound).
iptables -t nat -A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN
iptables -t nat -A OUTPUT -p tcp --dport 8080 -m owner --uid-owner 2000 -j REDIRECT --to-ports 15006
iptables -t nat -A OUTPUT -p tcp --dport 8080 -j REDIRECT --to-ports 15001
for i in $(seq 1 100); do
  curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:15090/ready 2>/dev/null && break
  sleep 0.1
done
for i in $(seq 1 100); do
  setpriv --reuid=1337 --regid=1337 --clear-groups curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8080/hello.txt 2>/dev/null && break
  sleep 0.1
done
curl -fsS --max-time 5 -H 'traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' \
  http://127.0.0.1:8080/hello.txt -o "$DIR/outbound.body"
setpriv --reuid=2000 --regid=2000 --clear-groups curl -fsS --max-time 5 \
  http://127.0.0.1:8080/hello.txt -o "$DIR/inbound.body"
iptables-save -t nat > "$DIR/rules.txt"
kill -TERM "$proxy"
wait "$proxy" || true
"#;

#[test]
#[ignore = "needs root: network namespaces, iptables, setpriv (CI runs it as root)"]
fn iptables_redirected_connections_are_proxied_to_their_original_destination() {
    // Ignored tests run only when asked for: without root that is a mistake, never a pass.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root for network namespaces and iptables: \
         `sudo -E cargo test --test transparent -- --include-ignored`"
    );
    for tool in ["iptables", "unshare", "setpriv", "curl", "python3"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is missing: run scripts/install-test-deps.sh");
    }
    let dir = std::env::temp_dir().join(format!("tracemesh-transparent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The namespace, its rules and every process in it end with the `unshare` child.
    let mut child = Command::new("unshare")
        .args(["--net", "--fork", "--kill-child", "bash", "-c", SCRIPT])
        .env("BIN", env!("CARGO_BIN_EXE_tracemesh"))
        .env("DIR", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning unshare");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the namespace script did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let out = child.wait_with_output().unwrap();
    let context = format!(
        "script stderr:\n{}\nproxy stderr:\n{}\nproxy stdout:\n{}\nrules:\n{}",
        String::from_utf8_lossy(&out.stderr),
        read("proxy.err"),
        read("proxy.out"),
        read("rules.txt"),
    );
    assert!(status.success(), "{context}");

    // Byte-exact bodies through both redirects.
    assert_eq!(
        read("outbound.body"),
        "hello through iptables\n",
        "{context}"
    );
    assert_eq!(
        read("inbound.body"),
        "hello through iptables\n",
        "{context}"
    );

    // The spans the console exporter printed: a CLIENT span for the app's call, continuing the
    // trace the app sent, and a SERVER span for the inbound request.
    let spans = read("proxy.out");
    let client = spans
        .lines()
        .find(|l| l.contains("kind=Client") && l.contains("url.path=/hello.txt"))
        .unwrap_or_else(|| panic!("no CLIENT span\n{context}"));
    assert!(
        client.contains("trace_id=0af7651916cd43dd8448eb211c80319c"),
        "{client}"
    );
    assert!(client.contains("parent_id=b7ad6b7169203331"), "{client}");
    assert!(
        client.contains("network.peer.port=8080"),
        "original destination port: {client}"
    );
    assert!(client.contains("http.response.status_code=200"), "{client}");
    let server = spans
        .lines()
        .find(|l| l.contains("kind=Server") && l.contains("url.path=/hello.txt"))
        .unwrap_or_else(|| panic!("no SERVER span\n{context}"));
    assert!(server.contains("http.response.status_code=200"), "{server}");
    assert!(
        server.contains("parent_id=0000000000000000"),
        "a new root: {server}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}
