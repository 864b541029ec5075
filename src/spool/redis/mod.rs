//! The Redis Streams backend (`spool.backend: redis`): one spool shared by every replica.
//!
//! - `mod.rs` (this file): `RedisSpool` and its `Backend` implementation, the connections, the
//!   health check and the fallback when Redis cannot take an event. Its settings are
//!   `spool.redis` (`crate::config::RedisConfig`).
//! - `scripts.rs`: the keys and the Lua scripts; every change of state is one atomic script.
//! - `worker.rs`: delivery: the consumer-group reader, the reclaimer (`XAUTOCLAIM`), the
//!   retry poller, the heartbeat, and one attempt.
//! - `ops.rs`: the operator commands (list, count, replay, purge) on a blocking connection.
//! - `buffer.rs`: the local buffer's mover (buffered events into Redis).
//!
//! An append runs the `APPEND` script (the event's record into a hash, a delivery token into
//! the stream with `XADD`), then, per `spool.redis.durability`, `WAIT` or `WAITAOF`; OpenIM is
//! answered only after that. Any replica's reader takes tokens with `XREADGROUP` (one consumer
//! per token), resolves it to its event, delivers, and finishes with one script (`XACK` +
//! `XDEL`, and delete, retry via the `P:due` sorted set, or dead letter). A token whose consumer
//! died is taken over after `claim_idle` by `XAUTOCLAIM`; the attempt count and delivery id live
//! in the record, so they are unchanged.
//!
//! The delivery id is the gateway's, given before the event is stored anywhere and kept in the
//! record (records written before it did have none: theirs is `<instance>-<id>`).
//!
//! When Redis cannot take an event (`buffer.rs`), the gateway does not wait for it: the first
//! append that finds Redis unreachable marks it down, later appends go straight to the
//! fallback of `spool.redis.when_unreachable` (by default this replica's local buffer, a redb
//! spool file whose "delivery" is the move into Redis), and a background probe marks Redis up
//! again once it answers.

mod buffer;
mod ops;
mod scripts;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prost::Message;
use redis::aio::ConnectionManager;
use tokio::sync::{Notify, OnceCell, Semaphore, watch};

use super::backend::Backend;
use super::deliver::{Deliver, DeliveryResult};
use super::error::{AppendError, SpoolError};
use super::event::{
    NewEvent, Place, Progress, Select, SpoolStats, StoredEvent, StoredEventRef, Which,
};
use super::fault::Attempt;
use super::record::{Record, now_ms, undecodable};
use super::redb::RedbSpool;
use super::rules::{Role, SHUTDOWN_GRACE, note_rejected};
use crate::config::{Durability, FullPolicy, RedisConfig, SpoolConfig, Unreachable};

/// Append connections with `durability: replicas | fsync` (one with `ack`, where nothing blocks).
const APPEND_CONNECTIONS: usize = 8;

/// How often the health check pings Redis and refreshes the counters.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// How often the probe tries Redis while it is marked down.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// What Redis answered to an `APPEND`: the new id (0: refused, full), the counters, and the
/// id, record pairs `drop_oldest` deleted.
struct Written {
    id: u64,
    pending: u64,
    bytes: i64,
    dropped: Vec<Vec<u8>>,
}

/// The key prefix with its hash tag: `{openim-gw}`.
pub(crate) fn prefix(rc: &RedisConfig) -> String {
    format!("{{{}}}", rc.key_prefix)
}

/// The default consumer name: `<hostname>-<pid>` (the pod name in Kubernetes).
fn default_consumer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "gateway".to_owned());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '{' | '}'))
        .collect();
    format!("{host}-{}", std::process::id())
}

