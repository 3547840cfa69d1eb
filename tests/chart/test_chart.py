"""The Helm chart, linted and rendered by the real Helm SDK (helm-python-sdk), every rendered
document validated against the Kubernetes schemas (kubernetes-validate), and manifests/ checked
to be up to date. The walk-through's manifests in examples/kubernetes/ are validated the same
way, before and after `tracemesh inject`.

    python3 -m unittest discover -s tests/chart -v     # or: python3 tests/chart/test_chart.py

Needs scripts/install-test-deps.sh (helm-python-sdk, kubernetes-validate), openssl, and cargo
for the inject case (or TRACEMESH_BIN naming a built tracemesh binary).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import chartlib  # noqa: E402

import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

# Custom resources (cert-manager, Prometheus Operator) have no schema in kubernetes-validate;
# the tests below check their fields by hand. Anything else without a schema is a failure.
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}

# Every option switched on (and every list non-empty).
ALL_ON = {
    "image": {"repository": "registry.example/tracemesh", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "proxy": {
        "otlpEndpoint": "http://tempo.tracing:4318",
        "otlpProtocol": "http/protobuf",
        "sampleRatio": 0.25,
        "propagators": ["tracecontext", "b3", "b3multi"],
        "skipInboundPorts": [22, 9090],
        "skipOutboundPorts": [5432, 6379],
        "skipOutboundCIDRs": ["169.254.169.254/32", "fd00::/8"],
        "iptables": "iptables-legacy",
        "config": {
            "configMapName": "shop-tracing",
            "namespaces": ["shop", "payments"],
            "samplingRules": "rules:\n  - match: { path_prefix: /internal/ }\n    never: true\n",
            "routes": ["/users/{id}", "/orders/{id}/items/{item}"],
        },
    },
    "webhook": {
        "replicas": 3,
        "failurePolicy": "Fail",
        "namespaceSelector": {
            "matchLabels": {"tracemesh.io/inject": "enabled"},
            "matchExpressions": [{"key": "team", "operator": "In", "values": ["shop"]}],
        },
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"example.com/team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "certManager": {"enabled": True},
    },
    "serviceAccount": {"annotations": {"example.com/sa": "yes"}},
    "metrics": {
        "podAnnotations": False,
        "podMonitor": {"enabled": True, "labels": {"release": "kps"}, "namespaces": ["shop"]},
    },
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
}


def by_kind(docs, kind, name=None):
    found = [d for _, _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def validate_all(test: unittest.TestCase, docs) -> None:
    """Every document against the schemas of chartlib.KUBE_VERSION, strict (unknown fields fail)."""
    test.assertTrue(docs)
    for source, _, doc in docs:
        with test.subTest(source=source, kind=doc.get("kind"), name=doc.get("metadata", {}).get("name")):
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CUSTOM_KINDS:
                test.assertIn("name", doc["metadata"])
                test.assertIn("spec", doc)
                continue
            try:
                kubernetes_validate.validate(doc, chartlib.KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                test.fail(f"{source}: {doc['kind']} {doc['metadata'].get('name')}: {e.message}")


def openssl(*args: str, stdin: bytes | None = None) -> str:
    out = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if out.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {out.stderr.decode().strip()}")
    return out.stdout.decode()


def check_generated_certs(test: unittest.TestCase, docs) -> None:
    """The Secret's CA signed its serving certificate for the Service's DNS names, the key is the
    certificate's, and the webhook configuration trusts that same CA."""
    secret = by_kind(docs, "Secret")
    mwc = by_kind(docs, "MutatingWebhookConfiguration")
    svc = by_kind(docs, "Service")
    test.assertEqual(secret["type"], "kubernetes.io/tls")
    ca_b64 = secret["data"]["ca.crt"]
    test.assertEqual(mwc["webhooks"][0]["clientConfig"]["caBundle"], ca_b64)
    ca, crt, key = (base64.b64decode(secret["data"][k]) for k in ("ca.crt", "tls.crt", "tls.key"))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ca.crt").write_bytes(ca)
        (Path(tmp) / "tls.crt").write_bytes(crt)
        openssl("verify", "-CAfile", str(Path(tmp) / "ca.crt"), str(Path(tmp) / "tls.crt"))
    text = openssl("x509", "-noout", "-text", stdin=crt)
    name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
    for dns in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
        test.assertIn(f"DNS:{dns}", text)
    test.assertEqual(
        openssl("x509", "-noout", "-pubkey", stdin=crt),
        openssl("pkey", "-pubout", stdin=key),
        "tls.key is not the key of tls.crt",
    )


