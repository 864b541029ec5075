//! Inbound TLS on the callback port (rustls with the ring provider): the certificate is re-read
//! when its files change (cert-manager rotates them), and a client certificate from a given CA
//! can be required.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often a handshake may look at the files' modification times.
const RECHECK: Duration = Duration::from_secs(5);

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or parsed.
    #[error("config key `{key}`: {path}: {problem}")]
    File {
        /// The config key.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(key: &'static str, path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn load_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error("tls.cert_file", cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("tls.cert_file", cert_file, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "tls.cert_file",
            cert_file,
            "no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_error("tls.key_file", key_file, e))?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(certs, key, &provider)?)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the certificate of `cert_file` + `key_file`, re-reading them when either changes. A
/// change that does not load keeps the previous certificate (and is logged).
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl Reloading {
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let stamps = (mtime(&self.cert_file), mtime(&self.key_file));
            if stamps != state.stamps {
                match load_key(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_file.display(), "inbound TLS certificate reloaded");
                        metrics::counter!("gateway_tls_reloads_total", "result" => "ok")
                            .increment(1);
                        state.key = Arc::new(key);
                        state.stamps = stamps;
                    }
                    Err(e) => {
                        // Keep serving the old one; the files may be half-written.
                        tracing::warn!(error = %e, "inbound TLS certificate changed but does not load; keeping the previous one");
                        metrics::counter!("gateway_tls_reloads_total", "result" => "error")
                            .increment(1);
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Builds the acceptor for `cfg`: loads the certificate now (so a bad file fails the start and
/// `check-config`), and the client CA when client certificates are required.
pub fn acceptor(cfg: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let key = load_key(&cfg.cert_file, &cfg.key_file)?;
    let resolver = Arc::new(Reloading {
        cert_file: cfg.cert_file.clone(),
        key_file: cfg.key_file.clone(),
        state: Mutex::new(Loaded {
            key: Arc::new(key),
            stamps: (mtime(&cfg.cert_file), mtime(&cfg.key_file)),
            checked: Instant::now(),
        }),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| file_error("tls.client_ca_file", ca, e))?
            {
                let cert = cert.map_err(|e| file_error("tls.client_ca_file", ca, e))?;
                roots
                    .add(cert)
                    .map_err(|e| file_error("tls.client_ca_file", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error("tls.client_ca_file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