/// The Redis client: URL, password file, private CA.
fn client(rc: &RedisConfig) -> Result<redis::Client, SpoolError> {
    use redis::IntoConnectionInfo as _;
    let config = |detail: String| SpoolError::Config(detail);
    let mut info = rc
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| config(format!("spool.redis.url: {e}")))?;
    if let Some(file) = &rc.password_file {
        let password = std::fs::read_to_string(file).map_err(|e| {
            config(format!(
                "spool.redis.password_file: cannot read {}: {e}",
                file.display()
            ))
        })?;
        let password = password.trim_end_matches(['\r', '\n']);
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    match &rc.ca_file {
        Some(file) => {
            let pem = std::fs::read(file).map_err(|e| {
                config(format!(
                    "spool.redis.ca_file: cannot read {}: {e}",
                    file.display()
                ))
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| config(format!("spool.redis.ca_file: {e}")))
        }
        None => redis::Client::open(info).map_err(|e| config(format!("spool.redis.url: {e}"))),
    }
}

/// Where the spool is, for logs and errors: the URL without credentials, and the prefix.
fn location(rc: &RedisConfig) -> String {
    let url = match rc.url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => rc.url.clone(),
    };
    format!("{url} (prefix {})", prefix(rc))
}

/// A Redis error in a line.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    e.to_string()
}

/// The connections made once Redis was reached.
struct Ready {
    /// Appends only: `WAIT` / `WAITAOF` block the connection they are sent on until the
    /// replicas or the fsync answer, so they delay only appends, and with `durability:
    /// replicas | fsync` there are [`APPEND_CONNECTIONS`] of them, used in turn, so that
    /// concurrent appends wait in parallel.
    append: Vec<ConnectionManager>,
    /// Delivery results, polls, claims, health.
    work: ConnectionManager,
}

/// State shared by the handle, the delivery tasks and the operator commands.
pub(crate) struct Core {
    pub(crate) settings: SpoolConfig,
    pub(crate) prefix: String,
    pub(crate) consumer: String,
    location: String,
    client: redis::Client,
    ready: OnceCell<Ready>,
    /// Known once Redis was reached (by `open` or later).
    instance: std::sync::OnceLock<String>,
    health: Mutex<Result<(), String>>,
    pending: AtomicU64,
    dead: AtomicU64,
    bytes: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    appends: AtomicU64,
    /// Round robin over the append connections.
    turn: AtomicU64,
    closed: AtomicBool,
    started: AtomicBool,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) sem: Arc<Semaphore>,
    /// Stream entry ids being delivered by this replica, kept fresh by the heartbeat.
    pub(crate) owned: Mutex<HashSet<String>>,
    /// Wakes the retry poller when this replica scheduled a retry.
    pub(crate) due_changed: Notify,
    /// The blocking connection of the operator commands.
    sync_conn: Mutex<Option<redis::Connection>>,
    /// `true` while Redis takes appends. An append that finds it unreachable sets `false`:
    /// later appends go straight to the fallback until the probe sees Redis answer again.
    up: watch::Sender<bool>,
    /// Whether the probe task runs.
    probing: AtomicBool,
    /// The first half of the delivery ids this process gives (random per open).
    ids: String,
    /// The second half: counts up.
    next_id: AtomicU64,
    /// This replica's local buffer (`None` for the operator commands, which never append);
    /// taken when the spool is dropped, so that the file closes with it.
    buffer: Mutex<Option<RedbSpool>>,
    /// The deliverer given to `start`, for `when_unreachable: sync`.
    deliverer: std::sync::OnceLock<Arc<dyn Deliver>>,
}

/// The Redis backend: cheap to clone. Dropping the last clone stops its delivery tasks.
pub(crate) struct RedisSpool {
    core: Arc<Core>,
}