def private_keys(text: str, docs) -> list[str]:
    """Where a PEM private key appears: in the text itself, or base64-encoded (as Secret `data`
    carries it) in any string of any document."""
    found = ["the text"] if "PRIVATE KEY" in text else []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and len(node) >= 16:
            try:
                decoded = base64.b64decode(node, validate=True)
            except ValueError:
                return
            if b"PRIVATE KEY" in decoded:
                found.append(path)

    for source, _, doc in docs:
        walk(doc, f"{source}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}")
    return found


def check_self_issued(test: unittest.TestCase, docs, name: str, secret: str, namespace: str) -> None:
    """webhook.issueOwnCertificate: nothing certificate-related is rendered (no Secret, no
    caBundle, no cert-manager), the webhook is told which Secret, configuration and Service are
    its own (the names the chart gives them), mounts nothing, and RBAC allows exactly the writes
    it makes: create/get/update that Secret, get/patch that configuration."""
    kinds = [(d["apiVersion"], d["kind"]) for _, _, d in docs]
    test.assertNotIn(("v1", "Secret"), kinds)
    test.assertFalse([k for k in kinds if k[0].startswith("cert-manager.io/")])

    mwc = by_kind(docs, "MutatingWebhookConfiguration")
    test.assertEqual(mwc["metadata"]["name"], name)
    test.assertNotIn("annotations", mwc["metadata"])
    for wh in mwc["webhooks"]:
        test.assertNotIn("caBundle", wh["clientConfig"])
    svc = by_kind(docs, "Service")
    test.assertEqual(svc["metadata"]["name"], name)
    test.assertEqual(
        [wh["clientConfig"]["service"] for wh in mwc["webhooks"]],
        [{"name": name, "namespace": namespace, "path": "/mutate", "port": 443}],
    )

    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    test.assertEqual(
        c["args"],
        ["webhook", f"--tls-secret={secret}", f"--webhook-config={name}", f"--service={name}"],
    )
    # The Secret's namespace: the webhook's own, from the downward API.
    (ns_env,) = [e for e in c["env"] if e["name"] == "TRACEMESH_POD_NAMESPACE"]
    test.assertEqual(ns_env["valueFrom"], {"fieldRef": {"fieldPath": "metadata.namespace"}})
    test.assertNotIn("volumes", pod)
    test.assertNotIn("volumeMounts", c)
    test.assertTrue(pod["automountServiceAccountToken"])

    sa = pod["serviceAccountName"]
    subject = [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]
    role = by_kind(docs, "Role")
    test.assertEqual(role["metadata"]["namespace"], namespace)
    test.assertEqual(role["rules"], [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get", "update"]},
    ])
    binding = by_kind(docs, "RoleBinding")
    test.assertEqual(binding["metadata"]["namespace"], namespace)
    test.assertEqual(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]})
    test.assertEqual(binding["subjects"], subject)
    cluster_role = by_kind(docs, "ClusterRole")
    test.assertEqual(cluster_role["rules"], [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
         "resourceNames": [name], "verbs": ["get", "patch"]},
    ])
    test.assertEqual(by_kind(docs, "ClusterRoleBinding")["subjects"], subject)


class Validator(unittest.TestCase):
    """The schema check is not vacuous: an unknown field and a wrong type are caught."""

    def test_rejects_bad_documents(self):
        dep = by_kind(chartlib.documents(chartlib.render()), "Deployment")
        dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(dep, chartlib.KUBE_VERSION, strict=True)
        dep = by_kind(chartlib.documents(chartlib.render()), "Deployment")
        dep["spec"]["replicas"] = "two"
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(dep, chartlib.KUBE_VERSION, strict=True)


