//! Durable after-callback delivery: the store, the group-commit writer, the delivery workers.
//!
//! OpenIM drops "after" callbacks when its receiver is slow (two webhook workers, a bounded queue),
//! so the gateway writes each
//! after-event to this spool, answers OpenIM once the write is on disk, and delivers from the
//! spool with retries.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`SpoolConfig`], the public types and [`Spool`], the handle the
//!   gateway holds.
//! - `store.rs`: the on-disk format (redb tables, the protobuf record), opening with clear
//!   errors, reads.
//! - `writer.rs`: the one thread that owns write transactions: group commit, limits, dead letters.
//! - `delivery.rs`: the scheduler (ordering keys, backoff) and the delivery workers.
//! - `rules.rs`: what an attempt's result means (retry, dead letter), shared by both backends.
//! - `backend.rs`: the backend trait and [`Spool`], which dispatches to redb or Redis.
//! - `redis/`: the Redis Streams backend, with its local buffer for Redis outages (a redb spool
//!   file of this module in the role of a buffer, whose "delivery" is the move into Redis).
//! - `admin.rs`: the admin HTTP API of a running gateway; `cli.rs`: the `spool` operator commands.
//!
//! # Life of an event
//!
//! [`Spool::append`] hands the event to the writer thread, which puts every event queued at that
//! moment (up to `batch_max`) into one redb write transaction committed with
//! `Durability::Immediate`: one disk sync for the whole batch. Only then does `append` return, so
//! an acknowledged event survives `kill -9`. The writer then queues the event id for delivery.
//! Delivery workers ([`Spool::start`]) read the event, call the [`Deliver`] implementation with a
//! deadline, and report back: success deletes the event, a retryable failure persists the attempt
//! count and schedules a retry with exponential backoff and full jitter, a permanent failure or
//! exhausted attempts or age move it to the dead letters, which an operator can list, replay and
//! purge ([`cli`], [`admin`]). Deletes and attempt counts are committed without a disk sync of
//! their own (losing one causes a duplicate delivery, which receivers must tolerate anyway: the
//! `openim-delivery-id` metadata is stable across retries and restarts), and are synced at the
//! latest [`FLUSH_EVERY`] later.

pub mod admin;
mod backend;
pub mod cli;
mod delivery;
mod fault;
pub mod redis;
mod rules;
mod store;
mod writer;

pub use self::backend::Spool;
pub use self::fault::{Attempt, Fault, HISTORY_MAX};
pub use self::redis::{Durability, RedisConfig, Unreachable};

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot, watch};

use self::delivery::Sched;
use self::store::Record;
use self::writer::{ChunkOp, Cmd};

/// Name of the spool file inside [`SpoolConfig::dir`].
pub const FILE_NAME: &str = "spool.redb";

/// The Redis backend's local buffer directory inside [`SpoolConfig::dir`] when
/// `spool.redis.buffer_dir` is not set.
pub const BUFFER_DIR: &str = "redis-buffer";

/// Longest time between a delete / attempt-count update and the disk sync that makes it durable.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How long [`Spool::shutdown`] waits for delivery attempts already running.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Per-attempt deadline of a [`Deliver`] that does not say otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// What the spool does with a new event when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the new event with [`AppendError::Full`]; the gateway answers OpenIM with a clear
    /// envelope and logs the event's operation id.
    #[default]
    Reject,
    /// Delete the oldest pending event (logged at error level with its delivery id) and store the
    /// new one.
    DropOldest,
}

/// Where the spool keeps its events (`spool.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A local redb file in `spool.dir`: one process, no other service needed.
    #[default]
    Redb,
    /// Redis Streams at `spool.redis.url`, shared by every replica of the gateway.
    Redis,
}

