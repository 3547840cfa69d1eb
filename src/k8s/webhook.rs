//! `tracemesh webhook`: the mutating admission webhook that injects the sidecar into new pods.
//!
//! The API server POSTs an `AdmissionReview` v1 to `/mutate` over TLS; the answer carries a
//! JSON patch made by [`mutate`] from the same [`inject_pod_spec`] that `tracemesh inject` uses.
//! The patch is computed whole before it is sent, from validated settings, so a pod gets either
//! the complete injection or nothing.
//!
//! Opt-in: the nearest `tracemesh.io/inject` decides: the pod's annotation, else the
//! namespace's annotation, else the namespace's label; `enabled` injects, `disabled` or nothing
//! leaves the pod alone. Namespaces are read per review (a metadata `get` served from the API
//! server's cache). With `--namespace-lookup=false` the webhook trusts the
//! MutatingWebhookConfiguration's `namespaceSelector`: every pod it is asked about is injected
//! unless the pod says `disabled`.
//!
//! When a pod cannot be injected (an invalid annotation, an undecodable pod, the namespace
//! lookup failing, or a namespace whose Pod Security level would reject the init container's
//! `NET_ADMIN`) the default answer is `allowed: true` with a warning that `kubectl` prints,
//! and no patch: the pod starts without a sidecar rather than not at all. `--on-error=reject`
//! denies it instead. A review that is not an `AdmissionReview` v1 at all gets HTTP 400 with the
//! reason.
//!
//! The serving certificate is re-read from its files every `--tls-reload-interval`
//! ([`crate::tls::CertStore`]); cert-manager or a replaced Secret rotate it without a restart.
//! With `--tls-secret` instead, the webhook keeps its own CA and certificate in a Secret and the
//! CA in the configuration's `caBundle` ([`bootstrap`]), for installs without either.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::{
    api::core::v1::{Container, Namespace, PodSpec},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::core::{
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    DynamicObject,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::inject::{
    inject_pod_spec, parse_endpoint, InjectConfig, InjectError, Outcome, SkipReason,
    INIT_CONTAINER, PROXY_CONTAINER,
};
use crate::{
    config::SampleRatio, context::Propagators, k8s::init::DEFAULT_PROXY_UID, proxy::until_shutdown,
    tls,
};

/// The namespace label with which Pod Security admission enforces a level.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// Reviews larger than this are refused with 413. The API server's own request limit is 3 MiB.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;
/// What of an oversized review is still read, and for how long, before the 413 (see
/// [`read_review`]).
const OVERSIZED_DRAIN_BYTES: usize = 16 << 20;
const OVERSIZED_DRAIN_TIME: Duration = Duration::from_secs(2);
/// Each namespace lookup is bounded, well inside the webhook's own `timeoutSeconds`.
const NAMESPACE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request, body included, must arrive and be answered within this (the API server
/// gives up after the webhook's timeoutSeconds, at most 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Streams per HTTP/2 connection: the API server sends a few at a time.
const H2_MAX_STREAMS: u32 = 8;
/// Reviews decoded at once, over all connections: each may hold up to [`MAX_REVIEW_BYTES`].
const MAX_IN_FLIGHT_REVIEWS: usize = 32;
/// Open connections at most. The API server keeps a few; the rest of the pod network can reach
/// the port too, and each connection holds a task and TLS state.
const MAX_CONNECTIONS: usize = 512;

/// What to answer when a pod cannot be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Admit the pod without the sidecar, with a warning.
    Allow,
    /// Deny the pod with the reason.
    Reject,
}

#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address of the TLS listener.
    #[arg(long, env = "TRACEMESH_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain of the serving certificate.
    #[arg(
        long,
        env = "TRACEMESH_WEBHOOK_TLS_CERT",
        required_unless_present = "tls_secret",
        conflicts_with = "tls_secret",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "TRACEMESH_WEBHOOK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Instead of certificate files: keep a CA and serving certificate in this
    /// `kubernetes.io/tls` Secret of the webhook's namespace, generating them when missing,
    /// and set the webhook configuration's caBundle to the CA (plain manifests installs).
    #[arg(long, env = "TRACEMESH_WEBHOOK_TLS_SECRET", requires_all = ["webhook_config", "service", "namespace"])]
    pub tls_secret: Option<String>,
    /// With --tls-secret: the MutatingWebhookConfiguration whose caBundle is kept.
    #[arg(long, env = "TRACEMESH_WEBHOOK_CONFIG")]
    pub webhook_config: Option<String>,
    /// With --tls-secret: the webhook's Service (the certificate's DNS names).
    #[arg(long, env = "TRACEMESH_WEBHOOK_SERVICE")]
    pub service: Option<String>,
    /// With --tls-secret: the webhook's own namespace (the downward API's metadata.namespace).
    #[arg(long, env = "TRACEMESH_POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// With --tls-secret: how often the Secret and the caBundle are checked.
    #[arg(long, env = "TRACEMESH_WEBHOOK_TLS_SECRET_RESYNC", default_value = "60s", value_parser = parse_interval)]
    pub tls_secret_resync: Duration,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "TRACEMESH_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub tls_reload_interval: Duration,
    /// After SIGTERM: how long to report not ready but keep answering, while the API server
    /// still has this replica's endpoint. Then the listener closes.
    #[arg(long, env = "TRACEMESH_WEBHOOK_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// What to answer for a pod that cannot be injected.
    #[arg(
        long,
        env = "TRACEMESH_WEBHOOK_ON_ERROR",
        value_enum,
        default_value = "allow"
    )]
    pub on_error: OnError,
    /// Read namespace labels and annotations from the API server (in-cluster config or
    /// KUBECONFIG). Off: the namespaceSelector alone decides, and every pod sent is injected
    /// unless it says `disabled`.
    #[arg(long, env = "TRACEMESH_WEBHOOK_NAMESPACE_LOOKUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub namespace_lookup: bool,
    #[command(flatten)]
    pub inject: InjectDefaults,
}

