//! Configuration: the `proxy` command line (a contract, see DESIGN.md) and the `OTEL_*`
//! environment, parsed once into types before any port is bound.
//!
//! Flags and `TRACEMESH_*` variables go through clap. `OTEL_*` and downward-API values are read
//! through one lookup function ([`TelemetryConfig::from_lookup`]), so tests pass a map instead of
//! mutating the process environment. A bad value is a [`ConfigError`] naming the value and its
//! origin; `main` prints it on one line and exits with code 64 before anything listens.

pub mod routes;

use std::{fmt, net::SocketAddr, num::NonZeroUsize, str::FromStr, time::Duration};

use crate::context::Propagators;

pub const ENV_INBOUND_LISTEN: &str = "TRACEMESH_INBOUND_LISTEN";
pub const ENV_OUTBOUND_LISTEN: &str = "TRACEMESH_OUTBOUND_LISTEN";
pub const ENV_ADMIN_LISTEN: &str = "TRACEMESH_ADMIN_LISTEN";
pub const ENV_APP_ADDR: &str = "TRACEMESH_APP_ADDR";
pub const ENV_WORKERS: &str = "TRACEMESH_WORKERS";
pub const ENV_PROPAGATORS: &str = "OTEL_PROPAGATORS";
pub const ENV_SHUTDOWN_GRACE: &str = "TRACEMESH_SHUTDOWN_GRACE";
pub const ENV_DRAIN_DELAY: &str = "TRACEMESH_DRAIN_DELAY";
pub const ENV_CONNECT_TIMEOUT: &str = "TRACEMESH_CONNECT_TIMEOUT";
pub const ENV_RESPONSE_TIMEOUT: &str = "TRACEMESH_RESPONSE_TIMEOUT";
pub const ENV_HEADER_READ_TIMEOUT: &str = "TRACEMESH_HEADER_READ_TIMEOUT";
pub const ENV_IDLE_TIMEOUT: &str = "TRACEMESH_IDLE_TIMEOUT";
pub const ENV_DETECT_TIMEOUT: &str = "TRACEMESH_DETECT_TIMEOUT";
pub const ENV_OPAQUE_PORTS: &str = "TRACEMESH_OPAQUE_PORTS";
pub const ENV_MAX_CONNECTIONS: &str = "TRACEMESH_MAX_CONNECTIONS";
pub const ENV_MAX_HEADER_BYTES: &str = "TRACEMESH_MAX_HEADER_BYTES";
pub const ENV_ROUTES: &str = "TRACEMESH_ROUTES";
pub const ENV_ROUTES_FILE: &str = "TRACEMESH_ROUTES_FILE";
pub const ENV_SAMPLING_RULES: &str = "TRACEMESH_SAMPLING_RULES";
pub const ENV_TRUSTED_CIDRS: &str = "TRACEMESH_TRUSTED_CIDRS";
pub const ENV_RETENTION: &str = "TRACEMESH_RETENTION";
pub const ENV_RETENTION_RING_SPANS: &str = "TRACEMESH_RETENTION_RING_SPANS";
pub const ENV_SLOW_THRESHOLD: &str = "TRACEMESH_SLOW_THRESHOLD";
pub const ENV_SLOW_FLOOR: &str = "TRACEMESH_SLOW_FLOOR";
pub const ENV_RESPONSE_CONTEXT: &str = "TRACEMESH_RESPONSE_CONTEXT";
pub const ENV_RETENTION_KEEP_RATE: &str = "TRACEMESH_RETENTION_KEEP_RATE";
pub const ENV_ACCESS_LOG: &str = "TRACEMESH_ACCESS_LOG";
pub const ENV_DEBUG_TRACES: &str = "TRACEMESH_DEBUG_TRACES";
pub const ENV_DEBUG_TRACES_SPANS: &str = "TRACEMESH_DEBUG_TRACES_SPANS";
pub const ENV_ROUTE_LEARN_LIMIT: &str = "TRACEMESH_ROUTE_LEARN_LIMIT";
pub const ENV_RETENTION_KEPT_TRACES: &str = "TRACEMESH_RETENTION_KEPT_TRACES";
pub const ENV_RETENTION_KEPT_TTL: &str = "TRACEMESH_RETENTION_KEPT_TTL";
pub const ENV_DISABLE_RED_METRICS: &str = "TRACEMESH_DISABLE_RED_METRICS";

