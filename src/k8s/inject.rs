//! The pod mutation: how the sidecar and the init container get into a pod, shared by
//! `tracemesh inject` (offline, YAML in and out) and the admission webhook (`webhook.rs`).
//!
//! [`inject_pod_spec`] is the one pure function that decides and mutates. It validates every
//! annotation before it touches anything, so an invalid value is an error and never a
//! half-mutated spec. [`inject_yaml`] (in `inject/yaml.rs`) is the offline path: it walks multi-document YAML,
//! finds each workload's pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! ReplicationController, Job, CronJob, and `List` items), deserializes only the template's
//! `metadata` and `spec` into k8s-openapi types, and writes back only what the mutation added:
//! the two containers (first in their lists) and our annotations. Every other field, known to
//! k8s-openapi or not, stays as it was. YAML comments are not kept (serde sees no comments).
//!
//! Like `linkerd inject`, the offline command injects every pod template it is given unless the
//! template (or the namespace, for the webhook) says `tracemesh.io/inject: disabled`; the
//! webhook sets [`InjectConfig::require_opt_in`] and injects only where a namespace or pod
//! annotation says `enabled`.
//!
//! Annotations (pod template wins over namespace):
//!
//! | annotation | values |
//! |---|---|
//! | `tracemesh.io/inject` | `enabled`, `disabled` |
//! | `tracemesh.io/sample-ratio` | a ratio in [0, 1] → `OTEL_TRACES_SAMPLER=parentbased_traceidratio` |
//! | `tracemesh.io/propagators` | `OTEL_PROPAGATORS` list (`tracecontext`, `b3`, `b3multi`) |
//! | `tracemesh.io/otlp-endpoint` | `http://` or `https://` URL → `OTEL_EXPORTER_OTLP_ENDPOINT` |
//! | `tracemesh.io/skip-inbound-ports`, `tracemesh.io/skip-outbound-ports` | comma-separated ports |
//! | `tracemesh.io/skip-outbound-cidrs` | comma-separated IPs or CIDRs |
//! | `tracemesh.io/config` | a ConfigMap in the pod's namespace with `sampling-rules.yaml` and `routes` → mounted at `/etc/tracemesh/config`, hot-reloaded |
//! | `tracemesh.io/trusted-cidrs` | comma-separated IPs or CIDRs whose force-trace header is honoured → `TRACEMESH_TRUSTED_CIDRS` |
//! | `tracemesh.io/retention-ring-spans` | records the deferred-sampling ring holds (1..=1048576) → `TRACEMESH_RETENTION_RING_SPANS` |
//! | `tracemesh.io/response-context` | `on` or `off` (the mesh's edge) → `TRACEMESH_RESPONSE_CONTEXT` |
//! | `tracemesh.io/access-log` | `json` or `off` → `TRACEMESH_ACCESS_LOG` |
//! | `tracemesh.io/debug-traces` | `off`, `local` or `on` (who may read `/debug/traces` on the admin port) → `TRACEMESH_DEBUG_TRACES` |
//!
//! Written by the mutation: `tracemesh.io/injected: "true"` on an injected template, and
//! `tracemesh.io/inject-skipped: <reason>` on one left alone. An already-injected template is not
//! touched at all, so injecting twice gives the same bytes as injecting once.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
        HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SecurityContext,
        Volume, VolumeMount,
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};

use crate::{
    config::{
        SampleRatio, ENV_ACCESS_LOG, ENV_ADMIN_LISTEN, ENV_DEBUG_TRACES, ENV_INBOUND_LISTEN,
        ENV_NODE_NAME, ENV_OTLP_ENDPOINT, ENV_OTLP_PROTOCOL, ENV_OUTBOUND_LISTEN, ENV_POD_NAME,
        ENV_POD_NAMESPACE, ENV_PROPAGATORS, ENV_RESPONSE_CONTEXT, ENV_RETENTION_RING_SPANS,
        ENV_ROUTES_FILE, ENV_SAMPLING_RULES, ENV_SERVICE_NAME, ENV_TRACES_SAMPLER,
        ENV_TRACES_SAMPLER_ARG, ENV_TRUSTED_CIDRS,
    },
    context::Propagators,
    k8s::init::DEFAULT_PROXY_UID,
};