/// Configuration of the durable spool (`spool:` in the gateway's config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct SpoolConfig {
    /// `redb` (a local file, the default) or `redis` (shared by replicas).
    pub backend: BackendKind,
    /// The Redis backend's settings (`spool.redis`), used with `backend: redis`.
    pub redis: RedisConfig,
    /// Directory holding the spool file `spool.redb` (redb backend); created when missing.
    pub dir: PathBuf,
    /// The spool is full when this many events are pending (not counting dead letters).
    pub max_events: u64,
    /// Disk budget in bytes: the spool is full when its pending and dead records take this much.
    /// Counts record bytes; the file itself is somewhat larger (B-tree pages, free space).
    pub max_bytes: u64,
    /// What to do with a new event when the spool is full: `reject` or `drop_oldest`.
    pub when_full: FullPolicy,
    /// Most delivery attempts running at once, over all upstreams.
    pub workers: usize,
    /// Attempts after which an event that keeps failing moves to the dead letters.
    pub max_attempts: u32,
    /// Age after which a failing event moves to the dead letters ("24h", "90m").
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Backoff before the second attempt; doubles per attempt, with full jitter ("200ms").
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of the backoff between two attempts ("60s").
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Most events written by one group commit (one disk sync).
    pub batch_max: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            backend: BackendKind::Redb,
            redis: RedisConfig::default(),
            dir: PathBuf::from("data/spool"),
            max_events: 1_000_000,
            max_bytes: 1 << 30,
            when_full: FullPolicy::Reject,
            workers: 16,
            max_attempts: 20,
            max_age: Duration::from_secs(24 * 3600),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            batch_max: 512,
        }
    }
}

impl SpoolConfig {
    /// Path of the spool file: `dir/spool.redb`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The Redis backend's local buffer directory: `spool.redis.buffer_dir`, else
    /// `<spool.dir>/redis-buffer`.
    pub fn buffer_dir(&self) -> PathBuf {
        self.redis
            .buffer_dir
            .clone()
            .unwrap_or_else(|| self.dir.join(BUFFER_DIR))
    }

    /// The settings of the local buffer: a redb spool in [`SpoolConfig::buffer_dir`] with the
    /// buffer's limits and the spool's full policy.
    pub(crate) fn buffer_settings(&self) -> SpoolConfig {
        SpoolConfig {
            backend: BackendKind::Redb,
            dir: self.buffer_dir(),
            max_events: self.redis.buffer_max_events,
            max_bytes: self.redis.buffer_max_bytes,
            ..self.clone()
        }
    }

    /// Checks the values that would make the spool misbehave; `Config::validate` and
    /// [`Spool::open`] call it.
    pub fn validate(&self) -> Result<(), SpoolConfigError> {
        let bad = |key: &'static str, problem: &'static str| Err(SpoolConfigError { key, problem });
        if self.max_events == 0 {
            return bad("max_events", "must be at least 1");
        }
        if self.max_bytes == 0 {
            return bad("max_bytes", "must be at least 1");
        }
        if self.workers == 0 {
            return bad("workers", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.batch_max == 0 {
            return bad("batch_max", "must be at least 1");
        }
        if self.max_age.is_zero() {
            return bad("max_age", "must be longer than 0s");
        }
        if self.backoff_initial < Duration::from_millis(1) {
            return bad("backoff_initial", "must be at least 1ms");
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max", "must not be shorter than backoff_initial");
        }
        if self.backend == BackendKind::Redis {
            self.redis.validate()?;
        }
        Ok(())
    }
}

/// A spool setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct SpoolConfigError {
    /// The key under `spool:`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: &'static str,
}

/// An after-callback to store and deliver.
///
/// It keeps what OpenIM sent (the command, the payload, the ids), not where it goes: the
/// [`Deliver`] implementation resolves the upstream, method and deadline from the current
/// configuration at each attempt, so moving or renaming an upstream never strands pending events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEvent {
    /// OpenIM callback command, e.g. `callbackAfterQuitGroupCommand`.
    pub command: String,
    /// `Some` => delivered strictly one after another with the other events of the same key, in
    /// append order; `None` => delivered in parallel with everything else.
    pub order_key: Option<String>,
    /// OpenIM's operation id, passed on as `openim-operation-id`.
    pub operation_id: String,
    /// The `key` query parameter, passed on as `openim-key`.
    pub openim_key: Option<String>,
    /// The protobuf-encoded request message.
    pub payload: Vec<u8>,
    /// The W3C trace context of the callback's span: every delivery attempt is its child.
    pub trace: Option<crate::telemetry::TraceContext>,
}

/// An event as stored in the spool, handed to [`Deliver::deliver`] and returned by [`Spool::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Spool-local id, increasing in append order.
    pub id: u64,
    /// Stable across retries and restarts, unique across spool files: `openim-delivery-id`.
    pub delivery_id: String,
    /// Attempts made so far (persisted: continues after a restart, reset by a replay).
    pub attempts: u32,
    /// When the gateway first stored the event, in milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    /// The error of the last failed attempt; for a dead letter, why it was given up.
    pub last_error: Option<String>,
    /// The failed attempts, oldest first: the latest [`HISTORY_MAX`] since the event was stored
    /// or last replayed (empty in records written before the history was kept).
    pub history: Vec<Attempt>,
    /// The event itself.
    pub event: NewEvent,
}

