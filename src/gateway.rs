//! The gateway: a fixed part (catalogue, spool, metrics) and a swappable [`Snapshot`] of the live
//! part (per-command settings and policies, upstream clients, limits) behind one atomic pointer.
//!
//! [`Snapshot::build`] does every check that needs resources (tokio, channels); a new snapshot is
//! swapped in whole ([`Gateway::swap`]), and a request in flight keeps the snapshot it started
//! with. Nothing else holds a copy of the live settings: the pipeline and the spool's deliveries
//! read them from the current snapshot each time.

use crate::catalog::{Catalog, CommandEntry};
use crate::config::{CommandConfig, Config, LimitsConfig, Secret, read_admin_token};
use crate::decision::Policy;
use crate::http::inbound::InboundAuth;
use crate::spool::Spool;
use crate::upstream::{Call, Resilient, Upstreams};
use arc_swap::ArcSwap;
use bytes::Bytes;
use openim_callback_contract::metadata as meta;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Shadow-mode calls (`crate::shadow`) in flight at once, per snapshot; more are dropped.
pub const SHADOW_SLOTS: usize = 64;

/// The live gateway: cheap to clone, shared by the HTTP front end and the spool's workers.
#[derive(Clone)]
pub struct Gateway {
    fixed: Arc<Fixed>,
    live: Arc<ArcSwap<Snapshot>>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new configuration serves.
    Applied,
    /// Refused; the old configuration keeps serving.
    Refused(String),
}

/// Reloads the configuration on demand (`POST /admin/reload`, SIGHUP, a file change); the one
/// implementation is `crate::reload::Reloader`, which sits above the gateway.
pub trait Reload: Send + Sync + std::fmt::Debug {
    /// Loads, checks, builds and swaps in the configuration; `trigger` names the cause.
    fn reload(&self, gw: &Gateway, trigger: &str) -> ReloadOutcome;
}

/// When the running configuration was loaded, by what, and which keys that changed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// When.
    pub at: std::time::SystemTime,
    /// `start`, `file change` or `SIGHUP`.
    pub trigger: String,
    /// The keys (dotted paths) the last reload changed.
    pub changed: Vec<String>,
}

/// What does not change while the process runs.
struct Fixed {
    catalog: &'static Catalog,
    spool: Option<Spool>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    unknown_keys: UnknownKeys,
    health: crate::health::Health,
    inspector: crate::inspect::Inspector,
    loaded: Mutex<Loaded>,
    generation: std::sync::atomic::AtomicU64,
    reloader: std::sync::OnceLock<Arc<dyn Reload>>,
}

/// The live part, built from a [`Config`]; replaced whole, never edited.
#[derive(Debug)]
pub struct Snapshot {
    commands: HashMap<&'static str, CommandRoute>,
    /// The upstreams under their controls, by name (the routes share them).
    pub upstreams: HashMap<String, Resilient>,
    /// OpenIM's webhook timeout: an upstream call's deadline is at most what is left of it.
    pub openim_timeout: std::time::Duration,
    /// The upstreams of enabled commands, whose members the health task checks.
    pub(crate) health_targets: Vec<crate::health::Target>,
    /// Which snapshot this is (counted up by every swap), so that health results of an older
    /// one never count.
    pub generation: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The limits (`limits:`).
    pub limits: LimitsConfig,
    /// Callbacks being handled; `limits.max_in_flight` permits.
    pub in_flight: Arc<Semaphore>,
    /// The callback port's inbound checks; `None` when none is configured.
    pub auth: Option<Arc<InboundAuth>>,
    /// The admin API's bearer token.
    pub admin_token: Option<Secret>,
    /// Whether `/metrics` needs the admin token.
    pub protect_metrics: bool,
    /// The inspector's settings.
    pub inspect: crate::config::InspectConfig,
    /// Shadow calls in flight ([`SHADOW_SLOTS`] permits).
    pub shadow_slots: Arc<Semaphore>,
    /// The configuration it was built from, as JSON with the secrets `<redacted>`
    /// (`GET /admin/config`).
    pub config: Arc<serde_json::Value>,
}

/// One command as the current snapshot routes it.
#[derive(Debug, Clone)]
pub struct CommandRoute {
    /// The request-side rules (`only`, `skip`) that apply to this command.
    pub gate: crate::gate::Gate,
    /// Where the fields the gateway reads sit in this command's request.
    pub numbers: crate::fields::FieldNumbers,
    /// The command's merged settings.
    pub settings: CommandConfig,
    /// The decision policy derived from them.
    pub policy: Policy,
    /// The upstream, under its resilience controls; `None` when the command is disabled.
    pub upstream: Option<Resilient>,
}

/// The ids a call carries as metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallIds<'a> {
    /// OpenIM's operationID.
    pub operation_id: &'a str,
    /// OpenIM's `key` query parameter.
    pub key: Option<&'a str>,
    /// A spooled event's delivery id and attempt number.
    pub delivery: Option<(&'a str, u32)>,
    /// The W3C trace context of the callback's (or the delivery's) span, sent as `traceparent`
    /// and `tracestate`.
    pub trace: Option<&'a crate::telemetry::TraceContext>,
}