/// Defaults for every injected pod (the chart's `<release>-proxy-config` ConfigMap sets these
/// through the environment). Empty values mean "not set".
#[derive(Debug, clap::Args)]
pub struct InjectDefaults {
    #[arg(long = "image", env = "TRACEMESH_INJECT_IMAGE", default_value = super::inject::DEFAULT_IMAGE, value_parser = non_empty)]
    pub image: String,
    #[arg(long = "image-pull-policy", env = "TRACEMESH_INJECT_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never", ""])]
    pub image_pull_policy: Option<String>,
    #[arg(long = "proxy-uid", env = "TRACEMESH_INJECT_PROXY_UID", default_value_t = DEFAULT_PROXY_UID, value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_uid: u32,
    #[arg(long = "inbound-port", env = "TRACEMESH_INJECT_INBOUND_PORT", default_value_t = super::inject::DEFAULT_INBOUND_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,
    #[arg(long = "outbound-port", env = "TRACEMESH_INJECT_OUTBOUND_PORT", default_value_t = super::inject::DEFAULT_OUTBOUND_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,
    #[arg(long = "admin-port", env = "TRACEMESH_INJECT_ADMIN_PORT", default_value_t = super::inject::DEFAULT_ADMIN_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: u16,
    /// Comma-separated.
    #[arg(long = "skip-inbound-ports", env = "TRACEMESH_INJECT_SKIP_INBOUND_PORTS", default_value = "", value_parser = parse_ports)]
    pub skip_inbound_ports: Ports,
    /// Comma-separated.
    #[arg(long = "skip-outbound-ports", env = "TRACEMESH_INJECT_SKIP_OUTBOUND_PORTS", default_value = "", value_parser = parse_ports)]
    pub skip_outbound_ports: Ports,
    /// Comma-separated IPs or CIDRs.
    #[arg(long = "skip-outbound-cidrs", env = "TRACEMESH_INJECT_SKIP_OUTBOUND_CIDRS", default_value = "", value_parser = parse_cidrs)]
    pub skip_outbound_cidrs: String,
    #[arg(long = "iptables", env = "TRACEMESH_INJECT_IPTABLES")]
    pub iptables: Option<String>,
    #[arg(long = "otlp-endpoint", env = "TRACEMESH_INJECT_OTLP_ENDPOINT", value_parser = parse_optional_endpoint)]
    pub otlp_endpoint: Option<String>,
    #[arg(long = "otlp-protocol", env = "TRACEMESH_INJECT_OTLP_PROTOCOL", value_parser = ["grpc", "http/protobuf", ""])]
    pub otlp_protocol: Option<String>,
    #[arg(long = "sample-ratio", env = "TRACEMESH_INJECT_SAMPLE_RATIO")]
    pub sample_ratio: Option<SampleRatio>,
    /// The ConfigMap (in each pod's namespace) with `sampling-rules.yaml` and `routes` that the
    /// sidecar mounts and reloads, unless a `tracemesh.io/config` annotation names another one.
    #[arg(long = "config-map", env = "TRACEMESH_INJECT_CONFIG_MAP", value_parser = parse_optional_config_map)]
    pub config_map: Option<String>,
    #[arg(long = "propagators", env = "TRACEMESH_INJECT_PROPAGATORS", value_parser = |s: &str| Propagators::parse(s).map_err(|e| e.to_string()))]
    pub propagators: Option<Propagators>,
    /// `resources` of the sidecar, as JSON (`{"requests":{"cpu":"10m"},"limits":{...}}`).
    #[arg(long = "proxy-resources", env = "TRACEMESH_INJECT_PROXY_RESOURCES", value_parser = parse_resources)]
    pub proxy_resources: Option<ResourcesArg>,
    /// `resources` of the init container, as JSON.
    #[arg(long = "init-resources", env = "TRACEMESH_INJECT_INIT_RESOURCES", value_parser = parse_resources)]
    pub init_resources: Option<ResourcesArg>,
    /// Add prometheus.io/scrape, port and path annotations for the sidecar's admin port.
    #[arg(long = "prometheus-annotations", env = "TRACEMESH_INJECT_PROMETHEUS_ANNOTATIONS", default_value_t = false, action = clap::ArgAction::Set)]
    pub prometheus_annotations: bool,
}

