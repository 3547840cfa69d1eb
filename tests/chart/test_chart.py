"""The Helm chart, linted and rendered by the real Helm SDK (helm-python-sdk), every rendered
document validated against the Kubernetes schemas (kubernetes-validate), and manifests/ checked
to be up to date.

    python3 -m unittest discover -s tests/chart -v     # or: python3 tests/chart/test_chart.py

Needs scripts/install-test-deps.sh (helm-python-sdk, kubernetes-validate) and openssl.
"""

from __future__ import annotations

import base64
import json
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
        self.assertEqual(wh["namespaceSelector"]["matchLabels"], {"tracemesh.io/inject": "enabled"})
        self.assertIn(
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["tracemesh"]},
            wh["namespaceSelector"]["matchExpressions"],
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
        self.assertEqual(data["TRACEMESH_INJECT_PROMETHEUS_ANNOTATIONS"], "true")
        self.assertEqual(data["TRACEMESH_INJECT_IMAGE"], "ghcr.io/tracemesh/tracemesh:0.1.0")
        json.loads(data["TRACEMESH_INJECT_PROXY_RESOURCES"])

    def test_minimal_rbac(self):
        role = by_kind(self.docs, "ClusterRole")
        self.assertEqual(
            role["rules"],
            [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}],
        )

    def test_pdb(self):
        pdb = by_kind(self.docs, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["minAvailable"], 1)

    def test_notes(self):
        notes = self.rendered["tracemesh/templates/NOTES.txt"]
        self.assertIn("kubectl label namespace <your-namespace> tracemesh.io/inject=enabled", notes)
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
        dep = by_kind(self.docs, "Deployment")
        self.assertEqual(dep["spec"]["replicas"], 3)
        self.assertEqual(dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always")

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
    """manifests/tracemesh.yaml: up to date with the chart, valid, and its committed key material
    consistent (the up-to-date comparison masks it, so it is checked here)."""

    @classmethod
    def setUpClass(cls):
        cls.text = chartlib.MANIFEST.read_text()
        cls.docs = [("manifests/tracemesh.yaml", "", d) for d in yaml.safe_load_all(cls.text) if d]

    def test_up_to_date(self):
        fresh = chartlib.manifest_text(chartlib.render())
        self.assertEqual(
            chartlib.mask_keys(self.text),
            chartlib.mask_keys(fresh),
            "manifests/tracemesh.yaml is out of date: run scripts/render-manifests.sh",
        )

    def test_valid(self):
        validate_all(self, self.docs)
        self.assertEqual(self.docs[0][2]["kind"], "Namespace")

    def test_committed_certificates(self):
        check_generated_certs(self, self.docs)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"chart: {result.testsRun - failed - len(result.skipped)} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() else 1)
