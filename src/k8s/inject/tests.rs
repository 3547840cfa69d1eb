use super::*;
use serde_yaml_ng::Value;

fn pod(annotations: &[(&str, &str)]) -> (ObjectMeta, PodSpec) {
    let meta = ObjectMeta {
        name: Some("web".to_owned()),
        annotations: (!annotations.is_empty()).then(|| {
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }),
        ..Default::default()
    };
    let spec = PodSpec {
        containers: vec![Container {
            name: "app".to_owned(),
            image: Some("app:1".to_owned()),
            ..Default::default()
        }],
        ..Default::default()
    };
    (meta, spec)
}

fn inject(
    annotations: &[(&str, &str)],
    ns: &[(&str, &str)],
) -> Result<(ObjectMeta, PodSpec, Outcome), InjectError> {
    let (mut meta, mut spec) = pod(annotations);
    let ns = ns
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let outcome = inject_pod_spec(
        &mut meta,
        &mut spec,
        &ns,
        Some("web"),
        &InjectConfig::default(),
    )?;
    Ok((meta, spec, outcome))
}

fn proxy(spec: &PodSpec) -> &Container {
    spec.containers
        .iter()
        .find(|c| c.name == PROXY_CONTAINER)
        .expect("sidecar present")
}

fn init(spec: &PodSpec) -> &Container {
    spec.init_containers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.name == INIT_CONTAINER)
        .expect("init container present")
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

#[test]
fn injects_the_sidecar_first_and_the_init_container() {
    let (meta, spec, outcome) = inject(&[], &[]).unwrap();
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(spec.containers[0].name, PROXY_CONTAINER);
    assert_eq!(spec.containers[1].name, "app");
    assert_eq!(
        spec.init_containers.as_ref().unwrap()[0].name,
        INIT_CONTAINER
    );
    assert_eq!(annotation(&meta, ANNOTATION_INJECTED), Some("true"));
    assert_eq!(annotation(&meta, ANNOTATION_INJECT_SKIPPED), None);
}

#[test]
fn sidecar_is_non_root_read_only_and_drops_all_capabilities() {
    let (_, spec, _) = inject(&[], &[]).unwrap();
    let sc = proxy(&spec).security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(i64::from(DEFAULT_PROXY_UID)));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(caps.add, None);
}

#[test]
fn only_init_container_gets_net_admin_and_net_raw() {
    let (_, spec, _) = inject(&[], &[]).unwrap();
    let sc = init(&spec).security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let add = sc.capabilities.as_ref().unwrap().add.clone().unwrap();
    assert_eq!(add, ["NET_ADMIN", "NET_RAW"]);
    let args = init(&spec).args.clone().unwrap();
    assert_eq!(
        args,
        [
            "init",
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--admin-port",
            "4191"
        ]
    );
}

#[test]
fn downward_api_env_ports_and_probes() {
    let (_, spec, _) = inject(&[], &[]).unwrap();
    let c = proxy(&spec);
    let field = |name: &str| {
        c.env
            .as_deref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field(ENV_POD_NAME).as_deref(), Some("metadata.name"));
    assert_eq!(
        field(ENV_POD_NAMESPACE).as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(field(ENV_NODE_NAME).as_deref(), Some("spec.nodeName"));
    assert_eq!(env_value(c, ENV_SERVICE_NAME), Some("web"));
    let ports = c.ports.as_deref().unwrap();
    assert!(ports
        .iter()
        .any(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME) && p.container_port == 4191));
    assert!(ports.iter().any(|p| p.container_port == 4143));
    let probe_path = |p: &Option<Probe>| p.as_ref()?.http_get.as_ref()?.path.clone();
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/ready"));
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/live"));
    let resources = c.resources.as_ref().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
}