mod yaml;

pub use self::yaml::{inject_yaml, run, InjectArgs, Report};

pub const ANNOTATION_INJECT: &str = "tracemesh.io/inject";
pub const ANNOTATION_SAMPLE_RATIO: &str = "tracemesh.io/sample-ratio";
pub const ANNOTATION_PROPAGATORS: &str = "tracemesh.io/propagators";
pub const ANNOTATION_OTLP_ENDPOINT: &str = "tracemesh.io/otlp-endpoint";
pub const ANNOTATION_SKIP_INBOUND_PORTS: &str = "tracemesh.io/skip-inbound-ports";
pub const ANNOTATION_SKIP_OUTBOUND_PORTS: &str = "tracemesh.io/skip-outbound-ports";
pub const ANNOTATION_SKIP_OUTBOUND_CIDRS: &str = "tracemesh.io/skip-outbound-cidrs";
pub const ANNOTATION_CONFIG: &str = "tracemesh.io/config";
pub const ANNOTATION_TRUSTED_CIDRS: &str = "tracemesh.io/trusted-cidrs";
pub const ANNOTATION_RETENTION_RING_SPANS: &str = "tracemesh.io/retention-ring-spans";
pub const ANNOTATION_RESPONSE_CONTEXT: &str = "tracemesh.io/response-context";
pub const ANNOTATION_ACCESS_LOG: &str = "tracemesh.io/access-log";
pub const ANNOTATION_DEBUG_TRACES: &str = "tracemesh.io/debug-traces";
/// Largest ring an annotation may ask for (about 670 MiB at 640 bytes a record).
pub const MAX_RETENTION_RING_SPANS: usize = 1 << 20;
/// The volume that carries the reloadable config's ConfigMap into the sidecar.
pub const CONFIG_VOLUME: &str = "tracemesh-config";
/// Where the sidecar sees that ConfigMap; its keys are the file names below.
pub const CONFIG_MOUNT: &str = "/etc/tracemesh/config";
pub const CONFIG_KEY_SAMPLING_RULES: &str = "sampling-rules.yaml";
pub const CONFIG_KEY_ROUTES: &str = "routes";
/// Written on an injected pod template.
pub const ANNOTATION_INJECTED: &str = "tracemesh.io/injected";
/// Written on a pod template left alone, with a [`SkipReason`].
pub const ANNOTATION_INJECT_SKIPPED: &str = "tracemesh.io/inject-skipped";

const ANNOTATION_PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// The sidecar's container name; its presence means "already injected".
pub const PROXY_CONTAINER: &str = "tracemesh-proxy";
/// The init container's name.
pub const INIT_CONTAINER: &str = "tracemesh-init";
/// The admin port's name, used by the probes (and by Prometheus scrape configs).
pub const ADMIN_PORT_NAME: &str = "tm-admin";
pub const INBOUND_PORT_NAME: &str = "tm-inbound";

/// The image for both containers unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/tracemesh/tracemesh:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_INBOUND_PORT: u16 = 4143;
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
pub const DEFAULT_ADMIN_PORT: u16 = 4191;

