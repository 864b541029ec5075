//! The callback port's inbound checks as data, built from `auth:` with the snapshot (source
//! CIDRs, a shared-secret header, a secret path prefix, in any combination), and the
//! constant-time comparison of secrets. Below the gateway: it knows only the config; the
//! middleware that applies it is `auth.rs`.

use crate::config::{AuthConfig, ConfigError, Secret, parse_net};
use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;
use subtle::{Choice, ConstantTimeEq};

/// The callback port's checks, built from `auth:`.
#[derive(Debug)]
pub struct InboundAuth {
    pub(super) path_secrets: Vec<Secret>,
    pub(super) header: Option<(http::HeaderName, Vec<Secret>)>,
    pub(super) allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl InboundAuth {
    /// The checks of `cfg`, reading its secret files; `None` when none is configured.
    pub fn build(cfg: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        cfg.validate()?;
        let nets = |list: &[String]| list.iter().filter_map(|n| parse_net(n)).collect();
        let auth = Self {
            path_secrets: cfg.all_path_secrets()?,
            header: match &cfg.header {
                Some(h) => Some((
                    http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| {
                        crate::config::ConfigError::Invalid {
                            key: "auth.header.name".into(),
                            problem: e.to_string(),
                            at: None,
                        }
                    })?,
                    cfg.all_header_values()?,
                )),
                None => None,
            },
            allow: nets(&cfg.allow_cidrs),
            trusted_proxies: nets(&cfg.trusted_proxies),
        };
        let any = !auth.path_secrets.is_empty() || auth.header.is_some() || !auth.allow.is_empty();
        Ok(any.then_some(auth))
    }

    /// The address a request comes from: the TCP peer, or, from a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub(super) fn source(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !trusted(ip))
                .unwrap_or(peer),
        )
    }
}

/// Whether `candidate` equals one of `secrets`, in time that depends only on the secrets.
pub(crate) fn matches_any(candidate: &[u8], secrets: &[Secret]) -> bool {
    let mut found = Choice::from(0);
    for secret in secrets {
        let secret = secret.expose().as_bytes();
        found |= if candidate.len() == secret.len() {
            candidate.ct_eq(secret)
        } else {
            // Same work as a comparison, result false.
            secret.ct_eq(secret) & Choice::from(0)
        };
    }
    found.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_exactly_and_any_of_several() {
        let secrets = [Secret::new("old-secret"), Secret::new("new")];
        assert!(matches_any(b"old-secret", &secrets));
        assert!(matches_any(b"new", &secrets));
        assert!(!matches_any(b"new ", &secrets));
        assert!(!matches_any(b"", &secrets));
        assert!(!matches_any(b"old-secreT", &secrets));
        assert!(!matches_any(b"x", &[]));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let auth = InboundAuth {
            path_secrets: Vec::new(),
            header: None,
            allow: Vec::new(),
            trusted_proxies: vec!["10.0.0.0/24".parse().unwrap()],
        };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.7".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            auth.source(Some(ip("10.0.0.5")), &h),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            auth.source(Some(ip("192.0.2.1")), &h),
            Some(ip("192.0.2.1")),
            "an untrusted peer cannot claim another address"
        );
        assert_eq!(
            auth.source(Some(ip("10.0.0.5")), &HeaderMap::new()),
            Some(ip("10.0.0.5"))
        );
    }
}