#[test]
fn bare_pod_leaves_service_name_to_the_proxy() {
    let (mut meta, mut spec) = pod(&[]);
    inject_pod_spec(
        &mut meta,
        &mut spec,
        &BTreeMap::new(),
        None,
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(env_value(proxy(&spec), ENV_SERVICE_NAME), None);
}

#[test]
fn sample_ratio_annotation_sets_sampler() {
    let (_, spec, _) = inject(&[(ANNOTATION_SAMPLE_RATIO, "0.25")], &[]).unwrap();
    let c = proxy(&spec);
    assert_eq!(
        env_value(c, ENV_TRACES_SAMPLER),
        Some("parentbased_traceidratio")
    );
    assert_eq!(env_value(c, ENV_TRACES_SAMPLER_ARG), Some("0.25"));
}

#[test]
fn propagators_annotation_sets_otel_propagators() {
    let (_, spec, _) = inject(&[(ANNOTATION_PROPAGATORS, "tracecontext,b3")], &[]).unwrap();
    let v = env_value(proxy(&spec), ENV_PROPAGATORS).unwrap();
    assert_eq!(
        Propagators::parse(v).unwrap(),
        Propagators::parse("tracecontext,b3").unwrap()
    );
}

#[test]
fn otlp_endpoint_annotation_sets_endpoint() {
    let (_, spec, _) = inject(
        &[(ANNOTATION_OTLP_ENDPOINT, "http://otel-collector.obs:4317")],
        &[],
    )
    .unwrap();
    assert_eq!(
        env_value(proxy(&spec), ENV_OTLP_ENDPOINT),
        Some("http://otel-collector.obs:4317")
    );
}

#[test]
fn skip_annotations_become_init_flags() {
    let (_, spec, _) = inject(
        &[
            (ANNOTATION_SKIP_INBOUND_PORTS, "9090, 9091"),
            (ANNOTATION_SKIP_OUTBOUND_PORTS, "5432"),
            (
                ANNOTATION_SKIP_OUTBOUND_CIDRS,
                "169.254.169.254/32,10.0.0.0/8",
            ),
        ],
        &[],
    )
    .unwrap();
    let args = init(&spec).args.clone().unwrap().join(" ");
    assert!(args.ends_with(
        "--skip-inbound-ports 9090,9091 --skip-outbound-ports 5432 \
         --skip-outbound-cidrs 169.254.169.254/32,10.0.0.0/8"
    ));
}

#[test]
fn pod_annotation_wins_over_namespace() {
    let (_, spec, _) = inject(
        &[(ANNOTATION_SAMPLE_RATIO, "0.5")],
        &[
            (ANNOTATION_SAMPLE_RATIO, "0.1"),
            (ANNOTATION_OTLP_ENDPOINT, "http://ns:4317"),
        ],
    )
    .unwrap();
    assert_eq!(env_value(proxy(&spec), ENV_TRACES_SAMPLER_ARG), Some("0.5"));
    assert_eq!(
        env_value(proxy(&spec), ENV_OTLP_ENDPOINT),
        Some("http://ns:4317")
    );
}

#[test]
fn injecting_twice_equals_injecting_once() {
    let (mut meta, mut spec, _) = inject(&[(ANNOTATION_SAMPLE_RATIO, "0.5")], &[]).unwrap();
    let (meta1, spec1) = (meta.clone(), spec.clone());
    let outcome = inject_pod_spec(
        &mut meta,
        &mut spec,
        &BTreeMap::new(),
        Some("web"),
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::AlreadyInjected));
    assert_eq!((meta, spec), (meta1, spec1));
}

#[test]
fn disabled_pod_is_skipped_with_reason() {
    let (meta, spec, outcome) = inject(&[(ANNOTATION_INJECT, "disabled")], &[]).unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::Disabled));
    assert_eq!(
        annotation(&meta, ANNOTATION_INJECT_SKIPPED),
        Some("disabled")
    );
    assert_eq!(spec, pod(&[]).1);
}

#[test]
fn disabled_namespace_is_overridden_by_enabled_pod() {
    let (_, _, outcome) = inject(
        &[(ANNOTATION_INJECT, "enabled")],
        &[(ANNOTATION_INJECT, "disabled")],
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Injected);
    let (_, _, outcome) = inject(&[], &[(ANNOTATION_INJECT, "disabled")]).unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::Disabled));
}

#[test]
fn host_network_pod_is_skipped_with_reason() {
    let (mut meta, mut spec) = pod(&[]);
    spec.host_network = Some(true);
    let before = spec.clone();
    let outcome = inject_pod_spec(
        &mut meta,
        &mut spec,
        &BTreeMap::new(),
        None,
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::HostNetwork));
    assert_eq!(
        annotation(&meta, ANNOTATION_INJECT_SKIPPED),
        Some("host-network")
    );
    assert_eq!(spec, before);
}

