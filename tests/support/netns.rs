//! Network namespaces for the root-only end-to-end tests (`tests/mesh.rs`, `tests/security.rs`):
//! no cluster, no container engine, only `ip`, `iptables`, `setpriv` and the real binary.
//!
//! [`Net::builder`] names the hosts; [`NetBuilder::create`] gives each one a network namespace
//! of its own, joined by a veth pair (`eth0` inside) to a bridge that lives in one more
//! namespace, with an address, loopback up and nothing else. With [`NetBuilder::root_link`] the
//! root namespace (the test process itself) joins the bridge too, so a peer in the test (an OTLP
//! receiver) is reachable from the hosts. [`Net`] then runs commands in a host (`ip netns exec`),
//! spawns long-running processes with their output in files, runs the real `tracemesh init`, and
//! starts `tracemesh proxy` under a dedicated UID with `setpriv`, as the injected sidecar runs.
//!
//! ```text
//! root namespace (the test), with root_link    198.19.N.1       veth ─┐
//! tm-TAG-HOST0-PID                             198.19.N.10      veth ─┤ br0 in tm-TAG-net-PID
//! tm-TAG-HOST1-PID                             198.19.N.11      veth ─┤
//! ...                                          198.19.N.(10+k)  veth ─┘
//! ```
//!
//! Addresses come from 198.18.0.0/15, the benchmarking range (RFC 2544); `N` is picked from the
//! test's PID among /24s the root namespace does not route yet, so parallel runs do not clash
//! when a root link exposes them. Without a root link every address stays inside namespaces the
//! test created. `TAG` must be unique among the tests of one binary, which share a PID. The root
//! namespace's firewall must accept TCP from that /24 to whatever the test serves on the link.
//!
//! What runs in the hosts, and what is asserted, belongs to each test. `Drop` kills and reaps
//! every spawned process, kills anything else still running in the namespaces, and deletes the
//! root-side link and the namespaces, pass or fail; on failure it first prints the tail of every
//! log and the NAT rules, with counters, of every host that ran `tracemesh init`
//! (`netns/teardown.rs`). Commands run to completion are bounded and killed if they outlive it
//! (`netns/command.rs`).

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::Duration,
};

use http::{Method, StatusCode};

use super::{client, process::BIN, DEADLINE};

mod command;
mod teardown;

use self::command::clone_command;
pub use self::command::{ip, output, run};

/// The root namespace's host number on the bridge, with [`NetBuilder::root_link`].
pub const ROOT_OCTET: u8 = 1;
/// The first named host's host number; the next ones follow in the order they were named.
pub const FIRST_HOST_OCTET: u8 = 10;
/// The namespace that holds the bridge: not a host name.
const BRIDGE_NS: &str = "net";

/// Root-side link names made by this process, so two tests of one binary never clash.
static LINKS: AtomicU32 = AtomicU32::new(0);
/// Subnets this process holds: the route check alone would race between two tests of one binary.
static SUBNETS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Fails the calling test unless it runs as root. Root-only tests are `#[ignore]`d, so a run
/// reaches this only with `--include-ignored` (or `--ignored`): without root, that is a mistake
/// to report, never a pass.
///
/// # Panics
/// If the effective UID is not 0, naming the test binary to rerun with `sudo -E`.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "{test} needs root (network namespaces, iptables, switching UIDs) and was asked to run \
         without it: `sudo -E cargo test --test {test} -- --include-ignored`"
    );
}

/// Fails the calling test if a tool it runs is missing.
///
/// # Panics
/// Naming the first missing tool.
pub async fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is missing: run scripts/install-test-deps.sh");
    }
}

/// Where an HTTP probe comes from.
#[derive(Debug, Clone, Copy)]
pub enum Vantage<'a> {
    /// The test process, over the root link.
    Root,
    /// `curl` in a named host.
    Host(&'a str),
}

/// The hosts and links of a [`Net`], before anything exists.
#[derive(Debug)]
pub struct NetBuilder {
    tag: String,
    hosts: Vec<String>,
    root_link: bool,
}

/// A long-running process: its stdout and stderr go to files in the test's directory.
struct Spawned {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Everything a test created: see the module documentation.
pub struct Net {
    tag: String,
    pid: u32,
    /// `N` in 198.19.N.0/24.
    subnet: u8,
    dir: PathBuf,
    hosts: Vec<String>,
    namespaces: Vec<String>,
    root_link: Option<String>,
    spawned: Vec<Spawned>,
    /// Hosts that ran `tracemesh init`: their NAT rules are printed on failure.
    inited: Vec<String>,
}

// === impl NetBuilder ===

impl NetBuilder {
    /// Adds a host, at the next address from [`FIRST_HOST_OCTET`]. A short name (a few letters):
    /// it is part of interface names, which are at most 15 bytes.
    ///
    /// # Panics
    /// If the name is taken, reserved for the bridge, or too long.
    pub fn host(mut self, name: &str) -> Self {
        assert!(name != BRIDGE_NS, "{name:?} names the bridge's namespace");
        assert!(!self.hosts.iter().any(|h| h == name), "{name:?} twice");
        assert!(name.len() <= 12, "{name:?}: at most 12 bytes (`to-NAME`)");
        self.hosts.push(name.to_owned());
        self
    }