pub const ENV_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const ENV_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const ENV_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const ENV_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const ENV_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const ENV_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const ENV_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
pub const ENV_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
pub const ENV_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// Downward-API variables the chart sets on the sidecar (`fieldRef` to `metadata.name` etc.).
pub const ENV_POD_NAME: &str = "TRACEMESH_POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "TRACEMESH_POD_NAMESPACE";
pub const ENV_NODE_NAME: &str = "TRACEMESH_NODE_NAME";

pub const DEFAULT_INBOUND_LISTEN: &str = "0.0.0.0:4143";
pub const DEFAULT_OUTBOUND_LISTEN: &str = "127.0.0.1:4140";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:4191";
/// Kubernetes' default `terminationGracePeriodSeconds` is 30 s: the 5 s drain delay, this, and
/// room for the span flush fit in it.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "20s";
/// Istio's sidecar default (`terminationDrainDuration`): long enough for the endpoint controller
/// and kube-proxy to drop a pod that has started terminating, so late clients are still served.
pub const DEFAULT_DRAIN_DELAY: &str = "5s";
pub const DEFAULT_CONNECT_TIMEOUT: &str = "1s";
/// Time to the upstream's response headers; streaming bodies are not limited by it.
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "30s";
/// Slowloris guard: a client must send a whole request head within this time.
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// A connection with no request in flight and no bytes moving is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// A client must send enough to tell its protocol within this; otherwise the connection is
/// closed. Server-first protocols send nothing: their ports belong in `--opaque-ports`.
pub const DEFAULT_DETECT_TIMEOUT: &str = "1s";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The request line plus headers; larger heads are answered with 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Exit code for a bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration value that cannot be used. The message names the value and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} {value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{var} {value:?}: unknown value; expected one of {expected}")]
    Unknown {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
}

fn invalid(var: &'static str, value: &str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason,
    }
}