#[test]
fn opt_in_config_skips_unannotated_pods() {
    let config = InjectConfig {
        require_opt_in: true,
        ..InjectConfig::default()
    };
    let (mut meta, mut spec) = pod(&[]);
    let outcome = inject_pod_spec(&mut meta, &mut spec, &BTreeMap::new(), None, &config).unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::NotEnabled));
    let ns = BTreeMap::from([(ANNOTATION_INJECT.to_owned(), "enabled".to_owned())]);
    let (mut meta, mut spec) = pod(&[]);
    let outcome = inject_pod_spec(&mut meta, &mut spec, &ns, None, &config).unwrap();
    assert_eq!(outcome, Outcome::Injected);
}

#[test]
fn invalid_annotations_are_rejected_without_mutation() {
    for (key, value) in [
        (ANNOTATION_INJECT, "yes"),
        (ANNOTATION_SAMPLE_RATIO, "1.5"),
        (ANNOTATION_SAMPLE_RATIO, "half"),
        (ANNOTATION_PROPAGATORS, "jaeger"),
        (ANNOTATION_OTLP_ENDPOINT, "collector:4317"),
        (ANNOTATION_SKIP_INBOUND_PORTS, "80,http"),
        (ANNOTATION_SKIP_OUTBOUND_PORTS, "70000"),
        (ANNOTATION_SKIP_OUTBOUND_CIDRS, "10.0.0.0/33"),
        (ANNOTATION_CONFIG, "Tracemesh_Config"),
        (ANNOTATION_CONFIG, "-bad"),
        (ANNOTATION_TRUSTED_CIDRS, "10.0.0.0/40"),
        (ANNOTATION_TRUSTED_CIDRS, "10.0.0.0/+8"),
        (ANNOTATION_RETENTION_RING_SPANS, "0"),
        (ANNOTATION_RETENTION_RING_SPANS, "lots"),
        (ANNOTATION_RETENTION_RING_SPANS, "2000000"),
        (ANNOTATION_RESPONSE_CONTEXT, "maybe"),
        (ANNOTATION_ACCESS_LOG, "text"),
        (ANNOTATION_DEBUG_TRACES, "yes"),
    ] {
        let (mut meta, mut spec) = pod(&[(key, value)]);
        let (meta0, spec0) = (meta.clone(), spec.clone());
        let err = inject_pod_spec(
            &mut meta,
            &mut spec,
            &BTreeMap::new(),
            None,
            &InjectConfig::default(),
        )
        .expect_err(value);
        let msg = err.to_string();
        assert!(msg.contains(key) && msg.contains(value), "{msg}");
        assert_eq!(
            (meta, spec),
            (meta0, spec0),
            "{key}={value} mutated the pod"
        );
    }
}

#[test]
fn config_annotation_mounts_the_configmap_and_points_the_proxy_at_its_files() {
    let (_, spec, _) = inject(&[(ANNOTATION_CONFIG, "checkout-tracing")], &[]).unwrap();
    let volume = added_volume(&spec).expect("the config volume");
    let source = volume.config_map.as_ref().unwrap();
    assert_eq!(source.name, "checkout-tracing");
    assert_eq!(
        source.optional,
        Some(true),
        "a missing ConfigMap never blocks the pod"
    );
    let p = proxy(&spec);
    let mounts = p.volume_mounts.as_deref().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].name, CONFIG_VOLUME);
    assert_eq!(mounts[0].mount_path, "/etc/tracemesh/config");
    assert_eq!(mounts[0].read_only, Some(true));
    assert_eq!(
        env_value(p, ENV_SAMPLING_RULES),
        Some("/etc/tracemesh/config/sampling-rules.yaml")
    );
    assert_eq!(
        env_value(p, ENV_ROUTES_FILE),
        Some("/etc/tracemesh/config/routes")
    );
    // The app's containers get nothing.
    assert!(spec.containers[1].volume_mounts.is_none());

    // Without the annotation or a configured default: no volume, no files.
    let (_, spec, _) = inject(&[], &[]).unwrap();
    assert!(added_volume(&spec).is_none());
    assert_eq!(env_value(proxy(&spec), ENV_SAMPLING_RULES), None);

    // The webhook's default (the chart's ConfigMap), and the namespace annotation over it.
    let config = InjectConfig {
        config_map: Some("tracemesh-proxy-config".to_owned()),
        ..InjectConfig::default()
    };
    let (mut meta, mut spec) = pod(&[]);
    inject_pod_spec(&mut meta, &mut spec, &BTreeMap::new(), None, &config).unwrap();
    assert_eq!(
        added_volume(&spec)
            .unwrap()
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "tracemesh-proxy-config"
    );
    let (mut meta, mut spec) = pod(&[]);
    let ns = BTreeMap::from([(ANNOTATION_CONFIG.to_owned(), "team-config".to_owned())]);
    inject_pod_spec(&mut meta, &mut spec, &ns, None, &config).unwrap();
    assert_eq!(
        added_volume(&spec)
            .unwrap()
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "team-config"
    );
}

