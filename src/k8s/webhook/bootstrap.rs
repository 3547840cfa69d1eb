//! `tracemesh webhook --tls-secret`: the webhook provides its own certificate, for installs with
//! neither cert-manager nor a chart-generated Secret (the plain `kubectl apply` manifests).
//!
//! At start, the webhook reads the `kubernetes.io/tls` Secret named by `--tls-secret` in its own
//! namespace. A usable one (a pair that loads, more than [`RENEW_BEFORE`] from its end) is
//! served as it is; otherwise a new CA and serving certificate are generated and written. Every
//! replica starts the same way, so the Secret is the one source of truth: creation and
//! replacement are conditional (create fails with 409 when another replica won; replace carries
//! the `resourceVersion` it read), and a replica that loses the race serves the winner's pair.
//!
//! A background task then keeps things converged every `--tls-secret-resync` (60 s): it re-reads the
//! Secret (a replica that lost a race, or a Secret an operator replaced, is picked up) and sets
//! the `caBundle` of our entries in the MutatingWebhookConfiguration to the Secret's CA, which
//! also repairs a configuration re-applied without it.
//!
//! Rotation happens at start only: a pair within [`RENEW_BEFORE`] of its end is replaced by the
//! first replica that restarts. With the default ten-year validity that is a restart a decade
//! on; a rotation without a restart would need both CAs in `caBundle` for a while, and is not
//! built.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ByteString,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::tls::CertStore;

/// Validity of a generated CA and serving certificate.
pub const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A pair closer than this to its end is replaced at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Written on the Secret: when its certificates end, in Unix seconds.
pub const ANNOTATION_NOT_AFTER: &str = "tracemesh.io/not-after";

/// Where the certificate lives and who must trust it.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The webhook's namespace (the Secret's and the Service's).
    pub namespace: String,
    /// The `kubernetes.io/tls` Secret holding `ca.crt`, `tls.crt`, `tls.key`.
    pub secret: String,
    /// The Service in front of the webhook: the certificate names `<service>.<namespace>.svc`.
    pub service: String,
    /// The MutatingWebhookConfiguration whose entries for `service` get the CA as `caBundle`.
    pub webhook_config: String,
}