    /// The root namespace joins the bridge at [`ROOT_OCTET`].
    pub fn root_link(mut self) -> Self {
        self.root_link = true;
        self
    }

    /// Creates the namespaces, the bridge and the links, with addresses and loopback up, and a
    /// fresh directory for logs.
    ///
    /// # Panics
    /// If any `ip` command fails; whatever was created is removed.
    pub async fn create(self) -> Net {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("tracemesh-{}-{pid}", self.tag));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir)
            .await
            .expect("creating the test directory");
        let mut net = Net {
            tag: self.tag,
            pid,
            subnet: free_subnet(pid).await,
            dir,
            hosts: self.hosts,
            namespaces: Vec::new(),
            root_link: None,
            spawned: Vec::new(),
            inited: Vec::new(),
        };
        let bridge = net.netns_add(BRIDGE_NS).await;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]).await;
        ip(&["-n", &bridge, "link", "set", "br0", "up"]).await;
        for host in net.hosts.clone() {
            let ns = net.netns_add(&host).await;
            // The bridge side is named after the host; inside, the host sees `eth0`.
            let port = format!("to-{host}");
            ip(&[
                "-n", &bridge, "link", "add", "name", &port, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ])
            .await;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"]).await;
            let cidr = format!("{}/24", net.ip(&host));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]).await;
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).await;
            ip(&["-n", &ns, "link", "set", "lo", "up"]).await;
        }
        if self.root_link {
            let link = format!("tm{pid}-{}", LINKS.fetch_add(1, Ordering::Relaxed));
            net.root_link = Some(link.clone());
            ip(&[
                "link", "add", "name", &link, "type", "veth", "peer", "name", "root", "netns",
                &bridge,
            ])
            .await;
            ip(&["-n", &bridge, "link", "set", "root", "master", "br0", "up"]).await;
            let cidr = format!("{}/24", net.addr(ROOT_OCTET));
            ip(&["addr", "add", &cidr, "dev", &link]).await;
            ip(&["link", "set", &link, "up"]).await;
        }
        net
    }
}

// === impl Net ===

impl Net {
    /// A net whose namespaces are `tm-TAG-HOST-PID`.
    pub fn builder(tag: &str) -> NetBuilder {
        NetBuilder {
            tag: tag.to_owned(),
            hosts: Vec::new(),
            root_link: false,
        }
    }

    async fn netns_add(&mut self, name: &str) -> String {
        let ns = format!("tm-{}-{name}-{}", self.tag, self.pid);
        // Recorded first: even a half-made namespace is deleted.
        self.namespaces.push(ns.clone());
        ip(&["netns", "add", &ns]).await;
        ns
    }