/// A ConfigMap name, or empty for none (the chart's way of leaving it unset).
fn parse_optional_config_map(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    crate::k8s::inject::check_config_map_name(s.trim())
}

/// A parsed port list (a newtype so clap does not treat it as a repeated argument).
#[derive(Debug, Clone, Default)]
pub struct Ports(pub Vec<u16>);

/// Parsed `ResourceRequirements` (a newtype for clap, as [`Ports`]).
#[derive(Debug, Clone)]
pub struct ResourcesArg(pub k8s_openapi::api::core::v1::ResourceRequirements);

/// A period for a repeating check: at least 100 ms (zero would spin or panic).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is shorter than 100ms"));
    }
    Ok(d)
}

fn parse_ports(s: &str) -> Result<Ports, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(format!("{p:?} is not a port in 1..=65535")),
        })
        .collect::<Result<_, _>>()
        .map(Ports)
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// Checked as `tracemesh init` checks them, so a value that starts the webhook cannot make
/// every injected init container fail.
fn parse_cidrs(s: &str) -> Result<String, String> {
    for cidr in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        crate::k8s::init::parse_cidr(cidr)?;
    }
    Ok(s.to_owned())
}

fn parse_optional_endpoint(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Ok(String::new())
    } else {
        parse_endpoint(s)
    }
}

fn parse_resources(s: &str) -> Result<ResourcesArg, String> {
    let r: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_str(s).map_err(|e| format!("not a ResourceRequirements object: {e}"))?;
    // Quantities are strings to serde; a typo would only show up when the pod is rejected.
    for (name, q) in r.requests.iter().chain(r.limits.iter()).flatten() {
        check_quantity(q).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(ResourcesArg(r))
}

/// The Kubernetes quantity grammar: a decimal number, then an optional binary (`Ki`…`Ei`),
/// decimal (`n u m k M G T P E`) or exponent (`e3`) suffix.
fn check_quantity(q: &Quantity) -> Result<(), String> {
    let s = q.0.as_str();
    let digits = s.trim_start_matches(['+', '-']);
    let end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .and_then(|e| e.trim_start_matches(['+', '-']).parse::<u32>().ok())
        .is_some();
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a quantity"))
    }
}