#[test]
fn a_pod_volume_named_like_ours_is_an_error_not_a_duplicate() {
    let (mut meta, mut spec) = pod(&[(ANNOTATION_CONFIG, "web-config")]);
    spec.volumes = Some(vec![Volume {
        name: CONFIG_VOLUME.to_owned(),
        ..Default::default()
    }]);
    let before = spec.clone();
    let err = inject_pod_spec(
        &mut meta,
        &mut spec,
        &BTreeMap::new(),
        None,
        &InjectConfig::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains(CONFIG_VOLUME), "{err}");
    assert_eq!(spec, before);
    // Without a config to mount, the pod's own volume of that name is no concern.
    let (mut meta, mut spec) = pod(&[]);
    spec.volumes = before.volumes.clone();
    inject_pod_spec(
        &mut meta,
        &mut spec,
        &BTreeMap::new(),
        None,
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(spec.volumes.as_ref().unwrap().len(), 1);
}

#[test]
fn retention_annotations_set_the_ring_size_and_the_edge() {
    let (_, spec, _) = inject(
        &[
            (ANNOTATION_RETENTION_RING_SPANS, "32768"),
            (ANNOTATION_RESPONSE_CONTEXT, "off"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        env_value(proxy(&spec), ENV_RETENTION_RING_SPANS),
        Some("32768")
    );
    assert_eq!(env_value(proxy(&spec), ENV_RESPONSE_CONTEXT), Some("off"));
    let (_, spec, _) = inject(&[], &[]).unwrap();
    assert_eq!(env_value(proxy(&spec), ENV_RETENTION_RING_SPANS), None);
    assert_eq!(env_value(proxy(&spec), ENV_RESPONSE_CONTEXT), None);
}

#[test]
fn access_log_and_debug_traces_annotations_set_the_proxy_variables() {
    let (_, spec, _) = inject(
        &[
            (ANNOTATION_ACCESS_LOG, "json"),
            (ANNOTATION_DEBUG_TRACES, "off"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(env_value(proxy(&spec), ENV_ACCESS_LOG), Some("json"));
    assert_eq!(env_value(proxy(&spec), ENV_DEBUG_TRACES), Some("off"));
    let (_, spec, _) = inject(&[], &[]).unwrap();
    assert_eq!(env_value(proxy(&spec), ENV_ACCESS_LOG), None);
    assert_eq!(env_value(proxy(&spec), ENV_DEBUG_TRACES), None);
}

#[test]
fn trusted_cidrs_annotation_sets_the_proxy_variable() {
    let (_, spec, _) = inject(
        &[(ANNOTATION_TRUSTED_CIDRS, "10.0.0.0/8, 192.168.1.7")],
        &[],
    )
    .unwrap();
    assert_eq!(
        env_value(proxy(&spec), ENV_TRUSTED_CIDRS),
        Some("10.0.0.0/8,192.168.1.7")
    );
    let (_, spec, _) = inject(&[], &[]).unwrap();
    assert_eq!(env_value(proxy(&spec), ENV_TRUSTED_CIDRS), None);
}

#[test]
fn the_yaml_path_writes_the_config_volume_next_to_the_pods_own() {
    let input = "kind: Deployment\nmetadata: {name: w}\nspec:\n  template:\n    metadata:\n      annotations: {tracemesh.io/config: web-config}\n    spec:\n      volumes: [{name: data, emptyDir: {}}]\n      containers: [{name: app}]\n";
    let (out, _) = inject_yaml(input, &InjectConfig::default()).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
    let volumes = doc["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    let names: Vec<&str> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data", CONFIG_VOLUME]);
    assert_eq!(volumes[1]["configMap"]["name"], Value::from("web-config"));
    assert_eq!(volumes[1]["configMap"]["optional"], Value::from(true));
}

// === YAML path ===

fn yaml_template<'a>(doc: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(doc, |v, k| &v[*k])
}

fn container_names(template: &Value, list: &str) -> Vec<String> {
    template["spec"][list]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_workload_kind_is_injected_via_yaml() {
    let pod_spec = "spec: {containers: [{name: app, image: app}]}";
    let cases: &[(&str, &str, &[&str])] = &[
        ("Pod", "", &[]),
        ("Deployment", "template", &["spec", "template"]),
        ("StatefulSet", "template", &["spec", "template"]),
        ("DaemonSet", "template", &["spec", "template"]),
        ("ReplicaSet", "template", &["spec", "template"]),
        ("Job", "template", &["spec", "template"]),
        (
            "CronJob",
            "jobTemplate",
            &["spec", "jobTemplate", "spec", "template"],
        ),
    ];
    for (kind, _, path) in cases {
        let body = match *kind {
            "Pod" => pod_spec.to_owned(),
            "CronJob" => format!("spec: {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {{{pod_spec}}}}}}}}}"),
            _ => format!("spec: {{template: {{{pod_spec}}}}}"),
        };
        let input = format!("kind: {kind}\nmetadata: {{name: w}}\n{body}\n");
        let (out, reports) = inject_yaml(&input, &InjectConfig::default()).unwrap();
        assert_eq!(reports.len(), 1, "{kind}");
        assert_eq!(reports[0].outcome, Outcome::Injected, "{kind}");
        let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
        let t = yaml_template(&doc, path);
        assert_eq!(
            container_names(t, "containers"),
            [PROXY_CONTAINER, "app"],
            "{kind}"
        );
        assert_eq!(
            container_names(t, "initContainers"),
            [INIT_CONTAINER],
            "{kind}"
        );
    }
}

#[test]
fn list_items_are_injected_and_other_kinds_pass_through() {
    let input = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: app}]}\n- kind: Service\n  metadata: {name: s}\n  spec: {ports: [{port: 80}]}\n";
    let (out, reports) = inject_yaml(input, &InjectConfig::default()).unwrap();
    assert_eq!(reports.len(), 1);
    let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(
        container_names(&doc["items"][0], "containers"),
        [PROXY_CONTAINER, "app"]
    );
    let original: Value = serde_yaml_ng::from_str(input).unwrap();
    assert_eq!(doc["items"][1], original["items"][1]);
}

#[test]
fn unknown_fields_survive() {
    let input = "kind: Deployment\nmetadata: {name: w}\nstatus: {x: 1}\nspec:\n  futureSpec: 1\n  template:\n    spec:\n      futurePodField: true\n      containers: [{name: app, futureContainerField: 2}]\n";
    let (out, _) = inject_yaml(input, &InjectConfig::default()).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(doc["status"]["x"], Value::from(1));
    assert_eq!(doc["spec"]["futureSpec"], Value::from(1));
    assert_eq!(
        doc["spec"]["template"]["spec"]["futurePodField"],
        Value::from(true)
    );
    assert_eq!(
        doc["spec"]["template"]["spec"]["containers"][1]["futureContainerField"],
        Value::from(2)
    );
}

#[test]
fn unparsable_document_is_named_by_index() {
    let input = "kind: ConfigMap\n---\nkind: Pod\nspec: [unclosed\n";
    let err = inject_yaml(input, &InjectConfig::default()).unwrap_err();
    assert!(err.to_string().starts_with("document 2"), "{err}");
}

#[test]
fn invalid_pod_template_is_an_error() {
    let input =
        "kind: Deployment\nmetadata: {name: w}\nspec: {template: {spec: {containers: 3}}}\n";
    let err = inject_yaml(input, &InjectConfig::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("document 1 (Deployment \"w\")"),
        "{err}"
    );
}

#[test]
fn invalid_annotation_in_yaml_names_document_and_annotation() {
    let input = "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: app}]}\n---\nkind: Pod\nmetadata:\n  name: b\n  annotations: {tracemesh.io/sample-ratio: '2'}\nspec: {containers: [{name: app}]}\n";
    let err = inject_yaml(input, &InjectConfig::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("document 2 (Pod \"b\")"),
        "{err}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains(ANNOTATION_SAMPLE_RATIO), "{source}");
}
