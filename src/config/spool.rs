//! `spool:`: the settings of the durable spool of after-events ([`SpoolConfig`]) and of its
//! Redis backend (`spool.redis`, [`RedisConfig`]). Plain data with their checks: nothing of the
//! runtime is imported here; the spool (`crate::spool`) reads its settings from this module.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Name of the spool file inside [`SpoolConfig::dir`].
pub const FILE_NAME: &str = "spool.redb";

/// The Redis backend's local buffer directory inside [`SpoolConfig::dir`] when
/// `spool.redis.buffer_dir` is not set.
pub const BUFFER_DIR: &str = "redis-buffer";

/// What the spool does with a new event when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the new event (`crate::spool::AppendError::Full`); the gateway answers OpenIM
    /// with a clear envelope and logs the event's operation id.
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
    /// Directory holding the spool files `spool.redb` and its append journal `spool.journal` (redb
    /// backend); created when missing.
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
            workers: 64,
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

    /// Fills in the defaults that depend on other keys, so that `check` shows them: with Redis,
    /// where this replica's local buffer lives.
    pub fn normalize(&mut self) {
        if self.backend == BackendKind::Redis {
            self.redis.buffer_dir = Some(self.buffer_dir());
        }
    }

    /// Checks the values that would make the spool misbehave; `Config::validate` and
    /// `Spool::open` call it.
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

/// What an append waits for after Redis took the write (`spool.redis.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The primary's answer to the write: the event is in its memory (and in its AOF buffer).
    /// Lost if the primary crashes before its next AOF fsync (`appendfsync everysec`: up to
    /// about 1 s of events), or on a failover to a replica that had not received it yet.
    #[default]
    Ack,
    /// Also `WAIT replicas wait_timeout`: at least `replicas` replicas have the write in
    /// memory. Survives the primary's crash and a failover to one of them; lost only if the
    /// primary and those replicas all die before any of them fsynced.
    Replicas,
    /// Also `WAITAOF 1 0 wait_timeout` (Redis 7.2 or later): the primary fsynced its AOF. Survives
    /// a crash or restart of the primary; a failover to a replica that had not received the write
    /// still loses it (combine with `appendfsync always` replicas, or use `replicas`).
    Fsync,
}

/// What an after-event gets when Redis cannot take it (`spool.redis.when_unreachable`).
///
/// Whatever the choice, no after-event is acknowledged to OpenIM before it is stored durably
/// (in Redis or in this replica's local buffer) or delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unreachable {
    /// Written to this replica's local buffer (`buffer_dir`, redb, fsynced) and acknowledged;
    /// moved into Redis, with its delivery id, once Redis answers again.
    #[default]
    Local,
    /// Delivered now, during the callback (one attempt, with its delivery id); when that fails,
    /// written to the local buffer like `local`. OpenIM waits for the upstream.
    Sync,
    /// Refused like a full spool: the gateway answers OpenIM with the command's `reject_code`
    /// and logs the operation id (OpenIM does not retry after callbacks: the event is lost).
    Reject,
}