impl WebhookArgs {
    /// The injection config the webhook applies: the defaults, with opt-in required when
    /// namespaces are looked up.
    pub fn inject_config(&self) -> InjectConfig {
        let d = &self.inject;
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let defaults = InjectConfig::default();
        InjectConfig {
            image: d.image.clone(),
            image_pull_policy: non_empty(&d.image_pull_policy),
            proxy_uid: d.proxy_uid,
            inbound_port: d.inbound_port,
            outbound_port: d.outbound_port,
            admin_port: d.admin_port,
            skip_inbound_ports: d.skip_inbound_ports.0.clone(),
            skip_outbound_ports: d.skip_outbound_ports.0.clone(),
            skip_outbound_cidrs: d
                .skip_outbound_cidrs
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            iptables: non_empty(&d.iptables),
            otlp_endpoint: non_empty(&d.otlp_endpoint),
            otlp_protocol: non_empty(&d.otlp_protocol),
            sample_ratio: d.sample_ratio,
            config_map: non_empty(&d.config_map),
            trusted_cidrs: Vec::new(),
            propagators: d.propagators,
            proxy_resources: d
                .proxy_resources
                .clone()
                .map_or(defaults.proxy_resources, |r| r.0),
            init_resources: d
                .init_resources
                .clone()
                .map_or(defaults.init_resources, |r| r.0),
            prometheus_annotations: d.prometheus_annotations,
            require_opt_in: self.namespace_lookup,
        }
    }
}

/// Why a pod was admitted without the sidecar (or denied, with `--on-error=reject`).
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error("the pod in the review is not a valid Pod: {0}")]
    Decode(#[source] serde_json::Error),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("looking up namespace {namespace:?}: {reason}")]
    Namespace { namespace: String, reason: String },
    #[error(
        "the namespace enforces Pod Security {level:?}, which rejects the init container's \
         NET_ADMIN and NET_RAW capabilities: label it pod-security.kubernetes.io/enforce=privileged \
         to inject, or opt it out"
    )]
    PodSecurity { level: String },
}

/// What [`mutate`] decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub outcome: Outcome,
    /// RFC 6902 operations against the pod as the API server sent it; empty for "no change".
    pub patch: Vec<Value>,
}

