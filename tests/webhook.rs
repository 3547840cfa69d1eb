//! `tracemesh webhook` over real TLS: the real binary, a CA and serving certificate made by
//! rcgen, `AdmissionReview` JSON as the API server sends it (tests/golden/webhook/), and the JSON
//! patch it answers applied with the json-patch crate, then compared with what `tracemesh inject`
//! writes for the same pod template.
//!
//! The Kubernetes API is a loopback HTTP server ([`fake_api`]) with the few calls the webhook's
//! RBAC allows: namespace metadata, Secrets in one namespace, one MutatingWebhookConfiguration.
//! The webhook gets a kubeconfig pointing at it, so kube's real client makes the calls.

mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::{json, Value};
use support::{eventually, process::command, serve, DEADLINE};

const REVIEW: &str = include_str!("golden/webhook/pod-create-review.json");
const IMAGE: &str = "registry.example.com/tracemesh:test";

// === certificates ===

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A serving certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM).
    fn serving(&self) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracemesh-webhook-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes through a rename, as kubelet's atomic writer swaps a Secret volume.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// === the webhook process ===

struct Webhook {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// `tracemesh webhook ARGS` with no Kubernetes config from the test's own environment.
fn webhook_command(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Command {
    let mut cmd = command();
    cmd.arg("webhook")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the webhook to its exit: (exit code, all of stderr).
async fn exit_of(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (Option<i32>, String) {
    let mut cmd = webhook_command(args, env);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running tracemesh webhook");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn spawn(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut cmd = webhook_command(args, env);
    let mut child = cmd.spawn().expect("spawning tracemesh webhook");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("webhook: {line}");
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

/// The webhook with the tests' inject defaults; `kubeconfig` None means no namespace lookups.
async fn start(dir: &Path, kubeconfig: Option<&Path>, extra: &[&str]) -> Webhook {
    let mut args = vec![
        format!("--image={IMAGE}"),
        "--otlp-endpoint=http://collector.observability.svc:4317".to_owned(),
        "--sample-ratio=0.25".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    if kubeconfig.is_none() {
        args.push("--namespace-lookup=false".to_owned());
    }
    let env: Vec<(&str, &std::ffi::OsStr)> = kubeconfig
        .map(|k| ("KUBECONFIG", k.as_os_str()))
        .into_iter()
        .collect();
    start_with(dir, &args, &env).await
}

/// The webhook serving `dir`'s tls.crt/tls.key on an ephemeral port, with `args` and `env`.
async fn start_with(dir: &Path, extra: &[String], env: &[(&str, &std::ffi::OsStr)]) -> Webhook {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let mut args = vec![
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        "--tls-reload-interval=100ms".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    launch(&args, env).await
}

/// Spawns `tracemesh webhook --listen 127.0.0.1:0 ARGS` and waits for its listening line.
async fn launch(extra: &[String], env: &[(&str, &std::ffi::OsStr)]) -> Webhook {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, lines) = spawn(&args, env);
    let addr = eventually(DEADLINE, "`webhook listening listen=..`", || {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            let rest = l.split("listen=").nth(1)?;
            rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
        });
        if found.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "webhook exited with {status}:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        }
        async move { found }
    })
    .await;
    Webhook { child, lines, addr }
}

// === a TLS client ===

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
    alpn: Option<Vec<u8>>,
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn handshake(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    handshake_as(addr, ca_pem, alpn, "localhost").await
}

/// A TLS handshake that verifies the server as `name` against `ca_pem` alone.
async fn handshake_as(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem, alpn)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

async fn send(addr: SocketAddr, ca_pem: &str, h2: bool, req: Request<Full<Bytes>>) -> Reply {
    send_to(addr, ca_pem, "localhost", h2, req).await
}

async fn send_to(
    addr: SocketAddr,
    ca_pem: &str,
    name: &str,
    h2: bool,
    req: Request<Full<Bytes>>,
) -> Reply {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = handshake_as(addr, ca_pem, alpn, name)
        .await
        .expect("TLS handshake");
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let rsp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let status = rsp.status();
    let content_type = rsp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        content_type,
        body,
        alpn: negotiated,
    }
}

fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(format!("https://localhost{path}"))
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

fn review_in(namespace: &str) -> Value {
    let mut review: Value = serde_json::from_str(REVIEW).unwrap();
    review["request"]["namespace"] = json!(namespace);
    review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    review
}

/// The answer's `response`, with its patch applied to the review's pod (None: no patch).
fn patched(review: &Value, reply: &Reply) -> (Value, Option<Value>) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.content_type, "application/json");
    let answer: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"]);
    if response.get("patch").is_none() {
        assert!(response.get("patchType").is_none(), "{response}");
        return (response, None);
    }
    assert_eq!(response["patchType"], "JSONPatch");
    // kube writes the patch bytes as a JSON array of numbers, which the API server's Go decoder
    // reads into its []byte as well as the base64 string Go itself writes; kube's types decode it.
    assert!(response["patch"].is_array(), "{response}");
    let typed: kube::core::admission::AdmissionReview<kube::core::DynamicObject> =
        serde_json::from_slice(&reply.body).unwrap();
    let bytes = typed.response.unwrap().patch.unwrap();
    let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &ops).expect("the patch applies to the pod the API server sent");
    (response, Some(pod))
}

