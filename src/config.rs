//! The configuration: plain serde data with documented defaults, loaded from one YAML file plus
//! `OPENIM_GATEWAY_*` environment overrides, and validated with errors that name the key.
//! No sockets here; [`crate::gateway::Snapshot`] is the live part built from it. [`Config::validate`]
//! checks everything a start would reject except sockets (what `check-config` checks), and
//! [`Config::warnings`] returns what is usable but probably a mistake, for `main` to log once
//! logging is set up. The command line's values ([`Flags`]) merge over the file and the
//! environment key by key.
//!
//! - `config/diagnose.rs`: config errors in the operator's words (where the key was written,
//!   what was expected with an example, the nearest valid key).
//! - `config/mesh.rs`, `config/security.rs`, `config/inspect.rs`: the upstream mesh, the
//!   security settings, the live view of callbacks.

mod diagnose;
mod gate;
mod inspect;
mod mesh;
mod security;
mod spool;
mod start;

pub use diagnose::Origin;
pub use gate::{ContentTypes, OnlyConfig, SkipConfig};
pub use inspect::InspectConfig;
pub use spool::{
    BUFFER_DIR, BackendKind, Durability, FILE_NAME, FullPolicy, RedisConfig, SpoolConfig,
    SpoolConfigError, Unreachable, redact_url,
};
pub use start::{Start, live_view, start_only_changes, walk_differences};

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

/// What the start's log and `check` say while the demo answers (`demo`).
pub const DEMO_NOTICE: &str = "the built-in example hook service answers as upstream `default` (its demo policy rejects \"spam\" and rewrites messages); configure upstreams.default or --upstream for real traffic";

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

/// How many serving workers run the callback port (`workers`): `auto`, one per CPU this process
/// may use (its cgroup quota included), or a count. Each is a thread with its own runtime and
/// its own connection to each plaintext upstream member (`http/serve.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One per CPU this process may use.
    #[default]
    Auto,
    /// This many.
    Count(usize),
}