/// A CA and serving pair, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Bootstrap {
    /// DNS names the serving certificate carries (what the API server dials).
    pub fn dns_names(&self) -> Vec<String> {
        let (s, ns) = (&self.service, &self.namespace);
        vec![
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
            format!("{s}.{ns}"),
            s.clone(),
        ]
    }

    /// Generates a CA and a serving certificate signed by it, valid for [`VALIDITY`].
    ///
    /// # Errors
    /// rcgen failed (it does not, for these parameters).
    pub fn generate(&self) -> anyhow::Result<(Pair, u64)> {
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + VALIDITY;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{}.{} webhook CA", self.service, self.namespace),
        );
        ca_params.not_before = now - Duration::from_secs(300);
        ca_params.not_after = not_after;
        let ca_key = rcgen::KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let mut params = rcgen::CertificateParams::new(self.dns_names())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{}.{}.svc", self.service, self.namespace),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - Duration::from_secs(300);
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let not_after = u64::try_from(not_after.unix_timestamp()).unwrap_or(0);
        Ok((
            Pair {
                ca: ca_cert.pem(),
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
            not_after,
        ))
    }

    fn secret_object(
        &self,
        pair: &Pair,
        not_after: u64,
        resource_version: Option<String>,
    ) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_owned(),
                    MANAGER.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([(
                    ANNOTATION_NOT_AFTER.to_owned(),
                    not_after.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(BTreeMap::from([
                ("ca.crt".to_owned(), bytes(&pair.ca)),
                ("tls.crt".to_owned(), bytes(&pair.cert)),
                ("tls.key".to_owned(), bytes(&pair.key)),
            ])),
            ..Default::default()
        }
    }

    /// The pair in `secret` if it loads, names the Service, and is not due for renewal at `now`
    /// (Unix seconds; 0 skips that check). The end date comes from the certificate itself, so a
    /// pair an operator or cert-manager wrote is judged like ours.
    ///
    /// # Errors
    /// Why the Secret cannot be served.
    pub fn usable(&self, secret: &Secret, now: u64) -> Result<Pair, String> {
        let data = secret.data.as_ref().ok_or("it has no data")?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| format!("it has no {k}"))
        };
        let pair = Pair {
            ca: text("ca.crt")?,
            cert: text("tls.crt")?,
            key: text("tls.key")?,
        };
        CertStore::check_pem("tls.crt", pair.cert.as_bytes(), pair.key.as_bytes())
            .map_err(|e| e.to_string())?;
        let (not_after, names) = leaf_facts(&pair.cert)?;
        let dialled = &self.dns_names()[0];
        if !names.iter().any(|n| n == dialled) {
            return Err(format!(
                "tls.crt does not name {dialled} (it names {names:?})"
            ));
        }
        if now > 0 && not_after < now + RENEW_BEFORE.as_secs() {
            return Err(format!(
                "tls.crt ends at {not_after} (Unix), within the renewal window"
            ));
        }
        Ok(pair)
    }

    fn managed(secret: &Secret) -> bool {
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY))
            .is_some_and(|v| v == MANAGER)
    }

    /// Reads the Secret, or writes a new pair when it is missing or unusable; returns the pair
    /// every replica will serve.
    ///
    /// # Errors
    /// The API server refused or could not be reached.
    pub async fn ensure_secret(&self, client: &kube::Client) -> anyhow::Result<Pair> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let context = || format!("Secret {}/{}", self.namespace, self.secret);
        let existing = api.get_opt(&self.secret).await.with_context(context)?;
        let (pair, not_after) = self.generate()?;
        let written = match &existing {
            None => {
                api.create(
                    &PostParams::default(),
                    &self.secret_object(&pair, not_after, None),
                )
                .await
            }
            Some(old) => match self.usable(old, unix_now()) {
                Ok(pair) => return Ok(pair),
                // Not ours to overwrite: someone provided it, and should fix it.
                Err(reason) if !Self::managed(old) => anyhow::bail!(
                    "{} is not usable ({reason}) and was not written by the webhook \
                     (no {MANAGED_BY}={MANAGER} label): fix it or delete it",
                    context()
                ),
                Err(reason) => {
                    tracing::info!(secret = %self.secret, %reason, "replacing the certificate Secret");
                    // Replicas still serving the old pair stay trusted until they pick up the
                    // new one: the old CA stays in the bundle for this generation.
                    let mut pair = pair.clone();
                    if let Some(old_ca) = old
                        .data
                        .as_ref()
                        .and_then(|d| d.get("ca.crt"))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                        .and_then(|pem| first_valid_cert(&pem, unix_now()))
                    {
                        pair.ca.push_str(&old_ca);
                    }
                    let object =
                        self.secret_object(&pair, not_after, old.metadata.resource_version.clone());
                    return match api
                        .replace(&self.secret, &PostParams::default(), &object)
                        .await
                    {
                        Ok(_) => Ok(pair),
                        Err(kube::Error::Api(status)) if status.code == 409 => {
                            self.reread(&api).await
                        }
                        Err(e) => Err(e).with_context(context),
                    };
                }
            },
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %self.secret, dns = ?self.dns_names(), "generated the webhook's CA and serving certificate");
                Ok(pair)
            }
            // Another replica wrote first: serve its pair.
            Err(kube::Error::Api(status)) if status.code == 409 => self.reread(&api).await,
            Err(e) => Err(e).with_context(context),
        }
    }

    async fn reread(&self, api: &Api<Secret>) -> anyhow::Result<Pair> {
        let context = || format!("Secret {}/{}", self.namespace, self.secret);
        let secret = api.get(&self.secret).await.with_context(context)?;
        self.usable(&secret, 0).map_err(|reason| {
            anyhow::anyhow!(
                "{} was written concurrently but is not usable: {reason}",
                context()
            )
        })
    }

    /// Sets `caBundle` to `ca` on our entries of the webhook configuration. Returns how many
    /// entries changed.
    ///
    /// # Errors
    /// The configuration is missing or the API server refused the patch.
    pub async fn ensure_ca_bundle(&self, client: &kube::Client, ca: &str) -> anyhow::Result<usize> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let context = || format!("MutatingWebhookConfiguration {}", self.webhook_config);
        let config = api.get(&self.webhook_config).await.with_context(context)?;
        let mut ops = Vec::new();
        for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
            let ours = webhook
                .client_config
                .service
                .as_ref()
                .is_some_and(|s| s.name == self.service && s.namespace == self.namespace);
            let current = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice());
            if !ours || current == Some(ca.as_bytes()) {
                continue;
            }
            // `test` first: if the list changed since the read, the patch fails whole.
            ops.push(
                json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}),
            );
            let value = serde_json::to_value(ByteString(ca.as_bytes().to_vec()))?;
            ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": value}));
        }
        let changed = ops.len() / 2;
        if changed > 0 {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
            api.patch(
                &self.webhook_config,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
            .with_context(context)?;
            tracing::info!(config = %self.webhook_config, entries = changed, "caBundle set");
        }
        Ok(changed)
    }

    /// Keeps the served pair equal to the Secret's, and the configuration's `caBundle` equal to
    /// its CA, until `shutdown`; `trusted` hears whether the configuration trusts what this
    /// replica serves (readiness). A deleted Secret is written again with the pair this replica
    /// serves, so the other replicas and the bundle stay as they are. Failures are logged and
    /// retried on the next round.
    pub async fn reconcile(
        self: Arc<Self>,
        client: kube::Client,
        store: Arc<CertStore>,
        mut served: Pair,
        every: Duration,
        trusted: impl Fn(bool) + Send + 'static,
        shutdown: CancellationToken,
    ) {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            match api.get_opt(&self.secret).await {
                Ok(Some(secret)) => match self.usable(&secret, 0) {
                    Ok(pair) if pair != served => {
                        match store.replace(&self.secret, pair.cert.as_bytes(), pair.key.as_bytes())
                        {
                            Ok(_) => {
                                tracing::info!(secret = %self.secret, "serving the Secret's new certificate");
                                served = pair;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "the Secret's certificate does not load; keeping the current one")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        tracing::warn!(secret = %self.secret, %reason, "the certificate Secret is unusable; keeping the current certificate")
                    }
                },
                Ok(None) => {
                    let not_after = leaf_facts(&served.cert).map_or(0, |(n, _)| n);
                    match api
                        .create(
                            &PostParams::default(),
                            &self.secret_object(&served, not_after, None),
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::warn!(secret = %self.secret, "the certificate Secret was deleted; wrote back the pair in use")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "writing back the deleted certificate Secret")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the certificate Secret"),
            }
            // Until the configuration exists (it may be applied after us) retry quickly.
            delay = match self.ensure_ca_bundle(&client, &served.ca).await {
                Ok(_) => {
                    trusted(true);
                    every
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "setting caBundle; retrying");
                    Duration::from_secs(2).min(every)
                }
            };
        }
    }
}