/// Sends the review pod in `namespace`; asserts it is admitted without a patch, and returns the
/// warning the answer carries.
async fn admitted_with_warning(webhook: &Webhook, ca_pem: &str, namespace: &str) -> String {
    let review = review_in(namespace);
    let reply = send(
        webhook.addr,
        ca_pem,
        false,
        post("/mutate", review.to_string()),
    )
    .await;
    let (response, pod) = patched(&review, &reply);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(pod.is_none(), "no patch with a warning");
    response["warnings"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no warning: {response}"))
        .to_owned()
}

/// `tracemesh inject` on a Deployment `checkout` whose template is the review's pod, with the
/// webhook's defaults; returns the injected template.
fn inject_template(review: &Value) -> Value {
    let pod = &review["request"]["object"];
    let mut labels = pod["metadata"]["labels"].clone();
    labels.as_object_mut().unwrap().remove("pod-template-hash");
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "checkout", "namespace": pod["metadata"]["namespace"]},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": {
                "metadata": {"labels": labels, "annotations": pod["metadata"]["annotations"]},
                "spec": pod["spec"],
            }
        }
    });
    let dir = TempDir::new("inject");
    let input = dir.0.join("deployment.yaml");
    std::fs::write(&input, serde_yaml_ng::to_string(&deployment).unwrap()).unwrap();
    let out = command()
        .args(["inject", &format!("--image={IMAGE}")])
        .args([
            "--otlp-endpoint=http://collector.observability.svc:4317",
            "--sample-ratio=0.25",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    injected["spec"]["template"].clone()
}

#[tokio::test]
async fn patches_over_tls_equal_tracemesh_inject_for_the_same_pod() {
    let dir = TempDir::new("patch");
    let ca = Ca::new("test webhook CA");
    let (cert, key) = ca.serving();
    std::fs::write(dir.0.join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let mut state = ApiState::default();
    let namespaces = json!({
        "shop": {"name": "shop", "labels": {"tracemesh.io/inject": "enabled", "kubernetes.io/metadata.name": "shop"}},
        "annotated": {"name": "annotated", "annotations": {"tracemesh.io/inject": "enabled"}},
        "plain": {"name": "plain", "labels": {"team": "a"}},
        "opted-out": {"name": "opted-out", "labels": {"tracemesh.io/inject": "enabled"}, "annotations": {"tracemesh.io/inject": "disabled"}},
        "locked": {"name": "locked", "labels": {"tracemesh.io/inject": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}},
    });
    for (name, meta) in namespaces.as_object().unwrap() {
        state.namespaces.insert(name.clone(), meta.clone());
    }
    let api = fake_api(&dir.0, state).await;
    let webhook = start(&dir.0, Some(&api.kubeconfig), &[]).await;

    // Opted in by label (over HTTP/1.1) and by annotation (over HTTP/2): the same injection.
    for (namespace, h2) in [("shop", false), ("annotated", true)] {
        let review = review_in(namespace);
        let reply = send(
            webhook.addr,
            &ca.pem,
            h2,
            post("/mutate", review.to_string()),
        )
        .await;
        let expected_alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        assert_eq!(reply.alpn.as_deref(), Some(expected_alpn));
        let (response, pod) = patched(&review, &reply);
        assert_eq!(response["allowed"], true);
        assert!(response.get("warnings").is_none(), "{response}");
        let pod = pod.expect("an opted-in pod gets a patch");
        let template = inject_template(&review);
        assert_eq!(pod["spec"], template["spec"], "namespace {namespace}");
        assert_eq!(
            pod["metadata"]["annotations"], template["metadata"]["annotations"],
            "namespace {namespace}"
        );
        // Everything outside what injection adds is as the API server sent it.
        let original = &review["request"]["object"];
        for key in ["labels", "ownerReferences", "managedFields", "generateName"] {
            assert_eq!(pod["metadata"][key], original["metadata"][key], "{key}");
        }
        assert_eq!(pod["status"], original["status"]);
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers[0]["name"], "tracemesh-proxy");
        assert_eq!(containers[1], original["spec"]["containers"][0]);
        let env = containers[0]["env"].as_array().unwrap();
        // The Deployment's name (the ReplicaSet's minus its hash) names the service.
        assert!(
            env.contains(&json!({"name": "OTEL_SERVICE_NAME", "value": "checkout"})),
            "{env:?}"
        );
        // The pod's own annotation beat the webhook's default propagators.
        assert!(
            env.contains(&json!({"name": "OTEL_PROPAGATORS", "value": "tracecontext,b3multi"})),
            "{env:?}"
        );
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "tracemesh-init");
    }

    // Not opted in: admitted as is. Opted out by annotation over label: the reason is recorded.
    let review = review_in("plain");
    let reply = send(
        webhook.addr,
        &ca.pem,
        false,
        post("/mutate", review.to_string()),
    )
    .await;
    let (response, pod) = patched(&review, &reply);
    assert_eq!(response["allowed"], true);
    assert!(pod.is_none(), "{response}");

    let review = review_in("opted-out");
    let reply = send(
        webhook.addr,
        &ca.pem,
        false,
        post("/mutate", review.to_string()),
    )
    .await;
    let (_, pod) = patched(&review, &reply);
    let pod = pod.expect("the skip reason is patched in");
    assert_eq!(
        pod["metadata"]["annotations"]["tracemesh.io/inject-skipped"],
        "disabled"
    );
    assert_eq!(pod["spec"], review["request"]["object"]["spec"]);
    assert_eq!(
        api.state.lock().unwrap().cached_namespace_reads,
        4,
        "one cached metadata GET of the namespace per review"
    );

    // A namespace the API does not know: the lookup fails, the pod is admitted with a warning
    // and no patch (the default --on-error=allow).
    let warning = admitted_with_warning(&webhook, &ca.pem, "gone").await;
    assert!(
        warning.starts_with("tracemesh: sidecar not injected: looking up namespace \"gone\""),
        "{warning}"
    );
    assert!(
        warning.ends_with("namespaces \"gone\" not found (404)"),
        "{warning}"
    );

    // Pod Security "restricted" would reject the injected init container: admitted as is, with
    // a warning that says what to change.
    let warning = admitted_with_warning(&webhook, &ca.pem, "locked").await;
    assert!(warning.contains("Pod Security \"restricted\""), "{warning}");
    assert!(
        webhook.logs().contains("outcome=\"injected\""),
        "{}",
        webhook.logs()
    );
}