impl Drop for RedisSpool {
    fn drop(&mut self) {
        self.core.stop.send_replace(true);
        // Tasks may hold the core a moment longer; the buffer file closes now.
        drop(
            self.core
                .buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl RedisSpool {
    /// Checks the settings, opens the local buffer (`with_buffer`; the operator commands do
    /// without) and tries Redis once (instance id, consumer group, counters). An unreachable
    /// Redis is logged, not an error: appends follow `when_unreachable` and a probe tries it
    /// again.
    pub(crate) fn open(
        settings: &SpoolConfig,
        with_buffer: bool,
    ) -> Result<RedisSpool, SpoolError> {
        settings
            .validate()
            .map_err(|e| SpoolError::Config(e.to_string()))?;
        let rc = &settings.redis;
        let buffer = if with_buffer {
            Some(RedbSpool::open_as(
                &settings.buffer_settings(),
                Role::Buffer,
            )?)
        } else {
            None
        };
        let client = client(rc)?;
        let consumer = if rc.consumer.is_empty() {
            default_consumer()
        } else {
            rc.consumer.clone()
        };
        let (stop, _) = watch::channel(false);
        let core = Arc::new(Core {
            prefix: prefix(rc),
            consumer,
            location: location(rc),
            client,
            ready: OnceCell::new(),
            instance: std::sync::OnceLock::new(),
            health: Mutex::new(Err("not connected yet".to_owned())),
            pending: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            turn: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            stop,
            sem: Arc::new(Semaphore::new(settings.workers)),
            owned: Mutex::new(HashSet::new()),
            due_changed: Notify::new(),
            sync_conn: Mutex::new(None),
            up: watch::channel(false).0,
            probing: AtomicBool::new(false),
            ids: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            next_id: AtomicU64::new(1),
            buffer: Mutex::new(buffer),
            deliverer: std::sync::OnceLock::new(),
            settings: settings.clone(),
        });
        match core.with_sync(|conn| core.init_sync(conn)) {
            Ok(()) => {
                core.set_health(Ok(()));
                tracing::info!(
                    redis = %core.location,
                    consumer = %core.consumer,
                    pending = core.pending.load(Ordering::Relaxed),
                    dead = core.dead.load(Ordering::Relaxed),
                    "spool opened (redis)"
                );
            }
            Err(SpoolError::Config(e)) => return Err(SpoolError::Config(e)),
            Err(e) => {
                tracing::error!(
                    redis = %core.location,
                    error = %e,
                    "spool backend redis is unreachable at start; after-events follow \
                     spool.redis.when_unreachable until it answers"
                );
                core.set_health(Err(e.to_string()));
            }
        }
        Ok(RedisSpool { core })
    }

    /// Checks Redis now (blocking), for the operator commands.
    pub(crate) fn check_now(&self) -> Result<(), SpoolError> {
        self.core.with_sync(|conn| self.core.init_sync(conn))
    }
}

impl Core {
    /// The local buffer, while the spool is open with one.
    fn buffer(&self) -> Option<RedbSpool> {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub(crate) fn storage(&self, detail: String) -> SpoolError {
        SpoolError::Storage {
            path: std::path::PathBuf::from(&self.location),
            detail,
        }
    }

    pub(crate) fn set_health(&self, h: Result<(), String>) {
        metrics::gauge!("gateway_spool_backend_up").set(if h.is_ok() { 1.0 } else { 0.0 });
        self.up.send_if_modified(|up| {
            let changed = *up != h.is_ok();
            *up = h.is_ok();
            changed
        });
        let mut cur = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*cur, &h) {
            (Err(_), Ok(())) => {
                tracing::info!(redis = %self.location, "spool backend redis is reachable")
            }
            (Ok(()), Err(e)) => {
                tracing::error!(redis = %self.location, error = %e, "spool backend redis is unreachable")
            }
            _ => {}
        }
        *cur = h;
    }

    fn health(&self) -> Result<(), String> {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the blocking connection, connecting first if needed; a failed command drops
    /// the connection so that the next call reconnects.
    pub(crate) fn with_sync<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let mut guard = self
            .sync_conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A connection kept from an earlier command may have been closed by a Redis restart:
        // on its failure, one more try on a new connection (every operation is idempotent).
        if let Some(conn) = guard.as_mut() {
            match f(conn) {
                Err(SpoolError::Storage { .. }) => *guard = None,
                other => return other,
            }
        }
        if guard.is_none() {
            let timeout = self.settings.redis.timeout;
            let conn = self
                .client
                .get_connection_with_timeout(timeout)
                .map_err(|e| self.storage(format!("cannot connect: {}", describe(&e))))?;
            let _ = conn.set_read_timeout(Some(timeout.max(Duration::from_secs(30))));
            let _ = conn.set_write_timeout(Some(timeout.max(Duration::from_secs(30))));
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(self.storage("no connection".to_owned()));
        };
        let result = f(conn);
        if matches!(result, Err(SpoolError::Storage { .. })) {
            *guard = None;
        }
        result
    }

    /// The instance id (created once per spool), the consumer group, the counters.
    fn init_sync(&self, conn: &mut redis::Connection) -> Result<(), SpoolError> {
        let err = |e: redis::RedisError| self.storage(describe(&e));
        let candidate = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let _: i64 = redis::cmd("HSETNX")
            .arg(self.key("meta"))
            .arg("instance")
            .arg(&candidate)
            .query(conn)
            .map_err(err)?;
        let instance: String = redis::cmd("HGET")
            .arg(self.key("meta"))
            .arg("instance")
            .query(conn)
            .map_err(err)?;
        let _ = self.instance.set(instance);
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key("q"))
            .arg(&self.settings.redis.group)
            .arg("0")
            .arg("MKSTREAM")
            .query(conn);
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(err(e)),
        }
        if self.settings.redis.durability == Durability::Fsync {
            let probe: redis::RedisResult<redis::Value> =
                redis::cmd("WAITAOF").arg(0).arg(0).arg(1).query(conn);
            if let Err(e) = probe
                && e.kind() != redis::ErrorKind::Io
            {
                return Err(SpoolError::Config(format!(
                    "spool.redis.durability: fsync needs WAITAOF (Redis 7.2 or later), which {} refused: {}; \
                     use durability: ack with `appendfsync always` on the server, or replicas",
                    self.location,
                    describe(&e)
                )));
            }
        }
        self.refresh_sync(conn)
    }

    fn refresh_sync(&self, conn: &mut redis::Connection) -> Result<(), SpoolError> {
        let (pending, dead, bytes): (u64, u64, Option<i64>) = redis::pipe()
            .cmd("ZCARD")
            .arg(self.key("idx"))
            .cmd("XLEN")
            .arg(self.key("dead"))
            .cmd("GET")
            .arg(self.key("bytes"))
            .query(conn)
            .map_err(|e| self.storage(describe(&e)))?;
        self.store_counts(pending, dead, bytes.unwrap_or(0));
        Ok(())
    }

    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn store_counts(&self, pending: u64, dead: u64, bytes: i64) {
        let bytes = u64::try_from(bytes).unwrap_or(0);
        self.pending.store(pending, Ordering::Relaxed);
        self.dead.store(dead, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        metrics::gauge!("gateway_spool_pending").set(pending as f64);
        metrics::gauge!("gateway_spool_dead").set(dead as f64);
        metrics::gauge!("gateway_spool_bytes").set(bytes as f64);
    }

    /// The async connections, made on first use and retried while Redis is unreachable.
    async fn ready(&self) -> Result<&Ready, redis::RedisError> {
        self.ready
            .get_or_try_init(|| async {
                let timeout = self.settings.redis.timeout;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(
                        timeout.max(self.settings.redis.wait_timeout + timeout),
                    ))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(2);
                let n = match self.settings.redis.durability {
                    Durability::Ack => 1,
                    Durability::Replicas | Durability::Fsync => APPEND_CONNECTIONS,
                };
                let mut append = Vec::with_capacity(n);
                for _ in 0..n {
                    append.push(
                        ConnectionManager::new_with_config(self.client.clone(), config.clone())
                            .await?,
                    );
                }
                let mut work =
                    ConnectionManager::new_with_config(self.client.clone(), config).await?;
                match self.instance.get() {
                    Some(_) => {}
                    None => {
                        let candidate =
                            format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                        let _: i64 = redis::cmd("HSETNX")
                            .arg(self.key("meta"))
                            .arg("instance")
                            .arg(&candidate)
                            .query_async(&mut work)
                            .await?;
                        let i: String = redis::cmd("HGET")
                            .arg(self.key("meta"))
                            .arg("instance")
                            .query_async(&mut work)
                            .await?;
                        let _ = self.instance.set(i);
                    }
                }
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.key("q"))
                    .arg(&self.settings.redis.group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut work)
                    .await;
                match created {
                    Ok(()) => {}
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(e),
                }
                Ok(Ready { append, work })
            })
            .await
    }