/// Settings of the Redis backend (`spool.redis:`), used with `spool.backend: redis`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS, rustls; the system's
    /// roots, or only `ca_file`). A password in the URL works (`check-config` shows it as
    /// `<redacted>`), `password_file` is better.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// File holding the password (trailing newline ignored), e.g. a mounted Kubernetes Secret;
    /// overrides one in the URL.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates trusted for `rediss://` instead of the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key: `{<key_prefix>}:…` (one hash slot). Gateways sharing a prefix share
    /// one spool; give each gateway deployment its own.
    pub key_prefix: String,
    /// The consumer group every replica reads from.
    pub group: String,
    /// This replica's consumer name; empty: `<hostname>-<pid>` (the pod name in Kubernetes).
    pub consumer: String,
    /// An event in delivery by a consumer that made no progress this long (it died) is taken
    /// over by another replica (`XAUTOCLAIM` minimum idle time).
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// What an append waits for: `ack`, `replicas` or `fsync`.
    pub durability: Durability,
    /// With `durability: replicas`: how many replicas must have the write.
    pub replicas: u32,
    /// Longest wait of `WAIT` / `WAITAOF`; past it the append counts as failed.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Longest wait for Redis on the callback path (connect, write); past it the event gets
    /// the `when_unreachable` policy.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `local` (buffer on this replica's disk), `sync` (deliver now, else buffer) or `reject`.
    pub when_unreachable: Unreachable,
    /// Directory of this replica's local buffer (a redb spool file): where after-events go while
    /// Redis cannot take them. Must be on a disk that survives a restart of the process (a
    /// volume in Kubernetes); empty: `<spool.dir>/redis-buffer`.
    pub buffer_dir: Option<PathBuf>,
    /// The local buffer is full when it holds this many events (`spool.when_full` applies).
    pub buffer_max_events: u64,
    /// Disk budget of the local buffer in bytes (record bytes, as `spool.max_bytes`).
    pub buffer_max_bytes: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            password_file: None,
            ca_file: None,
            key_prefix: "openim-gw".to_owned(),
            group: "openim-callback-gateway".to_owned(),
            consumer: String::new(),
            claim_idle: Duration::from_secs(30),
            durability: Durability::Ack,
            replicas: 1,
            wait_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            when_unreachable: Unreachable::Local,
            buffer_dir: None,
            buffer_max_events: 100_000,
            buffer_max_bytes: 256 << 20,
        }
    }
}

impl RedisConfig {
    /// Checks the values; the key in an error is relative to `spool.`.
    pub fn validate(&self) -> Result<(), SpoolConfigError> {
        let bad = |key: &'static str, problem: &'static str| Err(SpoolConfigError { key, problem });
        match redis::Client::open(self.url.as_str()) {
            Ok(_) => {}
            Err(_) => {
                return bad(
                    "redis.url",
                    "is not a Redis URL (expected redis://host:port or rediss://host:port)",
                );
            }
        }
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return bad("redis.url", "must start with redis:// or rediss://");
        }
        if self.ca_file.is_some() && !self.url.starts_with("rediss://") {
            return bad("redis.ca_file", "is only used with a rediss:// url");
        }
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '{' | '}'))
        };
        if !plain(&self.key_prefix) {
            return bad(
                "redis.key_prefix",
                "must be non-empty printable ASCII without spaces or braces",
            );
        }
        if !plain(&self.group) {
            return bad(
                "redis.group",
                "must be non-empty printable ASCII without spaces or braces",
            );
        }
        if !self.consumer.is_empty() && !plain(&self.consumer) {
            return bad(
                "redis.consumer",
                "must be printable ASCII without spaces or braces (or empty for <hostname>-<pid>)",
            );
        }
        if self.claim_idle < Duration::from_millis(100) {
            return bad("redis.claim_idle", "must be at least 100ms");
        }
        if self.timeout < Duration::from_millis(10) {
            return bad("redis.timeout", "must be at least 10ms");
        }
        if self.wait_timeout < Duration::from_millis(1) {
            return bad("redis.wait_timeout", "must be at least 1ms");
        }
        if self.durability != Durability::Ack && self.timeout <= self.wait_timeout {
            return bad(
                "redis.timeout",
                "must be longer than redis.wait_timeout with durability replicas or fsync",
            );
        }
        if self.buffer_max_events == 0 {
            return bad("redis.buffer_max_events", "must be at least 1");
        }
        if self.buffer_max_bytes == 0 {
            return bad("redis.buffer_max_bytes", "must be at least 1");
        }
        if self
            .buffer_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return bad(
                "redis.buffer_dir",
                "must not be empty (leave it unset for <spool.dir>/redis-buffer)",
            );
        }
        if self.durability == Durability::Replicas && self.replicas == 0 {
            return bad(
                "redis.replicas",
                "must be at least 1 with durability: replicas",
            );
        }
        Ok(())
    }
}

/// The URL with the password of its user part replaced: what `check-config` prints.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let redacted = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            let password = if authority.contains(':') && authority.find(':') < authority.rfind('@')
            {
                ":<redacted>"
            } else {
                ""
            };
            format!("{user}{password}@{host}")
        }
        None => authority.to_owned(),
    };
    match path {
        Some(p) => format!("{scheme}://{redacted}/{p}"),
        None => format!("{scheme}://{redacted}"),
    }
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}
