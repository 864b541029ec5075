//! The configuration: plain serde data with documented defaults, loaded from one YAML file plus
//! `OPENIM_GATEWAY_*` environment overrides, and validated with errors that name the key.
//! No sockets here; [`crate::gateway::Snapshot`] is the live part built from it. [`Config::validate`]
//! checks everything a start would reject except sockets (what `check-config` checks), and
//! [`Config::warnings`] returns what is usable but probably a mistake, for `main` to log once
//! logging is set up.

mod mesh;
mod security;

pub use mesh::{
    BreakerConfig, DnsConfig, OtlpConfig, OtlpProtocol, ReloadConfig, RetryConfig, TracingConfig,
    UpstreamTlsConfig,
};
pub use security::{
    AuthConfig, HeaderAuthConfig, LimitsConfig, Secret, TlsConfig, parse_net, read_admin_token,
};

use crate::catalog::{self, Phase};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The prefix of environment overrides: `OPENIM_GATEWAY_LISTEN`, `OPENIM_GATEWAY_DEFAULTS__TIMEOUT`.
pub const ENV_PREFIX: &str = "OPENIM_GATEWAY_";

/// The name of the upstream every command uses unless it names another.
pub const DEFAULT_UPSTREAM: &str = "default";

/// OpenIM's own default webhook timeout: an answer slower than this fails a before-operation.
pub const OPENIM_TIMEOUT: Duration = Duration::from_secs(5);