/// Decides and computes the patch for one pod: `pod` is the object from the review as JSON,
/// `namespace` the `tracemesh.io/*` labels and annotations of its namespace.
///
/// # Errors
/// The pod does not decode, or an annotation is invalid. No patch exists in that case.
pub fn mutate(
    pod: &Value,
    namespace: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Mutation, MutateError> {
    let mut meta: ObjectMeta = match pod.get("metadata") {
        Some(m) => serde_json::from_value(m.clone()).map_err(MutateError::Decode)?,
        None => ObjectMeta::default(),
    };
    let mut spec: PodSpec = serde_json::from_value(pod.get("spec").cloned().unwrap_or(json!({})))
        .map_err(MutateError::Decode)?;
    let before = meta.annotations.clone().unwrap_or_default();
    let workload = workload_name(&meta);
    let outcome = inject_pod_spec(&mut meta, &mut spec, namespace, workload.as_deref(), config)?;
    // Pod Security admission runs after us: a pod we inject there would be rejected outright,
    // where without the sidecar it starts.
    if let (Outcome::Injected, Some(level)) = (outcome, namespace.get(POD_SECURITY_ENFORCE)) {
        if matches!(level.as_str(), "baseline" | "restricted") {
            return Err(MutateError::PodSecurity {
                level: level.clone(),
            });
        }
    }
    let mut patch = Vec::new();
    // A pod nobody opted in is left exactly as it is: every pod in a selected namespace passes
    // through here, and most of them are not ours to annotate.
    if matches!(
        outcome,
        Outcome::Skipped(SkipReason::AlreadyInjected | SkipReason::NotEnabled)
    ) {
        return Ok(Mutation { outcome, patch });
    }
    let after = meta.annotations.unwrap_or_default();
    let has_annotations = pod
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object);
    if !has_annotations {
        if pod.get("metadata").is_none() {
            patch.push(json!({"op": "add", "path": "/metadata", "value": {}}));
        }
        patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": after}));
    } else {
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            let path = format!("/metadata/annotations/{}", escape(key));
            patch.push(json!({"op": "remove", "path": path}));
        }
        for (key, value) in after.iter().filter(|(k, v)| before.get(*k) != Some(*v)) {
            let path = format!("/metadata/annotations/{}", escape(key));
            patch.push(json!({"op": "add", "path": path, "value": value}));
        }
    }
    if outcome == Outcome::Injected {
        let added = |list: &[Container], name: &str| {
            let c = list.iter().find(|c| c.name == name).expect("just added");
            serde_json::to_value(c).expect("a Container serializes")
        };
        let init = added(
            spec.init_containers.as_deref().unwrap_or_default(),
            INIT_CONTAINER,
        );
        let proxy = added(&spec.containers, PROXY_CONTAINER);
        if pod
            .pointer("/spec/initContainers")
            .is_some_and(Value::is_array)
        {
            patch.push(json!({"op": "add", "path": "/spec/initContainers/-", "value": init}));
        } else {
            patch.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}));
        }
        patch.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
        if let Some(volume) = crate::k8s::inject::added_volume(&spec) {
            let volume = serde_json::to_value(volume).expect("a Volume serializes");
            if pod.pointer("/spec/volumes").is_some_and(Value::is_array) {
                patch.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
            } else {
                patch.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
            }
        }
    }
    Ok(Mutation { outcome, patch })
}

/// RFC 6901: `~` is `~0`, `/` is `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The owning workload's name, as `tracemesh inject` names a workload's pods: a Deployment's
/// pods belong to a ReplicaSet `<deployment>-<pod-template-hash>`; StatefulSets, DaemonSets,
/// Jobs and ReplicationControllers own their pods directly. A bare pod has none (the proxy then
/// derives the name from the pod's).
fn workload_name(meta: &ObjectMeta) -> Option<String> {
    let owner = meta
        .owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            Some(
                hash.and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-'))
                    .unwrap_or(&owner.name)
                    .to_owned(),
            )
        }
        "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => Some(owner.name.clone()),
        _ => None,
    }
}

/// Where namespace labels and annotations come from.
#[derive(Clone)]
pub enum Namespaces {
    /// The API server.
    Kube(kube::Client),
    /// Nowhere: the namespaceSelector decided.
    Selector,
}

impl Namespaces {
    /// The `tracemesh.io/*` labels and annotations of `name`, annotations winning.
    async fn lookup(&self, name: &str) -> Result<BTreeMap<String, String>, MutateError> {
        let Namespaces::Kube(client) = self else {
            return Ok(BTreeMap::new());
        };
        let api = kube::Api::<Namespace>::all(client.clone());
        let err = |reason: String| MutateError::Namespace {
            namespace: name.to_owned(),
            reason,
        };
        let ns = tokio::time::timeout(
            NAMESPACE_LOOKUP_TIMEOUT,
            // Metadata only, and resourceVersion=0: the API server answers from its watch
            // cache instead of a quorum read from etcd, once per pod created.
            api.get_metadata_with(name, &kube::api::GetParams::any()),
        )
        .await
        .map_err(|_| err(format!("no answer within {NAMESPACE_LOOKUP_TIMEOUT:?}")))?
        .map_err(|e| match e {
            // The API server's own words ("namespaces \"x\" not found"), not kube's dump.
            kube::Error::Api(status) => err(format!("{} ({})", status.message, status.code)),
            other => err(other.to_string()),
        })?;
        let ours = |m: Option<BTreeMap<String, String>>| {
            m.into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("tracemesh.io/"))
        };
        let enforce = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_SECURITY_ENFORCE))
            .cloned();
        let mut merged: BTreeMap<String, String> = ours(ns.metadata.labels).collect();
        merged.extend(ours(ns.metadata.annotations));
        if let Some(level) = enforce {
            merged.insert(POD_SECURITY_ENFORCE.to_owned(), level);
        }
        Ok(merged)
    }
}

