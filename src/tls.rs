//! Serving certificates from PEM files that may change under us.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, so the files change in place while
//! the process runs: cert-manager rotates them, or an operator replaces the Secret. [`CertStore`]
//! is a rustls certificate resolver over the last good pair; [`CertStore::watch`] re-reads the
//! files on an interval and swaps in a new pair only when it parses and its key matches its
//! certificate. A broken update is logged and the old pair keeps serving, so a half-written
//! Secret never takes the listener down.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio_util::sync::CancellationToken;

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{key} does not fit {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The ring provider, named once so every config in the process uses the same one.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key loaded from two PEM files, swappable at run time.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The file contents the key came from, to tell a real change from a rewrite.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair once.
    ///
    /// # Errors
    /// A file cannot be read, holds no certificate or key, or the key is not the certificate's.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let loaded = read_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(loaded),
        }))
    }

    /// A store over PEM bytes held in memory rather than files ([`CertStore::replace`] swaps
    /// them; [`CertStore::reload`] finds nothing to re-read).
    ///
    /// # Errors
    /// As [`CertStore::load`], with `name` in place of the file names.
    pub fn from_pem(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let path = PathBuf::from(name);
        let loaded = parse_pair(&path, &path, cert_pem.to_vec(), key_pem.to_vec(), &provider)?;
        Ok(Arc::new(CertStore {
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            provider,
            current: RwLock::new(loaded),
        }))
    }

    /// Swaps in a new pair from memory. Returns whether it differed from the one in use.
    ///
    /// # Errors
    /// The pair does not parse or does not match; the old pair stays in use.
    pub fn replace(&self, name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, TlsError> {
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        let path = PathBuf::from(name);
        let loaded = parse_pair(
            &path,
            &path,
            cert_pem.to_vec(),
            key_pem.to_vec(),
            &self.provider,
        )?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(true)
    }

    /// Checks that a PEM pair would load, without a store.
    ///
    /// # Errors
    /// As [`CertStore::from_pem`].
    pub fn check_pem(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let path = PathBuf::from(name);
        parse_pair(
            &path,
            &path,
            cert_pem.to_vec(),
            key_pem.to_vec(),
            &provider(),
        )
        .map(drop)
    }

    /// A server config that asks this store for its certificate on every handshake, offering
    /// HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    /// Re-reads both files. Returns `Ok(true)` when a new pair was swapped in, `Ok(false)` when
    /// the files are unchanged, and an error (keeping the old pair) when the new files are bad.
    ///
    /// # Errors
    /// As [`CertStore::load`]; the previous certificate stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if self.cert_path.as_os_str().is_empty() {
            return Ok(false);
        }
        let (cert_pem, key_pem) = read_files(&self.cert_path, &self.key_path)?;
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        let loaded = parse_pair(
            &self.cert_path,
            &self.key_path,
            cert_pem,
            key_pem,
            &self.provider,
        )?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(true)
    }

    /// Reloads every `interval` until `shutdown`, logging each swap and each bad update.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %anyhow::Error::from(e),
                    "serving certificate not reloaded; the previous one stays in use"
                ),
                Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

fn read_files(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let (cert_pem, key_pem) = read_files(cert_path, key_path)?;
    parse_pair(cert_path, key_path, cert_pem, key_pem, provider)
}

fn parse_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        cert_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn write(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tracemesh-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn served(store: &CertStore) -> Vec<u8> {
        store.current.read().unwrap().key.cert[0].to_vec()
    }

    #[test]
    fn reload_swaps_only_on_a_good_change() {
        let dir = tempdir("reload");
        let (c1, k1) = pair("one.test");
        let (cert, key) = write(&dir, &c1, &k1);
        let store = CertStore::load(&cert, &key).unwrap();
        let first = served(&store);
        assert!(!store.reload().unwrap(), "unchanged files are not a reload");

        // A key that is not the certificate's: error, and the old pair keeps serving.
        let (c2, k2) = pair("two.test");
        write(&dir, &c2, &k1);
        let err = store.reload().unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert_eq!(served(&store), first);

        // Garbage: also an error with the file named.
        write(&dir, "not pem", &k2);
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("tls.crt"), "{err}");
        assert_eq!(served(&store), first);

        write(&dir, &c2, &k2);
        assert!(store.reload().unwrap());
        assert_ne!(served(&store), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_names_the_missing_file() {
        let err = CertStore::load(Path::new("/nonexistent/tls.crt"), Path::new("/x")).unwrap_err();
        assert_eq!(err.to_string(), "reading /nonexistent/tls.crt");
    }
}