/// A duration written as `250ms`, `3s`, `5m` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dur(#[serde(with = "humantime_serde")] pub Duration);

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP front end OpenIM's `url` points at.
    pub listen: SocketAddr,
    /// Address of the operators' port: `/healthz`, `/readyz`, `/metrics` and the spool admin API.
    /// When unset they are served on `listen` too; set it to keep the admin API (which can purge
    /// dead letters) off the port OpenIM reaches.
    pub admin_listen: Option<SocketAddr>,
    /// Largest request body accepted, in bytes; larger bodies get the failure-policy envelope.
    pub max_body_bytes: usize,
    /// Logging.
    pub log: LogConfig,
    /// gRPC upstreams by name. With none configured (and no `--upstream`), the gateway starts its
    /// built-in example upstream in-process as `default`.
    pub upstreams: HashMap<String, UpstreamConfig>,
    /// Settings of every command, unless `commands` overrides them.
    pub defaults: CommandConfig,
    /// Per-command overrides, keyed by the OpenIM command (`callbackBeforeCreateGroupCommand`).
    pub commands: BTreeMap<String, CommandOverride>,
    /// The durable spool of after-events.
    pub spool: crate::spool::SpoolConfig,
    /// The built-in example upstream (serves as `default` when no upstream is configured).
    pub example: openim_callback_example::ExampleConfig,
    /// Who may call the callback port (path secret, header, source CIDRs).
    pub auth: AuthConfig,
    /// TLS on the callback port; unset = plain HTTP (a mesh sidecar may terminate TLS).
    pub tls: Option<TlsConfig>,
    /// A file holding the bearer token every `/admin/*` route requires (`Authorization: Bearer
    /// <token>`), wherever it is served.
    pub admin_token_file: Option<PathBuf>,
    /// Allow the admin API on a non-loopback address without a token. Off: such a start is
    /// refused, because the admin API can list message payloads and purge dead letters.
    pub admin_insecure: bool,
    /// Put `/metrics` behind the admin token too (health stays open for probes).
    pub admin_protect_metrics: bool,
    /// Limits applied before any work.
    pub limits: LimitsConfig,
    /// OpenIM's webhook timeout (its `webhooks.yml`, 5s by default): the budget of one callback.
    /// An upstream call's deadline is the command's `timeout` or what is left of this budget,
    /// whichever is shorter.
    pub openim_timeout: Dur,
    /// On SIGTERM: how long in-flight callbacks may take to finish after `/readyz` turned 503 and
    /// the listeners closed.
    pub shutdown_grace: Dur,
    /// How long `/readyz` answers 503 before the listeners close, so that the mesh stops sending
    /// new callbacks first.
    pub shutdown_delay: Dur,
    /// How often the upstreams of enabled before commands are health-checked (`/readyz`).
    pub health_check_interval: Dur,
    /// The resolver of upstream host names.
    pub dns: DnsConfig,
    /// Traces: W3C trace context and the OTLP exporter.
    pub tracing: TracingConfig,
    /// Reloading the config file while running.
    pub reload: ReloadConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 10006)),
            admin_listen: None,
            max_body_bytes: 1024 * 1024,
            log: LogConfig::default(),
            upstreams: HashMap::new(),
            defaults: CommandConfig::default(),
            commands: BTreeMap::new(),
            spool: crate::spool::SpoolConfig::default(),
            example: openim_callback_example::ExampleConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            admin_token_file: None,
            admin_insecure: false,
            admin_protect_metrics: false,
            limits: LimitsConfig::default(),
            openim_timeout: Dur(OPENIM_TIMEOUT),
            shutdown_grace: Dur(Duration::from_secs(30)),
            shutdown_delay: Dur(Duration::from_secs(2)),
            health_check_interval: Dur(Duration::from_secs(5)),
            dns: DnsConfig::default(),
            tracing: TracingConfig::default(),
            reload: ReloadConfig::default(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `openim_callback_gateway=debug`. `RUST_LOG` wins when set.
    pub filter: String,
    /// Keep message content and user data out of the logs: no payload, no message text, no
    /// rejection text or gRPC status message from a service (which can echo what a user wrote),
    /// no value quoted from a bad body. `false` logs them, for debugging.
    pub redact: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            redact: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One gRPC upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One or more `http://host:port` URIs (h2c, e.g. a mesh sidecar); several are balanced.
    pub endpoints: Vec<String>,
    /// How long to wait for a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// TLS of `https://` endpoints: a CA, a client certificate for mTLS, the name to verify.
    #[serde(default, skip_serializing_if = "UpstreamTlsConfig::is_unset")]
    pub tls: UpstreamTlsConfig,
    /// Re-resolve the endpoints' host names this often and follow the addresses (a headless
    /// Service's pods); `0s` = resolve once per connection, as the channel does by itself.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Dur,
    /// The `grpc.health.v1` service name `/readyz` checks (`""` = the server as a whole).
    #[serde(default)]
    pub health_service: String,
    /// Calls in flight to this upstream at once; more get their failure policy at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Retries of before calls on connection-level failures.
    #[serde(default)]
    pub retries: RetryConfig,
}

fn default_resolve_interval() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_max_concurrency() -> usize {
    1024
}

impl UpstreamTlsConfig {
    fn is_unset(&self) -> bool {
        !self.is_set()
    }
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}

impl UpstreamConfig {
    /// An upstream with one endpoint.
    pub fn single(uri: impl Into<String>) -> Self {
        Self {
            endpoints: vec![uri.into()],
            connect_timeout: default_connect_timeout(),
            tls: UpstreamTlsConfig::default(),
            resolve_interval: default_resolve_interval(),
            health_service: String::new(),
            max_concurrency: default_max_concurrency(),
            breaker: BreakerConfig::default(),
            retries: RetryConfig::default(),
        }
    }
}

/// The failure policy (`on_failure`): what a command does when its upstream gives no usable answer
/// (design §2, last row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Let the operation go on (fail open).
    Continue,
    /// Reject it with `reject_code` (fail closed).
    Reject,
}

/// How an after-event reaches its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Written to the durable spool, acknowledged at once, delivered with retries.
    Spool,
    /// Delivered while OpenIM waits; OpenIM gets the answer after the upstream's.
    Sync,
}