#[tokio::test]
async fn malformed_reviews_get_a_clear_400_and_the_webhook_keeps_serving() {
    let dir = TempDir::new("malformed");
    let ca = Ca::new("test webhook CA");
    let (cert, key) = ca.serving();
    std::fs::write(dir.0.join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let webhook = start(&dir.0, None, &["--on-error=reject"]).await;

    let mut v1beta1 = review_in("shop");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_object_kind = review_in("shop");
    no_object_kind["request"]["kind"] = json!("Pod");
    let cases: Vec<(Bytes, &str)> = vec![
        (
            Bytes::from_static(b"{\"apiVersion\":"),
            "not an AdmissionReview: EOF",
        ),
        (Bytes::from_static(b"\xff\xfe"), "not an AdmissionReview"),
        (
            Bytes::from(v1beta1.to_string()),
            "expected an admission.k8s.io/v1 AdmissionReview, got \"admission.k8s.io/v1beta1\"",
        ),
        (
            Bytes::from(no_object_kind.to_string()),
            "not an AdmissionReview",
        ),
        (
            Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            "the AdmissionReview has no request",
        ),
    ];
    for (body, expected) in cases {
        let reply = send(webhook.addr, &ca.pem, false, post("/mutate", body.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        let answer: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body:?}: {message}");
    }

    // Three times the limit: more than the socket buffers hold, so the client is still writing
    // when the answer comes, and reads it only if the webhook reads on before it closes.
    let huge = vec![b' '; 12 << 20];
    let reply = send(webhook.addr, &ca.pem, false, post("/mutate", huge)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let get = Request::get("https://localhost/mutate")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(webhook.addr, &ca.pem, false, get).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // An invalid annotation with --on-error=reject: denied with the reason, never patched.
    let mut bad = review_in("shop");
    bad["request"]["object"]["metadata"]["annotations"]["tracemesh.io/skip-inbound-ports"] =
        json!("80,http");
    let reply = send(
        webhook.addr,
        &ca.pem,
        false,
        post("/mutate", bad.to_string()),
    )
    .await;
    let (response, pod) = patched(&bad, &reply);
    assert_eq!(response["allowed"], false);
    assert!(pod.is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("tracemesh.io/skip-inbound-ports") && message.contains("\"http\""),
        "{message}"
    );

    // Still serving: a good review is injected (no namespace lookup: the selector decided).
    let review = review_in("shop");
    let reply = send(
        webhook.addr,
        &ca.pem,
        false,
        post("/mutate", review.to_string()),
    )
    .await;
    let (response, pod) = patched(&review, &reply);
    assert_eq!(response["allowed"], true);
    assert!(pod.is_some());
    let ready = Request::get("https://localhost/ready")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(webhook.addr, &ca.pem, true, ready).await.status,
        StatusCode::OK
    );
    assert!(!webhook.logs().contains("panicked"), "{}", webhook.logs());
}

#[tokio::test]
async fn rotated_certificates_are_served_without_a_restart() {
    let dir = TempDir::new("rotate");
    let (cert_path, key_path) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    let old = Ca::new("old CA");
    let (cert, key) = old.serving();
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let webhook = start(&dir.0, None, &[]).await;
    handshake(webhook.addr, &old.pem, &[])
        .await
        .expect("old CA trusted");

    // A half-written update (certificate of the new pair, key of the old): kept out.
    let new = Ca::new("new CA");
    let (new_cert, new_key) = new.serving();
    write_atomically(&cert_path, &new_cert);
    let lines = webhook.lines.clone();
    eventually(DEADLINE, "the bad pair to be refused", || {
        let seen =
            lines.lock().unwrap().iter().any(|l| {
                l.contains("serving certificate not reloaded") && l.contains("does not fit")
            });
        async move { seen.then_some(()) }
    })
    .await;
    handshake(webhook.addr, &old.pem, &[])
        .await
        .expect("still the old certificate");

    write_atomically(&key_path, &new_key);
    let addr = webhook.addr;
    let new_pem = new.pem.clone();
    eventually(DEADLINE, "the new certificate to be served", || {
        let pem = new_pem.clone();
        async move { handshake(addr, &pem, &[]).await.ok().map(drop) }
    })
    .await;
    assert!(
        handshake(webhook.addr, &old.pem, &[]).await.is_err(),
        "the old CA no longer verifies"
    );
    assert!(
        webhook.logs().contains("serving certificate reloaded"),
        "{}",
        webhook.logs()
    );
}

#[tokio::test]
async fn start_up_errors_exit_64_with_the_reason() {
    let dir = TempDir::new("startup");
    let cert = format!("--tls-cert={}", dir.0.join("none.crt").display());
    let key = format!("--tls-key={}", dir.0.join("none.key").display());
    let missing = format!(
        "tracemesh webhook: reading {}: No such file or directory",
        dir.0.join("none.crt").display()
    );
    // Each case: flags besides the (missing) certificate files, and what stderr must say.
    let cases: [(&[&str], &str); 5] = [
        (&["--namespace-lookup=false"], &missing),
        (
            &["--proxy-resources={\"limits\":{\"memory\":\"1GB\"}}"],
            "memory: \"1GB\" is not a quantity",
        ),
        (
            &["--skip-outbound-cidrs=169.254.169.254/32,10.0.0.0/33"],
            "\"10.0.0.0/33\": prefix length must be 0..=32",
        ),
        (&["--proxy-uid=0"], "--proxy-uid"),
        (
            &["--admin-port=4143", "--namespace-lookup=false"],
            "the injected proxy's ports must differ: inbound 4143, outbound 4140, admin 4143",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![cert.as_str(), key.as_str()];
        args.extend_from_slice(extra);
        let (code, stderr) = exit_of(&args, &[]).await;
        assert_eq!(code, Some(64), "{args:?}:\n{stderr}");
        assert!(stderr.contains(expected), "{args:?}:\n{stderr}");
    }

    // Namespace lookups on, and no API server config anywhere (no ~/.kube/config in HOME).
    let ca = Ca::new("ca");
    let (pem, key_pem) = ca.serving();
    std::fs::write(dir.0.join("tls.crt"), &pem).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key_pem).unwrap();
    let cert = format!("--tls-cert={}", dir.0.join("tls.crt").display());
    let key = format!("--tls-key={}", dir.0.join("tls.key").display());
    let (code, stderr) = exit_of(&[&cert, &key], &[("HOME", dir.0.as_os_str())]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--namespace-lookup=false"), "{stderr}");
}

/// The rendered chart (manifests/tracemesh.yaml) is the webhook's real configuration: its
/// Deployment's arguments and its ConfigMap's TRACEMESH_INJECT_* values must start the binary
/// and come out in the injected pod.
#[tokio::test]
async fn the_rendered_charts_configuration_drives_the_webhook() {
    use serde::Deserialize as _;
    let manifests = include_str!("../manifests/tracemesh.yaml");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(manifests)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in manifests/tracemesh.yaml"))
    };
    let container = &find("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let chart_args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(chart_args[0], "webhook");
    let chart_env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        chart_env.contains(&"TRACEMESH_WEBHOOK_LISTEN"),
        "{chart_env:?}"
    );
    let config = find("ConfigMap")["data"].as_object().unwrap().clone();
    let namespace = find("Deployment")["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_owned();
    let webhook_config = find("MutatingWebhookConfiguration").clone();
    let config_name = webhook_config["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let service = find("Service")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = chart_args
        .iter()
        .find_map(|a| a.strip_prefix("--tls-secret="))
        .expect("the plain manifests let the webhook issue its certificate")
        .to_owned();

    // The chart's own flags, verbatim (an argument the binary does not know fails the start),
    // against an API that holds the manifests' MutatingWebhookConfiguration.
    let dir = TempDir::new("chart");
    let mut state = ApiState::default();
    state
        .webhook_configs
        .insert(config_name.clone(), webhook_config);
    let api = fake_api(&dir.0, state).await;
    let mut args: Vec<String> = chart_args[1..].iter().map(|a| (*a).to_owned()).collect();
    args.push("--namespace-lookup=false".to_owned());
    let mut values: Vec<(String, std::ffi::OsString)> = config
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
        .collect();
    // What the Deployment's downward-API variable holds in the cluster.
    values.push(("TRACEMESH_POD_NAMESPACE".into(), namespace.clone().into()));
    values.push(("KUBECONFIG".into(), api.kubeconfig.clone().into()));
    let env: Vec<(&str, &std::ffi::OsStr)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_os_str()))
        .collect();
    let webhook = launch(&args, &env).await;

    let ca = named_secret_field(&api.state, &secret, "ca.crt").expect("the Secret was written");
    eventually(
        DEADLINE,
        "caBundle on the manifests' webhook configuration",
        || {
            let set = named_ca_bundle(&api.state, &config_name, 0).as_deref() == Some(ca.as_str());
            async move { set.then_some(()) }
        },
    )
    .await;
    // The name the API server dials, from the configuration's clientConfig.service.
    let dialled = format!("{service}.{namespace}.svc");
    let review = review_in("shop");
    let reply = send_to(
        webhook.addr,
        &ca,
        &dialled,
        false,
        post("/mutate", review.to_string()),
    )
    .await;
    let (_, pod) = patched(&review, &reply);
    let pod = pod.expect("injected");
    let proxy = &pod["spec"]["containers"][0];
    let init = &pod["spec"]["initContainers"][0];
    let value = |key: &str| config[key].as_str().unwrap().to_owned();
    assert_eq!(proxy["image"], value("TRACEMESH_INJECT_IMAGE"));
    assert_eq!(init["image"], value("TRACEMESH_INJECT_IMAGE"));
    assert_eq!(
        proxy["imagePullPolicy"],
        value("TRACEMESH_INJECT_IMAGE_PULL_POLICY")
    );
    let resources: Value =
        serde_json::from_str(&value("TRACEMESH_INJECT_PROXY_RESOURCES")).unwrap();
    assert_eq!(proxy["resources"], resources);
    let resources: Value = serde_json::from_str(&value("TRACEMESH_INJECT_INIT_RESOURCES")).unwrap();
    assert_eq!(init["resources"], resources);
    assert_eq!(
        proxy["securityContext"]["runAsUser"].to_string(),
        value("TRACEMESH_INJECT_PROXY_UID")
    );
    let init_args = init["args"].to_string();
    assert!(
        init_args.contains(&format!(
            "\"--iptables\",\"{}\"",
            value("TRACEMESH_INJECT_IPTABLES")
        )),
        "{init_args}"
    );
    let env = proxy["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": value("TRACEMESH_INJECT_OTLP_ENDPOINT")})), "{env:?}");
    assert!(env.contains(&json!({"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": value("TRACEMESH_INJECT_OTLP_PROTOCOL")})), "{env:?}");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(value("TRACEMESH_INJECT_PROMETHEUS_ANNOTATIONS"), "true");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        value("TRACEMESH_INJECT_ADMIN_PORT")
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[tokio::test]
async fn sigterm_drains_then_stops_the_webhook_cleanly() {
    let dir = TempDir::new("sigterm");
    let ca = Ca::new("ca");
    let (cert, key) = ca.serving();
    std::fs::write(dir.0.join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let mut webhook = start(&dir.0, None, &["--drain-delay=1s"]).await;
    let get = |path: &str| {
        Request::get(format!("https://localhost{path}"))
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        send(webhook.addr, &ca.pem, false, get("/ready"))
            .await
            .status,
        StatusCode::OK
    );
    // An idle keep-alive connection must not hold the exit up.
    let _idle = handshake(webhook.addr, &ca.pem, &[b"http/1.1"])
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(webhook.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();

    // Draining: not ready, so the endpoint goes, but reviews still get answers meanwhile.
    let addr = webhook.addr;
    let pem = ca.pem.clone();
    eventually(DEADLINE, "/ready to answer 503", || {
        let pem = pem.clone();
        async move {
            let reply = send(addr, &pem, false, get("/ready")).await;
            (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        }
    })
    .await;
    let review = review_in("shop");
    let reply = send(
        webhook.addr,
        &ca.pem,
        true,
        post("/mutate", review.to_string()),
    )
    .await;
    assert!(
        patched(&review, &reply).1.is_some(),
        "answered while draining"
    );

    let status = eventually(DEADLINE, "the webhook to exit", || {
        let status = webhook.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status}\n{}", webhook.logs());
    assert!(tokio::net::TcpStream::connect(webhook.addr).await.is_err());
}

#[tokio::test]
async fn connections_that_say_nothing_do_not_hold_slots_or_memory() {
    let dir = TempDir::new("idle");
    let ca = Ca::new("ca");
    let (cert, key) = ca.serving();
    std::fs::write(dir.0.join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let webhook = start(&dir.0, None, &[]).await;
    // A TLS client that stops after the handshake, over HTTP/1.1: closed by the header-read
    // timeout (10 s) rather than kept forever. A TCP client that never starts TLS: dropped
    // after the 5 s handshake timeout. Both watched at once.
    let mut idle = handshake(webhook.addr, &ca.pem, &[b"http/1.1"])
        .await
        .unwrap();
    let mut raw = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let started = std::time::Instant::now();
    let closed = |read: Result<std::io::Result<usize>, _>, what: &str| match read {
        Ok(Ok(0) | Err(_)) => {}
        other => panic!("{what}: {other:?}"),
    };
    let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
    let (tls_read, raw_read) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(&mut idle, &mut a)
        ),
        async {
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::io::AsyncReadExt::read(&mut raw, &mut b),
            )
            .await;
            (r, started.elapsed())
        }
    );
    let (raw_read, raw_after) = raw_read;
    closed(raw_read, "silent TCP connection");
    assert!(raw_after >= Duration::from_secs(4), "{raw_after:?}");
    closed(tls_read, "idle TLS connection");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

// === --tls-secret: the webhook's own certificate ===

/// The slice of the Kubernetes API that `--tls-secret` uses: Secrets in one namespace (get,
/// create, replace with resourceVersion checks, 409 on conflicts) and one
/// MutatingWebhookConfiguration (get, JSON patch applied with the json-patch crate).
#[derive(Default)]
struct ApiState {
    secrets: HashMap<String, Value>,
    webhook_configs: HashMap<String, Value>,
    version: u64,
    creates: Vec<StatusCode>,
    /// Every write to a Secret (create, replace), answered or refused.
    secret_writes: usize,
    /// Namespace metadata by name (`GET /api/v1/namespaces/{name}`).
    namespaces: HashMap<String, Value>,
    /// Namespace reads served as the webhook should ask: metadata only, from the cache.
    cached_namespace_reads: usize,
}

fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "code": code.as_u16(), "message": message}),
    )
}