/// The `tracemesh proxy` command line. Names are a contract (DESIGN.md): add, never rename.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Inbound listener: traffic entering the pod.
    #[arg(long, env = ENV_INBOUND_LISTEN, default_value = DEFAULT_INBOUND_LISTEN)]
    pub inbound_listen: SocketAddr,
    /// Outbound listener: the app's calls (HTTP proxy or iptables-redirected).
    #[arg(long, env = ENV_OUTBOUND_LISTEN, default_value = DEFAULT_OUTBOUND_LISTEN)]
    pub outbound_listen: SocketAddr,
    /// Admin listener: /live, /ready, /metrics.
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Where inbound requests go. Default: the connection's original destination (the pod's own
    /// address and the port the client dialled).
    #[arg(long, env = ENV_APP_ADDR)]
    pub app_addr: Option<SocketAddr>,
    /// Data-path threads, each a single-threaded runtime with its own inbound and outbound
    /// sockets (SO_REUSEPORT). Default: the CPUs this process may use (affinity and cgroup
    /// quota).
    #[arg(long, env = ENV_WORKERS)]
    pub workers: Option<NonZeroUsize>,
    /// Trace context formats injected towards the next hop: tracecontext, b3, b3multi. Every
    /// known format is extracted.
    #[arg(long, env = ENV_PROPAGATORS, default_value = "tracecontext", value_parser = parse_propagators)]
    pub propagators: Propagators,
    /// On SIGTERM, how long in-flight requests may take to finish once the listeners have
    /// closed (after --drain-delay).
    #[arg(long, env = ENV_SHUTDOWN_GRACE, default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// TCP connect timeout towards the app or upstream (then 504).
    #[arg(long, env = ENV_CONNECT_TIMEOUT, default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_timeout)]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers (then 504).
    #[arg(long, env = ENV_RESPONSE_TIMEOUT, default_value = DEFAULT_RESPONSE_TIMEOUT, value_parser = parse_timeout)]
    pub response_timeout: Duration,
    /// Time allowed for a client to send a request head (then the connection is closed).
    #[arg(long, env = ENV_HEADER_READ_TIMEOUT, default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = parse_timeout)]
    pub header_read_timeout: Duration,
    /// Idle connections (no request in flight, no bytes moving) are closed after this.
    #[arg(long, env = ENV_IDLE_TIMEOUT, default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_timeout)]
    pub idle_timeout: Duration,
    /// How long a client may take to send enough bytes to tell its protocol; then the
    /// connection is closed (never relayed unparsed).
    #[arg(long, env = ENV_DETECT_TIMEOUT, default_value = DEFAULT_DETECT_TIMEOUT, value_parser = parse_timeout)]
    pub detect_timeout: Duration,
    /// Destination ports relayed as opaque TCP without protocol detection: server-first
    /// protocols (MySQL, SMTP, ...) and anything that must never be parsed as HTTP
    /// (comma-separated).
    #[arg(long, env = ENV_OPAQUE_PORTS, value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,
    /// Open connections per listener; further clients wait in the kernel's backlog.
    #[arg(long, env = ENV_MAX_CONNECTIONS, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    #[arg(long, env = ENV_MAX_HEADER_BYTES, default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// A route template such as `/orders/{id}` (repeat the flag, or comma-separate in the
    /// variable). Matched paths get `http.route` and a `route` metric label; others share
    /// `_unmatched`. Without templates there is no route label.
    #[arg(long = "route", env = ENV_ROUTES, value_delimiter = ',', value_parser = parse_route)]
    pub routes: Vec<String>,
    /// A file of route templates, one per line (`#` comments), tried after the `--route` ones.
    /// Re-read when it changes (a mounted ConfigMap works); a bad version keeps the previous.
    #[arg(long, env = ENV_ROUTES_FILE)]
    pub routes_file: Option<std::path::PathBuf>,
    /// A YAML file of sampling rules for new roots (README "Sampling rules"). Re-read when it
    /// changes; a bad version keeps the previous rules. Without it, the probe defaults apply.
    #[arg(long, env = ENV_SAMPLING_RULES)]
    pub sampling_rules: Option<std::path::PathBuf>,
    /// Sources (IPs or CIDRs, comma-separated) whose `x-tracemesh-force-trace: 1` header forces
    /// a request to be sampled. Empty (the default): the header is ignored from everyone.
    #[arg(long, env = ENV_TRUSTED_CIDRS, value_delimiter = ',', value_parser = parse_trusted)]
    pub trusted_cidrs: Vec<ipnet::IpNet>,
    /// Deferred sampling: record every request's span, and keep (export) those that failed, were
    /// slow, or whose trace a downstream hop kept, as well as the head-sampled ones.
    #[arg(long, env = ENV_RETENTION, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub retention: bool,
    /// Unkept span records held for a later keep decision (about 640 bytes each).
    #[arg(long, env = ENV_RETENTION_RING_SPANS, default_value_t = crate::telemetry::retention::DEFAULT_RING_SPANS)]
    pub retention_ring_spans: usize,
    /// A span longer than this is kept as slow, whatever its route (default: learned per route).
    #[arg(long, env = ENV_SLOW_THRESHOLD, value_parser = parse_timeout)]
    pub slow_threshold: Option<Duration>,
    /// Nothing shorter is slow by a route's learned threshold (its running p99).
    #[arg(long, env = ENV_SLOW_FLOOR, default_value = "100ms", value_parser = parse_duration)]
    pub slow_floor: Duration,
    /// Answer kept inbound requests with `traceresponse` and `server-timing: trace;desc=…`;
    /// `off` at the mesh's edge also strips them from the app's responses.
    #[arg(long, env = ENV_RESPONSE_CONTEXT, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub response_context: bool,
    /// New traces kept per second for a reason other than the head (errors, slow, downstream):
    /// what an error storm, or a client replaying a kept trace ID, can make the proxy export.
    #[arg(long, env = ENV_RETENTION_KEEP_RATE, default_value_t = crate::telemetry::retention::DEFAULT_KEEP_RATE, value_parser = parse_rate)]
    pub retention_keep_rate: f64,
    /// Traces the sidecar remembers as kept at once (16 bytes each), so that a SERVER span is
    /// kept when one of its outbound calls was.
    #[arg(long, env = ENV_RETENTION_KEPT_TRACES, default_value_t = crate::telemetry::retention::kept::SLOTS, value_parser = parse_kept_traces)]
    pub retention_kept_traces: usize,
    /// How long a kept trace is remembered: the longest a request may outlive the outbound call
    /// that kept its trace and still be kept.
    #[arg(long, env = ENV_RETENTION_KEPT_TTL, default_value = "30s", value_parser = parse_timeout)]
    pub retention_kept_ttl: Duration,
    /// Route templates inferred at most for paths no `--route` matches (segments that look like
    /// identifiers become `{id}`); past it, new shapes share `_unmatched`. `0`: no inference.
    #[arg(long, env = ENV_ROUTE_LEARN_LIMIT, default_value_t = crate::telemetry::autoroute::DEFAULT_LIMIT)]
    pub route_learn_limit: usize,
    /// `json`: one JSON line per request on stdout, with its trace and span IDs; written off
    /// the request path, lines dropped (and counted) when stdout does not keep up.
    #[arg(long, env = ENV_ACCESS_LOG, default_value = "off", value_parser = parse_access_log, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// `/debug/traces` on the admin listener: the spans this proxy exported most recently, as
    /// waterfalls (HTML) and JSON. `local` (default): for loopback clients only (`kubectl
    /// port-forward`); `on`: for every client of the admin port; `off`: no page, no memory.
    #[arg(long, env = ENV_DEBUG_TRACES, default_value = "local", value_parser = ["off", "local", "on"])]
    pub debug_traces: String,
    /// Spans `/debug/traces` holds (about 640 bytes each); the oldest make room.
    #[arg(long, env = ENV_DEBUG_TRACES_SPANS, default_value = "1024", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub debug_traces_spans: u32,
    /// Switch off the RED metrics (`tracemesh_requests_total`, `tracemesh_request_duration_seconds`).
    #[arg(long, env = ENV_DISABLE_RED_METRICS)]
    pub disable_red_metrics: bool,
    /// On SIGTERM, how long to keep accepting and serving new connections while /ready answers
    /// 503, so that Kubernetes removes the endpoint before the listeners close. Then the
    /// listeners close and in-flight requests get --shutdown-grace. `0s` closes them at once.
    #[arg(long, env = ENV_DRAIN_DELAY, default_value = DEFAULT_DRAIN_DELAY, value_parser = parse_duration)]
    pub drain_delay: Duration,
}