impl CommandRoute {
    /// The conversation ID OpenIM would compute for this message request (`None` for a request
    /// without `sessionType`), sent as `openim-conversation-id`.
    pub fn conversation_id(&self, payload: &[u8]) -> Option<String> {
        self.numbers.session_type?;
        crate::fields::conversation_id(&crate::fields::Fields::new(payload, &self.numbers))
    }
}

impl CommandRoute {
    /// The call of this command with an encoded request: the one place a [`Call`] is built, for
    /// the synchronous path and the spool's deliveries alike.
    pub fn call(&self, entry: &CommandEntry, payload: Bytes, ids: CallIds<'_>) -> Call {
        let attempt = ids.delivery.map(|(_, n)| n.to_string()).unwrap_or_default();
        let conversation = self.conversation_id(&payload).unwrap_or_default();
        let metadata = crate::upstream::metadata(&[
            (meta::OPERATION_ID, ids.operation_id),
            (meta::COMMAND, entry.row.command),
            (meta::KEY, ids.key.unwrap_or("")),
            (meta::DELIVERY_ID, ids.delivery.map_or("", |(id, _)| id)),
            (meta::DELIVERY_ATTEMPT, &attempt),
            (meta::CONVERSATION_ID, &conversation),
            (
                crate::telemetry::TRACEPARENT,
                ids.trace.map_or("", |t| t.traceparent.as_str()),
            ),
            (
                crate::telemetry::TRACESTATE,
                ids.trace.map_or("", |t| t.tracestate.as_str()),
            ),
        ]);
        Call {
            path: entry.path.clone(),
            payload,
            metadata,
            timeout: self.settings.timeout.0,
        }
    }
}

/// Why a gateway or a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The contract and the catalogue do not match, or the descriptors cannot be read.
    #[error("{0}")]
    Catalog(&'static str),
    /// The config is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An upstream cannot be built.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// A command uses an upstream that is not configured.
    #[error("config key `{key}`: upstream `{name}` is not configured")]
    MissingUpstream {
        /// The config key.
        key: String,
        /// The upstream.
        name: String,
    },
}

impl Snapshot {
    /// Builds the live part from a config: validates it, builds the upstream clients (lazily
    /// connecting, so no socket is opened) and resolves every command. Needs a tokio runtime.
    pub fn build(config: &Config, catalog: &Catalog) -> Result<Self, BuildError> {
        config.validate()?;
        let clients = Upstreams::build(&config.upstreams, &config.dns)?;
        let upstreams: HashMap<String, Resilient> = config
            .upstreams
            .iter()
            .filter_map(|(name, cfg)| {
                let client = clients.get(name)?.clone();
                Some((name.clone(), Resilient::new(name, client, cfg)))
            })
            .collect();
        let mut commands = HashMap::new();
        for entry in catalog.entries() {
            let command = entry.row.command;
            let settings = config.settings(command)?;
            let upstream = if settings.enabled {
                let client = upstreams.get(&settings.upstream).cloned().ok_or_else(|| {
                    BuildError::MissingUpstream {
                        key: format!("commands.{command}.upstream"),
                        name: settings.upstream.clone(),
                    }
                })?;
                Some(client)
            } else {
                None
            };
            let policy = Policy {
                on_failure: settings.on_failure,
                reject_code: settings.reject_code,
                reject_message: settings.reject_message.clone(),
                allow_offline_push_info: settings.allow_offline_push_info,
            };
            let numbers = crate::fields::FieldNumbers::of(&entry.request());
            let mut gate_settings = settings.clone();
            if entry.phase == crate::catalog::Phase::After {
                gate_settings.shadow = false;
            }
            commands.insert(
                command,
                CommandRoute {
                    gate: crate::gate::Gate::build(&gate_settings, &config.bots, numbers),
                    numbers,
                    settings: gate_settings,
                    policy,
                    upstream,
                },
            );
        }
        let mut checked: Vec<&str> = commands
            .values()
            .filter(|route| route.upstream.is_some())
            .map(|route| route.settings.upstream.as_str())
            .collect();
        checked.sort_unstable();
        checked.dedup();
        let health_targets = checked
            .into_iter()
            .filter_map(|name| {
                Some(crate::health::Target {
                    name: name.to_owned(),
                    upstream: upstreams.get(name)?.clone(),
                    service: config.upstreams.get(name)?.health_service.clone(),
                })
            })
            .collect();
        Ok(Self {
            commands,
            upstreams,
            health_targets,
            generation: 0,
            openim_timeout: config.openim_timeout.0,
            max_body_bytes: config.max_body_bytes,
            limits: config.limits.clone(),
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            auth: InboundAuth::build(&config.auth)?.map(Arc::new),
            admin_token: match &config.admin_token_file {
                Some(path) => Some(read_admin_token(path)?),
                None => None,
            },
            protect_metrics: config.admin_protect_metrics,
            inspect: config.inspect.clone(),
            shadow_slots: Arc::new(Semaphore::new(SHADOW_SLOTS)),
            config: Arc::new(serde_json::to_value(config).unwrap_or_default()),
        })
    }