/// The Secret label that marks a pair the webhook wrote (and may replace).
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const MANAGER: &str = "tracemesh-webhook";

/// A certificate's notAfter (Unix seconds) and DNS names.
fn leaf_facts(pem: &str) -> Result<(u64, Vec<String>), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("tls.crt is not X.509: {e}"))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok((not_after, names))
}

/// The first certificate of a PEM bundle, as its PEM block, if it has not ended at `now`.
fn first_valid_cert(bundle: &str, now: u64) -> Option<String> {
    let (rest, pem) = x509_parser::pem::parse_x509_pem(bundle.as_bytes()).ok()?;
    let end = pem.parse_x509().ok()?.validity().not_after.timestamp();
    if u64::try_from(end).ok()? <= now {
        return None;
    }
    // The block as written: from its BEGIN line up to where the parser stopped.
    let block = &bundle[..bundle.len() - rest.len()];
    let block = &block[block.find("-----BEGIN")?..];
    Some(format!("{}\n", block.trim_end()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            namespace: "mesh".into(),
            secret: "tm-tls".into(),
            service: "tm-webhook".into(),
            webhook_config: "tm-webhook".into(),
        }
    }

    #[test]
    fn generated_pairs_load_and_are_usable_until_renewal() {
        let b = bootstrap();
        let (pair, not_after) = b.generate().unwrap();
        CertStore::check_pem("generated", pair.cert.as_bytes(), pair.key.as_bytes()).unwrap();
        let secret = b.secret_object(&pair, not_after, None);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert!(Bootstrap::managed(&secret));
        let now = unix_now();
        assert!(not_after > now + VALIDITY.as_secs() - 60);
        assert_eq!(leaf_facts(&pair.cert).unwrap().0, not_after);
        assert_eq!(b.usable(&secret, now), Ok(pair.clone()));
        // Within RENEW_BEFORE of the end: due for replacement.
        let late = not_after - RENEW_BEFORE.as_secs() + 1;
        let err = b.usable(&secret, late).unwrap_err();
        assert!(err.contains("renewal window"), "{err}");

        // A key that is not the certificate's: unusable.
        let (other, _) = b.generate().unwrap();
        let mixed = Pair {
            key: other.key,
            ..pair.clone()
        };
        let err = b
            .usable(&b.secret_object(&mixed, not_after, None), now)
            .unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        // Our annotation is only a hint: an operator's Secret without it is judged the same.
        let mut bare = secret.clone();
        bare.metadata.annotations = None;
        bare.metadata.labels = None;
        assert_eq!(b.usable(&bare, now), Ok(pair));
        assert!(!Bootstrap::managed(&bare));
        // A pair for another Service is not served.
        let elsewhere = Bootstrap {
            service: "other".into(),
            ..bootstrap()
        };
        let err = elsewhere.usable(&secret, now).unwrap_err();
        assert!(err.contains("does not name other.mesh.svc"), "{err}");
    }

    #[test]
    fn the_old_ca_carried_over_is_the_same_certificate() {
        let (pair, _) = bootstrap().generate().unwrap();
        let copy = first_valid_cert(&pair.ca, unix_now()).unwrap();
        let der = |pem: &str| {
            x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .unwrap()
                .1
                .contents
        };
        assert_eq!(der(&copy), der(&pair.ca));
        assert!(copy.lines().all(|l| l.len() <= 64), "{copy}");
        assert_eq!(
            first_valid_cert(&pair.ca, u64::MAX),
            None,
            "an ended CA is dropped"
        );
    }

    #[test]
    fn dns_names_cover_what_the_api_server_dials() {
        assert_eq!(
            bootstrap().dns_names(),
            [
                "tm-webhook.mesh.svc",
                "tm-webhook.mesh.svc.cluster.local",
                "tm-webhook.mesh",
                "tm-webhook"
            ]
        );
    }
}