fn handle_api(
    cached_read: bool,
    state: &Mutex<ApiState>,
    method: &http::Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let mut st = state.lock().unwrap();
    st.version += 1;
    let version = st.version.to_string();
    let config_prefix = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/";
    if let Some(name) = path
        .strip_prefix("/api/v1/namespaces/")
        .filter(|n| !n.contains('/'))
    {
        if cached_read {
            st.cached_namespace_reads += 1;
        }
        return match st.namespaces.get(name) {
            Some(meta) if method == http::Method::GET => (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}),
            ),
            _ => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{name}\" not found"),
            ),
        };
    }
    // /api/v1/namespaces/{namespace}/secrets[/{name}]: one namespace per test.
    let secrets_path = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|rest| rest.split_once("/secrets"))
        .map(|(_, rest)| rest);
    if let Some(rest) = secrets_path {
        let name = rest.trim_start_matches('/').to_owned();
        match (method.as_str(), name.is_empty()) {
            ("GET", false) => match st.secrets.get(&name) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("secrets \"{name}\" not found"),
                ),
            },
            ("POST", true) => {
                let mut obj: Value = serde_json::from_slice(body).unwrap();
                let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
                let answer = match st.secrets.entry(name.clone()) {
                    std::collections::hash_map::Entry::Occupied(_) => status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("secrets \"{name}\" already exists"),
                    ),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        obj["metadata"]["resourceVersion"] = json!(version);
                        slot.insert(obj.clone());
                        (StatusCode::CREATED, obj)
                    }
                };
                st.creates.push(answer.0);
                st.secret_writes += 1;
                answer
            }
            ("PUT", false) => {
                st.secret_writes += 1;
                let mut obj: Value = serde_json::from_slice(body).unwrap();
                let current = st
                    .secrets
                    .get(&name)
                    .map(|v| v["metadata"]["resourceVersion"].clone());
                if current.is_none()
                    || current.as_ref() != Some(&obj["metadata"]["resourceVersion"])
                {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified".into(),
                    );
                }
                obj["metadata"]["resourceVersion"] = json!(version);
                st.secrets.insert(name, obj.clone());
                (StatusCode::OK, obj)
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                path.to_owned(),
            ),
        }
    } else if let Some(name) = path.strip_prefix(config_prefix) {
        let Some(current) = st.webhook_configs.get(name).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("mutatingwebhookconfigurations \"{name}\" not found"),
            );
        };
        match method.as_str() {
            "GET" => (StatusCode::OK, current),
            "PATCH" => {
                let patch: json_patch::Patch = serde_json::from_slice(body).unwrap();
                let mut updated = current;
                if let Err(e) = json_patch::patch(&mut updated, &patch) {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
                }
                updated["metadata"]["resourceVersion"] = json!(version);
                st.webhook_configs.insert(name.to_owned(), updated.clone());
                (StatusCode::OK, updated)
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                path.to_owned(),
            ),
        }
    } else {
        status(StatusCode::NOT_FOUND, "NotFound", path.to_owned())
    }
}