    /// The route of a command.
    pub fn route(&self, command: &str) -> Option<&CommandRoute> {
        self.commands.get(command)
    }
}

impl Gateway {
    /// Builds the gateway from a config. `spool` is required when any after command uses
    /// `delivery: spool`; without one those commands are delivered synchronously.
    pub fn new(config: &Config, spool: Option<Spool>) -> Result<Self, BuildError> {
        let catalog = Catalog::contract().map_err(BuildError::Catalog)?;
        // The recorder first: the snapshot looks up metric handles it keeps.
        let metrics = crate::telemetry::metrics_handle();
        let snapshot = Snapshot::build(config, catalog)?;
        Ok(Self {
            fixed: Arc::new(Fixed {
                catalog,
                spool,
                metrics,
                unknown_keys: UnknownKeys::default(),
                health: crate::health::Health::default(),
                inspector: crate::inspect::Inspector::default(),
                loaded: Mutex::new(Loaded {
                    at: std::time::SystemTime::now(),
                    trigger: "start".into(),
                    changed: Vec::new(),
                }),
                generation: std::sync::atomic::AtomicU64::new(0),
                reloader: std::sync::OnceLock::new(),
            }),
            live: Arc::new(ArcSwap::from_pointee(snapshot)),
        })
    }

    /// Builds a snapshot from `config` and swaps it in; on error the current one stays.
    pub fn swap(&self, config: &Config) -> Result<(), BuildError> {
        let mut snapshot = Snapshot::build(config, self.fixed.catalog)?;
        snapshot.generation = self
            .fixed
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.live.store(Arc::new(snapshot));
        self.fixed.health.recheck();
        Ok(())
    }

    /// The readiness state.
    pub(crate) fn health(&self) -> &crate::health::Health {
        &self.fixed.health
    }

    /// The recent callbacks.
    pub(crate) fn inspector(&self) -> &crate::inspect::Inspector {
        &self.fixed.inspector
    }

    /// Records that a reload by `trigger` swapped in a configuration changing `changed`.
    pub fn note_loaded(&self, trigger: &str, changed: Vec<String>) {
        let mut loaded = self.fixed.loaded.lock().unwrap_or_else(|e| e.into_inner());
        *loaded = Loaded {
            at: std::time::SystemTime::now(),
            trigger: trigger.to_owned(),
            changed,
        };
    }

    /// Makes `reloader` the one `POST /admin/reload` runs (once; later calls are ignored).
    pub fn set_reloader(&self, reloader: Arc<dyn Reload>) {
        let _ = self.fixed.reloader.set(reloader);
    }

    /// The reload SIGHUP runs, when the gateway was started with a configuration source.
    pub fn reloader(&self) -> Option<&Arc<dyn Reload>> {
        self.fixed.reloader.get()
    }

    /// When and how the running configuration was loaded.
    pub fn loaded(&self) -> Loaded {
        self.fixed
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current snapshot; hold it for the whole of one request or delivery attempt.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// The catalogue.
    pub fn catalog(&self) -> &'static Catalog {
        self.fixed.catalog
    }

    /// The spool, when after-events are spooled.
    pub fn spool(&self) -> Option<&Spool> {
        self.fixed.spool.as_ref()
    }

    /// The Prometheus handle behind `/metrics`, when the recorder is installed.
    pub fn metrics(&self) -> Option<&metrics_exporter_prometheus::PrometheusHandle> {
        self.fixed.metrics.as_ref()
    }

    /// Counts and logs (once per command and key) keys OpenIM sent that the contract lacks.
    pub fn note_unknown_keys(&self, command: &'static str, keys: &[String], operation_id: &str) {
        self.fixed.unknown_keys.note(command, keys, operation_id);
    }
}

/// Unknown keys seen so far, per command. The first [`UnknownKeys::MAX_DISTINCT`] distinct pairs
/// get their own metric label; later ones share `_other`, so a hostile sender cannot grow the
/// metric set without bound.
#[derive(Default)]
struct UnknownKeys {
    seen: Mutex<HashSet<(&'static str, String)>>,
}

impl UnknownKeys {
    const MAX_DISTINCT: usize = 1000;

    fn note(&self, command: &'static str, keys: &[String], operation_id: &str) {
        for key in keys {
            let pair = (command, key.clone());
            let (first_time, labelled) = match self.seen.lock() {
                Ok(seen) if seen.contains(&pair) => (false, true),
                Ok(mut seen) if seen.len() < Self::MAX_DISTINCT => (seen.insert(pair), true),
                _ => (false, false),
            };
            let label = if labelled {
                key.clone()
            } else {
                "_other".to_owned()
            };
            metrics::counter!("gateway_unknown_keys_total", "command" => command, "key" => label)
                .increment(1);
            if first_time {
                tracing::warn!(command, key = %key, operation_id, "unknown key in callback body: ignored (logged once per command and key)");
            }
        }
    }
}