/// What [`Spool::append`] returns once the event is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEventRef {
    /// Spool-local id of the stored event (of the local buffer when `place` says so).
    pub id: u64,
    /// The delivery id the upstream will see.
    pub delivery_id: String,
    /// Where the event is now.
    pub place: Place,
}

/// Where an acknowledged after-event is (see [`StoredEventRef`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the spool (the redb file, or Redis).
    Spool,
    /// In this replica's local buffer, because Redis could not take it; moved into Redis once
    /// it answers.
    Buffer,
    /// Not stored: Redis could not take it and `when_unreachable: sync` delivered it at once.
    Delivered,
}

impl Place {
    /// The callback's log line for an event acknowledged here.
    pub fn message(self) -> &'static str {
        match self {
            Place::Spool => "after-event spooled",
            Place::Buffer => "after-event spooled in the local buffer (redis unreachable)",
            Place::Delivered => "after-event delivered synchronously (redis unreachable)",
        }
    }
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The upstream accepted the event: it is removed from the spool.
    Delivered,
    /// A transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, connection
    /// error): retried after a backoff, up to `max_attempts` / `max_age`.
    Retry(Fault),
    /// A failure that retrying will not fix (INVALID_ARGUMENT, …): the event becomes a dead letter.
    Permanent(Fault),
    /// Not attempted (the upstream's circuit breaker is open): tried again after the wait,
    /// without using up an attempt.
    Deferred(Duration, Fault),
}

/// Delivers one event to its upstream; implemented by the gateway (`crate::delivery`), faked in
/// tests.
pub trait Deliver: Send + Sync + 'static {
    /// The deadline of one attempt for this event, as the current configuration says; the spool
    /// enforces it (plus a little slack) on top of the implementation's own.
    fn deadline(&self, ev: &StoredEvent) -> Duration {
        let _ = ev;
        Duration::from_millis(DEFAULT_TIMEOUT_MS)
    }

    /// One attempt; `attempt` starts at 1. The implementation sets `openim-delivery-id` =
    /// `ev.delivery_id` and `openim-delivery-attempt` = `attempt`, and keeps to
    /// [`Deliver::deadline`].
    fn deliver<'a>(
        &'a self,
        ev: &'a StoredEvent,
        attempt: u32,
    ) -> futures_util::future::BoxFuture<'a, DeliveryResult>;
}

/// Which part of the spool an operator command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// Events waiting for (or in) delivery.
    Pending,
    /// Dead letters: events given up on, kept for an operator.
    Dead,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Pending => "pending",
            Which::Dead => "dead",
        })
    }
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct SpoolStats {
    /// Events waiting for delivery (including those in flight).
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Approximate bytes of all stored records (pending and dead), compared with `max_bytes`.
    pub bytes: u64,
    /// Delivery attempts running now.
    pub in_flight: u64,
    /// Write transactions committed since the spool was opened (one per group commit).
    pub commits: u64,
    /// Redis backend: after-events in this replica's local buffer, waiting to be moved into
    /// Redis (acknowledged, stored on this replica's disk only). Always 0 with redb.
    #[serde(default)]
    pub buffered: u64,
    /// `true` when the shared counters (`pending`, `dead`, `bytes`) are the last ones read,
    /// because Redis does not answer now; `buffered` is always current.
    #[serde(default)]
    pub stale: bool,
}

/// Which dead letters a replay takes: all, or those of one command, one id, and first stored
/// within a time range (each given bound narrows the choice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Select {
    /// Only dead letters of this callback command.
    pub command: Option<String>,
    /// Only the dead letter with this spool id.
    pub id: Option<u64>,
    /// Only dead letters first stored at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only dead letters first stored before this time (milliseconds since the Unix epoch).
    pub until_ms: Option<u64>,
}

impl Select {
    /// All dead letters, or those of `command`.
    pub fn command(command: Option<&str>) -> Self {
        Self {
            command: command.map(str::to_owned),
            ..Self::default()
        }
    }