struct FakeApi {
    _served: serve::Served,
    kubeconfig: PathBuf,
    state: Arc<Mutex<ApiState>>,
}

async fn fake_api(dir: &Path, state: ApiState) -> FakeApi {
    fake_api_with(dir, state, 0).await
}

/// With `hold_first_reads > 0`, the first that many Secret GETs are answered together, so
/// that many replicas all see "no Secret" and race to create it.
async fn fake_api_with(dir: &Path, state: ApiState, hold_first_reads: usize) -> FakeApi {
    let state = Arc::new(Mutex::new(state));
    let listener = serve::bind_loopback().await;
    let addr = listener.local_addr().unwrap();
    let shared = state.clone();
    let barrier = Arc::new(tokio::sync::Barrier::new(hold_first_reads.max(1)));
    let held = Arc::new(AtomicUsize::new(0));
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = shared.clone();
        let (barrier, held) = (barrier.clone(), held.clone());
        async move {
            let (parts, body) = req.into_parts();
            let secret_read =
                parts.method == http::Method::GET && parts.uri.path().contains("/secrets/");
            if secret_read && held.fetch_add(1, Ordering::SeqCst) < hold_first_reads {
                barrier.wait().await;
            }
            let body = body.collect().await.unwrap().to_bytes();
            let cached = parts
                .uri
                .query()
                .is_some_and(|q| q.contains("resourceVersion=0"))
                && parts
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
            let (code, value) = handle_api(cached, &state, &parts.method, parts.uri.path(), &body);
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(value.to_string())))
                    .unwrap(),
            )
        }
    });
    let served = serve::serve_http(listener, service);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n\
             current-context: t\n"
        ),
    )
    .unwrap();
    FakeApi {
        _served: served,
        kubeconfig,
        state,
    }
}