/// What the mutation adds when no annotation says otherwise (the chart's proxy defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Image of both containers; its entrypoint is the `tracemesh` binary.
    pub image: String,
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; unset leaves the proxy's own default.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_PROPAGATORS`; unset leaves the proxy's own default.
    pub propagators: Option<Propagators>,
    /// Root sampling ratio; unset leaves the proxy's default sampler.
    pub sample_ratio: Option<SampleRatio>,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<String>,
    /// The ConfigMap (in the pod's namespace) with the sampling rules and route templates;
    /// unset mounts nothing.
    pub config_map: Option<String>,
    /// `TRACEMESH_TRUSTED_CIDRS` for the sidecar.
    pub trusted_cidrs: Vec<String>,
    /// `imagePullPolicy` of both containers; unset leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// `--iptables` for the init container (e.g. `iptables-legacy`); unset uses its default.
    pub iptables: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` for the sidecar (`grpc`, `http/protobuf`).
    pub otlp_protocol: Option<String>,
    pub proxy_resources: ResourceRequirements,
    pub init_resources: ResourceRequirements,
    /// Add `prometheus.io/scrape|port|path` pod annotations for the admin port, unless the pod
    /// already has a `prometheus.io/scrape` annotation of its own (the app's metrics win).
    pub prometheus_annotations: bool,
    /// Inject only where a pod or namespace annotation says `enabled` (the webhook). Off for
    /// `tracemesh inject`, which injects whatever it is given unless it says `disabled`.
    pub require_opt_in: bool,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: DEFAULT_IMAGE.to_owned(),
            proxy_uid: DEFAULT_PROXY_UID,
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            otlp_endpoint: None,
            propagators: None,
            sample_ratio: None,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            config_map: None,
            trusted_cidrs: Vec::new(),
            image_pull_policy: None,
            iptables: None,
            otlp_protocol: None,
            proxy_resources: resources("100m", "64Mi", "1", "256Mi"),
            init_resources: resources("10m", "16Mi", "100m", "64Mi"),
            prometheus_annotations: false,
            require_opt_in: false,
        }
    }
}

/// Why a pod template was left alone; the value of `tracemesh.io/inject-skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `tracemesh.io/inject: disabled` on the pod or its namespace.
    Disabled,
    /// `hostNetwork: true`: iptables rules would redirect the node's traffic.
    HostNetwork,
    /// [`InjectConfig::require_opt_in`] and nothing said `enabled`.
    NotEnabled,
    /// The sidecar is already there (nothing is written, not even this reason).
    AlreadyInjected,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Disabled => "disabled",
            SkipReason::HostNetwork => "host-network",
            SkipReason::NotEnabled => "not-enabled",
            SkipReason::AlreadyInjected => "already-injected",
        }
    }
}

/// What [`inject_pod_spec`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(SkipReason),
}