    /// Whether the stored record `raw` with spool id `id` is chosen. Without a command or time
    /// bound, undecodable records are chosen too (as a plain replay always did).
    pub(crate) fn matches(&self, id: u64, raw: &[u8]) -> bool {
        if self.id.is_some_and(|want| want != id) {
            return false;
        }
        if self.command.is_none() && self.since_ms.is_none() && self.until_ms.is_none() {
            return true;
        }
        let Ok(head) = <store::RecordHead as prost::Message>::decode(raw) else {
            return false;
        };
        self.command.as_deref().is_none_or(|c| head.command == c)
            && self.since_ms.is_none_or(|s| head.first_seen_ms >= s)
            && self.until_ms.is_none_or(|u| head.first_seen_ms < u)
    }

    /// How the choice reads in a message: ` of C, id 7, first stored from … until …`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.command {
            parts.push(format!("of {c}"));
        }
        if let Some(id) = self.id {
            parts.push(format!("with id {id}"));
        }
        if let Some(s) = self.since_ms {
            parts.push(format!("first stored from {}", cli::utc(s)));
        }
        if let Some(u) = self.until_ms {
            parts.push(format!("first stored before {}", cli::utc(u)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" {}", parts.join(", "))
        }
    }
}

/// The result of one step of a long replay or purge (see [`Spool::replay_dead_chunk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Progress {
    /// Events replayed or purged by this step.
    pub count: u64,
    /// `Some(id)`: more to do, continue after this id; `None`: done.
    pub next_after: Option<u64>,
}

/// Why [`Spool::append`] did not store an event.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The spool is full and `when_full` is `reject` (or dead letters alone fill the disk budget).
    #[error(
        "the spool is full ({pending} pending events, {bytes} bytes stored); the event was not stored"
    )]
    Full {
        /// Pending events at the time of the refusal.
        pending: u64,
        /// Stored bytes at the time of the refusal.
        bytes: u64,
    },
    /// The spool was shut down.
    #[error("the spool is shut down; the event was not stored")]
    Closed,
    /// The write transaction failed (disk full, I/O error).
    #[error("writing to the spool failed, the event was not stored: {0}")]
    Storage(String),
    /// The backend cannot take the event now (Redis unreachable or too slow) and
    /// `spool.redis.when_unreachable: reject` says to refuse it. (The event may still have
    /// reached Redis, a write that timed out: then it is delivered although refused.)
    #[error("the spool backend is unavailable ({0}); the event was not stored")]
    Unavailable(String),
}

/// Errors of opening the spool and of the operator commands; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The settings are invalid.
    #[error("invalid spool settings: {0}")]
    Config(String),
    /// The spool directory cannot be created.
    #[error(
        "cannot create the spool directory {}: {source}; create it or set spool.dir to a writable directory",
        path.display()
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool file cannot be opened for reading and writing.
    #[error(
        "cannot open the spool file {}: {source}; the gateway needs read and write access to it (check owner and permissions)",
        path.display()
    )]
    Io {
        /// The spool file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a spool, or is corrupted.
    #[error(
        "the spool file {} cannot be used: {detail}. Move it aside (e.g. `mv {0} {0}.bad`) to start with an empty spool and keep it for inspection; nothing was deleted",
        path.display()
    )]
    Corrupt {
        /// The spool file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process (or another [`Spool`] in this one) has the file open.
    #[error(
        "the spool file {} is already open, probably by the running gateway; stop it, or run this command against the running gateway with `--admin http://<its admin address>`",
        path.display()
    )]
    AlreadyOpen {
        /// The spool file.
        path: PathBuf,
    },
    /// The spool file does not exist (operator commands do not create one).
    #[error(
        "there is no spool file at {}; check --config / spool.dir (nothing has been spooled there yet)",
        path.display()
    )]
    NotFound {
        /// The path that was looked at.
        path: PathBuf,
    },
    /// A storage error while the spool was open.
    #[error("spool file {}: {detail}", path.display())]
    Storage {
        /// The spool file.
        path: PathBuf,
        /// The storage engine's error.
        detail: String,
    },
    /// The spool was shut down.
    #[error("the spool is shut down")]
    Closed,
    /// A call to a running gateway's admin API failed.
    #[error("admin API {url}: {detail}")]
    Admin {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// An operator command was called wrongly.
    #[error("{0}")]
    Usage(String),
    /// Writing the command's output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// The redb backend: the live spool file, cheap to clone. [`Spool`] dispatches to it.
#[derive(Clone)]
pub(crate) struct RedbSpool {
    inner: Arc<SpoolCore>,
}

/// What a redb spool file is for: its log lines and metrics say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The redb backend: events delivered to the upstreams.
    Spool,
    /// The Redis backend's local buffer: events moved into Redis.
    Buffer,
}

