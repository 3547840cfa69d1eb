//! The `tracemesh` binary under test. [`ProxyBuilder::start`] spawns `tracemesh proxy` with the
//! three listeners on `127.0.0.1:0`, reads the addresses from its `listening` log line, and waits
//! for the admin `/ready` to answer 200. [`Proxy`] kills (SIGKILL) and reaps the child on `Drop`.
//!
//! The child's environment is the test's minus every `OTEL_*` and `TRACEMESH_*` variable, so a
//! developer's shell cannot change a test; `RUST_LOG` is `info` unless the builder sets it or
//! `TRACEMESH_TEST_RUST_LOG` is set. Every stdout and stderr line is kept for assertions and
//! echoed to the test's stderr as `[name] line` (shown by cargo when the test fails).
//!
//! Signals go through `kill(1)`: the crate's `nix` dependency lacks the `signal` feature.

mod output;
mod reserve;

use std::{
    ffi::{OsStr, OsString},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use http::StatusCode;

use self::output::Output;
#[allow(unused_imports)] // re-exported for the test crates that need them; others do not
pub use self::reserve::{reserve_inbound, reserve_outbound, reserve_port, ReservedListen};
use super::{client, otlp::OtlpReceiver, DEADLINE, POLL};

/// The binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");

/// A `tracemesh` command with the test's environment minus `OTEL_*` and `TRACEMESH_*`, for
/// subcommands other than `proxy` (which [`ProxyBuilder`] runs).
pub fn command() -> Command {
    clean_command(BIN)
}

/// `program` with the test's environment minus `OTEL_*`, `TRACEMESH_*` and `RUST_LOG`, and the
/// harness's `RUST_LOG`.
fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("OTEL_") || k.starts_with("TRACEMESH_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("TRACEMESH_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd
}

/// Configures and starts a `tracemesh proxy`.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    name: String,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    listen_flags: bool,
    ready_timeout: Duration,
    wrapper: Vec<OsString>,
    hold_stdout: bool,
}

/// A running `tracemesh proxy`, killed and reaped on `Drop`.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    name: String,
    output: Output,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    /// stdout, unread until [`Proxy::release_stdout`] (see [`ProxyBuilder::hold_stdout`]).
    held_stdout: Option<std::process::ChildStdout>,
}

/// A run that ended: see [`ProxyBuilder::run_to_exit`].
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: Vec<String>,
    pub stdout: Vec<String>,
}