class Lint(unittest.TestCase):
    def assert_clean(self, report):
        self.assertEqual(report["errors"], [])
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(problems, [], json.dumps(report, indent=1))
        self.assertEqual(report["total_charts_linted"], 1)

    def test_defaults(self):
        self.assert_clean(chartlib.lint())

    def test_every_option_on(self):
        self.assert_clean(chartlib.lint(ALL_ON))

    def test_issue_own_certificate(self):
        self.assert_clean(chartlib.lint(chartlib.MANIFEST_VALUES))


class Defaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = chartlib.render()
        cls.docs = chartlib.documents(cls.rendered)

    def test_validates_against_kubernetes_schema(self):
        validate_all(self, self.docs)

    def test_kinds(self):
        kinds = sorted(d["kind"] for _, _, d in self.docs)
        self.assertEqual(kinds, sorted([
            "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
            "MutatingWebhookConfiguration", "PodDisruptionBudget", "Secret", "Service",
            "ServiceAccount",
        ]))

    def test_webhook_deployment(self):
        dep = by_kind(self.docs, "Deployment")
        self.assertEqual(dep["spec"]["replicas"], 2)
        pod = dep["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(pod["securityContext"]["runAsUser"], 2102)
        (c,) = pod["containers"]
        self.assertEqual(c["args"][0], "webhook")
        self.assertIn("--tls-cert=/etc/tracemesh/tls/tls.crt", c["args"])
        self.assertIn("--tls-key=/etc/tracemesh/tls/tls.key", c["args"])
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertEqual(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS")
        self.assertEqual(c["ports"][0]["containerPort"], 8443)
        self.assertEqual(c["envFrom"][0]["configMapRef"]["name"], "tracemesh-proxy-config")
        self.assertEqual(pod["volumes"][0]["secret"]["secretName"], "tracemesh-webhook-tls")
        # The injector never injects itself.
        self.assertEqual(dep["spec"]["template"]["metadata"]["labels"]["tracemesh.io/inject"], "disabled")

    def test_service_443_to_8443(self):
        svc = by_kind(self.docs, "Service")
        (port,) = svc["spec"]["ports"]
        self.assertEqual((port["port"], port["targetPort"]), (443, "https"))
        self.assertEqual(svc["spec"]["selector"], by_kind(self.docs, "Deployment")["spec"]["selector"]["matchLabels"])

    def test_mutating_webhook(self):
        (wh,) = by_kind(self.docs, "MutatingWebhookConfiguration")["webhooks"]
        self.assertEqual(wh["clientConfig"]["service"]["path"], "/mutate")
        self.assertEqual(wh["clientConfig"]["service"]["name"], "tracemesh-webhook")
        self.assertEqual(wh["sideEffects"], "None")
        self.assertEqual(wh["admissionReviewVersions"], ["v1"])
        self.assertEqual(wh["failurePolicy"], "Ignore")
        # Every namespace but these is sent: the webhook reads the namespace's label and
        # annotation itself, so a namespace opted in by annotation alone is injected too.
        self.assertEqual(
            wh["namespaceSelector"],
            {"matchExpressions": [
                {"key": "tracemesh.io/inject", "operator": "NotIn", "values": ["disabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system", "kube-node-lease", "kube-public"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["tracemesh"]},
            ]},
        )
        self.assertEqual(
            wh["objectSelector"]["matchExpressions"],
            [{"key": "tracemesh.io/inject", "operator": "NotIn", "values": ["disabled"]}],
        )
        self.assertEqual(wh["rules"][0]["resources"], ["pods"])

    def test_generated_certificates(self):
        check_generated_certs(self, self.docs)

    def test_proxy_defaults(self):
        data = by_kind(self.docs, "ConfigMap")["data"]
        self.assertEqual(data["TRACEMESH_INJECT_PROXY_UID"], "2102")
        self.assertEqual(
            [data[f"TRACEMESH_INJECT_{p}_PORT"] for p in ("INBOUND", "OUTBOUND", "ADMIN")],
            ["4143", "4140", "4191"],
        )
        self.assertEqual(data["TRACEMESH_INJECT_PROPAGATORS"], "tracecontext")
        self.assertEqual(data["TRACEMESH_INJECT_SAMPLE_RATIO"], "1")
        # No namespaces for the sampling config: nothing is mounted unless a pod asks.
        self.assertEqual(data["TRACEMESH_INJECT_CONFIG_MAP"], "")
        self.assertEqual(data["TRACEMESH_INJECT_PROMETHEUS_ANNOTATIONS"], "true")
        self.assertEqual(data["TRACEMESH_INJECT_IMAGE"], "ghcr.io/tracemesh/tracemesh:0.1.0")
        json.loads(data["TRACEMESH_INJECT_PROXY_RESOURCES"])

    def test_minimal_rbac(self):
        role = by_kind(self.docs, "ClusterRole")
        self.assertEqual(
            role["rules"],
            [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}],
        )
        self.assertFalse({"Role", "RoleBinding"} & {d["kind"] for _, _, d in self.docs})
        pod = by_kind(self.docs, "Deployment")["spec"]["template"]["spec"]
        self.assertTrue(pod["automountServiceAccountToken"])

    def test_without_rbac_the_webhook_still_gets_a_token(self):
        # rbac.create=false means "I bind the permission myself", not "no API access": the
        # webhook reads namespaces either way and cannot start without a token.
        docs = chartlib.documents(chartlib.render({"rbac": {"create": False}}))
        kinds = {d["kind"] for _, _, d in docs}
        self.assertFalse(kinds & {"ClusterRole", "ClusterRoleBinding"})
        self.assertTrue(by_kind(docs, "ServiceAccount")["automountServiceAccountToken"])
        pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
        self.assertTrue(pod["automountServiceAccountToken"])

    def test_pdb(self):
        pdb = by_kind(self.docs, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["minAvailable"], 1)

    def test_notes(self):
        notes = self.rendered["tracemesh/templates/NOTES.txt"]
        self.assertIn("kubectl label namespace <your-namespace> tracemesh.io/inject=enabled\n", notes)
        self.assertIn("kubectl annotate namespace <your-namespace> tracemesh.io/inject=enabled\n", notes)
        self.assertIn("rollout restart", notes)
        self.assertIn("http://otel-collector.observability.svc:4317", notes)
        self.assertIn(":4191/metrics", notes)


class EveryOptionOn(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = chartlib.render(ALL_ON)
        cls.docs = chartlib.documents(cls.rendered)

    def test_validates_against_kubernetes_schema(self):
        validate_all(self, self.docs)

    def test_cert_manager_replaces_generated_certs(self):
        kinds = [(d["apiVersion"], d["kind"]) for _, _, d in self.docs]
        self.assertNotIn(("v1", "Secret"), kinds)
        self.assertEqual(kinds.count(("cert-manager.io/v1", "Issuer")), 2)
        self.assertEqual(kinds.count(("cert-manager.io/v1", "Certificate")), 2)
        serving = by_kind(self.docs, "Certificate", "tracemesh-webhook")
        self.assertEqual(serving["spec"]["secretName"], "tracemesh-webhook-tls")
        # The webhook serves the Secret cert-manager writes, mounted as files.
        pod = by_kind(self.docs, "Deployment")["spec"]["template"]["spec"]
        (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        self.assertEqual(tls["secret"]["secretName"], serving["spec"]["secretName"])
        (c,) = pod["containers"]
        self.assertIn("--tls-cert=/etc/tracemesh/tls/tls.crt", c["args"])
        self.assertFalse([a for a in c["args"] if a.startswith("--tls-secret")])
        self.assertFalse({"Role", "RoleBinding"} & {k for _, k in kinds})
        self.assertIn("tracemesh-webhook.tracemesh.svc", serving["spec"]["dnsNames"])
        self.assertEqual(serving["spec"]["issuerRef"]["name"], "tracemesh-ca")
        ca = by_kind(self.docs, "Certificate", "tracemesh-ca")
        self.assertTrue(ca["spec"]["isCA"])
        mwc = by_kind(self.docs, "MutatingWebhookConfiguration")
        self.assertEqual(
            mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "tracemesh/tracemesh-webhook"
        )
        (wh,) = mwc["webhooks"]
        self.assertNotIn("caBundle", wh["clientConfig"])
        self.assertEqual(wh["failurePolicy"], "Fail")
        self.assertIn({"key": "team", "operator": "In", "values": ["shop"]}, wh["namespaceSelector"]["matchExpressions"])

    def test_label_only_namespace_selector(self):
        (wh,) = by_kind(self.docs, "MutatingWebhookConfiguration")["webhooks"]
        self.assertEqual(wh["namespaceSelector"]["matchLabels"], {"tracemesh.io/inject": "enabled"})
        # A matchExpressions of one's own replaces the defaults; the release's namespace stays out.
        self.assertEqual(
            wh["namespaceSelector"]["matchExpressions"],
            [{"key": "team", "operator": "In", "values": ["shop"]},
             {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["tracemesh"]}],
        )
        notes = self.rendered["tracemesh/templates/NOTES.txt"]
        self.assertIn("kubectl label namespace <your-namespace> tracemesh.io/inject=enabled\n", notes)
        self.assertIn("an annotation alone is not enough", notes)
        self.assertNotIn("kubectl annotate namespace", notes)
        notes = chartlib.render({"webhook": {"namespaceSelector": {"matchLabels": {"team": "shop"}}}})[
            "tracemesh/templates/NOTES.txt"
        ]
        self.assertIn(
            "kubectl label namespace <your-namespace> team=shop tracemesh.io/inject=enabled\n", notes
        )

    def test_values_reach_the_config(self):
        data = by_kind(self.docs, "ConfigMap", "tracemesh-proxy-config")["data"]
        self.assertEqual(data["TRACEMESH_INJECT_IMAGE"], "registry.example/tracemesh:1.2.3")
        self.assertEqual(data["TRACEMESH_INJECT_SKIP_INBOUND_PORTS"], "22,9090")
        self.assertEqual(data["TRACEMESH_INJECT_SKIP_OUTBOUND_PORTS"], "5432,6379")
        self.assertEqual(data["TRACEMESH_INJECT_SKIP_OUTBOUND_CIDRS"], "169.254.169.254/32,fd00::/8")
        self.assertEqual(data["TRACEMESH_INJECT_PROPAGATORS"], "tracecontext,b3,b3multi")
        self.assertEqual(data["TRACEMESH_INJECT_SAMPLE_RATIO"], "0.25")
        self.assertEqual(data["TRACEMESH_INJECT_OTLP_PROTOCOL"], "http/protobuf")
        self.assertEqual(data["TRACEMESH_INJECT_PROMETHEUS_ANNOTATIONS"], "false")
        self.assertEqual(data["TRACEMESH_INJECT_IPTABLES"], "iptables-legacy")
        self.assertEqual(data["TRACEMESH_INJECT_CONFIG_MAP"], "shop-tracing")
        dep = by_kind(self.docs, "Deployment")
        self.assertEqual(dep["spec"]["replicas"], 3)
        self.assertEqual(dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always")

    def test_sampling_config_lands_in_each_namespace_and_the_proxy_accepts_it(self):
        copies = [d for _, _, d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "shop-tracing"]
        self.assertEqual(sorted(c["metadata"]["namespace"] for c in copies), ["payments", "shop"])
        for c in copies:
            self.assertEqual(c["data"]["routes"], "/users/{id}\n/orders/{id}/items/{item}")
            self.assertEqual(c["data"]["sampling-rules.yaml"], ALL_ON["proxy"]["config"]["samplingRules"])
        # What the chart writes is what the proxy loads: the real binary parses both files.
        with tempfile.TemporaryDirectory() as d:
            for key, text in copies[0]["data"].items():
                with open(os.path.join(d, key), "w") as f:
                    f.write(text)
            out = subprocess.run(
                [tracemesh_binary(), "check-config",
                 "--sampling-rules", os.path.join(d, "sampling-rules.yaml"),
                 "--routes-file", os.path.join(d, "routes")],
                capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("3 sampling rules", out.stdout)
            self.assertIn("2 route templates", out.stdout)

    def test_pod_monitor(self):
        pm = by_kind(self.docs, "PodMonitor")
        self.assertEqual(pm["metadata"]["labels"]["release"], "kps")
        self.assertEqual(pm["spec"]["namespaceSelector"], {"matchNames": ["shop"]})
        self.assertEqual(pm["spec"]["podMetricsEndpoints"][0]["port"], "tm-admin")
        self.assertIn("PodMonitor tracemesh-proxies", self.rendered["tracemesh/templates/NOTES.txt"])

    def test_grafana_dashboard(self):
        cm = by_kind(self.docs, "ConfigMap", "tracemesh-dashboard")
        self.assertEqual(cm["metadata"]["namespace"], "monitoring")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        dashboard = json.loads(cm["data"]["tracemesh-red.json"])
        self.assertEqual(dashboard["uid"], "tracemesh-red")


class IssueOwnCertificate(unittest.TestCase):
    """webhook.issueOwnCertificate, under another name than the release's: the flags and RBAC
    follow the chart's names."""

    @classmethod
    def setUpClass(cls):
        cls.values = {"fullnameOverride": "tm", "webhook": {"issueOwnCertificate": True}}
        cls.rendered = chartlib.render(cls.values)
        cls.docs = chartlib.documents(cls.rendered)

    def test_validates_against_kubernetes_schema(self):
        validate_all(self, self.docs)

    def test_the_webhook_issues_its_certificate(self):
        check_self_issued(self, self.docs, name="tm-webhook", secret="tm-webhook-tls", namespace="tracemesh")

    def test_notes_say_pods_are_uninjected_until_the_ca_bundle_is_set(self):
        notes = self.rendered["tracemesh/templates/NOTES.txt"]
        self.assertIn("Secret tm-webhook-tls", notes)
        self.assertIn("admitted without the sidecar", notes)

    def test_without_rbac_no_roles(self):
        docs = chartlib.documents(chartlib.render({**self.values, "rbac": {"create": False}}))
        self.assertFalse({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {d["kind"] for _, _, d in docs})
        self.assertIn("--tls-secret=tm-webhook-tls", by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])

    def test_cert_manager_too_fails_the_render(self):
        values = {"webhook": {"issueOwnCertificate": True, "certManager": {"enabled": True}}}
        with self.assertRaisesRegex(
            Exception, "webhook.certManager.enabled and webhook.issueOwnCertificate are mutually exclusive"
        ):
            chartlib.render(values)


class Files(unittest.TestCase):
    def test_dashboard_copy_matches_example(self):
        self.assertEqual(
            (chartlib.CHART / "dashboards" / "tracemesh-red.json").read_bytes(),
            (chartlib.ROOT / "examples" / "grafana" / "tracemesh-red.json").read_bytes(),
            "charts/tracemesh/dashboards/tracemesh-red.json differs from examples/grafana/: copy it",
        )

    def test_dockerfile(self):
        text = (chartlib.ROOT / "Dockerfile").read_text()
        self.assertIn('ENTRYPOINT ["/usr/local/bin/tracemesh"]', text)
        self.assertIn("USER 2102:2102", text)
        self.assertIn("--release --locked", text)
        self.assertIn("iptables", text)


class Manifests(unittest.TestCase):
    """manifests/tracemesh.yaml: exactly the chart rendered with chartlib.MANIFEST_VALUES, valid,
    and free of key material: the webhook issues its own certificate in the cluster."""

    @classmethod
    def setUpClass(cls):
        cls.text = chartlib.MANIFEST.read_text()
        cls.docs = [("manifests/tracemesh.yaml", "", d) for d in yaml.safe_load_all(cls.text) if d]

    def test_up_to_date(self):
        self.assertEqual(
            self.text,
            chartlib.manifest(),
            "manifests/tracemesh.yaml is out of date: run scripts/render-manifests.sh",
        )

    def test_valid(self):
        validate_all(self, self.docs)
        self.assertEqual(self.docs[0][2]["kind"], "Namespace")

    def test_key_detector_finds_the_charts_generated_key(self):
        # The chart's own default (a chart-generated certificate) carries a base64 key in a
        # Secret: the check below would see one if it were there.
        rendered = chartlib.manifest_text(chartlib.render())
        docs = [("default", "", d) for d in yaml.safe_load_all(rendered) if d]
        self.assertEqual(private_keys(rendered, docs), ["default: Secret tracemesh-webhook-tls.data.tls.key"])

    def test_no_key_material(self):
        self.assertEqual(private_keys(self.text, self.docs), [])
        self.assertNotIn("PRIVATE KEY", self.text)
        tls_secrets = [
            d["metadata"]["name"] for _, _, d in self.docs
            if d["kind"] == "Secret" and d.get("type") == "kubernetes.io/tls"
        ]
        self.assertEqual(tls_secrets, [])
        self.assertNotIn("Secret", {d["kind"] for _, _, d in self.docs})

    def test_the_webhook_issues_its_certificate(self):
        check_self_issued(
            self, self.docs, name="tracemesh-webhook", secret="tracemesh-webhook-tls", namespace="tracemesh"
        )

    def test_readme_and_header_need_no_cert_manager(self):
        # A plain apply is the whole install: neither tells you to install cert-manager first.
        readme = (chartlib.ROOT / "README.md").read_text()
        for name, text in (("manifests/tracemesh.yaml", self.text), ("README.md", readme)):
            with self.subTest(file=name):
                self.assertIn("kubectl apply -f manifests/tracemesh.yaml", text)
                self.assertNotIn("cert-manager/releases", text)
                self.assertIn("webhook.certManager.enabled=true", text)
        self.assertIn("webhook.issueOwnCertificate=true", self.text)


EXAMPLES = chartlib.ROOT / "examples" / "kubernetes"
DEMO_NAMESPACE = "tracemesh-demo"
DEMO_SERVICES = ("frontend", "orders", "inventory")


def example_documents() -> list[tuple[str, str, dict]]:
    """Every document in examples/kubernetes/*.yaml, as (file, "", parsed) like validate_all takes."""
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"examples/kubernetes/{path.name}", "", doc))
    return docs


def pod_template(doc: dict) -> dict:
    return doc["spec"]["template"]


def tracemesh_binary() -> str:
    """The tracemesh binary: $TRACEMESH_BIN, else the one `cargo test --all-targets` builds.

    scripts/test.sh runs these tests just before that same `cargo test`, so building with the same
    arguments here costs nothing extra: the test run that follows finds every artifact fresh. A
    plain `cargo build` or `cargo run` would resolve the dependencies' features without the
    dev-dependencies and compile most of them a second time.
    """
    if os.environ.get("TRACEMESH_BIN"):
        return os.environ["TRACEMESH_BIN"]
    if shutil.which("cargo") is None:
        raise unittest.SkipTest("cargo not found and TRACEMESH_BIN not set")
    out = subprocess.run(
        ["cargo", "test", "--locked", "--all-targets", "--no-run",
         "--message-format=json-render-diagnostics"],
        cwd=chartlib.ROOT, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"cargo test --no-run failed:\n{out.stderr[-4000:]}")
    for line in out.stdout.splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        target = msg.get("target", {})
        if (msg.get("reason") == "compiler-artifact" and target.get("name") == "tracemesh"
                and target.get("kind") == ["bin"] and not msg["profile"]["test"]):
            return msg["executable"]
    raise AssertionError("cargo built no tracemesh binary")


class Examples(unittest.TestCase):
    """examples/kubernetes/, the README's walk-through: valid as written and after
    `tracemesh inject`, and consistent with itself (no cluster here, so nothing is applied)."""

    @classmethod
    def setUpClass(cls):
        cls.docs = example_documents()

    def find(self, kind, name):
        found = [d for _, _, d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        self.assertEqual(len(found), 1, f"{kind} {name}")
        return found[0]

    def test_validates_against_kubernetes_schema(self):
        self.assertEqual(
            sorted(p.name for p in EXAMPLES.glob("*.yaml")), ["demo.yaml", "jaeger.yaml", "namespace.yaml"]
        )
        validate_all(self, self.docs)

    def test_demo_pods_opt_in_and_export_to_the_jaeger_service(self):
        ns = self.find("Namespace", DEMO_NAMESPACE)
        self.assertEqual(ns["metadata"]["labels"]["tracemesh.io/inject"], "enabled")
        jaeger = self.find("Service", "jaeger")
        (otlp,) = [p for p in jaeger["spec"]["ports"] if p["name"] == "otlp-grpc"]
        endpoint = f"http://jaeger.{jaeger['metadata']['namespace']}.svc:{otlp['port']}"
        for name in DEMO_SERVICES:
            with self.subTest(name=name):
                dep = self.find("Deployment", name)
                self.assertEqual(dep["metadata"]["namespace"], DEMO_NAMESPACE)
                annotations = pod_template(dep)["metadata"]["annotations"]
                self.assertEqual(annotations["tracemesh.io/inject"], "enabled")
                self.assertEqual(annotations["tracemesh.io/otlp-endpoint"], endpoint)
        self.assertEqual(
            pod_template(self.find("Deployment", "orders"))["metadata"]["annotations"]["tracemesh.io/propagators"],
            "tracecontext,b3multi",
        )

    def test_upstreams_are_demo_services(self):
        ports = {
            d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
            for _, _, d in self.docs
            if d["kind"] == "Service" and d["metadata"]["namespace"] == DEMO_NAMESPACE
        }
        chain = []
        for name in DEMO_SERVICES:
            (app,) = pod_template(self.find("Deployment", name))["spec"]["containers"]
            env = {e["name"]: e["value"] for e in app["env"]}
            # fake-service forwards the trace headers only while this is on.
            self.assertEqual(env.get("HTTP_CLIENT_APPEND_REQUEST", "true"), "true")
            for uri in filter(None, env.get("UPSTREAM_URIS", "").split(",")):
                host, port = uri.removeprefix("http://").rstrip("/").split(":")
                self.assertIn(int(port), ports.get(host, set()), f"{name} calls {uri}")
                chain.append((name, host))
        self.assertEqual(chain, [("frontend", "orders"), ("orders", "inventory")])

    def test_collector_and_load_job_are_never_injected(self):
        for kind, name in (("Deployment", "jaeger"), ("Job", "load")):
            with self.subTest(kind=kind, name=name):
                meta = pod_template(self.find(kind, name))["metadata"]
                # The label keeps the webhook from being asked (its objectSelector); the
                # annotation is what `tracemesh inject` and the webhook itself read.
                self.assertEqual(meta["labels"]["tracemesh.io/inject"], "disabled")
                self.assertEqual(meta["annotations"]["tracemesh.io/inject"], "disabled")
        ns = self.find("Namespace", self.find("Deployment", "jaeger")["metadata"]["namespace"])
        self.assertNotEqual(ns["metadata"].get("labels", {}).get("tracemesh.io/inject"), "enabled")

    def test_inject_output_validates(self):
        binary = tracemesh_binary()
        text = "".join(f"---\n{p.read_text()}" for p in sorted(EXAMPLES.glob("*.yaml")))
        out = subprocess.run(
            [binary, "inject", "-"], input=text, capture_output=True, text=True, check=False
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        injected = [("tracemesh inject", "", d) for d in yaml.safe_load_all(out.stdout) if d]
        self.assertEqual(len(injected), len(self.docs))
        validate_all(self, injected)
        for _, _, doc in injected:
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            name = doc["metadata"]["name"]
            with self.subTest(name=name):
                meta, spec = pod_template(doc)["metadata"], pod_template(doc)["spec"]
                containers = [c["name"] for c in spec["containers"]]
                init = [c["name"] for c in spec.get("initContainers", [])]
                if name in DEMO_SERVICES:
                    self.assertEqual(meta["annotations"]["tracemesh.io/injected"], "true")
                    self.assertEqual((containers, init), (["tracemesh-proxy", "app"], ["tracemesh-init"]))
                    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
                    self.assertEqual(env["OTEL_SERVICE_NAME"], name)
                    self.assertEqual(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://jaeger.observability.svc:4317")
                else:
                    self.assertEqual(meta["annotations"]["tracemesh.io/inject-skipped"], "disabled")
                    self.assertNotIn("tracemesh-proxy", containers)
                    self.assertEqual(init, [])


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"chart: {result.testsRun - failed - len(result.skipped)} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() else 1)
