//! The security settings (SECURITY.md): inbound authentication of the callback port, inbound TLS,
//! the admin token, and the limits applied before any work. Plain data; the secrets read from
//! files are read by [`AuthConfig::path_secrets`] and friends, which validation calls too, so
//! `check-config` catches a missing or empty secret file.

use super::{ConfigError, Dur, invalid};
use serde::{Deserialize, Serialize, Serializer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret: read from the config, never written back (`check-config` output, `Debug` and logs
/// show `<redacted>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret with this value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one comparison that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Who may call the callback port. Every configured check must pass (any combination).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret path prefixes: OpenIM's `url` is `http://gw:10006/<secret>`, so the first path
    /// segment of every callback must be one of these; it is stripped before routing. A list, so
    /// that a secret can be rotated (add the new one, move OpenIM, remove the old one).
    pub path_secrets: Vec<Secret>,
    /// A file with more path secrets, one a line (blank lines and `#` comments are skipped).
    pub path_secrets_file: Option<PathBuf>,
    /// A shared-secret header, for deployments that add one at a proxy.
    pub header: Option<HeaderAuthConfig>,
    /// Source addresses allowed to call, as CIDRs (`10.0.0.0/8`) or single addresses; empty means
    /// any.
    pub allow_cidrs: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs or addresses): for a connection from
    /// one of them, the source address is the right-most address of that header that is not a
    /// trusted proxy itself. Empty (the default): the header is ignored, the TCP peer counts.
    pub trusted_proxies: Vec<String>,
}

/// A shared-secret header.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderAuthConfig {
    /// The header name, e.g. `X-Callback-Secret`.
    pub name: String,
    /// Accepted values (several, for rotation).
    pub values: Vec<Secret>,
    /// A file with more accepted values, one a line.
    pub values_file: Option<PathBuf>,
}

/// TLS on the callback port (rustls); the certificate and key are re-read when their files change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by one of these PEM CA certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Limits applied before any work, each answered cleanly and counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// A body over `max_body_bytes` is read and discarded up to this many bytes in all, then
    /// answered with the failure-policy envelope, so that a client that writes its whole body
    /// (OpenIM's Go client) reads the answer; past it the connection is closed after the answer.
    pub max_drain_bytes: u64,
    /// Longest time from the first byte of a request to the end of its headers (slow clients).
    pub header_read_timeout: super::Start<Dur>,
    /// Longest time to read a whole request body.
    pub request_timeout: Dur,
    /// How long an idle keep-alive connection stays open. Longer than Go's client idle timeout
    /// (90 s), so that the client closes first and never writes onto a connection being closed.
    pub idle_timeout: super::Start<Dur>,
    /// Most connections open at once per port; more wait in the kernel's accept queue.
    pub max_connections: super::Start<usize>,
    /// Most callbacks being handled at once; more are answered at once with their command's
    /// failure-policy envelope (shed) and counted.
    pub max_in_flight: usize,
    /// Most request headers.
    pub max_headers: super::Start<usize>,
    /// Largest request head (request line and headers) in bytes; at least 8192.
    pub max_header_bytes: super::Start<usize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_drain_bytes: 64 << 20,
            header_read_timeout: super::Start::from(Dur(Duration::from_secs(10))),
            request_timeout: Dur(Duration::from_secs(30)),
            idle_timeout: super::Start::from(Dur(Duration::from_secs(120))),
            max_connections: super::Start::from(10_000),
            max_in_flight: 1024,
            max_headers: super::Start::from(100),
            max_header_bytes: super::Start::from(16 << 10),
        }
    }
}

/// Reads secrets from a file: one a line, trimmed; blank lines and `#` comments skipped.
pub(super) fn read_secret_file(key: &str, path: &Path) -> Result<Vec<Secret>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secrets: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect();
    if secrets.is_empty() {
        return Err(invalid(key, format!("{} holds no secret", path.display())));
    }
    Ok(secrets)
}

/// A CIDR or a single address.
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

impl AuthConfig {
    /// Every accepted path secret: inline and from the file.
    pub fn all_path_secrets(&self) -> Result<Vec<Secret>, ConfigError> {
        let mut all = self.path_secrets.clone();
        if let Some(path) = &self.path_secrets_file {
            all.extend(read_secret_file("auth.path_secrets_file", path)?);
        }
        for s in &all {
            let v = s.expose();
            if v.is_empty() || v.contains('/') || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "auth.path_secrets",
                    "a path secret must be non-empty printable ASCII without `/` (one path segment)",
                ));
            }
        }
        Ok(all)
    }

    /// Every accepted header value: inline and from the file.
    pub fn all_header_values(&self) -> Result<Vec<Secret>, ConfigError> {
        let Some(h) = &self.header else {
            return Ok(Vec::new());
        };
        let mut all = h.values.clone();
        if let Some(path) = &h.values_file {
            all.extend(read_secret_file("auth.header.values_file", path)?);
        }
        if all.is_empty() {
            return Err(invalid(
                "auth.header.values",
                "a header check needs at least one value (or values_file)",
            ));
        }
        if all.iter().any(|s| s.expose().is_empty()) {
            return Err(invalid("auth.header.values", "values must not be empty"));
        }
        Ok(all)
    }

    /// Checks everything: names, CIDRs, secret files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.all_path_secrets()?;
        if let Some(h) = &self.header
            && http::HeaderName::from_bytes(h.name.as_bytes()).is_err()
        {
            return Err(invalid(
                "auth.header.name",
                format!("`{}` is not a valid header name", h.name),
            ));
        }
        self.all_header_values()?;
        for (key, list) in [
            ("auth.allow_cidrs", &self.allow_cidrs),
            ("auth.trusted_proxies", &self.trusted_proxies),
        ] {
            for net in list {
                if parse_net(net).is_none() {
                    return Err(invalid(
                        key,
                        format!("`{net}` is not a CIDR (10.0.0.0/8) or an IP address"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// Checks the ranges.
    pub fn validate(&self, max_body_bytes: usize) -> Result<(), ConfigError> {
        let zero = |d: &Dur| d.0.is_zero();
        for (key, d) in [
            ("limits.header_read_timeout", &*self.header_read_timeout),
            ("limits.request_timeout", &self.request_timeout),
            ("limits.idle_timeout", &*self.idle_timeout),
        ] {
            if zero(d) {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        if *self.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("limits.max_in_flight", "must be at least 1"));
        }
        if *self.max_headers == 0 {
            return Err(invalid("limits.max_headers", "must be at least 1"));
        }
        if *self.max_header_bytes < 8192 {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be at least 8192 (hyper's smallest read buffer)",
            ));
        }
        if self.max_drain_bytes < max_body_bytes as u64 {
            return Err(invalid(
                "limits.max_drain_bytes",
                "must not be smaller than max_body_bytes",
            ));
        }
        Ok(())
    }
}

/// Reads the admin token: the first non-empty line of the file.
pub fn read_admin_token(path: &Path) -> Result<Secret, ConfigError> {
    let mut all = read_secret_file("admin_token_file", path)?;
    Ok(all.remove(0))
}