impl Workers {
    /// The number of serving workers, at least 1.
    pub fn count(self) -> usize {
        match self {
            Self::Auto => crate::worker::available(),
            Self::Count(n) => n.max(1),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Count(i64),
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        let wrong =
            || serde::de::Error::custom("expected `auto` or a number of workers (1 or more)");
        let count = |n: Option<usize>| n.filter(|n| *n >= 1).map(Self::Count).ok_or_else(wrong);
        match Written::deserialize(d)? {
            Written::Count(n) => count(usize::try_from(n).ok()),
            Written::Text(t) if t.trim() == "auto" => Ok(Self::Auto),
            Written::Text(t) => count(t.trim().parse().ok()),
            Written::Other(_) => Err(wrong()),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP front end OpenIM's `url` points at.
    pub listen: Start<SocketAddr>,
    /// Address of the operators' port: `/healthz`, `/readyz`, `/metrics`, `/admin/upstreams` and
    /// the spool admin API.
    /// When unset they are served on `listen` too; set it to keep the admin API (which can purge
    /// dead letters) off the port OpenIM reaches.
    pub admin_listen: Start<Option<SocketAddr>>,
    /// Largest request body accepted, in bytes; larger bodies get the failure-policy envelope.
    pub max_body_bytes: usize,
    /// Logging.
    pub log: Start<LogConfig>,
    /// gRPC upstreams by name. Every enabled command needs its upstream here (`default` unless
    /// the command names another), or `demo: true`.
    pub upstreams: HashMap<String, UpstreamConfig>,
    /// Settings of every command, unless `commands` overrides them.
    pub defaults: CommandConfig,
    /// Per-command overrides, keyed by the OpenIM command (`callbackBeforeCreateGroupCommand`).
    pub commands: BTreeMap<String, CommandOverride>,
    /// The durable spool of after-events.
    pub spool: Start<SpoolConfig>,
    /// The settings of the built-in example hook service that `demo` starts.
    pub example: Start<openim_callback_example::ExampleConfig>,
    /// Let the built-in example hook service answer as the upstream `default`, in-process. It
    /// applies the demo policy (rejects "spam", masks words, tags groups, sets avatars) to
    /// whatever arrives, so it is for trying the gateway out, never for real traffic. On by
    /// itself only with no config file and no upstream (`cargo run --release`); `--demo` sets it.
    /// Ignored (with a warning) when `upstreams.default` is configured.
    pub demo: bool,
    /// The bot and service accounts (user IDs) the `to_bots` and `from_bots` conditions mean.
    pub bots: Vec<String>,
    /// Who may call the callback port (path secret, header, source CIDRs).
    pub auth: AuthConfig,
    /// TLS on the callback port; unset = plain HTTP (a mesh sidecar may terminate TLS).
    pub tls: Start<Option<TlsConfig>>,
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
    pub shutdown_grace: Start<Dur>,
    /// How long `/readyz` answers 503 before the listeners close, so that the mesh stops sending
    /// new callbacks first.
    pub shutdown_delay: Start<Dur>,
    /// How often the members of the upstreams of enabled commands are health-checked
    /// (`/admin/upstreams`, `gateway_upstream_up`; never readiness). While an upstream is down
    /// or its breaker is not closed it is checked every 200 ms.
    pub health_check_interval: Start<Dur>,
    /// Serving workers of the callback port: `auto` (one per CPU) or a count.
    pub workers: Start<Workers>,
    /// The resolver of upstream host names.
    pub dns: DnsConfig,
    /// Traces: W3C trace context and the OTLP exporter.
    pub tracing: Start<TracingConfig>,
    /// Reloading the config file while running.
    pub reload: Start<ReloadConfig>,
    /// The recent callbacks kept for `/admin/callbacks` (live).
    pub inspect: InspectConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Start::from(SocketAddr::from(([127, 0, 0, 1], 10006))),
            admin_listen: Start::from(None),
            max_body_bytes: 1024 * 1024,
            log: Start::from(LogConfig::default()),
            upstreams: HashMap::new(),
            defaults: CommandConfig::default(),
            commands: BTreeMap::new(),
            spool: Start::from(SpoolConfig::default()),
            example: Start::from(openim_callback_example::ExampleConfig::default()),
            demo: false,
            bots: Vec::new(),
            auth: AuthConfig::default(),
            tls: Start::from(None),
            admin_token_file: None,
            admin_insecure: false,
            admin_protect_metrics: false,
            limits: LimitsConfig::default(),
            openim_timeout: Dur(OPENIM_TIMEOUT),
            shutdown_grace: Start::from(Dur(Duration::from_secs(30))),
            shutdown_delay: Start::from(Dur(Duration::from_secs(2))),
            health_check_interval: Start::from(Dur(Duration::from_secs(5))),
            workers: Start::from(Workers::Auto),
            dns: DnsConfig::default(),
            tracing: Start::from(TracingConfig::default()),
            reload: Start::from(ReloadConfig::default()),
            inspect: InspectConfig::default(),
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
    /// The `grpc.health.v1` service name the member health checks ask about (`""` = the server
    /// as a whole); a member that answers NOT_SERVING leaves the rotation until it is SERVING.
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
/// (the README's contract table, last row).
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
    /// Forward only callbacks for which every listed condition holds (the others are answered
    /// at once: a before callback continues, an after callback is acknowledged, not spooled).
    pub only: OnlyConfig,
    /// Never forward callbacks for which any listed condition holds.
    pub skip: SkipConfig,
    /// Before callbacks: call the service off OpenIM's path and answer OpenIM as if it had
    /// continued; the service's verdict is counted and logged, never applied.
    pub shadow: bool,
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
            only: OnlyConfig::default(),
            skip: SkipConfig::default(),
            shadow: false,
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

/// A configuration that cannot be used, naming the key at fault and, when known, where it was
/// written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value cannot be read (unknown key, wrong type) or is not usable.
    #[error("config key `{key}`{}: {problem}", at.as_ref().map(|a| format!(" ({a})")).unwrap_or_default())]
    Invalid {
        /// The dotted key, as the user spelled it.
        key: String,
        /// What is wrong, and what was expected.
        problem: String,
        /// Where the key was written (file line, environment variable, flag), when known.
        at: Option<Origin>,
    },
    /// The file is not YAML.
    #[error("{at}: not valid YAML: {problem}")]
    Syntax {
        /// Where the parser stopped.
        at: Origin,
        /// What it found.
        problem: String,
    },
    /// `--config` names a file that does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// `--config` names a file that cannot be read.
    #[error("config file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Adds where the key at fault was written, unless known already.
    fn located(mut self, find: impl FnOnce(&str) -> Option<Origin>) -> Self {
        if let Self::Invalid { key, at, .. } = &mut self
            && at.is_none()
        {
            *at = find(key);
        }
        self
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        at: None,
    }
}

/// A figment error as a [`ConfigError`]: the key path without the profile, the problem in words.
fn from_figment(e: &figment::Error, prefix: &str) -> ConfigError {
    let mut key = prefix.to_owned();
    for part in &e.path {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(part);
    }
    let problem = diagnose::problem(&e.kind);
    if key.is_empty() {
        return invalid("(top level)", problem);
    }
    invalid(key, problem)
}

/// Values given on the command line. They win over the file and the environment, and merge
/// with them key by key: `--upstream` sets `upstreams.default.endpoints`, so that
/// `OPENIM_GATEWAY_UPSTREAMS__DEFAULT__BREAKER__ENABLED` and the file's other settings of
/// `upstreams.default` still apply to it.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--listen`: `listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`: `admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--upstream`: the one endpoint of `upstreams.default`.
    pub upstream: Option<String>,
    /// `--demo`: `demo: true`.
    pub demo: bool,
}

impl Flags {
    fn merge_into(&self, mut figment: Figment) -> Figment {
        if let Some(listen) = self.listen {
            figment = figment.merge(Serialized::default("listen", listen));
        }
        if let Some(admin) = self.admin_listen {
            figment = figment.merge(Serialized::default("admin_listen", admin));
        }
        if let Some(uri) = &self.upstream {
            let key = format!("upstreams.{DEFAULT_UPSTREAM}.endpoints");
            figment = figment.merge(Serialized::default(&key, [uri]));
        }
        if self.demo {
            figment = figment.merge(Serialized::default("demo", true));
        }
        figment
    }

    /// The flag that set `key` (or a key above it).
    fn origin(&self, key: &str) -> Option<Origin> {
        let under = |k: &str| key == k || key.starts_with(&format!("{k}."));
        if self.upstream.is_some()
            && (under(&format!("upstreams.{DEFAULT_UPSTREAM}.endpoints"))
                || key == format!("upstreams.{DEFAULT_UPSTREAM}"))
        {
            Some(Origin::Flag("--upstream"))
        } else if self.listen.is_some() && under("listen") {
            Some(Origin::Flag("--listen"))
        } else if self.admin_listen.is_some() && under("admin_listen") {
            Some(Origin::Flag("--admin-listen"))
        } else if self.demo && under("demo") {
            Some(Origin::Flag("--demo"))
        } else {
            None
        }
    }
}

/// Where the values of one load came from, for locating the key at fault.
struct Sources<'a> {
    file: Option<&'a diagnose::Positions>,
    env: bool,
    flags: &'a Flags,
}

impl Sources<'_> {
    /// The flag, else the environment variable, else the file position that set `key`.
    fn find(&self, key: &str) -> Option<Origin> {
        self.flags
            .origin(key)
            .or_else(|| {
                self.env
                    .then(|| diagnose::env_var_for(key))
                    .flatten()
                    .map(Origin::Env)
            })
            .or_else(|| self.file.and_then(|f| f.find(key)))
    }