    /// The test's directory: logs, and files the test writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host:?} in {:?}", self.hosts))
    }

    /// The host's namespace name (`/run/netns/NAME`).
    ///
    /// # Panics
    /// If the net has no such host.
    pub fn ns(&self, host: &str) -> String {
        self.index(host);
        format!("tm-{}-{host}-{}", self.tag, self.pid)
    }

    fn addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.subnet, octet)
    }

    /// The host's address on the bridge.
    ///
    /// # Panics
    /// If the net has no such host.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        let k = u8::try_from(self.index(host)).expect("fewer than 200 hosts");
        self.addr(FIRST_HOST_OCTET + k)
    }

    /// The root namespace's address on the bridge.
    ///
    /// # Panics
    /// If the net was built without [`NetBuilder::root_link`].
    pub fn root_ip(&self) -> Ipv4Addr {
        assert!(self.root_link.is_some(), "built without a root link");
        self.addr(ROOT_OCTET)
    }

    /// `ip netns exec NS args..` with the test's environment minus `OTEL_*`, `TRACEMESH_*`,
    /// `RUST_LOG` and proxy settings (`http_proxy` and the like, which curl would obey), so a
    /// developer's shell cannot change the test. Stdin is null.
    pub fn command<I, S>(&self, host: &str, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            let lower = k.to_ascii_lowercase();
            if k.starts_with("OTEL_")
                || k.starts_with("TRACEMESH_")
                || k == "RUST_LOG"
                || lower.ends_with("_proxy")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `args` in `host` to completion within [`command::COMMAND_TIMEOUT`]; returns its stdout.
    ///
    /// # Panics
    /// See [`run`].
    pub async fn run<I, S>(&self, host: &str, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(host, args).into()).await
    }

    /// Runs `args` in `host` within [`command::COMMAND_TIMEOUT`], whatever its exit status.
    ///
    /// # Panics
    /// See [`output`].
    pub async fn output<I, S>(&self, host: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(self.command(host, args).into()).await
    }

    /// Spawns `cmd` with its stdout and stderr in `NAME.stdout` and `NAME.stderr`, owned by the
    /// net from here on; returns its process ID.
    ///
    /// # Panics
    /// If the name is taken or the command cannot start.
    pub async fn spawn(&mut self, name: &str, mut cmd: std::process::Command) -> u32 {
        assert!(
            !self.spawned.iter().any(|s| s.name == name),
            "{name:?} spawned twice"
        );
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

    /// Runs `tracemesh init --proxy-uid UID` in the host, as root (the init container has
    /// `NET_ADMIN`).
    ///
    /// # Panics
    /// If init fails.
    pub async fn init(&mut self, host: &str, proxy_uid: u32) {
        let uid = proxy_uid.to_string();
        let args: [&OsStr; 4] = [
            BIN.as_ref(),
            "init".as_ref(),
            "--proxy-uid".as_ref(),
            uid.as_ref(),
        ];
        self.run(host, args).await;
        self.inited.push(host.to_owned());
    }

    /// `tracemesh proxy args..` in the host under `uid` (and the same GID, no supplementary
    /// groups), as the injected sidecar runs; `RUST_LOG` is `info` unless
    /// `TRACEMESH_TEST_RUST_LOG` says otherwise. The caller adds its environment and spawns it.
    pub fn proxy_command<I, S>(&self, host: &str, uid: u32, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let setpriv: [&OsStr; 6] = [
            "setpriv".as_ref(),
            reuid.as_ref(),
            regid.as_ref(),
            "--clear-groups".as_ref(),
            BIN.as_ref(),
            "proxy".as_ref(),
        ];
        let mut cmd = self.command(host, setpriv);
        cmd.args(args).env(
            "RUST_LOG",
            std::env::var("TRACEMESH_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd
    }

    /// The path of a spawned process's stdout.
    pub fn stdout_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.stdout"))
    }

    /// Panics, naming `what`, if the process spawned as `name` has exited.
    ///
    /// # Panics
    /// Also if nothing was spawned as `name`.
    pub fn fail_if_exited(&mut self, name: &str, what: &str) {
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

    /// Waits for the process spawned as `name` to print `needle` on its stdout.
    ///
    /// # Panics
    /// After [`DEADLINE`], or as soon as the process exits.
    pub async fn wait_stdout(&mut self, name: &str, needle: &str) {
        let stdout = self.stdout_path(name);
        let what = format!("{name} to print `{needle}`");
        let exited = format!("before printing `{needle}`");
        super::eventually(DEADLINE, &what, || {
            self.fail_if_exited(name, &exited);
            let stdout = stdout.clone();
            async move {
                let text = tokio::fs::read_to_string(stdout).await.ok()?;
                text.contains(needle).then_some(())
            }
        })
        .await;
    }

    /// Waits for `GET http://admin/ready` to answer 200 from `from`, while the proxy spawned as
    /// `name` runs.
    ///
    /// # Panics
    /// After [`DEADLINE`], or as soon as the proxy exits.
    pub async fn wait_ready(&mut self, name: &str, from: Vantage<'_>, admin: SocketAddr) {
        let what = format!("{name}: GET http://{admin}/ready → 200");
        let url = format!("http://{admin}/ready");
        let probe = match from {
            Vantage::Root => None,
            Vantage::Host(host) => Some(curl_status(self, host, &url)),
        };
        super::eventually(DEADLINE, &what, || {
            self.fail_if_exited(name, "before /ready answered 200");
            let probe = probe.as_ref().map(clone_command);
            async move {
                match probe {
                    Some(mut cmd) => {
                        let out = cmd.output().await.ok()?;
                        (out.stdout == b"200").then_some(())
                    }
                    None => {
                        let req = client::request(
                            Method::GET,
                            "/ready",
                            &admin.to_string(),
                            &[],
                            super::body::empty(),
                        );
                        let probe = client::try_send_http1(admin, req);
                        match tokio::time::timeout(Duration::from_secs(1), probe).await {
                            Ok(Ok(rsp)) if rsp.status() == StatusCode::OK => Some(()),
                            _ => None,
                        }
                    }
                }
            }
        })
        .await;
    }
}

/// `curl` in `host` printing only the status code of `url`, within a second.
fn curl_status(net: &Net, host: &str, url: &str) -> std::process::Command {
    net.command(
        host,
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "1",
            "-w",
            "%{http_code}",
            url,
        ],
    )
}

/// A `N` for 198.19.N.0/24 that no route of the root namespace mentions yet and no other net of
/// this process holds, starting from the test's PID.
async fn free_subnet(pid: u32) -> u8 {
    let routes = ip(&["-4", "route", "show", "table", "all"]).await;
    let mut taken = SUBNETS.lock().expect("subnet list");
    let n = (0..256u32)
        .map(|k| ((pid + k) % 256) as u8)
        .find(|n| !taken.contains(n) && !routes.contains(&format!("198.19.{n}.")))
        .expect("a free /24 in 198.19.0.0/16");
    taken.push(n);
    n
}