    /// The delivery-side connection.
    pub(crate) async fn work(&self) -> Result<ConnectionManager, redis::RedisError> {
        Ok(self.ready().await?.work.clone())
    }

    /// The dedicated connection of the blocking reader (`XREADGROUP BLOCK` must not hold up
    /// other commands).
    pub(crate) async fn blocking_conn(
        &self,
        block: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.redis.timeout))
            .set_response_timeout(Some(block + self.settings.redis.timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A new delivery id, given before the event is stored anywhere.
    fn new_delivery_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:016x}", self.ids)
    }

    /// An event as stored in Redis: the record's delivery id, or for a record written before
    /// the gateway gave them, `<instance>-<id>`.
    pub(crate) fn event_of(&self, id: u64, rec: Record) -> StoredEvent {
        let mut ev = rec.into_stored(id);
        if ev.delivery_id.is_empty() {
            let instance = self.instance.get().map_or("", String::as_str);
            ev.delivery_id = format!("{instance}-{id:016x}");
        }
        ev
    }

    /// A record as an operator or a deliverer sees it.
    pub(crate) fn stored(&self, id: u64, raw: &[u8]) -> StoredEvent {
        match Record::decode(raw) {
            Ok(rec) => self.event_of(id, rec),
            Err(e) => undecodable(id, raw.len(), &e),
        }
    }

    /// Stores an after-event: in Redis, or per `when_unreachable` when Redis cannot take it.
    /// Its delivery id is given first, so every copy and every delivery carries the same one.
    async fn append(self: &Arc<Self>, ev: NewEvent) -> Result<StoredEventRef, AppendError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(AppendError::Closed);
        }
        let mut rec = Record::new(ev, now_ms());
        rec.delivery_id = self.new_delivery_id();
        if !*self.up.borrow() {
            // Known down: no wait for reconnects.
            self.probe();
            return self
                .fallback(
                    rec,
                    "redis is unreachable (the probe has not reached it since)".into(),
                )
                .await;
        }
        if self.buffer().is_some_and(|b| b.stats().pending > 0) {
            // Events of the outage are still being moved: a new one joins them, so that the
            // events of an ordering key reach Redis in order.
            return self.to_buffer(rec, None).await;
        }
        match self.write(&rec).await {
            Ok(written) => self.written(rec, written),
            Err(why) => {
                metrics::counter!("gateway_spool_backend_errors_total", "op" => "append")
                    .increment(1);
                self.set_health(Err(why.clone()));
                self.probe();
                self.fallback(rec, why).await
            }
        }
    }

    /// Runs the `APPEND` script for `rec` (and `WAIT` / `WAITAOF` per `durability`), within
    /// `spool.redis.timeout`; the error says why Redis did not take it.
    async fn write(&self, rec: &Record) -> Result<Written, String> {
        let rc = &self.settings.redis;
        let s = &self.settings;
        let raw = rec.encode_to_vec();
        let write = async {
            let ready = self.ready().await?;
            let turn = usize::try_from(self.turn.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
            let Some(conn) = ready.append.get(turn % ready.append.len().max(1)) else {
                return Ok(Err("no append connection".to_owned()));
            };
            // WAIT and WAITAOF cover the connection's last write: this event's, or a later one.
            let mut conn = conn.clone();
            let (id, pending, bytes, dropped): (u64, u64, i64, Vec<Vec<u8>>) = scripts::APPEND
                .arg(&self.prefix)
                .arg(raw.as_slice())
                .arg(if rec.order_key.is_some() { "1" } else { "0" })
                .arg(rec.order_key.as_deref().unwrap_or(""))
                .arg(s.max_events)
                .arg(s.max_bytes)
                .arg(if s.when_full == FullPolicy::DropOldest {
                    "1"
                } else {
                    "0"
                })
                .invoke_async(&mut conn)
                .await?;
            if id != 0 {
                match rc.durability {
                    Durability::Ack => {}
                    Durability::Replicas => {
                        let acked: u64 = redis::cmd("WAIT")
                            .arg(rc.replicas)
                            .arg(u64::try_from(rc.wait_timeout.as_millis()).unwrap_or(u64::MAX))
                            .query_async(&mut conn)
                            .await?;
                        if acked < u64::from(rc.replicas) {
                            return Ok(Err(format!(
                                "only {acked} of {} replicas acknowledged the write within {}",
                                rc.replicas,
                                humantime::format_duration(rc.wait_timeout)
                            )));
                        }
                    }
                    Durability::Fsync => {
                        let (local, _): (u64, u64) = redis::cmd("WAITAOF")
                            .arg(1)
                            .arg(0)
                            .arg(u64::try_from(rc.wait_timeout.as_millis()).unwrap_or(u64::MAX))
                            .query_async(&mut conn)
                            .await?;
                        if local < 1 {
                            return Ok(Err(format!(
                                "the primary did not fsync its AOF within {}",
                                humantime::format_duration(rc.wait_timeout)
                            )));
                        }
                    }
                }
            }
            Ok::<_, redis::RedisError>(Ok(Written {
                id,
                pending,
                bytes,
                dropped,
            }))
        };
        match tokio::time::timeout(rc.timeout, write).await {
            Err(_) => Err(format!(
                "no answer from redis within spool.redis.timeout {}",
                humantime::format_duration(rc.timeout)
            )),
            Ok(Err(e)) => Err(describe(&e)),
            Ok(Ok(result)) => result,
        }
    }

    /// What an `APPEND` Redis answered means: stored (`id` > 0), or refused because the spool
    /// is full; events `drop_oldest` deleted are logged.
    fn written(&self, rec: Record, w: Written) -> Result<StoredEventRef, AppendError> {
        let s = &self.settings;
        let Written {
            id,
            pending,
            bytes,
            dropped,
        } = w;
        for pair in dropped.chunks(2) {
            let (did, raw) = match pair {
                [i, r] => (
                    String::from_utf8_lossy(i).parse::<u64>().unwrap_or(0),
                    r.as_slice(),
                ),
                _ => continue,
            };
            let gone = self.stored(did, raw);
            tracing::error!(
                redis = %self.location,
                delivery_id = gone.delivery_id,
                command = gone.event.command,
                operation_id = gone.event.operation_id,
                "spool full (when_full: drop_oldest): deleted the oldest pending event undelivered"
            );
            metrics::counter!("gateway_spool_dropped_total", "command" => gone.event.command)
                .increment(1);
        }
        let dead = self.dead.load(Ordering::Relaxed);
        self.store_counts(pending, dead, bytes);
        if id == 0 {
            let ev = NewEvent {
                command: rec.command,
                operation_id: rec.operation_id,
                ..NewEvent::default()
            };
            let bytes = u64::try_from(bytes).unwrap_or(0);
            note_rejected(
                std::path::Path::new(&self.location),
                &ev,
                pending,
                bytes,
                s.when_full,
            );
            return Err(AppendError::Full { pending, bytes });
        }
        self.appends.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_spool_appended_total", "command" => rec.command).increment(1);
        Ok(StoredEventRef {
            id,
            delivery_id: rec.delivery_id,
            place: Place::Spool,
        })
    }

    /// The answer to an append Redis did not take, per `when_unreachable`: the local buffer,
    /// a synchronous delivery (else the local buffer), or a refusal. Never an acknowledgement
    /// of an event stored nowhere.
    async fn fallback(&self, mut rec: Record, why: String) -> Result<StoredEventRef, AppendError> {
        let policy = self.settings.redis.when_unreachable;
        let label = match policy {
            Unreachable::Local => "local",
            Unreachable::Sync => "sync",
            Unreachable::Reject => "reject",
        };
        metrics::counter!("gateway_spool_unavailable_total", "command" => rec.command.clone(), "policy" => label)
            .increment(1);
        match policy {
            Unreachable::Reject => {
                tracing::error!(
                    redis = %self.location,
                    command = rec.command,
                    operation_id = rec.operation_id,
                    error = %why,
                    "spool backend unavailable (when_unreachable: reject): the after-callback was NOT stored and will not be delivered"
                );
                Err(AppendError::Unavailable(why))
            }
            Unreachable::Local => self.to_buffer(rec, Some(why)).await,
            Unreachable::Sync => {
                if let Some(deliverer) = self.deliverer.get() {
                    let ev = self.event_of(0, rec.clone());
                    match super::rules::attempt(deliverer, ev, 1).await {
                        DeliveryResult::Delivered => {
                            metrics::counter!("gateway_spool_delivered_total", "command" => rec.command.clone())
                                .increment(1);
                            tracing::info!(
                                delivery_id = rec.delivery_id,
                                command = rec.command,
                                operation_id = rec.operation_id,
                                attempt = 1,
                                "after-callback delivered"
                            );
                            return Ok(StoredEventRef {
                                id: 0,
                                delivery_id: rec.delivery_id,
                                place: Place::Delivered,
                            });
                        }
                        DeliveryResult::Retry(e) | DeliveryResult::Permanent(e) => {
                            // Kept with the failed attempt; delivered from Redis later.
                            rec.note_attempt(Attempt::new(1, now_ms(), &e), e.text());
                        }
                        // Not attempted (the upstream's breaker is open): no attempt used.
                        DeliveryResult::Deferred(_, e) => rec.last_error = Some(e.text()),
                    }
                }
                self.to_buffer(rec, Some(why)).await
            }
        }
    }

    /// Writes `rec` to the local buffer (fsynced before it returns); `why`: Redis could not
    /// take it (`None`: earlier events are still in the buffer).
    async fn to_buffer(
        &self,
        rec: Record,
        why: Option<String>,
    ) -> Result<StoredEventRef, AppendError> {
        let Some(buffer) = self.buffer() else {
            return Err(AppendError::Unavailable(why.unwrap_or_default()));
        };
        buffer.append_record(rec).await
    }

    /// Starts the probe unless it runs: it checks Redis until it answers, then appends take
    /// the normal path again.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(core) = weak.upgrade() else { return };
                if *core.stop.borrow() {
                    core.probing.store(false, Ordering::SeqCst);
                    return;
                }
                core.check().await;
                if *core.up.borrow() {
                    core.probing.store(false, Ordering::SeqCst);
                    return;
                }
                drop(core);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }

    /// Pings Redis and refreshes the counters.
    pub(crate) async fn check(&self) {
        let result = async {
            let mut conn = self.work().await?;
            let (pending, dead, bytes): (u64, u64, Option<i64>) = redis::pipe()
                .cmd("ZCARD")
                .arg(self.key("idx"))
                .cmd("XLEN")
                .arg(self.key("dead"))
                .cmd("GET")
                .arg(self.key("bytes"))
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((pending, dead, bytes.unwrap_or(0)))
        };
        match tokio::time::timeout(self.settings.redis.timeout, result).await {
            Ok(Ok((p, d, b))) => {
                self.store_counts(p, d, b);
                self.set_health(Ok(()));
            }
            Ok(Err(e)) => {
                metrics::counter!("gateway_spool_backend_errors_total", "op" => "health")
                    .increment(1);
                self.set_health(Err(describe(&e)));
            }
            Err(_) => {
                metrics::counter!("gateway_spool_backend_errors_total", "op" => "health")
                    .increment(1);
                self.set_health(Err(format!(
                    "no answer within spool.redis.timeout {}",
                    humantime::format_duration(self.settings.redis.timeout)
                )));
            }
        }
    }
}