/// The admission logic behind `/mutate`, without the transport.
pub struct Webhook {
    config: InjectConfig,
    on_error: OnError,
    namespaces: Namespaces,
    in_flight: tokio::sync::Semaphore,
    /// Set once SIGTERM arrived: `/ready` answers 503 so the endpoint is removed.
    draining: AtomicBool,
    /// With `--tls-secret`: whether the webhook configuration trusts the CA we serve from.
    trusted: AtomicBool,
}

/// A request that is not a usable `AdmissionReview` v1; answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected an admission.k8s.io/v1 AdmissionReview, got {api_version:?} {kind:?}")]
    Version { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has no uid")]
    NoUid,
}

impl Webhook {
    pub fn new(config: InjectConfig, on_error: OnError, namespaces: Namespaces) -> Self {
        Webhook {
            config,
            on_error,
            namespaces,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT_REVIEWS),
            draining: AtomicBool::new(false),
            trusted: AtomicBool::new(true),
        }
    }

    /// Ready to be sent reviews: not draining, and trusted by the webhook configuration.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.trusted.load(Ordering::Relaxed)
    }

    /// Answers one review body.
    ///
    /// # Errors
    /// The body is not an `AdmissionReview` v1 with a request.
    pub async fn review(&self, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, ReviewError> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
        if review.types.api_version != kube::core::admission::META_API_VERSION_V1
            || review.types.kind != kube::core::admission::META_KIND
        {
            return Err(ReviewError::Version {
                api_version: review.types.api_version,
                kind: review.types.kind,
            });
        }
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| ReviewError::NoRequest)?;
        if request.uid.is_empty() {
            return Err(ReviewError::NoUid);
        }
        Ok(self.answer(&request).await.into_review())
    }

    async fn answer(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        let (true, Operation::Create, Some(object)) = (is_pod, &request.operation, &request.object)
        else {
            return response;
        };
        let pod_name = object
            .metadata
            .name
            .clone()
            .or_else(|| object.metadata.generate_name.clone())
            .unwrap_or_default();
        let namespace = request.namespace.clone().unwrap_or_default();
        let result = async {
            let pod = serde_json::to_value(object).map_err(MutateError::Decode)?;
            let ns = self.namespaces.lookup(&namespace).await?;
            mutate(&pod, &ns, &self.config)
        }
        .await;
        match result {
            Ok(Mutation { outcome, patch }) => {
                tracing::info!(
                    namespace,
                    pod = pod_name,
                    outcome = outcome_str(outcome),
                    dry_run = request.dry_run,
                    "reviewed"
                );
                if patch.is_empty() {
                    return response;
                }
                let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch))
                    .expect("our operations are RFC 6902");
                response.with_patch(patch).expect("a JSON patch serializes")
            }
            Err(e) => {
                let reason = format!(
                    "tracemesh: sidecar not injected: {:#}",
                    anyhow::Error::from(e)
                );
                tracing::warn!(namespace, pod = pod_name, on_error = ?self.on_error, "{reason}");
                match self.on_error {
                    OnError::Allow => {
                        let mut response = response;
                        response.warnings = Some(vec![reason]);
                        response
                    }
                    OnError::Reject => response.deny(reason),
                }
            }
        }
    }
}

fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Injected => "injected",
        Outcome::Skipped(why) => why.as_str(),
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json_response(status: StatusCode, review: &AdmissionReview<DynamicObject>) -> Response<Body> {
    let body = serde_json::to_vec(review).expect("an AdmissionReview serializes");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

enum ReadError {
    TooLarge,
    Body(String),
}

/// Reads a review of at most [`MAX_REVIEW_BYTES`]. Of a larger one, up to
/// [`OVERSIZED_DRAIN_BYTES`] more are read and thrown away, for at most
/// [`OVERSIZED_DRAIN_TIME`], before the 413 goes: a connection closed with bytes unread is
/// reset, and the reset can destroy the answer before the client has read it, so that the
/// client sees a broken pipe instead of the 413 (nginx's "lingering close").
async fn read_review<B>(body: B) -> Result<Bytes, ReadError>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut review = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: a review has none that matter
        };
        if review.len() + data.remaining() > MAX_REVIEW_BYTES {
            let mut drained = data.remaining();
            let _ = tokio::time::timeout(OVERSIZED_DRAIN_TIME, async {
                while drained < OVERSIZED_DRAIN_BYTES {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            drained += frame.data_ref().map_or(0, |d| d.remaining());
                        }
                        _ => break,
                    }
                }
            })
            .await;
            return Err(ReadError::TooLarge);
        }
        review.put(data);
    }
    Ok(review.freeze())
}

/// Routes one HTTP request: `POST /mutate`, `GET /ready`, `GET /live`.
pub async fn handle<B>(webhook: &Webhook, req: Request<B>) -> Response<Body>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") if webhook.is_ready() => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::POST, "/mutate") => {
            let started = Instant::now();
            let _permit = webhook
                .in_flight
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let body = match read_review(req.into_body()).await {
                Ok(b) => b,
                Err(ReadError::TooLarge) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("AdmissionReview larger than {MAX_REVIEW_BYTES} bytes\n"),
                    );
                }
                Err(ReadError::Body(e)) => {
                    return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n"))
                }
            };
            match webhook.review(&body).await {
                Ok(review) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "review answered");
                    json_response(StatusCode::OK, &review)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed review");
                    json_response(
                        StatusCode::BAD_REQUEST,
                        &AdmissionResponse::invalid(e.to_string()).into_review(),
                    )
                }
            }
        }
        (_, "/mutate" | "/ready" | "/live") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves `webhook` over TLS on `listener` until `shutdown`. Then it reports not ready and