    /// Extracts and validates, every error located.
    fn extract(&self, figment: &Figment, no_file: bool) -> Result<Config, ConfigError> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| from_figment(&e, "").located(|k| self.find(k)))?;
        // The embedded default (no file, no upstream): the demo answers, as asked by no config.
        if no_file && config.upstreams.is_empty() {
            config.demo = true;
        }
        config
            .normalize()
            .map_err(|e| e.located(|k| self.find(k)))?;
        Ok(config)
    }
}

impl Config {
    /// Loads defaults, then the YAML file if given, then `OPENIM_GATEWAY_*` variables, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, &Flags::default())
    }

    /// [`Config::load`] with the command line's values over the file and the environment. With
    /// no file and no upstream (the embedded default), `demo` is on.
    pub fn load_with(path: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let positions = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        ConfigError::Missing(path.to_owned())
                    } else {
                        ConfigError::Unreadable {
                            path: path.to_owned(),
                            source,
                        }
                    }
                })?;
                let positions = diagnose::Positions::parse(&text, Some(path))?;
                figment = figment.merge(Yaml::string(&text));
                Some(positions)
            }
            None => None,
        };
        // `OPENIM_GATEWAY_CONFIG` names the file (the `--config` flag), it is not a key.
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
        figment = flags.merge_into(figment);
        Sources {
            file: positions.as_ref(),
            env: true,
            flags,
        }
        .extract(&figment, path.is_none())
    }

    /// Parses a YAML document (for tests and `--check`), with validation. Errors give the
    /// document's line and column.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let positions = diagnose::Positions::parse(text, None)?;
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Yaml::string(text));
        Sources {
            file: Some(&positions),
            env: false,
            flags: &Flags::default(),
        }
        .extract(&figment, false)
    }

    /// Canonicalises command keys (environment variables arrive lower-cased), resolves
    /// defaults that depend on other keys (so that `check` shows them), and validates.
    fn normalize(&mut self) -> Result<(), ConfigError> {
        // Where a Redis spool's local buffer lives: `check` prints it.
        self.spool.normalize();
        let mut commands = BTreeMap::new();
        for (key, value) in std::mem::take(&mut self.commands) {
            let row = catalog::ROWS
                .iter()
                .find(|r| r.command.eq_ignore_ascii_case(&key))
                .ok_or_else(|| {
                    invalid(
                        format!("commands.{key}"),
                        "not an OpenIM callback command (see docs/commands.md)",
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
            .is_some_and(|a| a == *self.listen && a.port() != 0)
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
        if let Some(tls) = &*self.tls {
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
                "admin_listen",
                format!(
                    "the admin API (it lists message payloads and purges dead letters) would be reachable on {} without a token. Serve it on loopback with `--admin-listen 127.0.0.1:10007` (config `admin_listen`), or require a token with `admin_token_file`, or accept the risk with `admin_insecure: true`",
                    self.admin_listen.unwrap_or(*self.listen)
                ),
            ));
        }
        self.check_settings("defaults", &self.defaults, None)?;
        if (self.defaults.only.to_bots || self.defaults.skip.from_bots) && self.bots.is_empty() {
            return Err(invalid(
                "defaults",
                "to_bots and from_bots need the bot accounts: set `bots: [<user ID>, …]` at the top level",
            ));
        }
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
                if phase == Phase::After && o.get("shadow").and_then(|v| v.to_bool()) == Some(true)
                {
                    return Err(invalid(
                        format!("{key}.shadow"),
                        "only before callbacks can be shadowed (an after callback changes nothing OpenIM does)",
                    ));
                }
                self.check_conditions(row.command, o)?;
                self.check_settings(&key, &self.settings(row.command)?, Some(o))?;
            }
        }
        self.check_upstreams_of_enabled_commands()
    }

    /// The `only`/`skip` conditions written under `commands.<command>` name fields its request
    /// carries (under `defaults` they apply only where the fields exist).
    fn check_conditions(&self, command: &str, o: &CommandOverride) -> Result<(), ConfigError> {
        let Ok(catalog) = catalog::Catalog::contract() else {
            return Ok(());
        };
        let Some(entry) = catalog.get(command) else {
            return Ok(());
        };
        let numbers = crate::fields::FieldNumbers::of(&entry.request());
        let settings = self.settings(command)?;
        let written = |part: &str| -> Vec<String> {
            o.get(part)
                .and_then(|v| v.as_dict())
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default()
        };
        let parts = [
            ("only", settings.only.reads(), written("only")),
            ("skip", settings.skip.reads(), written("skip")),
        ];
        for (part, reads, keys) in parts {
            for (key, fields) in reads {
                if !keys.iter().any(|k| k == key) {
                    continue;
                }
                // `to_bots` reads `recvID` (single) or `atUserList` (group): either will do.
                let missing = if key == "to_bots" {
                    (!fields.iter().any(|f| numbers.has(f))).then_some(&fields[0])
                } else {
                    fields.iter().find(|f| !numbers.has(f))
                };
                if let Some(missing) = missing {
                    return Err(invalid(
                        format!("commands.{command}.{part}.{key}"),
                        format!(
                            "{command}'s request has no `{missing}`, so this condition could never be checked; set it on a message command, or under `defaults` (where it applies to the commands that carry the field)"
                        ),
                    ));
                }
            }
        }
        if (settings.only.to_bots || settings.skip.from_bots) && self.bots.is_empty() {
            return Err(invalid(
                format!("commands.{command}"),
                "to_bots and from_bots need the bot accounts: set `bots: [<user ID>, …]` at the top level",
            ));
        }
        Ok(())
    }

    /// Every enabled command has its upstream: the one place that names the commands left
    /// without one (a config without `upstreams` no longer falls back to the demo).
    fn check_upstreams_of_enabled_commands(&self) -> Result<(), ConfigError> {
        let mut missing: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for row in catalog::ROWS {
            let s = self.settings(row.command)?;
            if s.enabled && !self.upstream_exists(&s.upstream) {
                missing.entry(s.upstream).or_default().push(row.command);
            }
        }
        let Some((name, commands)) = missing.into_iter().next() else {
            return Ok(());
        };
        const SHOWN: usize = 3;
        let mut named = commands
            .iter()
            .take(SHOWN)
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if commands.len() > SHOWN {
            named.push_str(&format!(" and {} more", commands.len() - SHOWN));
        }
        let (count, verb) = match commands.len() {
            1 => ("the enabled command".to_owned(), "uses"),
            n => (format!("{n} enabled commands"), "use"),
        };
        let fix = if name == DEFAULT_UPSTREAM {
            format!(
                "add `upstreams.{name}` (or start with `--upstream URL`), or set `demo: true` (or `--demo`) to let the built-in demo policy answer"
            )
        } else {
            format!("add `upstreams.{name}`")
        };
        Err(invalid(
            format!("upstreams.{name}"),
            format!(
                "is not configured, and {count} {verb} it ({named}): {fix}, or disable those commands"
            ),
        ))
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
        if self.demo && self.upstreams.contains_key(DEFAULT_UPSTREAM) {
            out.push(ConfigWarning {
                key: "demo".into(),
                message: "is ignored: `upstreams.default` is configured and answers instead of the built-in demo policy".into(),
            });
        }
        out
    }

    /// Whether the admin API (`/admin/*`, present when a spool is used) is served on an address
    /// other than loopback.
    pub fn admin_api_exposed(&self) -> bool {
        self.uses_spool() && !self.admin_listen.unwrap_or(*self.listen).ip().is_loopback()
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

    /// The names of the upstreams a start will have: the configured ones, and `default` when
    /// the demo serves it.
    fn upstream_exists(&self, name: &str) -> bool {
        self.upstreams.contains_key(name) || (name == DEFAULT_UPSTREAM && self.demo)
    }

    /// Whether the built-in example hook service answers as `default`: `demo` is on and no
    /// `upstreams.default` is configured.
    pub fn serves_demo(&self) -> bool {
        self.demo && !self.upstreams.contains_key(DEFAULT_UPSTREAM)
    }

    /// Makes the demo a configured upstream: when [`Config::serves_demo`], `upstream` (where
    /// the example service runs) becomes `upstreams.default` and `demo` is cleared, so that the
    /// gateway is built from what it will call. Returns whether it did.
    pub fn attach_demo(&mut self, upstream: &UpstreamConfig) -> bool {
        if !self.serves_demo() {
            return false;
        }
        self.upstreams
            .insert(DEFAULT_UPSTREAM.into(), upstream.clone());
        self.demo = false;
        true
    }

    fn check_settings(
        &self,
        key: &str,
        s: &CommandConfig,
        o: Option<&CommandOverride>,
    ) -> Result<(), ConfigError> {
        let set = |field: &str| o.is_none_or(|o| o.contains_key(field));
        // `defaults.upstream: default` left as it is: the commands using it are named by
        // `check_upstreams_of_enabled_commands` instead.
        let written = o.is_some() || s.upstream != DEFAULT_UPSTREAM;
        if set("upstream") && written && !self.upstream_exists(&s.upstream) {
            let mut names: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
            names.sort_unstable();
            let near = diagnose::nearest(&s.upstream, &names)
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            return Err(invalid(
                format!("{key}.upstream"),
                format!(
                    "upstream `{}` is not defined under `upstreams`{near}",
                    s.upstream
                ),
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
            .map_err(|e| from_figment(&e, &format!("commands.{command}")))
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
    fn workers_is_auto_or_a_count() {
        const UP: &str = "upstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n";
        assert_eq!(*Config::default().workers, Workers::Auto);
        assert!(Workers::Auto.count() >= 1);
        let c = Config::from_yaml(&format!("{UP}workers: 3\n")).expect("a count");
        assert_eq!((*c.workers, c.workers.count()), (Workers::Count(3), 3));
        let c = Config::from_yaml(&format!("{UP}workers: auto\n")).expect("auto");
        assert_eq!(*c.workers, Workers::Auto);
        // An environment variable arrives as text.
        let c = Config::from_yaml(&format!("{UP}workers: '2'\n")).expect("a count as text");
        assert_eq!(*c.workers, Workers::Count(2));
        for wrong in [
            "workers: 0\n",
            "workers: many\n",
            "workers: -1\n",
            "workers: 1.5\n",
        ] {
            let e = Config::from_yaml(&format!("{UP}{wrong}"))
                .expect_err(wrong)
                .to_string();
            assert!(
                e.contains("workers") && e.contains("`auto` or a number of workers"),
                "{wrong}: {e}"
            );
        }
        // It reads back as written (`check` prints the effective settings).
        assert_eq!(
            serde_json::to_value(
                Config::from_yaml(&format!("{UP}workers: 4\n"))
                    .expect("4")
                    .workers
            )
            .expect("json"),
            serde_json::json!(4)
        );
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
            "demo: true\ndefaults: {timeout: 6s}\ncommands: {callbackBeforeCreateGroupCommand: {timeout: 5s}, callbackAfterQuitGroupCommand: {enabled: false}}",
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
        let c = Config::from_yaml("demo: true\nupstreams: {default: {endpoints: ['http://h:1']}}")
            .expect("usable");
        let keys: Vec<String> = c.warnings().into_iter().map(|w| w.key).collect();
        assert_eq!(keys, ["demo"], "the demo gives way to upstreams.default");
        assert!(!c.serves_demo());
    }

    /// Each kind of load error, as the operator reads it: where, the key as written, what was
    /// expected with an example, the nearest valid key or value.
    #[test]
    fn load_errors_say_where_what_was_expected_and_the_nearest_key() {
        let cases = [
            (
                "demo: true\ndefaults:\n  timout: 3s\n",
                "config key `defaults.timout` (line 3, column 3): `timout` is not a known key here; did you mean `timeout`?",
            ),
            (
                "demo: true\nlimits:\n  max_headers: many\n",
                "config key `limits.max_headers` (line 3, column 3): expected a whole number such as 5, found \"many\"",
            ),
            (
                "demo: true\ndefaults:\n  timeout: 3 fortnights\n",
                "config key `defaults.timeout` (line 3, column 3): expected a duration such as 800ms or 3s, found \"3 fortnights\"",
            ),
            (
                "demo: true\ndefaults: {on_failure: rejct}\n",
                "config key `defaults.on_failure` (line 2, column 12): `rejct` is not one of `continue`, `reject`; did you mean `reject`?",
            ),
            (
                "demo: true\ncommands:\n  callbackAfterQuitGroupCommand: {timout: 1s}\n",
                "config key `commands.callbackAfterQuitGroupCommand.timout` (line 3, column 35): `timout` is not a known key here; did you mean `timeout`?",
            ),
            (
                "upstreams: {default: {endpoints: ['http://h:1']}}\ncommands:\n  callbackAfterQuitGroupCommand: {upstream: defualt}\n",
                "config key `commands.callbackAfterQuitGroupCommand.upstream` (line 3, column 35): upstream `defualt` is not defined under `upstreams`; did you mean `default`?",
            ),
            (
                "upstreams:\n  default: {connect_timeout: 1s}\n",
                "config key `upstreams.default` (line 2, column 3): the key `endpoints` is missing",
            ),
            (
                "demo: true\nlisten: [1\n",
                "line 3, column 1: not valid YAML: while parsing a flow sequence, expected ',' or ']'",
            ),
        ];
        for (yaml, expected) in cases {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert_eq!(err, expected, "{yaml}");
            assert!(
                !err.contains("default.defaults"),
                "no profile prefix: {err}"
            );
        }
    }

    #[test]
    fn an_enabled_command_without_its_upstream_is_refused_by_name() {
        let err = Config::from_yaml("defaults: {timeout: 2s}")
            .expect_err("no upstream, no demo")
            .to_string();
        for part in [
            "config key `upstreams.default`",
            "52 enabled commands use it",
            "callbackBeforeSendSingleMsgCommand",
            "and 49 more",
            "`demo: true`",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        let err = Config::from_yaml(
            "defaults: {enabled: false}\ncommands: {callbackAfterQuitGroupCommand: {enabled: true}}",
        )
        .expect_err("the one enabled command has no upstream")
        .to_string();
        assert!(
            err.contains("the enabled command uses it (`callbackAfterQuitGroupCommand`)"),
            "{err}"
        );
        assert!(
            Config::from_yaml("defaults: {enabled: false}").is_ok(),
            "nothing enabled, nothing to call"
        );
        let demo = Config::from_yaml("demo: true").expect("the demo answers");
        assert!(demo.serves_demo());
        let mut built = demo.clone();
        assert!(built.attach_demo(&UpstreamConfig::single("http://127.0.0.1:9")));
        assert!(!built.serves_demo() && built.upstreams.contains_key(DEFAULT_UPSTREAM));
        built
            .validate()
            .expect("the attached demo is a configured upstream");
    }

    #[test]
    fn overrides_keep_unset_keys_from_defaults() {
        let c = Config::from_yaml(
            "demo: true\ndefaults: {timeout: 2s, reject_code: 20100, on_failure: reject}\n\
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