fn parse_route(s: &str) -> Result<String, String> {
    routes::Routes::parse([s]).map_err(|e| e.to_string())?;
    Ok(s.trim().to_owned())
}

/// A rate per second: a number of at least 0.001.
fn parse_kept_traces(s: &str) -> Result<usize, String> {
    const MAX: usize = 1 << 24;
    match s.parse::<usize>() {
        Ok(n) if (2..=MAX).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: expected a whole number in 2..={MAX}")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.001 => Ok(r),
        _ => Err(format!("{s:?}: expected a number of at least 0.001")),
    }
}

/// `on` / `off` (also `true` / `false`).
fn parse_access_log(s: &str) -> Result<bool, String> {
    match s {
        "json" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected json or off")),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
}

/// An IP (a /32 or /128) or a CIDR.
fn parse_trusted(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

fn parse_propagators(s: &str) -> Result<Propagators, String> {
    Propagators::parse(s).map_err(|e| e.to_string())
}

/// The longest any duration flag may be: far past any sensible timeout or delay, and small
/// enough that a deadline `now + d` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `500ms`, `10s`, `2m`, ... (humantime), up to [`MAX_DURATION`]. A bare number is
/// rejected: units are not guessed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?}: longer than a year"));
    }
    Ok(d)
}

/// A [`parse_duration`] that must be longer than zero: a zero timeout would close every
/// connection at once (and a zero HTTP/2 keep-alive interval is no interval).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: a timeout must be longer than zero"));
    }
    Ok(d)
}