fn webhook_config() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "tm-webhook", "resourceVersion": "1"},
        "webhooks": [
            {"name": "other.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"service": {"name": "someone-else", "namespace": "mesh", "path": "/x"}}},
            {"name": "sidecar-injector.tracemesh.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"service": {"name": "tm-webhook", "namespace": "mesh", "path": "/mutate", "port": 443}}}
        ]
    })
}

fn decode_base64(s: &str) -> Vec<u8> {
    // Through k8s-openapi's ByteString, the same decoding the API server's clients use.
    serde_json::from_value::<k8s_openapi::ByteString>(json!(s))
        .unwrap()
        .0
}

fn secret_field(state: &Mutex<ApiState>, key: &str) -> Option<String> {
    named_secret_field(state, "tm-tls", key)
}

fn named_secret_field(state: &Mutex<ApiState>, secret: &str, key: &str) -> Option<String> {
    let st = state.lock().unwrap();
    let encoded = st.secrets.get(secret)?["data"][key].as_str()?.to_owned();
    Some(String::from_utf8(decode_base64(&encoded)).unwrap())
}

fn ca_bundle(state: &Mutex<ApiState>, index: usize) -> Option<String> {
    named_ca_bundle(state, "tm-webhook", index)
}

fn named_ca_bundle(state: &Mutex<ApiState>, config: &str, index: usize) -> Option<String> {
    let st = state.lock().unwrap();
    let encoded = st.webhook_configs[config]["webhooks"][index]["clientConfig"]["caBundle"]
        .as_str()?
        .to_owned();
    Some(String::from_utf8(decode_base64(&encoded)).unwrap())
}