/// Counters shared by the writer thread, the workers and [`Spool::stats`].
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pub(crate) role: Role,
    pub(crate) pending: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) sched: Sched,
}

struct SpoolCore {
    settings: SpoolConfig,
    db: Arc<Database>,
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<Cmd>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    sem: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    started: AtomicBool,
}

impl Drop for SpoolCore {
    fn drop(&mut self) {
        // Wake the dispatcher (it only holds a weak reference), then let the writer sync what it
        // has and close the file, so that a new `Spool::open` of the same file works at once.
        self.stop.send_replace(true);
        let _ = self.tx.send(Cmd::Close { reply: None });
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if handle.is_some_and(|h| h.join().is_err()) {
            tracing::error!(path = %self.shared.path.display(), "spool writer thread panicked");
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RedbSpool {
    /// Opens (or creates) the spool in `settings.dir` and starts its writer thread. Every event
    /// pending in the file is queued for delivery, which begins with [`Spool::start`].
    ///
    /// Fails with a clear [`SpoolError`] when the directory cannot be created, the file cannot be
    /// read, is not a spool or is corrupted, or is already open. Needs no tokio runtime.
    pub(crate) fn open(settings: &SpoolConfig) -> Result<RedbSpool, SpoolError> {
        Self::open_as(settings, Role::Spool)
    }

    /// [`RedbSpool::open`] for `role`.
    pub(crate) fn open_as(settings: &SpoolConfig, role: Role) -> Result<RedbSpool, SpoolError> {
        settings
            .validate()
            .map_err(|e| SpoolError::Config(e.to_string()))?;
        let opened = store::open(settings)?;
        let path = settings.path();
        let sched = Sched::default();
        for (id, key) in &opened.entries {
            sched.enqueue(*id, key.clone(), None);
        }
        let shared = Arc::new(Shared {
            path: path.clone(),
            role,
            pending: AtomicU64::new(opened.pending),
            dead: AtomicU64::new(opened.dead),
            bytes: AtomicU64::new(opened.bytes),
            in_flight: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            sched,
        });
        let db = Arc::new(opened.db);
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = writer::Writer::new(
            db.clone(),
            rx,
            shared.clone(),
            settings,
            opened.instance,
            opened.next_id,
        );
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| SpoolError::Storage {
                path: path.clone(),
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        let (stop, _) = watch::channel(false);
        match role {
            Role::Spool => tracing::info!(
                path = %path.display(),
                pending = opened.pending,
                dead = opened.dead,
                "spool opened"
            ),
            Role::Buffer => tracing::info!(
                path = %path.display(),
                buffered = opened.pending,
                "local buffer of the redis spool opened"
            ),
        }
        writer::publish_gauges(&shared);
        Ok(RedbSpool {
            inner: Arc::new(SpoolCore {
                sem: Arc::new(Semaphore::new(settings.workers)),
                settings: settings.clone(),
                db,
                shared,
                tx,
                writer: Mutex::new(Some(handle)),
                stop,
                started: AtomicBool::new(false),
            }),
        })
    }

    /// Stores an after-event. Returns once it is durable (its group commit is synced to disk),
    /// so the caller may acknowledge it to OpenIM. Under `when_full: reject` a full spool answers
    /// [`AppendError::Full`] at once, without waiting for the disk.
    pub(crate) async fn append(&self, ev: NewEvent) -> Result<StoredEventRef, AppendError> {
        self.append_record(Record::new(ev, now_ms())).await
    }

    /// [`RedbSpool::append`] of a record made elsewhere: one with a delivery id keeps it.
    pub(crate) async fn append_record(&self, rec: Record) -> Result<StoredEventRef, AppendError> {
        let s = &self.inner.settings;
        if s.when_full == FullPolicy::Reject {
            // Fast path so that a full spool never makes OpenIM wait; the writer checks again.
            let pending = self.inner.shared.pending.load(Ordering::Relaxed);
            let bytes = self.inner.shared.bytes.load(Ordering::Relaxed);
            if pending >= s.max_events || bytes >= s.max_bytes {
                let ev = NewEvent {
                    command: rec.command,
                    operation_id: rec.operation_id,
                    ..NewEvent::default()
                };
                writer::note_rejected(&self.inner.shared.path, &ev, pending, bytes, s.when_full);
                return Err(AppendError::Full { pending, bytes });
            }
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append { rec, reply })
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Starts delivery: a dispatcher task that runs attempts on at most `workers` tasks. Every
    /// event pending when the spool was opened is already queued (restart safety). Call once,
    /// inside a tokio runtime; the task ends on [`Spool::shutdown`] or when the spool is dropped.
    pub(crate) fn start(&self, deliverer: Arc<dyn Deliver>) -> tokio::task::JoinHandle<()> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            tracing::warn!("spool delivery already started; ignoring the second start");
            return tokio::spawn(async {});
        }
        tokio::spawn(delivery::dispatch(
            Arc::downgrade(&self.inner),
            self.inner.shared.clone(),
            self.inner.sem.clone(),
            self.inner.stop.subscribe(),
            deliverer,
        ))
    }

    /// Stops taking work: no new attempts start, attempts already running get up to
    /// [`SHUTDOWN_GRACE`] to finish, then everything is synced to disk and the writer stops
    /// (later appends fail with [`AppendError::Closed`]; reads keep working).
    pub(crate) async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let workers = u32::try_from(self.inner.settings.workers).unwrap_or(u32::MAX);
        match tokio::time::timeout(SHUTDOWN_GRACE, self.inner.sem.acquire_many(workers)).await {
            Ok(Ok(permits)) => permits.forget(),
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                in_flight = self.inner.shared.in_flight.load(Ordering::Relaxed),
                "spool shutdown: deliveries still running after {SHUTDOWN_GRACE:?}; \
                 their events stay pending and are delivered again after the restart"
            ),
        }
        self.inner.sem.close();
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Cmd::Close { reply: Some(reply) })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> SpoolStats {
        let s = &self.inner.shared;
        SpoolStats {
            pending: s.pending.load(Ordering::Relaxed),
            dead: s.dead.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            buffered: 0,
            stale: false,
        }
    }

    /// The first `limit` pending events or dead letters, oldest first. A record that does not
    /// decode is listed with the command `<undecodable>` and the decode error as `last_error`.
    pub(crate) fn list(&self, which: Which, limit: usize) -> Result<Vec<StoredEvent>, SpoolError> {
        store::list(&self.inner.db, which, limit).map_err(|e| self.storage(e))
    }

    /// Counts pending events or dead letters, of one command if given.
    pub(crate) fn count(&self, which: Which, command: Option<&str>) -> Result<u64, SpoolError> {
        match command {
            None => Ok(match which {
                Which::Pending => self.inner.shared.pending.load(Ordering::Relaxed),
                Which::Dead => self.inner.shared.dead.load(Ordering::Relaxed),
            }),
            Some(c) => store::count(&self.inner.db, which, c).map_err(|e| self.storage(e)),
        }
    }

    /// One step of [`Spool::replay_dead`]: replays at most `max` dead letters with an id above
    /// `after`, in one transaction. Operator tools loop on it to show progress.
    pub(crate) fn replay_dead_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        self.call_chunk(ChunkOp {
            replay: true,
            which: Which::Dead,
            select: select.clone(),
            after,
            max: max.max(1),
        })
    }

    /// One step of [`Spool::purge`]: deletes at most `max` events with an id above `after`.
    pub(crate) fn purge_chunk(
        &self,
        which: Which,
        command: Option<&str>,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        self.call_chunk(ChunkOp {
            replay: false,
            which,
            select: Select::command(command),
            after,
            max: max.max(1),
        })
    }

    fn call_chunk(&self, op: ChunkOp) -> Result<Progress, SpoolError> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.inner
            .tx
            .send(Cmd::Chunk { op, reply })
            .map_err(|_| SpoolError::Closed)?;
        rx.recv().map_err(|_| SpoolError::Closed)?
    }

    fn storage(&self, e: redb::Error) -> SpoolError {
        SpoolError::Storage {
            path: self.inner.shared.path.clone(),
            detail: e.to_string(),
        }
    }
}

/// Events per transaction of a replay or purge.
pub(crate) const CHUNK: usize = 10_000;