/// Limits and timeouts shared by both listeners' connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub detect_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let d = |s| parse_duration(s).expect("default durations parse");
        Limits {
            connect_timeout: d(DEFAULT_CONNECT_TIMEOUT),
            response_timeout: d(DEFAULT_RESPONSE_TIMEOUT),
            header_read_timeout: d(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: d(DEFAULT_IDLE_TIMEOUT),
            detect_timeout: d(DEFAULT_DETECT_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl ProxyArgs {
    /// The route templates, already validated by clap.
    pub fn routes(&self) -> routes::Routes {
        routes::Routes::parse(self.routes.iter().map(String::as_str))
            .expect("each template was validated when parsed")
    }

    pub fn retention(&self) -> crate::telemetry::retention::RetentionConfig {
        crate::telemetry::retention::RetentionConfig {
            enabled: self.retention,
            ring_spans: self.retention_ring_spans,
            slow_threshold: self.slow_threshold,
            slow_floor: self.slow_floor,
            response_context: self.response_context,
            keep_rate: self.retention_keep_rate,
            kept_traces: self.retention_kept_traces,
            kept_ttl: self.retention_kept_ttl,
        }
    }

    pub fn observe(&self) -> crate::telemetry::ObserveConfig {
        crate::telemetry::ObserveConfig {
            route_learn_limit: self.route_learn_limit,
            access_log: self.access_log,
            debug_traces: (self.debug_traces != "off").then_some(self.debug_traces_spans as usize),
            debug_traces_remote: self.debug_traces == "on",
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            detect_timeout: self.detect_timeout,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
        }
    }
}

/// Worker threads when `--workers` is not given: what `std::thread::available_parallelism`
/// reports, which on Linux honours both the CPU affinity mask and the cgroup v1/v2 CPU quota.
pub fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Where spans go (`OTEL_TRACES_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracesExporter {
    Otlp,
    Console,
    None,
}

/// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// A probability in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRatio(f64);

impl SampleRatio {
    pub const ALWAYS: SampleRatio = SampleRatio(1.0);
    pub const NEVER: SampleRatio = SampleRatio(0.0);

    pub fn new(ratio: f64) -> Option<Self> {
        (0.0..=1.0).contains(&ratio).then_some(SampleRatio(ratio))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for SampleRatio {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: f64 = s.trim().parse().map_err(|_| "not a number")?;
        SampleRatio::new(v).ok_or("not in [0, 1]")
    }
}

/// The sampler (`OTEL_TRACES_SAMPLER`): whether new roots are sampled, and whether a remote
/// parent's decision is followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    pub parent_based: bool,
    pub root_ratio: SampleRatio,
}

impl Default for SamplerConfig {
    /// The OpenTelemetry default, `parentbased_always_on`.
    fn default() -> Self {
        SamplerConfig {
            parent_based: true,
            root_ratio: SampleRatio::ALWAYS,
        }
    }
}

/// Batch export settings (`OTEL_BSP_*`, same defaults as the OpenTelemetry SDKs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            schedule_delay: Duration::from_millis(5000),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    }
}

/// Everything telemetry needs, from `OTEL_*` and the downward API.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub exporter: TracesExporter,
    pub protocol: OtlpProtocol,
    /// The full URL spans are sent to (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    pub export_timeout: Duration,
    pub sampler: SamplerConfig,
    pub batch: BatchConfig,
    /// Resource attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
}

impl TelemetryConfig {
    /// Reads the `OTEL_*` variables through `lookup` (the process environment in `main`, a map in
    /// tests). Empty values count as unset, as the OpenTelemetry specification requires.
    ///
    /// # Errors
    /// A value that is present but unusable, naming the variable and the value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());

        let exporter = match get(ENV_TRACES_EXPORTER).as_deref().map(str::trim) {
            None | Some("otlp") => TracesExporter::Otlp,
            Some("console") => TracesExporter::Console,
            Some("none") => TracesExporter::None,
            Some(other) => {
                return Err(ConfigError::Unknown {
                    var: ENV_TRACES_EXPORTER,
                    value: other.to_owned(),
                    expected: "otlp, console, none",
                })
            }
        };

        let (proto_var, proto) = match get(ENV_OTLP_TRACES_PROTOCOL) {
            Some(v) => (ENV_OTLP_TRACES_PROTOCOL, Some(v)),
            None => (ENV_OTLP_PROTOCOL, get(ENV_OTLP_PROTOCOL)),
        };
        let protocol = match proto.as_deref().map(str::trim) {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => {
                return Err(ConfigError::Unknown {
                    var: proto_var,
                    value: other.to_owned(),
                    expected: "grpc, http/protobuf",
                })
            }
        };

        let endpoint = otlp_endpoint(
            protocol,
            get(ENV_OTLP_TRACES_ENDPOINT),
            get(ENV_OTLP_ENDPOINT),
        )?;

        let export_timeout = match get(ENV_OTLP_TRACES_TIMEOUT)
            .map(|v| (ENV_OTLP_TRACES_TIMEOUT, v))
            .or_else(|| get(ENV_OTLP_TIMEOUT).map(|v| (ENV_OTLP_TIMEOUT, v)))
        {
            Some((var, v)) => Duration::from_millis(parse_millis(var, &v)?),
            None => Duration::from_secs(10),
        };

        let sampler = sampler(get(ENV_TRACES_SAMPLER), get(ENV_TRACES_SAMPLER_ARG))?;

        let mut batch = BatchConfig::default();
        if let Some(v) = get(ENV_BSP_SCHEDULE_DELAY) {
            batch.schedule_delay = Duration::from_millis(parse_millis(ENV_BSP_SCHEDULE_DELAY, &v)?);
        }
        if let Some(v) = get(ENV_BSP_MAX_QUEUE_SIZE) {
            batch.max_queue_size = parse_positive(ENV_BSP_MAX_QUEUE_SIZE, &v)?;
        }
        if let Some(v) = get(ENV_BSP_MAX_EXPORT_BATCH_SIZE) {
            batch.max_export_batch_size = parse_positive(ENV_BSP_MAX_EXPORT_BATCH_SIZE, &v)?;
        }
        batch.max_export_batch_size = batch.max_export_batch_size.min(batch.max_queue_size);

        let resource = resource(
            get(ENV_SERVICE_NAME),
            get(ENV_RESOURCE_ATTRIBUTES),
            get(ENV_POD_NAME),
            get(ENV_POD_NAMESPACE),
            get(ENV_NODE_NAME),
        )?;

        Ok(TelemetryConfig {
            exporter,
            protocol,
            endpoint,
            export_timeout,
            sampler,
            batch,
            resource,
        })
    }

    /// `service.name`, which is always present.
    pub fn service_name(&self) -> &str {
        self.resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.as_str())
            .unwrap_or("tracemesh")
    }
}

/// Per the OTLP exporter specification: a signal-specific endpoint is used as is; the generic
/// one gets `/v1/traces` appended for HTTP; gRPC uses it as is.
fn otlp_endpoint(
    protocol: OtlpProtocol,
    traces: Option<String>,
    generic: Option<String>,
) -> Result<String, ConfigError> {
    let (var, url) = match (traces, generic) {
        (Some(t), _) => (ENV_OTLP_TRACES_ENDPOINT, t.trim().to_owned()),
        (None, Some(g)) => {
            let g = g.trim();
            let url = match protocol {
                OtlpProtocol::Grpc => g.to_owned(),
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", g.trim_end_matches('/')),
            };
            (ENV_OTLP_ENDPOINT, url)
        }
        (None, None) => {
            return Ok(match protocol {
                OtlpProtocol::Grpc => "http://localhost:4317".to_owned(),
                OtlpProtocol::HttpProtobuf => "http://localhost:4318/v1/traces".to_owned(),
            })
        }
    };
    match url.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.authority().is_some() => Ok(url),
        _ => Err(invalid(var, &url, "not an absolute http(s) URL")),
    }
}

fn parse_millis(var: &'static str, v: &str) -> Result<u64, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| invalid(var, v, "not a whole number of milliseconds"))
}

fn parse_positive(var: &'static str, v: &str) -> Result<usize, ConfigError> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(var, v, "not a positive whole number")),
    }
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerConfig, ConfigError> {
    let ratio = || -> Result<SampleRatio, ConfigError> {
        match &arg {
            None => Ok(SampleRatio::ALWAYS),
            Some(a) => a
                .parse()
                .map_err(|reason| invalid(ENV_TRACES_SAMPLER_ARG, a, reason)),
        }
    };
    let (parent_based, root_ratio) = match name.as_deref().map(str::trim) {
        None | Some("parentbased_always_on") => (true, SampleRatio::ALWAYS),
        Some("parentbased_always_off") => (true, SampleRatio::NEVER),
        Some("parentbased_traceidratio") => (true, ratio()?),
        Some("always_on") => (false, SampleRatio::ALWAYS),
        Some("always_off") => (false, SampleRatio::NEVER),
        Some("traceidratio") => (false, ratio()?),
        Some(other) => {
            return Err(ConfigError::Unknown {
                var: ENV_TRACES_SAMPLER,
                value: other.to_owned(),
                expected: "always_on, always_off, traceidratio, parentbased_always_on, \
                           parentbased_always_off, parentbased_traceidratio",
            })
        }
    };
    Ok(SamplerConfig {
        parent_based,
        root_ratio,
    })
}

fn resource(
    service_name: Option<String>,
    attributes: Option<String>,
    pod: Option<String>,
    namespace: Option<String>,
    node: Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut attrs: Vec<(String, String)> = Vec::new();
    if let Some(list) = &attributes {
        for member in list.split(',').filter(|m| !m.trim().is_empty()) {
            let (k, v) = member.split_once('=').ok_or_else(|| {
                invalid(ENV_RESOURCE_ATTRIBUTES, list, "members must be key=value")
            })?;
            let v = percent_decode(v.trim())
                .ok_or_else(|| invalid(ENV_RESOURCE_ATTRIBUTES, list, "bad percent-encoding"))?;
            attrs.push((k.trim().to_owned(), v));
        }
    }
    let mut push_if_absent = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            if !attrs.iter().any(|(k, _)| k == key) {
                attrs.push((key.to_owned(), v));
            }
        }
    };
    push_if_absent("k8s.pod.name", pod.clone());
    push_if_absent("k8s.namespace.name", namespace);
    push_if_absent("k8s.node.name", node);

    // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES (spec); without
    // either, the pod's workload is the best name an operator would recognise.
    let service = match service_name {
        Some(s) => Some(s.trim().to_owned()),
        None => attrs
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| attrs.remove(i).1),
    }
    .or_else(|| pod.as_deref().map(workload_of_pod))
    .unwrap_or_else(|| "tracemesh".to_owned());
    attrs.retain(|(k, _)| k != "service.name");
    attrs.insert(0, ("service.name".to_owned(), service));
    Ok(attrs)
}

/// `checkout-7d9f8b6c5-x2kqz` (Deployment) → `checkout`; `db-0` (StatefulSet) → `db`.
pub fn workload_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    let is_hash = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    let is_ordinal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [name @ .., rs, pod] if !name.is_empty() && is_hash(rs, 6, 10) && is_hash(pod, 5, 5) => {
            name.join("-")
        }
        [name @ .., ord] if !name.is_empty() && is_ordinal(ord) => name.join("-"),
        [name @ .., pod] if !name.is_empty() && is_hash(pod, 5, 5) => name.join("-"),
        _ => pod.to_owned(),
    }
}

/// Decodes `%XX` escapes (`OTEL_RESOURCE_ATTRIBUTES` values, gRPC's `grpc-message`). `None` on
/// a malformed escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for TracesExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TracesExporter::Otlp => "otlp",
            TracesExporter::Console => "console",
            TracesExporter::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn timeouts_must_be_positive_and_durations_bounded() {
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("500000000y").is_err());
        assert!(parse_duration("2y")
            .unwrap_err()
            .contains("longer than a year"));
    }

    #[test]
    fn defaults_follow_the_otel_spec() {
        let c = config(&[]).unwrap();
        assert_eq!(c.exporter, TracesExporter::Otlp);
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.endpoint, "http://localhost:4317");
        assert_eq!(c.sampler, SamplerConfig::default());
        assert_eq!(c.export_timeout, Duration::from_secs(10));
        assert_eq!(c.service_name(), "tracemesh");
    }

    #[test]
    fn http_endpoint_gets_v1_traces_appended_but_signal_endpoint_is_used_as_is() {
        let c = config(&[
            (ENV_OTLP_PROTOCOL, "http/protobuf"),
            (ENV_OTLP_ENDPOINT, "http://collector:4318/"),
        ])
        .unwrap();
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        let c = config(&[
            (ENV_OTLP_PROTOCOL, "http/protobuf"),
            (ENV_OTLP_ENDPOINT, "http://ignored:4318"),
            (ENV_OTLP_TRACES_ENDPOINT, "http://collector:9999/custom"),
        ])
        .unwrap();
        assert_eq!(c.endpoint, "http://collector:9999/custom");
    }

    #[test]
    fn traces_protocol_overrides_generic_protocol() {
        let c = config(&[
            (ENV_OTLP_PROTOCOL, "grpc"),
            (ENV_OTLP_TRACES_PROTOCOL, "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn sampler_arg_out_of_range_names_the_value_and_variable() {
        let err = config(&[
            (ENV_TRACES_SAMPLER, "parentbased_traceidratio"),
            (ENV_TRACES_SAMPLER_ARG, "1.5"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"OTEL_TRACES_SAMPLER_ARG "1.5": not in [0, 1]"#
        );
    }

    #[test]
    fn samplers_map_to_parent_based_and_ratio() {
        let c = config(&[
            (ENV_TRACES_SAMPLER, "traceidratio"),
            (ENV_TRACES_SAMPLER_ARG, "0.25"),
        ])
        .unwrap();
        assert!(!c.sampler.parent_based);
        assert_eq!(c.sampler.root_ratio.get(), 0.25);
        let c = config(&[(ENV_TRACES_SAMPLER, "parentbased_always_off")]).unwrap();
        assert!(c.sampler.parent_based);
        assert_eq!(c.sampler.root_ratio, SampleRatio::NEVER);
    }

    #[test]
    fn unknown_exporter_and_protocol_are_rejected() {
        assert!(config(&[(ENV_TRACES_EXPORTER, "zipkin")])
            .unwrap_err()
            .to_string()
            .contains("OTEL_TRACES_EXPORTER \"zipkin\""));
        assert!(config(&[(ENV_OTLP_PROTOCOL, "http/json")]).is_err());
        assert!(config(&[(ENV_OTLP_ENDPOINT, "not a url")]).is_err());
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = config(&[(ENV_TRACES_EXPORTER, ""), (ENV_SERVICE_NAME, " ")]).unwrap();
        assert_eq!(c.exporter, TracesExporter::Otlp);
        assert_eq!(c.service_name(), "tracemesh");
    }

    #[test]
    fn service_name_env_wins_over_resource_attributes() {
        let c = config(&[
            (ENV_SERVICE_NAME, "checkout"),
            (
                ENV_RESOURCE_ATTRIBUTES,
                "service.name=other,team=pay%20ments,deployment.environment=prod",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.resource,
            vec![
                ("service.name".into(), "checkout".into()),
                ("team".into(), "pay ments".into()),
                ("deployment.environment".into(), "prod".into()),
            ]
        );
    }

    #[test]
    fn downward_api_fills_k8s_attributes_and_service_name_from_workload() {
        let c = config(&[
            (ENV_POD_NAME, "checkout-7d9f8b6c5-x2kqz"),
            (ENV_POD_NAMESPACE, "shop"),
            (ENV_NODE_NAME, "node-1"),
        ])
        .unwrap();
        assert_eq!(c.service_name(), "checkout");
        assert!(c
            .resource
            .contains(&("k8s.namespace.name".into(), "shop".into())));
        assert!(c
            .resource
            .contains(&("k8s.node.name".into(), "node-1".into())));
        assert!(c
            .resource
            .contains(&("k8s.pod.name".into(), "checkout-7d9f8b6c5-x2kqz".into())));
    }

    #[test]
    fn workload_names_strip_controller_suffixes() {
        assert_eq!(workload_of_pod("checkout-7d9f8b6c5-x2kqz"), "checkout");
        assert_eq!(workload_of_pod("my-api-5f4d8c7b9d-abcde"), "my-api");
        assert_eq!(workload_of_pod("db-0"), "db");
        assert_eq!(workload_of_pod("agent-x2kqz"), "agent");
        assert_eq!(workload_of_pod("standalone"), "standalone");
    }

    #[test]
    fn bsp_settings_are_read_and_batch_never_exceeds_queue() {
        let c = config(&[
            (ENV_BSP_SCHEDULE_DELAY, "100"),
            (ENV_BSP_MAX_QUEUE_SIZE, "64"),
        ])
        .unwrap();
        assert_eq!(c.batch.schedule_delay, Duration::from_millis(100));
        assert_eq!(c.batch.max_queue_size, 64);
        assert_eq!(c.batch.max_export_batch_size, 64);
        assert!(config(&[(ENV_BSP_MAX_QUEUE_SIZE, "0")]).is_err());
    }
}