/// Why injection failed. Nothing was mutated when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {key} {value:?}: {reason}")]
    InvalidAnnotation {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("the pod already has a volume named {name}, which the sidecar's config needs")]
    VolumeNameTaken { name: &'static str },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("document {document}: not valid YAML")]
    Parse {
        document: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {document} ({kind} {name:?}): pod template is not a valid PodTemplateSpec")]
    PodTemplate {
        document: usize,
        kind: String,
        name: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {document} ({kind} {name:?})")]
    Document {
        document: usize,
        kind: String,
        name: String,
        #[source]
        source: Box<InjectError>,
    },
    #[error("writing YAML")]
    Write(#[source] serde_yaml_ng::Error),
}

/// Settings resolved from annotations and config, all validated before any mutation.
struct Settings {
    otlp_endpoint: Option<String>,
    propagators: Option<Propagators>,
    sample_ratio: Option<SampleRatio>,
    skip_inbound_ports: Vec<u16>,
    skip_outbound_ports: Vec<u16>,
    skip_outbound_cidrs: Vec<String>,
    config_map: Option<String>,
    trusted_cidrs: Vec<String>,
    retention_ring_spans: Option<usize>,
    response_context: Option<bool>,
    access_log: Option<&'static str>,
    debug_traces: Option<&'static str>,
}

/// Injects the sidecar into one pod (or pod template): `meta` is the pod template's metadata
/// (its annotations are read, and ours written), `ns_annotations` the namespace's (the pod's
/// win), and `workload` the owning workload's name, which becomes `OTEL_SERVICE_NAME` (for a
/// bare Pod pass `None`: the proxy then derives the name from the pod name).
///
/// Idempotent: a template that already has [`PROXY_CONTAINER`] or `tracemesh.io/injected` is
/// returned untouched as `Skipped(AlreadyInjected)`. Other skips record their reason in
/// `tracemesh.io/inject-skipped` and change nothing else.
///
/// # Errors
/// [`InjectError::InvalidAnnotation`] when an annotation's value is invalid; `meta` and `spec`
/// are then unchanged.
pub fn inject_pod_spec(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    ns_annotations: &BTreeMap<String, String>,
    workload: Option<&str>,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    let empty = BTreeMap::new();
    let pod_annotations = meta.annotations.as_ref().unwrap_or(&empty);
    if pod_annotations.get(ANNOTATION_INJECTED).map(String::as_str) == Some("true")
        || spec.containers.iter().any(|c| c.name == PROXY_CONTAINER)
    {
        return Ok(Outcome::Skipped(SkipReason::AlreadyInjected));
    }
    let lookup = |key: &str| {
        pod_annotations
            .get(key)
            .or_else(|| ns_annotations.get(key))
            .map(|v| v.trim())
    };

    let enabled = match lookup(ANNOTATION_INJECT) {
        None => None,
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        Some(other) => {
            return Err(invalid(
                ANNOTATION_INJECT,
                other,
                "expected enabled or disabled",
            ));
        }
    };
    let skip = match enabled {
        Some(false) => Some(SkipReason::Disabled),
        _ if spec.host_network == Some(true) => Some(SkipReason::HostNetwork),
        None if config.require_opt_in => Some(SkipReason::NotEnabled),
        _ => None,
    };
    if let Some(reason) = skip {
        meta.annotations.get_or_insert_with(BTreeMap::new).insert(
            ANNOTATION_INJECT_SKIPPED.to_owned(),
            reason.as_str().to_owned(),
        );
        return Ok(Outcome::Skipped(reason));
    }

    let settings = resolve(&lookup, config)?;
    if settings.config_map.is_some()
        && spec
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|v| v.name == CONFIG_VOLUME)
    {
        return Err(InjectError::VolumeNameTaken {
            name: CONFIG_VOLUME,
        });
    }
    // Validated: from here on nothing fails.
    // Last among init containers: the app's own (migrations, wait-for-db) run before the
    // rules exist, so they keep direct network access (untraced) instead of being redirected
    // to a proxy that only starts with the regular containers.
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(init_container(config, &settings));
    spec.containers
        .insert(0, proxy_container(config, &settings, workload));
    if let Some(name) = &settings.config_map {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: CONFIG_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                // A pod starts without its ConfigMap (the proxy uses its defaults, says so
                // once, and loads the files when they appear).
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.remove(ANNOTATION_INJECT_SKIPPED);
    annotations.insert(ANNOTATION_INJECTED.to_owned(), "true".to_owned());
    if config.prometheus_annotations && !annotations.contains_key(ANNOTATION_PROMETHEUS_SCRAPE) {
        for (key, value) in [
            (ANNOTATION_PROMETHEUS_SCRAPE, "true".to_owned()),
            ("prometheus.io/port", config.admin_port.to_string()),
            ("prometheus.io/path", "/metrics".to_owned()),
        ] {
            annotations.insert(key.to_owned(), value);
        }
    }
    Ok(Outcome::Injected)
}

/// The config volume the mutation added, if it added one (both writers copy it out).
pub(crate) fn added_volume(spec: &PodSpec) -> Option<&Volume> {
    spec.volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == CONFIG_VOLUME)
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> InjectError {
    InjectError::InvalidAnnotation {
        key,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn resolve<'a>(
    lookup: &impl Fn(&str) -> Option<&'a str>,
    config: &InjectConfig,
) -> Result<Settings, InjectError> {
    let otlp_endpoint = match lookup(ANNOTATION_OTLP_ENDPOINT) {
        None => config.otlp_endpoint.clone(),
        Some(v) => {
            Some(parse_endpoint(v).map_err(|reason| invalid(ANNOTATION_OTLP_ENDPOINT, v, reason))?)
        }
    };
    let propagators = match lookup(ANNOTATION_PROPAGATORS) {
        None => config.propagators,
        Some(v) => Some(
            Propagators::parse(v).map_err(|e| invalid(ANNOTATION_PROPAGATORS, v, e.to_string()))?,
        ),
    };
    let sample_ratio = match lookup(ANNOTATION_SAMPLE_RATIO) {
        None => config.sample_ratio,
        Some(v) => Some(
            v.parse::<SampleRatio>()
                .map_err(|e| invalid(ANNOTATION_SAMPLE_RATIO, v, e))?,
        ),
    };
    let ports = |key: &'static str, default: &[u16]| -> Result<Vec<u16>, InjectError> {
        match lookup(key) {
            None => Ok(default.to_vec()),
            Some(v) => split_list(v)
                .map(|p| match p.parse::<u16>() {
                    Ok(n) if n != 0 => Ok(n),
                    _ => Err(invalid(key, v, format!("{p:?} is not a port in 1..=65535"))),
                })
                .collect(),
        }
    };
    let skip_inbound_ports = ports(ANNOTATION_SKIP_INBOUND_PORTS, &config.skip_inbound_ports)?;
    let skip_outbound_ports = ports(ANNOTATION_SKIP_OUTBOUND_PORTS, &config.skip_outbound_ports)?;
    let cidrs = |key: &'static str, default: &[String]| -> Result<Vec<String>, InjectError> {
        match lookup(key) {
            None => Ok(default.to_vec()),
            Some(v) => split_list(v)
                .map(|c| {
                    check_cidr(c)
                        .map(|()| c.to_owned())
                        .map_err(|reason| invalid(key, v, reason))
                })
                .collect(),
        }
    };
    let skip_outbound_cidrs = cidrs(ANNOTATION_SKIP_OUTBOUND_CIDRS, &config.skip_outbound_cidrs)?;
    let trusted_cidrs = cidrs(ANNOTATION_TRUSTED_CIDRS, &config.trusted_cidrs)?;
    let retention_ring_spans = match lookup(ANNOTATION_RETENTION_RING_SPANS) {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_RETENTION_RING_SPANS).contains(&n) => Some(n),
            _ => {
                return Err(invalid(
                    ANNOTATION_RETENTION_RING_SPANS,
                    v,
                    format!("expected a whole number in 1..={MAX_RETENTION_RING_SPANS}"),
                ))
            }
        },
    };
    let response_context = match lookup(ANNOTATION_RESPONSE_CONTEXT) {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(v) => {
            return Err(invalid(
                ANNOTATION_RESPONSE_CONTEXT,
                v,
                "expected on or off",
            ))
        }
    };
    let access_log = match lookup(ANNOTATION_ACCESS_LOG) {
        None => None,
        Some("json") => Some("json"),
        Some("off") => Some("off"),
        Some(v) => return Err(invalid(ANNOTATION_ACCESS_LOG, v, "expected json or off")),
    };
    let debug_traces = match lookup(ANNOTATION_DEBUG_TRACES) {
        None => None,
        Some("on") => Some("on"),
        Some("local") => Some("local"),
        Some("off") => Some("off"),
        Some(v) => {
            return Err(invalid(
                ANNOTATION_DEBUG_TRACES,
                v,
                "expected off, local or on",
            ))
        }
    };
    let config_map = match lookup(ANNOTATION_CONFIG) {
        None => config.config_map.clone(),
        Some(v) => Some(check_config_map_name(v).map_err(|r| invalid(ANNOTATION_CONFIG, v, r))?),
    };
    Ok(Settings {
        otlp_endpoint,
        propagators,
        sample_ratio,
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs,
        config_map,
        trusted_cidrs,
        retention_ring_spans,
        response_context,
        access_log,
        debug_traces,
    })
}