/// The settings of one command, after defaults and overrides are merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandConfig {
    /// When false the gateway answers "continue" without calling the upstream.
    pub enabled: bool,
    /// The upstream to call.
    pub upstream: String,
    /// Deadline of one upstream call, sent as `grpc-timeout`; keep it under OpenIM's 5 s.
    pub timeout: Dur,
    /// What to do when the upstream fails or is too slow.
    pub on_failure: FailurePolicy,
    /// errCode of a fail-closed rejection, and of service rejections with a code <= 0.
    pub reject_code: i32,
    /// errMsg of a fail-closed rejection.
    pub reject_message: String,
    /// After callbacks: `spool` (durable, acknowledged at once) or `sync`.
    pub delivery: Delivery,
    /// After callbacks: deliver events of the same group/conversation/user one after another.
    pub ordered: bool,
    /// MsgModify: let a reply override `offlinePushInfo`. OpenIM crashes on it when the message
    /// has none, which its request does not tell, so it is off by default.
    pub allow_offline_push_info: bool,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            upstream: DEFAULT_UPSTREAM.into(),
            timeout: Dur(Duration::from_secs(3)),
            on_failure: FailurePolicy::Continue,
            reject_code: 20001,
            reject_message: "callback service unavailable".into(),
            delivery: Delivery::Spool,
            ordered: false,
            allow_offline_push_info: false,
        }
    }
}

/// A command's overrides (`commands.<command>:`): any keys of [`CommandConfig`]; every key left
/// out keeps its value from `defaults`. Kept as written, so that validation knows which keys were
/// set; [`Config::settings`] resolves it against `defaults`.
pub type CommandOverride = figment::value::Dict;

