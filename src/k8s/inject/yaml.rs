//! `tracemesh inject`: multi-document YAML in, the same YAML out with every pod template run
//! through [`inject_pod_spec`]. Owns finding the pod template in each kind and writing back only
//! what the mutation added; does not own the mutation itself (the parent module).
//!
//! The surrounding objects stay [`serde_yaml_ng::Value`]s (key order kept, unknown fields
//! kept); only a template's `metadata` and `spec` are decoded into k8s-openapi types, and only
//! our annotations and the two new containers are written back into the original YAML.

use std::{collections::BTreeMap, io::Read as _, path::PathBuf};

use k8s_openapi::{
    api::core::v1::{Container, PodSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};

use super::{
    inject_pod_spec, parse_endpoint, InjectConfig, InjectError, Outcome, DEFAULT_IMAGE,
    INIT_CONTAINER, PROXY_CONTAINER,
};
use crate::{config::SampleRatio, context::Propagators, k8s::init::DEFAULT_PROXY_UID};

/// `tracemesh inject`: the input and the defaults every injected pod gets.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Kubernetes YAML to inject (multi-document); `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    /// Image of the sidecar and the init container.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// UID the sidecar runs as (and that `tracemesh init` exempts from redirection).
    #[arg(long, default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// Default OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`) unless a pod annotation overrides it.
    #[arg(long, value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// Default propagators (`OTEL_PROPAGATORS`).
    #[arg(long, value_parser = |s: &str| Propagators::parse(s).map_err(|e| e.to_string()))]
    pub propagators: Option<Propagators>,
    /// Default root sampling ratio in [0, 1].
    #[arg(long)]
    pub sample_ratio: Option<SampleRatio>,
}

impl InjectArgs {
    pub fn config(&self) -> InjectConfig {
        InjectConfig {
            image: self.image.clone(),
            proxy_uid: self.proxy_uid,
            otlp_endpoint: self.otlp_endpoint.clone(),
            propagators: self.propagators,
            sample_ratio: self.sample_ratio,
            ..InjectConfig::default()
        }
    }
}

/// One line of the report `tracemesh inject` prints on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: String,
    pub name: String,
    pub outcome: Outcome,
}

/// Reads `args.file` (or stdin) and returns the injected YAML and a report per pod template.
///
/// # Errors
/// Reading fails, a document is not YAML, or a pod template or annotation is invalid. Nothing is
/// returned in that case, so the caller writes nothing.
pub fn run(args: &InjectArgs) -> Result<(String, Vec<Report>), InjectError> {
    let mut input = String::new();
    match args.file.as_deref() {
        None => std::io::stdin().read_to_string(&mut input).map(drop),
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_string(&mut input).map(drop),
        Some(p) => std::fs::read_to_string(p).map(|s| input = s),
    }
    .map_err(|source| InjectError::Read {
        path: args
            .file
            .as_deref()
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
        source,
    })?;
    inject_yaml(&input, &args.config())
}