impl Backend for RedisSpool {
    fn append(&self, ev: NewEvent) -> BoxFuture<'_, Result<StoredEventRef, AppendError>> {
        Box::pin(self.core.append(ev))
    }

    fn start(&self, deliverer: Arc<dyn Deliver>) -> tokio::task::JoinHandle<()> {
        if self.core.started.swap(true, Ordering::SeqCst) {
            tracing::warn!("spool delivery already started; ignoring the second start");
            return tokio::spawn(async {});
        }
        let _ = self.core.deliverer.set(deliverer.clone());
        let mover = self
            .core
            .buffer()
            .map(|b| b.start(Arc::new(buffer::Mover::new(&self.core))));
        let abort = mover.as_ref().map(tokio::task::JoinHandle::abort_handle);
        let core = self.core.clone();
        tokio::spawn(async move {
            // Aborting the delivery task (a test's "kill") stops the mover too.
            let _mover = abort.map(buffer::AbortOnDrop);
            worker::run(core, deliverer).await;
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let core = &self.core;
            core.stop.send_replace(true);
            core.closed.store(true, Ordering::SeqCst);
            if let Some(buffer) = core.buffer() {
                // The mover's waits end with `stop`; what is still buffered stays on disk.
                buffer.shutdown().await;
            }
            let workers = u32::try_from(core.settings.workers).unwrap_or(u32::MAX);
            match tokio::time::timeout(SHUTDOWN_GRACE, core.sem.acquire_many(workers)).await {
                Ok(Ok(permits)) => permits.forget(),
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(
                    in_flight = core.in_flight.load(Ordering::Relaxed),
                    "spool shutdown: deliveries still running after {SHUTDOWN_GRACE:?}; \
                     another replica takes their events over after spool.redis.claim_idle"
                ),
            }
            core.sem.close();
        })
    }

    fn stats(&self) -> SpoolStats {
        let c = &self.core;
        SpoolStats {
            pending: c.pending.load(Ordering::Relaxed),
            dead: c.dead.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            commits: c.appends.load(Ordering::Relaxed),
            buffered: c.buffer().map_or(0, |b| b.stats().pending),
            stale: false,
        }
    }

    fn health(&self) -> Result<(), String> {
        self.core
            .health()
            .map_err(|e| format!("redis {} unreachable: {e}", self.core.location))
    }

    fn list(&self, which: Which, limit: usize) -> Result<Vec<StoredEvent>, SpoolError> {
        ops::list(&self.core, which, limit)
    }

    fn count(&self, which: Which, command: Option<&str>) -> Result<u64, SpoolError> {
        ops::count(&self.core, which, command)
    }

    fn replay_dead_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        ops::replay_chunk(&self.core, select, after, max)
    }

    fn purge_chunk(
        &self,
        which: Which,
        command: Option<&str>,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        ops::purge_chunk(&self.core, which, command, after, max)
    }

    fn check_now(&self) -> Result<(), SpoolError> {
        RedisSpool::check_now(self)
    }

    fn refresh(&self) -> Result<(), SpoolError> {
        self.core.with_sync(|conn| self.core.refresh_sync(conn))
    }

    /// While Redis does not answer: the last counters read, marked `stale`, with the local
    /// buffer's depth, which is what an operator needs most then.
    fn stats_now(&self) -> Result<SpoolStats, SpoolError> {
        match self.refresh() {
            Ok(()) => Ok(self.stats()),
            Err(SpoolError::Storage { .. }) => Ok(SpoolStats {
                stale: true,
                ..self.stats()
            }),
            Err(e) => Err(e),
        }
    }

    fn log_opened(&self) {
        let buffer_dir = self.core.settings.buffer_dir();
        tracing::info!(
            buffer_dir = %buffer_dir.display(),
            "after-event spool open (redis; the local buffer for Redis outages in buffer_dir)"
        );
    }

    fn replayed_delivered_by(&self) -> &'static str {
        "the running gateways deliver them"
    }
}