async fn launch_bootstrapped(kubeconfig: &Path) -> Webhook {
    let args: Vec<String> = [
        "--tls-secret=tm-tls",
        "--webhook-config=tm-webhook",
        "--service=tm-webhook",
        "--namespace=mesh",
        "--tls-secret-resync=200ms",
        "--namespace-lookup=false",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    launch(&args, &[("KUBECONFIG", kubeconfig.as_os_str())]).await
}

#[tokio::test]
async fn replicas_agree_on_one_self_issued_certificate_and_keep_the_ca_bundle() {
    let dir = TempDir::new("bootstrap");
    let mut state = ApiState::default();
    state
        .webhook_configs
        .insert("tm-webhook".into(), webhook_config());
    let api = fake_api_with(&dir.0, state, 2).await;

    // Two replicas both read "no Secret" (the API holds both reads until both arrived) and race
    // to create it: one create wins, the other gets 409 and serves the winner's pair.
    let (a, b) = tokio::join!(
        launch_bootstrapped(&api.kubeconfig),
        launch_bootstrapped(&api.kubeconfig)
    );
    let ca = secret_field(&api.state, "ca.crt").expect("the Secret was written");
    let creates = api.state.lock().unwrap().creates.clone();
    assert_eq!(creates, [StatusCode::CREATED, StatusCode::CONFLICT]);
    for replica in [&a, &b] {
        for name in ["tm-webhook.mesh.svc", "tm-webhook.mesh.svc.cluster.local"] {
            handshake_as(replica.addr, &ca, &[], name)
                .await
                .unwrap_or_else(|e| {
                    panic!("{name} against the Secret's CA: {e}\n{}", replica.logs())
                });
        }
    }
    // Our entry of the configuration trusts that CA; someone else's is left alone.
    let lines = a.lines.clone();
    eventually(DEADLINE, "caBundle to be set", || {
        let set = ca_bundle(&api.state, 1).as_deref() == Some(ca.as_str());
        async move { set.then_some(()) }
    })
    .await;
    assert_eq!(ca_bundle(&api.state, 0), None);
    for replica in [&a, &b] {
        let ready = Request::get("https://localhost/ready")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let addr = replica.addr;
        let reply = send_to(addr, &ca, "tm-webhook.mesh.svc", false, ready).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "ready once the bundle trusts it"
        );
    }

    // The Secret deleted: written back with the pair in use, so nothing else changes.
    let before = api.state.lock().unwrap().secrets.remove("tm-tls").unwrap();
    eventually(DEADLINE, "the Secret to be written back", || {
        let back = secret_field(&api.state, "tls.crt");
        async move { back }
    })
    .await;
    assert_eq!(
        secret_field(&api.state, "ca.crt").as_deref(),
        Some(ca.as_str())
    );
    assert_eq!(
        api.state.lock().unwrap().secrets["tm-tls"]["data"],
        before["data"]
    );

    // The configuration re-applied without caBundle: repaired within a resync.
    {
        let mut st = api.state.lock().unwrap();
        st.webhook_configs
            .insert("tm-webhook".into(), webhook_config());
    }
    eventually(DEADLINE, "caBundle to be repaired", || {
        let set = ca_bundle(&api.state, 1).as_deref() == Some(ca.as_str());
        async move { set.then_some(()) }
    })
    .await;

    // An operator replaces the Secret with a pair of their own: both replicas serve it without
    // a restart, and the configuration follows.
    let theirs = Ca::new("operator CA");
    let (cert, key) = {
        let mut params =
            rcgen::CertificateParams::new(vec!["tm-webhook.mesh.svc".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &theirs.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    {
        let mut st = api.state.lock().unwrap();
        let secret = st.secrets.get_mut("tm-tls").unwrap();
        let b64 =
            |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
        secret["data"] =
            json!({"ca.crt": b64(&theirs.pem), "tls.crt": b64(&cert), "tls.key": b64(&key)});
        // As `kubectl create secret tls` would leave it: none of the webhook's metadata.
        secret["metadata"]["annotations"] = json!({});
        secret["metadata"]["labels"] = json!({});
    }
    for replica in [&a, &b] {
        let (addr, pem) = (replica.addr, theirs.pem.clone());
        eventually(DEADLINE, "the operator's certificate to be served", || {
            let pem = pem.clone();
            async move {
                handshake_as(addr, &pem, &[], "tm-webhook.mesh.svc")
                    .await
                    .ok()
                    .map(drop)
            }
        })
        .await;
    }
    eventually(DEADLINE, "caBundle to follow the Secret", || {
        let set = ca_bundle(&api.state, 1).as_deref() == Some(theirs.pem.as_str());
        async move { set.then_some(()) }
    })
    .await;
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("serving the Secret's new certificate")));

    // A restart with a usable Secret writes nothing.
    drop(a);
    let writes_before = api.state.lock().unwrap().secret_writes;
    let c = launch_bootstrapped(&api.kubeconfig).await;
    handshake_as(c.addr, &theirs.pem, &[], "tm-webhook.mesh.svc")
        .await
        .unwrap();
    assert_eq!(api.state.lock().unwrap().secret_writes, writes_before);

    // An unusable Secret the webhook did not write is never overwritten: a clear error instead.
    drop(c);
    {
        let mut st = api.state.lock().unwrap();
        st.secrets.get_mut("tm-tls").unwrap()["data"]["tls.key"] = json!("");
    }
    let writes_before = api.state.lock().unwrap().secret_writes;
    let args: Vec<&str> = vec![
        "--listen=127.0.0.1:0",
        "--tls-secret=tm-tls",
        "--webhook-config=tm-webhook",
        "--service=tm-webhook",
        "--namespace=mesh",
        "--namespace-lookup=false",
    ];
    let (mut child, lines) = spawn(&args, &[("KUBECONFIG", api.kubeconfig.as_os_str())]);
    eventually(Duration::from_secs(20), "the refusal to be logged", || {
        let seen = lines.lock().unwrap().iter().any(|l| {
            l.contains("was not written by the webhook") && l.contains("fix it or delete it")
        });
        async move { seen.then_some(()) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(api.state.lock().unwrap().secret_writes, writes_before);
}