/// A ConfigMap name: a DNS subdomain (RFC 1123), as the API server requires.
pub fn check_config_map_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(v.to_owned())
    } else {
        Err("not a ConfigMap name (lowercase RFC 1123 subdomain)".to_owned())
    }
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The same check `tracemesh init --skip-outbound-cidrs` makes, so an annotation that passes
/// here cannot make the init container fail at pod start.
fn check_cidr(s: &str) -> Result<(), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len {
        "" => Ok(()),
        len if !len.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{s:?}: prefix length must be 0..={max}"))
        }
        len => match len.parse::<u8>() {
            Ok(n) if n <= max => Ok(()),
            _ => Err(format!("{s:?}: prefix length must be 0..={max}")),
        },
    }
}

/// Parses an OTLP endpoint: an absolute `http`/`https` URI with a host.
pub fn parse_endpoint(v: &str) -> Result<String, String> {
    let uri: http::Uri = v.parse().map_err(|_| "not a URL".to_owned())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(v.to_owned()),
        _ => Err("expected an http:// or https:// URL with a host".to_owned()),
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn resources(
    cpu_request: &str,
    mem_request: &str,
    cpu_limit: &str,
    mem_limit: &str,
) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q(cpu_request)),
            ("memory".to_owned(), q(mem_request)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), q(cpu_limit)),
            ("memory".to_owned(), q(mem_limit)),
        ])),
        ..Default::default()
    }
}