// === impl ProxyBuilder ===

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    /// A proxy named `proxy` (the log prefix), with the default listen flags.
    pub fn new() -> Self {
        Self {
            name: "proxy".into(),
            args: Vec::new(),
            env: Vec::new(),
            listen_flags: true,
            ready_timeout: DEADLINE,
            wrapper: Vec::new(),
            hold_stdout: false,
        }
    }

    /// Names the proxy in echoed log lines and panic messages (`a-proxy`, `b-proxy`, ..).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Appends one argument after the listen flags. A listen flag given here (e.g. from
    /// [`reserve_outbound`]) replaces the default `127.0.0.1:0` one.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments after the listen flags.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Switches the sampling rules' probe defaults off, for tests whose RPC is
    /// `grpc.health.v1.Health`, which the defaults never sample.
    pub fn sample_health_checks(self) -> Self {
        self.arg("--sampling-rules").arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/sampling/probe-defaults-off.yaml"
        ))
    }

    /// Sets a variable in the child's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes a variable from the child's environment (including one set earlier).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Leaves out `--inbound-listen/--outbound-listen/--admin-listen 127.0.0.1:0`, for tests of
    /// the flags or their `TRACEMESH_*` variables. `start` still needs the `listening` line.
    pub fn without_listen_flags(mut self) -> Self {
        self.listen_flags = false;
        self
    }

    /// Nobody reads the proxy's stdout until [`Proxy::release_stdout`]: once the pipe's buffer
    /// is full, every write the proxy makes to stdout blocks.
    pub fn hold_stdout(mut self) -> Self {
        self.hold_stdout = true;
        self
    }

    /// How long `start` waits for the `listening` line and `/ready` (default [`DEADLINE`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Runs the binary through a command that execs it, e.g. `["prlimit", "--nofile=64:64"]`
    /// spawns `prlimit --nofile=64:64 tracemesh proxy ..`. The wrapper must exec (not fork) the
    /// binary, so that [`Proxy::pid`] and [`Proxy::terminate`] reach the proxy itself.
    pub fn wrapper<I, A>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        self.wrapper = command.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Spawns the proxy, waits for its `listening` line, then for `GET /ready` → 200.
    ///
    /// # Panics
    /// If the binary cannot be spawned, exits, or is not ready within the timeout; the message
    /// carries the exit status and every line logged.
    pub async fn start(self) -> Proxy {
        let timeout = self.ready_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (child, name, output, held_stdout) = self.spawn();
        // From here on the child is owned by a guard, so a panic below still kills it.
        let mut proxy = Proxy {
            child,
            name,
            output,
            inbound: unspecified(),
            outbound: unspecified(),
            admin: unspecified(),
            held_stdout,
        };
        let addrs = loop {
            if let Some(addrs) = proxy.output.find_stderr(parse_listening) {
                break addrs;
            }
            proxy.fail_if_exited("before logging `listening`").await;
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{}: no `listening inbound=.. outbound=.. admin=..` line within {timeout:?} \
                    (does RUST_LOG keep info?)\n{}",
                    proxy.name,
                    proxy.output.render()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        (proxy.inbound, proxy.outbound, proxy.admin) = addrs;
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(1), ready_probe(proxy.admin));
            if let Ok(true) = attempt.await {
                return proxy;
            }
            proxy.fail_if_exited("before /ready answered 200").await;
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{}: GET http://{}/ready did not answer 200 within {timeout:?}\n{}",
                    proxy.name,
                    proxy.admin,
                    proxy.output.render()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Spawns the proxy and waits for it to exit by itself, for tests of start-up failures
    /// (a bad configuration exits 64 before anything listens).
    ///
    /// # Panics
    /// If it is still running after `timeout` (it is killed first).
    pub async fn run_to_exit(self, timeout: Duration) -> Exited {
        let (child, name, output, held_stdout) = self.spawn();
        let mut proxy = Proxy {
            child,
            name,
            output,
            inbound: unspecified(),
            outbound: unspecified(),
            admin: unspecified(),
            held_stdout,
        };
        let Some(status) = proxy.wait_exit(timeout).await else {
            panic!(
                "{}: still running after {timeout:?}, expected it to exit\n{}",
                proxy.name,
                proxy.output.render()
            );
        };
        Exited {
            status,
            stderr: proxy.logs(),
            stdout: proxy.stdout(),
        }
    }

    fn spawn(self) -> (Child, String, Output, Option<std::process::ChildStdout>) {
        let mut cmd = match self.wrapper.split_first() {
            None => command(),
            Some((program, args)) => {
                let mut cmd = clean_command(program);
                cmd.args(args).arg(BIN);
                cmd
            }
        };
        cmd.arg("proxy");
        for flag in ["--inbound-listen", "--outbound-listen", "--admin-listen"] {
            let given = self.args.iter().any(|a| {
                a.to_str().is_some_and(|a| {
                    a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('='))
                })
            });
            if self.listen_flags && !given {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.args(&self.args);
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawning {:?}: {e}", self.name, cmd.get_program()));
        let output = Output::default();
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        output.pump_stderr(stderr, self.name.clone());
        let held = if self.hold_stdout {
            Some(stdout)
        } else {
            output.pump_stdout(stdout, format!("{} stdout", self.name));
            None
        };
        (child, self.name, output, held)
    }
}

// === impl Proxy ===

impl Proxy {
    /// Shorthand for [`ProxyBuilder::new`].
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::new()
    }

    /// A builder named `service` that exports to `otlp` over its protocol, as service `service`,
    /// with a 50 ms batch delay so spans arrive promptly.
    pub fn exporting_to(otlp: &OtlpReceiver, service: &str) -> ProxyBuilder {
        ProxyBuilder::new()
            .name(service)
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", otlp.protocol().as_env())
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
    }

    /// The inbound listener (traffic towards the app).
    pub fn inbound(&self) -> SocketAddr {
        self.inbound
    }

    /// The outbound listener (the app's HTTP proxy).
    pub fn outbound(&self) -> SocketAddr {
        self.outbound
    }

    /// The admin listener (`/live`, `/ready`, `/metrics`).
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far (the proxy's logs).
    pub fn logs(&self) -> Vec<String> {
        self.output.stderr()
    }

    /// Starts reading a stdout held by [`ProxyBuilder::hold_stdout`].
    pub fn release_stdout(&mut self) {
        if let Some(stdout) = self.held_stdout.take() {
            self.output
                .pump_stdout(stdout, format!("{} stdout", self.name));
        }
    }

    /// Every stdout line so far (where the console exporter writes).
    pub fn stdout(&self) -> Vec<String> {
        self.output.stdout()
    }

    /// Whether any stderr line so far contains `needle`.
    pub fn logs_contain(&self, needle: &str) -> bool {
        self.output
            .find_stderr(|l| l.contains(needle).then_some(()))
            .is_some()
    }

    /// Waits until a stderr line contains `needle`, and returns it.
    ///
    /// # Panics
    /// After `timeout`, with the logs.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .output
                .find_stderr(|l| l.contains(needle).then(|| l.to_owned()))
            {
                return line;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{}: no log line containing {needle:?} within {timeout:?}\n{}",
                    self.name,
                    self.output.render()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET http://admin{path}`: status and body as text.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let (status, _, body) = client::http1_get(self.admin, path, &[]).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The Prometheus text from `/metrics`.
    ///
    /// # Panics
    /// If `/metrics` does not answer 200.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: GET /metrics answered {status}: {body}",
            self.name
        );
        body
    }

    /// Polls `/metrics` until some line contains `needle`, and returns the whole text. RED
    /// metrics are recorded when a response body ends, which can be just after the client has
    /// read it, so a test asserts on metrics through this rather than one scrape.
    ///
    /// # Panics
    /// After `timeout`, with the last scrape.
    pub async fn wait_for_metric(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            if text.lines().any(|l| l.contains(needle)) {
                return text;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{}: no metrics line containing {needle:?} within {timeout:?}:\n{text}",
                    self.name
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The current value of one series (`name` or `name{labels}`, exactly as rendered in the
    /// classic text format), or `None` if it is absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }

    /// Polls `/metrics` until `series` satisfies `ok`; returns its value.
    ///
    /// # Panics
    /// After [`DEADLINE`], naming the series.
    pub async fn wait_for_series(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let what = format!("{series} to reach the expected value");
        let ok = &ok;
        super::eventually(DEADLINE, &what, || async move {
            self.metric(series).await.filter(|v| ok(*v))
        })
        .await
    }

    /// Sends SIGTERM (graceful drain).
    ///
    /// # Panics
    /// If `kill -TERM` cannot be run.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill -TERM");
        // A child that already exited (and so could not be signalled) is the caller's to judge.
        if !status.success() {
            eprintln!(
                "[{}] kill -TERM {} failed: {status}",
                self.name,
                self.child.id()
            );
        }
    }

    /// Polls for the child's exit for up to `timeout`, without blocking the runtime (peers on the
    /// same runtime keep serving while the proxy drains). On exit, the pipes are read to EOF
    /// before returning, so `logs()` is complete.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the child's status") {
                // The pipes close just after the exit; give the reader threads a moment.
                let drained = tokio::time::Instant::now() + Duration::from_secs(2);
                while !self.output.closed() && tokio::time::Instant::now() < drained {
                    tokio::time::sleep(POLL).await;
                }
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn fail_if_exited(&mut self, when: &str) {
        if let Some(status) = self.wait_exit(Duration::ZERO).await {
            panic!(
                "{}: exited {when}: {status}\n{}",
                self.name,
                self.output.render()
            );
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses `... listening inbound=A outbound=B admin=C` (fields in any order, maybe quoted).
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let (_, fields) = line.split_once(" listening")?;
    let field = |key: &str| -> Option<SocketAddr> {
        fields.split_whitespace().find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.trim_matches(|c| c == '"' || c == ',').parse().ok())?
        })
    };
    Some((field("inbound")?, field("outbound")?, field("admin")?))
}

/// One `GET /ready` over a fresh connection: whether it answered 200.
async fn ready_probe(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let request = format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// The value of one series in Prometheus text (`name` or `name{labels}`, exactly as rendered).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, rest) = l.split_once(' ')?;
        (name == series).then(|| rest.split_whitespace().next()?.parse().ok())?
    })
}
