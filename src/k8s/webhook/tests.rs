use super::*;

fn config() -> InjectConfig {
    InjectConfig {
        require_opt_in: true,
        ..InjectConfig::default()
    }
}

fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A pod as the API server sends it for a Deployment's ReplicaSet.
fn pod(annotations: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-5d8f9c7b6-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "5d8f9c7b6"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9c7b6",
                "uid": "7c0e6a1e-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}],
            "restartPolicy": "Always"
        }
    });
    if !annotations.is_null() {
        pod["metadata"]["annotations"] = annotations;
    }
    pod
}

fn apply(pod: &Value, ops: &[Value]) -> Value {
    let mut out = pod.clone();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

#[test]
fn namespace_label_or_annotation_opts_in_and_the_patch_equals_the_mutation() {
    let original = pod(Value::Null);
    let m = mutate(
        &original,
        &ns(&[("tracemesh.io/inject", "enabled")]),
        &config(),
    )
    .unwrap();
    assert_eq!(m.outcome, Outcome::Injected);
    let patched = apply(&original, &m.patch);

    // The same mutation done on typed values, serialized: the patch must produce exactly it.
    let mut meta: ObjectMeta = serde_json::from_value(original["metadata"].clone()).unwrap();
    let mut spec: PodSpec = serde_json::from_value(original["spec"].clone()).unwrap();
    inject_pod_spec(
        &mut meta,
        &mut spec,
        &ns(&[("tracemesh.io/inject", "enabled")]),
        Some("web"),
        &config(),
    )
    .unwrap();
    assert_eq!(patched["metadata"], serde_json::to_value(&meta).unwrap());
    assert_eq!(patched["spec"], serde_json::to_value(&spec).unwrap());
    // The Deployment's name, not the ReplicaSet's, names the service.
    let env = &patched["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "OTEL_SERVICE_NAME", "value": "web"})),
        "{env}"
    );
    // Untouched: the app container stays, now second.
    assert_eq!(
        patched["spec"]["containers"][1],
        original["spec"]["containers"][0]
    );
    assert_eq!(patched["spec"]["restartPolicy"], "Always");
}

#[test]
fn pod_annotation_wins_over_namespace() {
    let original = pod(json!({"tracemesh.io/inject": "disabled", "team": "a/b~c"}));
    let m = mutate(
        &original,
        &ns(&[("tracemesh.io/inject", "enabled")]),
        &config(),
    )
    .unwrap();
    assert_eq!(m.outcome, Outcome::Skipped(SkipReason::Disabled));
    // Only the reason is written, as one escaped-path add; other annotations stay.
    assert_eq!(
        m.patch,
        vec![
            json!({"op": "add", "path": "/metadata/annotations/tracemesh.io~1inject-skipped", "value": "disabled"})
        ]
    );
    let patched = apply(&original, &m.patch);
    assert_eq!(patched["metadata"]["annotations"]["team"], "a/b~c");
    assert_eq!(patched["spec"], original["spec"]);

    let enabled = pod(json!({"tracemesh.io/inject": "enabled"}));
    let m = mutate(
        &enabled,
        &ns(&[("tracemesh.io/inject", "disabled")]),
        &config(),
    )
    .unwrap();
    assert_eq!(m.outcome, Outcome::Injected);
}

#[test]
fn pods_nobody_opted_in_get_no_patch_at_all() {
    let m = mutate(&pod(Value::Null), &ns(&[]), &config()).unwrap();
    assert_eq!(m.outcome, Outcome::Skipped(SkipReason::NotEnabled));
    assert!(m.patch.is_empty());
}

#[test]
fn already_injected_pods_are_left_alone() {
    let original = pod(Value::Null);
    let on = ns(&[("tracemesh.io/inject", "enabled")]);
    let once = apply(&original, &mutate(&original, &on, &config()).unwrap().patch);
    let again = mutate(&once, &on, &config()).unwrap();
    assert_eq!(again.outcome, Outcome::Skipped(SkipReason::AlreadyInjected));
    assert!(again.patch.is_empty());
}

#[test]
fn host_network_is_recorded_not_injected() {
    let mut original = pod(json!({"tracemesh.io/inject": "enabled"}));
    original["spec"]["hostNetwork"] = json!(true);
    let m = mutate(&original, &ns(&[]), &config()).unwrap();
    assert_eq!(m.outcome, Outcome::Skipped(SkipReason::HostNetwork));
    let patched = apply(&original, &m.patch);
    assert_eq!(
        patched["metadata"]["annotations"]["tracemesh.io/inject-skipped"],
        "host-network"
    );
    assert_eq!(patched["spec"], original["spec"]);
}

#[test]
fn existing_init_containers_and_annotations_are_kept_in_order() {
    let mut original =
        pod(json!({"tracemesh.io/inject": "enabled", "tracemesh.io/inject-skipped": "disabled"}));
    original["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
    let m = mutate(&original, &ns(&[]), &config()).unwrap();
    let patched = apply(&original, &m.patch);
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // Ours runs last: the app's init containers keep direct network access.
    assert_eq!(
        names(&patched["spec"]["initContainers"]),
        ["migrate", INIT_CONTAINER]
    );
    assert_eq!(
        names(&patched["spec"]["containers"]),
        [PROXY_CONTAINER, "app"]
    );
    let annotations = &patched["metadata"]["annotations"];
    assert_eq!(annotations["tracemesh.io/injected"], "true");
    assert!(
        annotations.get("tracemesh.io/inject-skipped").is_none(),
        "{annotations}"
    );
}

#[test]
fn an_invalid_annotation_is_an_error_and_no_patch() {
    let original = pod(json!({"tracemesh.io/inject": "enabled", "tracemesh.io/sample-ratio": "2"}));
    let err = mutate(&original, &ns(&[]), &config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tracemesh.io/sample-ratio"), "{err}");

    let mut broken = pod(json!({"tracemesh.io/inject": "enabled"}));
    broken["spec"]["containers"] = json!("not a list");
    let err = mutate(&broken, &ns(&[]), &config()).unwrap_err();
    assert!(matches!(err, MutateError::Decode(_)), "{err}");
}

#[test]
fn workload_names_follow_the_owner() {
    let meta = |kind: &str, name: &str, hash: Option<&str>| ObjectMeta {
        labels: hash.map(|h| BTreeMap::from([("pod-template-hash".to_owned(), h.to_owned())])),
        owner_references: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: kind.to_owned(),
                name: name.to_owned(),
                controller: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    assert_eq!(
        workload_name(&meta("ReplicaSet", "web-5d8f", Some("5d8f"))).as_deref(),
        Some("web")
    );
    // A ReplicaSet made by hand keeps its own name.
    assert_eq!(
        workload_name(&meta("ReplicaSet", "rs", None)).as_deref(),
        Some("rs")
    );
    assert_eq!(
        workload_name(&meta("StatefulSet", "db", None)).as_deref(),
        Some("db")
    );
    assert_eq!(workload_name(&meta("Node", "n1", None)), None);
    assert_eq!(workload_name(&ObjectMeta::default()), None);
}

#[test]
fn quantities_are_checked() {
    for ok in ["10m", "1", "0.5", "256Mi", "1Gi", "1e3", "100k", "+1"] {
        assert!(check_quantity(&Quantity(ok.to_owned())).is_ok(), "{ok}");
    }
    for bad in ["", "10mb", "Mi", "1..2", "ten", "1e"] {
        assert!(check_quantity(&Quantity(bad.to_owned())).is_err(), "{bad}");
    }
    assert!(parse_resources(r#"{"requests":{"cpu":"10m"},"limits":{"memory":"256Mi"}}"#).is_ok());
    let err = parse_resources(r#"{"limits":{"memory":"256MB"}}"#).unwrap_err();
    assert!(err.contains("memory"), "{err}");
}

fn review(object: Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    }))
    .unwrap()
}

fn webhook(on_error: OnError) -> Webhook {
    // The selector decided: no namespace lookup, no opt-in needed.
    let config = InjectConfig {
        require_opt_in: false,
        ..InjectConfig::default()
    };
    Webhook::new(config, on_error, Namespaces::Selector)
}

#[tokio::test]
async fn reviews_are_answered_with_the_request_uid_and_a_json_patch() {
    let original = pod(Value::Null);
    let answer = webhook(OnError::Allow)
        .review(&review(original.clone(), "CREATE"))
        .await
        .unwrap();
    let wire = serde_json::to_value(&answer).unwrap();
    assert_eq!(wire["response"]["patchType"], "JSONPatch");
    assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
    let response = answer.response.unwrap();
    assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(response.allowed);
    let patch: json_patch::Patch = serde_json::from_slice(&response.patch.unwrap()).unwrap();
    let mut patched = original;
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched["spec"]["containers"][0]["name"], PROXY_CONTAINER);
}

#[tokio::test]
async fn updates_and_other_kinds_pass_untouched() {
    let w = webhook(OnError::Allow);
    let r = w.review(&review(pod(Value::Null), "UPDATE")).await.unwrap();
    let r = r.response.unwrap();
    assert!(r.allowed && r.patch.is_none());

    let mut body: Value = serde_json::from_slice(&review(pod(Value::Null), "CREATE")).unwrap();
    body["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let r = w.review(&serde_json::to_vec(&body).unwrap()).await.unwrap();
    let r = r.response.unwrap();
    assert!(r.allowed && r.patch.is_none());
}

#[tokio::test]
async fn a_failed_mutation_allows_with_a_warning_or_rejects_as_configured() {
    let bad = pod(json!({"tracemesh.io/propagators": "jaeger"}));
    let r = webhook(OnError::Allow)
        .review(&review(bad.clone(), "CREATE"))
        .await
        .unwrap()
        .response
        .unwrap();
    assert!(r.allowed);
    assert!(r.patch.is_none(), "never a half patch");
    let warnings = r.warnings.unwrap();
    assert!(
        warnings[0]
            .starts_with("tracemesh: sidecar not injected: annotation tracemesh.io/propagators"),
        "{warnings:?}"
    );

    let r = webhook(OnError::Reject)
        .review(&review(bad, "CREATE"))
        .await
        .unwrap()
        .response
        .unwrap();
    assert!(!r.allowed && r.patch.is_none());
    assert!(
        r.result.message.contains("tracemesh.io/propagators"),
        "{}",
        r.result.message
    );
}

#[tokio::test]
async fn malformed_reviews_are_errors_not_panics() {
    let w = webhook(OnError::Allow);
    let cases: &[(&[u8], &str)] = &[
        (b"", "not an AdmissionReview"),
        (b"{", "not an AdmissionReview"),
        (b"[]", "not an AdmissionReview"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#, "admission.k8s.io/v1beta1"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "has no request"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1"}}"#,
            "not an AdmissionReview",
        ),
    ];
    for (body, expected) in cases {
        let err = w.review(body).await.unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{:?}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    let mut no_uid: Value = serde_json::from_slice(&review(pod(Value::Null), "CREATE")).unwrap();
    no_uid["request"]["uid"] = json!("");
    let err = w
        .review(&serde_json::to_vec(&no_uid).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ReviewError::NoUid), "{err}");
}

#[test]
fn pod_security_baseline_or_restricted_namespaces_are_not_injected() {
    let original = pod(Value::Null);
    for level in ["baseline", "restricted"] {
        let namespace = ns(&[
            ("tracemesh.io/inject", "enabled"),
            ("pod-security.kubernetes.io/enforce", level),
        ]);
        let err = mutate(&original, &namespace, &config())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("Pod Security \"{level}\"")), "{err}");
    }
    let privileged = ns(&[
        ("tracemesh.io/inject", "enabled"),
        ("pod-security.kubernetes.io/enforce", "privileged"),
    ]);
    assert_eq!(
        mutate(&original, &privileged, &config()).unwrap().outcome,
        Outcome::Injected
    );
    // Not opted in: no error, whatever the level.
    let quiet = ns(&[("pod-security.kubernetes.io/enforce", "restricted")]);
    assert!(mutate(&original, &quiet, &config())
        .unwrap()
        .patch
        .is_empty());
}

/// The chart passes the webhook its defaults as environment variables (ConfigMap and
/// Deployment); clap ignores a variable it does not know, so a renamed flag would silently
/// drop a chart value. Every name the chart sets must be one the webhook reads.
#[test]
fn every_variable_the_chart_sets_is_one_the_webhook_reads() {
    use clap::CommandFactory as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhookArgs,
    }
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let configmap = include_str!("../../../charts/tracemesh/templates/configmap.yaml");
    let keys: Vec<&str> = configmap
        .lines()
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .filter(|k| k.starts_with("TRACEMESH_"))
        .collect();
    assert!(keys.len() >= 15, "{keys:?}");
    let deployment = include_str!("../../../charts/tracemesh/templates/deployment.yaml");
    let env_names = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: TRACEMESH_"))
        .map(|rest| format!("TRACEMESH_{rest}"));
    for key in keys.iter().map(|k| (*k).to_owned()).chain(env_names) {
        assert!(
            known.contains(&key),
            "the chart sets {key}, which `tracemesh webhook` ignores"
        );
    }
}

#[test]
fn the_config_volume_is_patched_in_and_equals_the_mutation_with_and_without_pod_volumes() {
    let mut with_volumes = pod(json!({"tracemesh.io/config": "shop-tracing"}));
    with_volumes["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    for original in [
        pod(json!({"tracemesh.io/config": "shop-tracing"})),
        with_volumes,
    ] {
        let namespace = ns(&[("tracemesh.io/inject", "enabled")]);
        let m = mutate(&original, &namespace, &config()).unwrap();
        let patched = apply(&original, &m.patch);
        let mut meta: ObjectMeta = serde_json::from_value(original["metadata"].clone()).unwrap();
        let mut spec: PodSpec = serde_json::from_value(original["spec"].clone()).unwrap();
        inject_pod_spec(&mut meta, &mut spec, &namespace, Some("web"), &config()).unwrap();
        assert_eq!(patched["spec"], serde_json::to_value(&spec).unwrap());
        let volumes = patched["spec"]["volumes"].as_array().unwrap();
        let ours = volumes.last().unwrap();
        assert_eq!(ours["name"], "tracemesh-config");
        assert_eq!(
            ours["configMap"],
            json!({"name": "shop-tracing", "optional": true})
        );
        assert_eq!(
            patched["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": "tracemesh-config", "mountPath": "/etc/tracemesh/config", "readOnly": true}])
        );
    }
}
