//! TLS towards `https://` upstreams (rustls through tonic's `ClientTlsConfig`): the webpki roots
//! or `tls.ca_file`, a client certificate for mTLS, the verified name. [`TlsFiles`] is what the
//! files held when last read, so that the discovery task can tell a rotation from no change.

use crate::config::UpstreamTlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// TLS material that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{key}: cannot read {}: {reason}", path.display())]
    Read {
        /// `ca_file`, `cert_file` or `key_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{key}: {}: {problem}", path.display())]
    Pem {
        /// `ca_file`, `cert_file` or `key_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
    /// rustls refused the combination (a key that does not fit, a bad server name).
    #[error("{0}")]
    Config(String),
}

/// The contents of an upstream's TLS files, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TlsFiles {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

fn read(key: &'static str, path: &Option<PathBuf>) -> Result<Option<Vec<u8>>, TlsError> {
    path.as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|e| TlsError::Read {
                key,
                path: p.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

async fn read_async(
    key: &'static str,
    path: &Option<PathBuf>,
) -> Result<Option<Vec<u8>>, TlsError> {
    match path {
        None => Ok(None),
        Some(p) => tokio::fs::read(p)
            .await
            .map(Some)
            .map_err(|e| TlsError::Read {
                key,
                path: p.clone(),
                reason: e.to_string(),
            }),
    }
}

fn path_of(path: &Option<PathBuf>) -> PathBuf {
    path.clone().unwrap_or_default()
}

impl TlsFiles {
    /// Reads the files (at build time: a few small local files, read synchronously).
    pub(crate) fn read(cfg: &UpstreamTlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            ca: read("ca_file", &cfg.ca_file)?,
            cert: read("cert_file", &cfg.cert_file)?,
            key: read("key_file", &cfg.key_file)?,
        })
    }

    /// Reads the files again (from the discovery task).
    pub(crate) async fn reread(cfg: &UpstreamTlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            ca: read_async("ca_file", &cfg.ca_file).await?,
            cert: read_async("cert_file", &cfg.cert_file).await?,
            key: read_async("key_file", &cfg.key_file).await?,
        })
    }

    /// The client TLS settings these files make, checked as far as PEM goes (tonic builds the
    /// rustls config, and reports the rest, when the settings are applied to an endpoint).
    pub(crate) fn client_config(
        &self,
        cfg: &UpstreamTlsConfig,
        handshake_timeout: Duration,
    ) -> Result<ClientTlsConfig, TlsError> {
        let mut tls = ClientTlsConfig::new().timeout(handshake_timeout);
        match &self.ca {
            Some(pem) => {
                certificates("ca_file", &path_of(&cfg.ca_file), pem)?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => tls = tls.with_webpki_roots(),
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            certificates("cert_file", &path_of(&cfg.cert_file), cert)?;
            PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::Pem {
                key: "key_file",
                path: path_of(&cfg.key_file),
                problem: "no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            })?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &cfg.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

/// Checks that `pem` holds at least one certificate and nothing unreadable.
fn certificates(key: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let bad = |problem| TlsError::Pem {
        key,
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("unreadable PEM"))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pem_certificates_are_refused_by_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let cfg = UpstreamTlsConfig {
            ca_file: Some(ca),
            ..Default::default()
        };
        let files = TlsFiles::read(&cfg).expect("readable");
        let err = files
            .client_config(&cfg, Duration::from_secs(1))
            .expect_err("no certificate");
        assert!(err.to_string().starts_with("ca_file: "), "{err}");
    }

    #[test]
    fn a_missing_file_names_its_key() {
        let cfg = UpstreamTlsConfig {
            key_file: Some("/nonexistent/key.pem".into()),
            cert_file: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        };
        let err = TlsFiles::read(&cfg).expect_err("missing");
        assert!(
            err.to_string().starts_with("cert_file: cannot read"),
            "{err}"
        );
    }
}