/// Injects every pod template in multi-document YAML. Documents are numbered from 1 in errors.
/// Empty documents are dropped; every other document comes back in order, changed only where a
/// pod template was injected or skipped.
///
/// # Errors
/// See [`run`].
pub fn inject_yaml(
    input: &str,
    config: &InjectConfig,
) -> Result<(String, Vec<Report>), InjectError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(de).map_err(|source| InjectError::Parse {
            document: i + 1,
            source,
        })?;
        docs.push(value);
    }
    let mut reports = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        inject_object(doc, i + 1, config, &mut reports)?;
    }
    let mut out = String::new();
    for doc in docs.iter().filter(|d| !d.is_null()) {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(doc).map_err(InjectError::Write)?);
    }
    Ok((out, reports))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn inject_object(
    obj: &mut Value,
    document: usize,
    config: &InjectConfig,
    reports: &mut Vec<Report>,
) -> Result<(), InjectError> {
    let kind = str_at(obj, &["kind"]).unwrap_or_default().to_owned();
    let name = str_at(obj, &["metadata", "name"])
        .unwrap_or_default()
        .to_owned();
    let template_path: &[&str] = match kind.as_str() {
        "List" => {
            if let Some(Value::Sequence(items)) = obj.get_mut("items") {
                for item in items {
                    inject_object(item, document, config, reports)?;
                }
            }
            return Ok(());
        }
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    let Some(template) = template_path
        .iter()
        .try_fold(&mut *obj, |v, k| v.get_mut(k))
    else {
        return Ok(());
    };
    // A Pod is its own template; a workload's pods are named after it.
    let workload = (kind != "Pod" && !name.is_empty()).then(|| name.clone());
    let outcome = inject_template(template, workload.as_deref(), config).map_err(|e| match e {
        TemplateError::Decode(source) => InjectError::PodTemplate {
            document,
            kind: kind.clone(),
            name: name.clone(),
            source,
        },
        TemplateError::Inject(e) => InjectError::Document {
            document,
            kind: kind.clone(),
            name: name.clone(),
            source: Box::new(e),
        },
    })?;
    reports.push(Report {
        kind,
        name,
        outcome,
    });
    Ok(())
}

/// A template's failure before [`inject_object`] knows which document it was in.
enum TemplateError {
    Decode(serde_yaml_ng::Error),
    Inject(InjectError),
}

impl From<InjectError> for TemplateError {
    fn from(e: InjectError) -> Self {
        TemplateError::Inject(e)
    }
}

/// Runs [`inject_pod_spec`] on a template held as YAML, and writes back only what it added.
fn inject_template(
    template: &mut Value,
    workload: Option<&str>,
    config: &InjectConfig,
) -> Result<Outcome, TemplateError> {
    let pod_template = TemplateError::Decode;
    let mut meta: ObjectMeta = match template.get("metadata") {
        Some(m) => serde_yaml_ng::from_value(m.clone()).map_err(pod_template)?,
        None => ObjectMeta::default(),
    };
    let mut spec: PodSpec = serde_yaml_ng::from_value(
        template
            .get("spec")
            .cloned()
            .unwrap_or(Value::Mapping(Mapping::new())),
    )
    .map_err(pod_template)?;
    let before = meta.annotations.clone().unwrap_or_default();
    let outcome = inject_pod_spec(&mut meta, &mut spec, &BTreeMap::new(), workload, config)?;
    let after = meta.annotations.unwrap_or_default();

    let Value::Mapping(template) = template else {
        return Ok(outcome);
    };
    if after != before {
        let annotations = mapping_at(mapping_at(template, "metadata"), "annotations");
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            annotations.remove(key.as_str());
        }
        for (k, v) in after.iter().filter(|(k, v)| before.get(*k) != Some(*v)) {
            annotations.insert(Value::String(k.clone()), Value::String(v.clone()));
        }
    }
    if outcome == Outcome::Injected {
        let spec_yaml = mapping_at(template, "spec");
        let added = |list: &[Container], name: &str| {
            let c = list.iter().find(|c| c.name == name).expect("just added");
            serde_yaml_ng::to_value(c).map_err(InjectError::Write)
        };
        let init = added(
            spec.init_containers.as_deref().unwrap_or_default(),
            INIT_CONTAINER,
        )?;
        let proxy = added(&spec.containers, PROXY_CONTAINER)?;
        sequence_at(spec_yaml, "initContainers").push(init);
        sequence_at(spec_yaml, "containers").insert(0, proxy);
        if let Some(v) = super::added_volume(&spec) {
            sequence_at(spec_yaml, "volumes")
                .push(serde_yaml_ng::to_value(v).map_err(InjectError::Write)?);
        }
    }
    Ok(outcome)
}

/// The mapping under `key`, created (or replacing a null) when absent.
fn mapping_at<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let slot = m
        .entry(Value::String(key.to_owned()))
        .or_insert(Value::Mapping(Mapping::new()));
    if !slot.is_mapping() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut().expect("just made a mapping")
}

/// The sequence under `key`, created (or replacing a null) when absent.
fn sequence_at<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let slot = m
        .entry(Value::String(key.to_owned()))
        .or_insert(Value::Sequence(Vec::new()));
    if !slot.is_sequence() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut().expect("just made a sequence")
}