fn init_container(config: &InjectConfig, s: &Settings) -> Container {
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".to_owned(),
        config.proxy_uid.to_string(),
        "--inbound-port".to_owned(),
        config.inbound_port.to_string(),
        "--outbound-port".to_owned(),
        config.outbound_port.to_string(),
        "--admin-port".to_owned(),
        config.admin_port.to_string(),
    ];
    if let Some(binary) = &config.iptables {
        args.push("--iptables".to_owned());
        args.push(binary.clone());
    }
    for (flag, list) in [
        ("--skip-inbound-ports", join(&s.skip_inbound_ports)),
        ("--skip-outbound-ports", join(&s.skip_outbound_ports)),
        ("--skip-outbound-cidrs", join(&s.skip_outbound_cidrs)),
    ] {
        if !list.is_empty() {
            args.push(flag.to_owned());
            args.push(list);
        }
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(args),
        // iptables needs root and NET_ADMIN/NET_RAW in the pod's network namespace; nothing else.
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        resources: Some(config.init_resources.clone()),
        ..Default::default()
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn proxy_container(config: &InjectConfig, s: &Settings, workload: Option<&str>) -> Container {
    let mut env_vars = vec![
        env(
            ENV_INBOUND_LISTEN,
            format!("0.0.0.0:{}", config.inbound_port),
        ),
        env(
            ENV_OUTBOUND_LISTEN,
            format!("127.0.0.1:{}", config.outbound_port),
        ),
        env(ENV_ADMIN_LISTEN, format!("0.0.0.0:{}", config.admin_port)),
        field_env(ENV_POD_NAME, "metadata.name"),
        field_env(ENV_POD_NAMESPACE, "metadata.namespace"),
        field_env(ENV_NODE_NAME, "spec.nodeName"),
    ];
    if let Some(w) = workload {
        env_vars.push(env(ENV_SERVICE_NAME, w.to_owned()));
    }
    if let Some(e) = &s.otlp_endpoint {
        env_vars.push(env(ENV_OTLP_ENDPOINT, e.clone()));
    }
    if let Some(p) = &config.otlp_protocol {
        env_vars.push(env(ENV_OTLP_PROTOCOL, p.clone()));
    }
    if let Some(p) = s.propagators {
        env_vars.push(env(ENV_PROPAGATORS, p.to_string()));
    }
    if let Some(r) = s.sample_ratio {
        env_vars.push(env(
            ENV_TRACES_SAMPLER,
            "parentbased_traceidratio".to_owned(),
        ));
        env_vars.push(env(ENV_TRACES_SAMPLER_ARG, r.get().to_string()));
    }
    if !s.trusted_cidrs.is_empty() {
        env_vars.push(env(ENV_TRUSTED_CIDRS, join(&s.trusted_cidrs)));
    }
    if let Some(n) = s.retention_ring_spans {
        env_vars.push(env(ENV_RETENTION_RING_SPANS, n.to_string()));
    }
    if let Some(on) = s.response_context {
        env_vars.push(env(
            ENV_RESPONSE_CONTEXT,
            if on { "on" } else { "off" }.to_owned(),
        ));
    }
    if let Some(v) = s.access_log {
        env_vars.push(env(ENV_ACCESS_LOG, v.to_owned()));
    }
    if let Some(v) = s.debug_traces {
        env_vars.push(env(ENV_DEBUG_TRACES, v.to_owned()));
    }
    let mut volume_mounts = None;
    if s.config_map.is_some() {
        env_vars.push(env(
            ENV_SAMPLING_RULES,
            format!("{CONFIG_MOUNT}/{CONFIG_KEY_SAMPLING_RULES}"),
        ));
        env_vars.push(env(
            ENV_ROUTES_FILE,
            format!("{CONFIG_MOUNT}/{CONFIG_KEY_ROUTES}"),
        ));
        volume_mounts = Some(vec![VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: CONFIG_MOUNT.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]);
    }
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec!["proxy".to_owned()]),
        env: Some(env_vars),
        ports: Some(vec![
            port(INBOUND_PORT_NAME, config.inbound_port),
            port(ADMIN_PORT_NAME, config.admin_port),
        ]),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(config.proxy_uid)),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(config.proxy_resources.clone()),
        readiness_probe: Some(http_probe("/ready")),
        liveness_probe: Some(http_probe("/live")),
        volume_mounts,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