/// keeps answering for `drain` (the API server keeps dialling a terminating replica until its
/// endpoint is gone), closes the listener so late dials are refused rather than left to time
/// out, and lets requests in flight finish (at most `grace`).
pub async fn serve(
    listener: TcpListener,
    certs: Arc<tls::CertStore>,
    webhook: Arc<Webhook>,
    shutdown: CancellationToken,
    drain: Duration,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(Arc::new(certs.server_config()));
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let stop_accepting = CancellationToken::new();
    {
        let (shutdown, stop, webhook) = (shutdown.clone(), stop_accepting.clone(), webhook.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            webhook.draining.store(true, Ordering::Relaxed);
            tracing::info!(?drain, "draining: not ready, still answering");
            tokio::time::sleep(drain).await;
            stop.cancel();
        });
    }
    let mut saturated = false;
    loop {
        // A connection slot first, so a flood waits in the kernel's backlog instead of pushing
        // the API server's own connections out.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                saturated = false;
                slot
            }
            Err(_) => {
                if !saturated {
                    tracing::warn!(
                        max = MAX_CONNECTIONS,
                        "connection limit reached; new connections wait"
                    );
                    saturated = true;
                }
                tokio::select! {
                    () = stop_accepting.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        let shutdown = stop_accepting.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move {
                    let response = tokio::time::timeout(REQUEST_TIMEOUT, handle(&webhook, req))
                        .await
                        .unwrap_or_else(|_| {
                            text(
                                StatusCode::REQUEST_TIMEOUT,
                                format!("no complete request within {REQUEST_TIMEOUT:?}\n"),
                            )
                        });
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let io = TokioIo::new(tls);
            // The protocol ALPN chose, served by its own builder: no sniffing stage to stall in.
            let result = if h2 {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(H2_MAX_STREAMS)
                    .keep_alive_interval(Some(Duration::from_secs(20)))
                    .keep_alive_timeout(Duration::from_secs(10));
                let conn = builder.serve_connection(io, service);
                until_shutdown(conn, &shutdown, |c| c.graceful_shutdown()).await
            } else {
                let mut builder = hyper::server::conn::http1::Builder::new();
                // Also closes an idle keep-alive connection after this long.
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let conn = builder.serve_connection(io, service);
                until_shutdown(conn, &shutdown, |c| c.graceful_shutdown()).await
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "webhook connection error");
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after the grace period");
    }
}

/// `tracemesh webhook`: loads the certificate, connects to the API server (unless
/// `--namespace-lookup=false`), binds, and serves until `shutdown`.
///
/// # Errors
/// The certificate does not load, the API server config is missing, or the address is taken.
pub async fn run(args: WebhookArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // kube's client takes rustls' process-wide provider; make it ours (ring) before it looks.
    let _ = tls::provider().as_ref().clone().install_default();
    let d = &args.inject;
    if d.inbound_port == d.outbound_port
        || d.inbound_port == d.admin_port
        || d.outbound_port == d.admin_port
    {
        anyhow::bail!(
            "the injected proxy's ports must differ: inbound {}, outbound {}, admin {}",
            d.inbound_port,
            d.outbound_port,
            d.admin_port
        );
    }
    let files = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let file_certs = match files {
        Some((cert, key)) => Some(tls::CertStore::load(cert, key)?),
        None => None,
    };
    let client = if args.namespace_lookup || args.tls_secret.is_some() {
        Some(kube::Client::try_default().await.context(
            "no Kubernetes API config (in-cluster or KUBECONFIG), needed for namespace lookups \
             and --tls-secret; run with --namespace-lookup=false and certificate files to go \
             without",
        )?)
    } else {
        None
    };
    let namespaces = match (&client, args.namespace_lookup) {
        (Some(client), true) => Namespaces::Kube(client.clone()),
        _ => Namespaces::Selector,
    };
    let webhook = Arc::new(Webhook::new(
        args.inject_config(),
        args.on_error,
        namespaces,
    ));
    let certs = match (file_certs, &args.tls_secret, &client) {
        (Some(store), _, _) => {
            tokio::spawn(
                store
                    .clone()
                    .watch(args.tls_reload_interval, shutdown.clone()),
            );
            store
        }
        (None, Some(secret), Some(client)) => {
            let boot = Arc::new(bootstrap::Bootstrap {
                namespace: args.namespace.clone().unwrap_or_default(),
                secret: secret.clone(),
                service: args.service.clone().unwrap_or_default(),
                webhook_config: args.webhook_config.clone().unwrap_or_default(),
            });
            let pair = ensure_secret_with_retries(&boot, client, &shutdown).await?;
            let store =
                tls::CertStore::from_pem(secret, pair.cert.as_bytes(), pair.key.as_bytes())?;
            // Not ready until the webhook configuration trusts what this replica serves.
            webhook.trusted.store(false, Ordering::Relaxed);
            let trusted = webhook.clone();
            tokio::spawn(boot.reconcile(
                client.clone(),
                store.clone(),
                pair,
                args.tls_secret_resync,
                move |ok| trusted.trusted.store(ok, Ordering::Relaxed),
                shutdown.clone(),
            ));
            store
        }
        _ => unreachable!("clap requires certificate files or --tls-secret"),
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        namespace_lookup = args.namespace_lookup,
        on_error = ?args.on_error,
        "webhook listening"
    );
    serve(
        listener,
        certs,
        webhook,
        shutdown,
        args.drain_delay,
        Duration::from_secs(10),
    )
    .await;
    Ok(())
}

/// The API server may not answer yet when the pod starts (or RBAC is still being applied):
/// retry for a minute before giving up, so a slow start is not a crash loop.
async fn ensure_secret_with_retries(
    boot: &bootstrap::Bootstrap,
    client: &kube::Client,
    shutdown: &CancellationToken,
) -> anyhow::Result<bootstrap::Pair> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match boot.ensure_secret(client).await {
            Ok(pair) => return Ok(pair),
            Err(e) if Instant::now() < deadline && !shutdown.is_cancelled() => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "certificate Secret not ready; retrying"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub mod bootstrap;
#[cfg(test)]
mod tests;
