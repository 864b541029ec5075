//! The mesh settings (docs/operating.md, "Upstream transport"): upstream transport (TLS, DNS re-resolution), the
//! resilience controls per upstream (concurrency limit, circuit breaker, retries), health
//! checking, tracing, reload and shutdown. Plain data with documented defaults.

use super::{ConfigError, Dur, invalid};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// TLS towards an `https://` upstream (rustls). Without `ca_file` the webpki roots are trusted.
/// The files are re-read when they change (cert-manager rotates them in place).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates the upstream's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for mTLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name sent as SNI and verified in the upstream's certificate, when it differs from the
    /// endpoint's host (an IP address, a headless Service's pod name).
    pub server_name: Option<String>,
}

impl UpstreamTlsConfig {
    /// Whether any setting differs from the default (webpki roots, the endpoint's host).
    pub fn is_set(&self) -> bool {
        self != &Self::default()
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                format!("{key}.tls"),
                "cert_file and key_file go together (mTLS needs both)",
            ));
        }
        for (name, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                return Err(invalid(
                    format!("{key}.tls.{name}"),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        Ok(())
    }
}

/// The circuit breaker of one upstream. It counts only what says the upstream as a whole is
/// unwell: no connection, no answer within the deadline, UNAVAILABLE; any other status a service
/// sends is that one request's failure policy. Closed: calls go through. Open: calls fail at once
/// with the command's failure policy (and spooled deliveries wait) for `cool_down`, or until a
/// health check of the upstream passes (checked every 200 ms while open). Half-open: one probe
/// call; its success closes the breaker, its failure opens it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Off: the breaker never opens.
    pub enabled: bool,
    /// Opens after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or when this share of the calls in `window` failed (0.0–1.0) ...
    pub failure_ratio: f64,
    /// ... and the window saw at least this many calls.
    pub min_calls: u32,
    /// The window of the failure ratio.
    pub window: Dur,
    /// How long it stays open before a probe.
    pub cool_down: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Dur(Duration::from_secs(10)),
            cool_down: Dur(Duration::from_secs(5)),
        }
    }
}

/// Retries of a before call: only on connection-level failures (the request never reached the
/// service), and only while the deadline leaves time for another attempt. After calls are never
/// retried here: the spool retries them, with backoff and a stable delivery id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first (0 = no retries).
    pub max_retries: u32,
    /// Pause before each retry.
    pub backoff: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 2,
            backoff: Dur(Duration::from_millis(25)),
        }
    }
}

/// The resolver used for upstream host names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// DNS servers to ask (`10.96.0.10:53`); empty = the system resolver (`/etc/hosts`,
    /// `/etc/resolv.conf`, as every other program on the host).
    pub nameservers: Vec<SocketAddr>,
}

/// Traces (W3C trace context, OTLP export).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP exporter; unset = spans are not exported (trace context is still propagated).
    pub otlp: Option<OtlpConfig>,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            service_name: "openim-callback-gateway".into(),
        }
    }
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector, e.g. `http://otel-collector:4318` (http) or `http://otel-collector:4317` (grpc).
    pub endpoint: String,
    /// `http` (OTLP/HTTP protobuf, default) or `grpc`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of new traces sampled (0.0–1.0); an incoming `traceparent`'s sampled flag wins.
    #[serde(default = "one")]
    pub sample_ratio: f64,
}

fn one() -> f64 {
    1.0
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`/v1/traces`).
    #[default]
    Http,
    /// OTLP/gRPC.
    Grpc,
}

/// Reloading the config file while running (SIGHUP does it too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch the config file and reload when it changes.
    pub watch: bool,
    /// How often the file is checked.
    pub poll_interval: Dur,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval: Dur(Duration::from_secs(2)),
        }
    }
}

pub(super) fn validate_breaker(key: &str, b: &BreakerConfig) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&b.failure_ratio) || b.failure_ratio.is_nan() {
        return Err(invalid(
            format!("{key}.breaker.failure_ratio"),
            "must be between 0.0 and 1.0",
        ));
    }
    if b.enabled && b.consecutive_failures == 0 {
        return Err(invalid(
            format!("{key}.breaker.consecutive_failures"),
            "must be at least 1",
        ));
    }
    if b.cool_down.0.is_zero() || b.window.0.is_zero() {
        return Err(invalid(
            format!("{key}.breaker"),
            "window and cool_down must be longer than 0s",
        ));
    }
    Ok(())
}

pub(super) fn validate_tracing(t: &TracingConfig) -> Result<(), ConfigError> {
    if let Some(otlp) = &t.otlp {
        let ok = otlp
            .endpoint
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            return Err(invalid(
                "tracing.otlp.endpoint",
                format!("`{}` is not an http:// or https:// URI", otlp.endpoint),
            ));
        }
        if !(0.0..=1.0).contains(&otlp.sample_ratio) || otlp.sample_ratio.is_nan() {
            return Err(invalid(
                "tracing.otlp.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
    }
    Ok(())
}