/// A setting that is usable but probably a mistake; `main` logs these once logging is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The dotted key.
    pub key: String,
    /// What may go wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read or has a wrong value.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value is readable but not usable.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// `--config` names a file that does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Loads defaults, then the YAML file if given, then `OPENIM_GATEWAY_*` variables, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }
        // `OPENIM_GATEWAY_CONFIG` names the file (the `--config` flag), it is not a key.
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.normalize()?;
        Ok(config)
    }

    /// Parses a YAML document (for tests and `--check`), with validation.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Yaml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.normalize()?;
        Ok(config)
    }

    /// Canonicalises command keys (environment variables arrive lower-cased), resolves
    /// defaults that depend on other keys (so that `check` shows them), and validates.
    fn normalize(&mut self) -> Result<(), ConfigError> {
        if self.spool.backend == crate::spool::BackendKind::Redis {
            // Where this replica's local buffer lives: `check` prints it.
            self.spool.redis.buffer_dir = Some(self.spool.buffer_dir());
        }
        let mut commands = BTreeMap::new();
        for (key, value) in std::mem::take(&mut self.commands) {
            let row = catalog::ROWS
                .iter()
                .find(|r| r.command.eq_ignore_ascii_case(&key))
                .ok_or_else(|| {
                    invalid(
                        format!("commands.{key}"),
                        "not an OpenIM callback command (see the README's command table)",
                    )
                })?;
            commands.insert(row.command.to_owned(), value);
        }
        self.commands = commands;
        self.validate()
    }

    /// Checks every value that serde cannot: references, ranges, combinations, and that every
    /// command's settings resolve. Everything a start would reject except sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Port 0 (any free port, in tests) on both is two different ports.
        if self
            .admin_listen
            .is_some_and(|a| a == self.listen && a.port() != 0)
        {
            return Err(invalid(
                "admin_listen",
                "must differ from `listen` (leave it unset to share the port)",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be greater than 0"));
        }
        for (name, up) in &self.upstreams {
            if up.endpoints.is_empty() {
                return Err(invalid(
                    format!("upstreams.{name}.endpoints"),
                    "needs at least one URI",
                ));
            }
            for uri in &up.endpoints {
                let parsed: Result<http::Uri, _> = uri.parse();
                let ok = parsed.as_ref().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                });
                if !ok {
                    return Err(invalid(
                        format!("upstreams.{name}.endpoints"),
                        format!("`{uri}` is not an http:// or https:// URI with a host"),
                    ));
                }
            }
            let key = format!("upstreams.{name}");
            if up.tls.is_set() && !up.endpoints.iter().any(|u| u.starts_with("https://")) {
                return Err(invalid(
                    format!("{key}.tls"),
                    "is set but no endpoint is https://: the settings would not be used",
                ));
            }
            up.tls.validate(&key)?;
            if up.max_concurrency == 0 {
                return Err(invalid(
                    format!("{key}.max_concurrency"),
                    "must be at least 1",
                ));
            }
            mesh::validate_breaker(&key, &up.breaker)?;
        }
        self.spool
            .validate()
            .map_err(|e| invalid(format!("spool.{}", e.key), e.problem))?;
        self.auth.validate()?;
        self.limits.validate(self.max_body_bytes)?;
        mesh::validate_tracing(&self.tracing)?;
        if self.health_check_interval.0.is_zero() {
            return Err(invalid("health_check_interval", "must be longer than 0s"));
        }
        if self.openim_timeout.0.is_zero() {
            return Err(invalid("openim_timeout", "must be longer than 0s"));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("tls.cert_file", Some(&tls.cert_file)),
                ("tls.key_file", Some(&tls.key_file)),
                ("tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path
                    && let Err(e) = std::fs::metadata(path)
                {
                    return Err(invalid(key, format!("cannot read {}: {e}", path.display())));
                }
            }
        }
        if let Some(path) = &self.admin_token_file {
            read_admin_token(path)?;
        } else if self.admin_api_exposed() && !self.admin_insecure {
            return Err(invalid(
                "admin_token_file",
                format!(
                    "the admin API (which lists message payloads and purges dead letters) would be reachable on {} without a token: set admin_token_file, or serve it on loopback (admin_listen: 127.0.0.1:PORT), or set admin_insecure: true",
                    self.admin_listen.unwrap_or(self.listen)
                ),
            ));
        }
        self.check_settings("defaults", &self.defaults, None)?;
        for row in catalog::ROWS {
            if let Some(o) = self.commands.get(row.command) {
                let phase = row.phase();
                let key = format!("commands.{}", row.command);
                if phase == Phase::Before && o.contains_key("delivery") {
                    return Err(invalid(
                        format!("{key}.delivery"),
                        "only after callbacks have a delivery mode; before callbacks are always synchronous",
                    ));
                }
                if phase == Phase::Before && o.contains_key("ordered") {
                    return Err(invalid(
                        format!("{key}.ordered"),
                        "only after callbacks can be ordered",
                    ));
                }
                self.check_settings(&key, &self.settings(row.command)?, Some(o))?;
            }
        }
        Ok(())
    }

    /// Settings that are usable but probably a mistake, one warning each.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        let mut timeout = |key: String, s: &CommandConfig| {
            if s.timeout.0 >= OPENIM_TIMEOUT {
                out.push(ConfigWarning {
                    key: format!("{key}.timeout"),
                    message: format!(
                        "{} is not below OpenIM's default webhook timeout of 5s: OpenIM may give up first and fail the operation",
                        humantime::format_duration(s.timeout.0)
                    ),
                });
            }
        };
        timeout("defaults".into(), &self.defaults);
        for (command, o) in &self.commands {
            if o.contains_key("timeout")
                && let Ok(s) = self.settings(command)
            {
                timeout(format!("commands.{command}"), &s);
            }
        }
        out
    }

    /// Whether the admin API (`/admin/*`, present when a spool is used) is served on an address
    /// other than loopback.
    pub fn admin_api_exposed(&self) -> bool {
        self.uses_spool() && !self.admin_listen.unwrap_or(self.listen).ip().is_loopback()
    }

    /// Whether any after command uses the durable spool.
    pub fn uses_spool(&self) -> bool {
        catalog::ROWS.iter().any(|row| {
            row.phase() == Phase::After
                && self
                    .settings(row.command)
                    .is_ok_and(|s| s.enabled && s.delivery == Delivery::Spool)
        })
    }

    /// The names of the upstreams a start will have: the configured ones, or `default` (the
    /// built-in example) when none is configured.
    fn upstream_exists(&self, name: &str) -> bool {
        if self.upstreams.is_empty() {
            name == DEFAULT_UPSTREAM
        } else {
            self.upstreams.contains_key(name)
        }
    }

    fn check_settings(
        &self,
        key: &str,
        s: &CommandConfig,
        o: Option<&CommandOverride>,
    ) -> Result<(), ConfigError> {
        let set = |field: &str| o.is_none_or(|o| o.contains_key(field));
        if set("upstream") && !self.upstream_exists(&s.upstream) {
            return Err(invalid(
                format!("{key}.upstream"),
                if self.upstreams.is_empty() {
                    format!(
                        "upstream `{}` is not defined: with no `upstreams` only `{DEFAULT_UPSTREAM}` (the built-in example) exists",
                        s.upstream
                    )
                } else {
                    format!("upstream `{}` is not defined under `upstreams`", s.upstream)
                },
            ));
        }
        if set("timeout") && s.timeout.0.is_zero() {
            return Err(invalid(format!("{key}.timeout"), "must be greater than 0"));
        }
        if set("reject_code") && s.reject_code <= 0 {
            return Err(invalid(
                format!("{key}.reject_code"),
                "must be greater than 0 (OpenIM shows codes <= 0 as error 500); use 20001-29999",
            ));
        }
        Ok(())
    }

    /// The settings of a command: `defaults`, then the keys of `commands.<command>` over them.
    /// Fails (naming the key) only on an override that does not fit [`CommandConfig`], which
    /// [`Config::validate`] has already ruled out for a loaded config.
    pub fn settings(&self, command: &str) -> Result<CommandConfig, ConfigError> {
        let Some(o) = self.commands.get(command) else {
            return Ok(self.defaults.clone());
        };
        Figment::from(Serialized::defaults(&self.defaults))
            .merge(Serialized::defaults(o))
            .extract()
            .map_err(|e| {
                let path = e.path.join(".");
                let key = if path.is_empty() {
                    format!("commands.{command}")
                } else {
                    format!("commands.{command}.{path}")
                };
                invalid(key, e.kind.to_string())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:10006");
        let s = c
            .settings("callbackBeforeCreateGroupCommand")
            .expect("settings");
        assert_eq!(s.timeout.0, Duration::from_secs(3));
        assert_eq!(s.on_failure, FailurePolicy::Continue);
        assert_eq!(s.delivery, Delivery::Spool);
    }

    #[test]
    fn per_command_overrides_merge_over_defaults() {
        let c = Config::from_yaml(
            "upstreams: {groups: {endpoints: ['http://127.0.0.1:1']}, default: {endpoints: ['http://127.0.0.1:2']}}\n\
             defaults: {timeout: 2s}\n\
             commands:\n  callbackBeforeCreateGroupCommand: {upstream: groups, on_failure: reject, reject_code: 20042}\n",
        )
        .expect("valid");
        let s = c
            .settings("callbackBeforeCreateGroupCommand")
            .expect("settings");
        assert_eq!(
            (s.upstream.as_str(), s.on_failure, s.reject_code),
            ("groups", FailurePolicy::Reject, 20042)
        );
        assert_eq!(s.timeout.0, Duration::from_secs(2));
        assert_eq!(
            c.settings("callbackAfterQuitGroupCommand")
                .expect("settings")
                .upstream,
            "default"
        );
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let c = Config::from_yaml(include_str!("../config/gateway.example.yaml"))
            .expect("example config is valid");
        let s = c
            .settings("callbackBeforeCreateGroupCommand")
            .expect("settings");
        assert_eq!(
            (s.upstream.as_str(), s.on_failure, s.reject_code),
            ("groups", FailurePolicy::Reject, 20010)
        );
        assert!(
            !c.settings("callbackAfterUserOnlineCommand")
                .expect("settings")
                .enabled
        );
        assert!(
            c.settings("callbackAfterSendGroupMsgCommand")
                .expect("settings")
                .ordered
        );
        assert!(c.log.redact);
        assert_eq!(
            c.tracing.otlp.as_ref().map(|o| o.protocol),
            Some(crate::config::OtlpProtocol::Http)
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (
                "commands: {callbackNopeCommand: {}}",
                "commands.callbackNopeCommand",
            ),
            (
                "upstreams: {default: {endpoints: ['http://h:1']}}\ncommands: {callbackAfterQuitGroupCommand: {upstream: nope}}",
                "commands.callbackAfterQuitGroupCommand.upstream",
            ),
            (
                "commands: {callbackBeforeCreateGroupCommand: {delivery: sync}}",
                "commands.callbackBeforeCreateGroupCommand.delivery",
            ),
            ("defaults: {reject_code: 0}", "defaults.reject_code"),
            ("defaults: {timeout: 0s}", "defaults.timeout"),
            (
                "upstreams: {a: {endpoints: ['not a uri']}}",
                "upstreams.a.endpoints",
            ),
            ("upstreams: {a: {endpoints: []}}", "upstreams.a.endpoints"),
            // What `check-config` used to let through and a start then refused.
            ("spool: {workers: 0}", "spool.workers"),
            ("spool: {batch_max: 0}", "spool.batch_max"),
            (
                "spool: {backoff_initial: 2s, backoff_max: 1s}",
                "spool.backoff_max",
            ),
            (
                "commands: {callbackAfterQuitGroupCommand: {upstream: groups}}",
                "commands.callbackAfterQuitGroupCommand.upstream",
            ),
            (
                "commands: {callbackAfterQuitGroupCommand: {timeout: 0s}}",
                "commands.callbackAfterQuitGroupCommand.timeout",
            ),
        ];
        for (yaml, key) in cases {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        let err = Config::from_yaml("defaults: {timeout: soon}")
            .expect_err("bad duration")
            .to_string();
        assert!(err.contains("defaults.timeout"), "{err}");
        let err = Config::from_yaml("commands: {callbackAfterQuitGroupCommand: {timout: 1s}}")
            .expect_err("unknown key in an override")
            .to_string();
        assert!(
            err.contains("commands.callbackAfterQuitGroupCommand") && err.contains("timout"),
            "{err}"
        );
        let err = Config::from_yaml("listn: 1")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn warnings_are_values_naming_their_key() {
        let c = Config::from_yaml(
            "defaults: {timeout: 6s}\ncommands: {callbackBeforeCreateGroupCommand: {timeout: 5s}, callbackAfterQuitGroupCommand: {enabled: false}}",
        )
        .expect("usable");
        let keys: Vec<String> = c.warnings().into_iter().map(|w| w.key).collect();
        assert_eq!(
            keys,
            [
                "defaults.timeout",
                "commands.callbackBeforeCreateGroupCommand.timeout"
            ]
        );
        assert!(Config::default().warnings().is_empty());
    }

    #[test]
    fn overrides_keep_unset_keys_from_defaults() {
        let c = Config::from_yaml(
            "defaults: {timeout: 2s, reject_code: 20100, on_failure: reject}\n\
             commands: {callbackBeforeAddFriendCommand: {reject_message: no}}",
        )
        .expect("valid");
        let s = c
            .settings("callbackBeforeAddFriendCommand")
            .expect("settings");
        assert_eq!(
            (
                s.timeout.0,
                s.reject_code,
                s.on_failure,
                s.reject_message.as_str()
            ),
            (Duration::from_secs(2), 20100, FailurePolicy::Reject, "no")
        );
    }
}
