//! The spool backend trait and [`Spool`], the handle the gateway holds, which dispatches to the
//! configured backend (`spool.backend`): the local redb file or Redis Streams.
//!
//! The cut is where the delivery workers and the operator commands touch the store: appending,
//! running deliveries, counters, listing, replaying and purging. The retry, backoff and
//! dead-letter rules are the same for both (`delivery::backoff`, `max_attempts`, `max_age`,
//! [`DeliveryResult`](super::DeliveryResult)).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{
    AppendError, BackendKind, CHUNK, Deliver, NewEvent, Progress, RedbSpool, Select, SpoolConfig,
    SpoolError, SpoolStats, StoredEvent, StoredEventRef, Which,
};

/// What a spool backend does. The operator methods block the calling thread (call them from
/// a blocking context, as the admin API does with `spawn_blocking`).
pub(crate) trait Backend: Send + Sync + 'static {
    /// Stores an event; returns once it is as durable as the backend promises.
    fn append(&self, ev: NewEvent) -> BoxFuture<'_, Result<StoredEventRef, AppendError>>;
    /// Starts delivery (once, inside a tokio runtime).
    fn start(&self, deliverer: Arc<dyn Deliver>) -> tokio::task::JoinHandle<()>;
    /// Stops delivery, lets running attempts finish within a grace time, flushes.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// Current counters (cheap, no I/O).
    fn stats(&self) -> SpoolStats;
    /// `Err(why)` while the backend cannot take events (Redis unreachable).
    fn health(&self) -> Result<(), String>;
    /// The first `limit` pending events or dead letters, oldest first.
    fn list(&self, which: Which, limit: usize) -> Result<Vec<StoredEvent>, SpoolError>;
    /// Pending events or dead letters, of one command if given.
    fn count(&self, which: Which, command: Option<&str>) -> Result<u64, SpoolError>;
    /// One step of a replay of dead letters.
    fn replay_dead_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError>;
    /// One step of a purge.
    fn purge_chunk(
        &self,
        which: Which,
        command: Option<&str>,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError>;
    /// Checks now, with I/O, that the backend answers (the operator commands call it first).
    fn check_now(&self) -> Result<(), SpoolError> {
        Ok(())
    }
    /// Reads the shared counters again now (Redis: other replicas change them), blocking.
    fn refresh(&self) -> Result<(), SpoolError> {
        Ok(())
    }
}

impl Backend for RedbSpool {
    fn append(&self, ev: NewEvent) -> BoxFuture<'_, Result<StoredEventRef, AppendError>> {
        Box::pin(RedbSpool::append(self, ev))
    }

    fn start(&self, deliverer: Arc<dyn Deliver>) -> tokio::task::JoinHandle<()> {
        RedbSpool::start(self, deliverer)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(RedbSpool::shutdown(self))
    }

    fn stats(&self) -> SpoolStats {
        RedbSpool::stats(self)
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    fn list(&self, which: Which, limit: usize) -> Result<Vec<StoredEvent>, SpoolError> {
        RedbSpool::list(self, which, limit)
    }

    fn count(&self, which: Which, command: Option<&str>) -> Result<u64, SpoolError> {
        RedbSpool::count(self, which, command)
    }

    fn replay_dead_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        RedbSpool::replay_dead_chunk(self, select, after, max)
    }

    fn purge_chunk(
        &self,
        which: Which,
        command: Option<&str>,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        RedbSpool::purge_chunk(self, which, command, after, max)
    }
}

/// The live spool: cheap to clone, shared by the HTTP path, the workers and the admin API.
/// Which backend runs behind it is the configuration's business only.
#[derive(Clone)]
pub struct Spool {
    backend: Arc<dyn Backend>,
    kind: BackendKind,
    path: PathBuf,
}

impl Spool {
    /// Opens the configured backend. redb: opens (or creates) the spool file in
    /// `settings.dir` and starts its writer thread; every pending event is queued for delivery,
    /// which begins with [`Spool::start`]. Fails with a clear [`SpoolError`] when the directory
    /// cannot be created, the file cannot be read, is not a spool or is corrupted, or is already
    /// open. Redis: checks the settings and tries to connect; an unreachable Redis is not an
    /// error here (the gateway starts, [`Spool::health`] reports it and appends follow
    /// `spool.redis.when_unreachable`). Needs no tokio runtime.
    /// With Redis, this replica's local buffer (`spool.redis.buffer_dir`) is opened too, like
    /// a redb spool file (one process at a time).
    pub fn open(settings: &SpoolConfig) -> Result<Spool, SpoolError> {
        Self::open_with(settings, true)
    }

    /// [`Spool::open`] for the operator commands: with Redis, without the local buffer (a
    /// running gateway holds it; the commands never append).
    pub(crate) fn open_for_operator(settings: &SpoolConfig) -> Result<Spool, SpoolError> {
        Self::open_with(settings, false)
    }

    fn open_with(settings: &SpoolConfig, with_buffer: bool) -> Result<Spool, SpoolError> {
        let backend: Arc<dyn Backend> = match settings.backend {
            BackendKind::Redb => Arc::new(RedbSpool::open(settings)?),
            BackendKind::Redis => Arc::new(super::redis::RedisSpool::open(settings, with_buffer)?),
        };
        Ok(Spool {
            backend,
            kind: settings.backend,
            path: settings.path(),
        })
    }

    /// Which backend runs.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Path of the spool file (redb; for Redis the unused `dir/spool.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores an after-event. Returns once it is durable (redb: its group commit is synced to
    /// disk; Redis: the write was acknowledged as `spool.redis.durability` says), so the caller
    /// may acknowledge it to OpenIM. Under `when_full: reject` a full spool answers
    /// [`AppendError::Full`] at once.
    pub async fn append(&self, ev: NewEvent) -> Result<StoredEventRef, AppendError> {
        self.backend.append(ev).await
    }

    /// Starts delivery. Call once, inside a tokio runtime; the task ends on
    /// [`Spool::shutdown`] or when the spool is dropped.
    pub fn start(&self, deliverer: Arc<dyn Deliver>) -> tokio::task::JoinHandle<()> {
        self.backend.start(deliverer)
    }

    /// Stops taking work: no new attempts start, attempts already running get up to
    /// [`super::SHUTDOWN_GRACE`] to finish, then everything is flushed (later appends fail with
    /// [`AppendError::Closed`]; reads keep working).
    pub async fn shutdown(&self) {
        self.backend.shutdown().await;
    }

    /// Current counters.
    pub fn stats(&self) -> SpoolStats {
        self.backend.stats()
    }

    /// [`Spool::stats`] with the shared counters read again first (for Redis, whose counters
    /// other replicas change; [`Spool::stats`] may be up to a second old there). While Redis
    /// does not answer: the last counters read, marked `stale`, with the local buffer's depth,
    /// which is what an operator needs most then. Blocking.
    pub fn stats_now(&self) -> Result<SpoolStats, SpoolError> {
        match self.backend.refresh() {
            Ok(()) => Ok(self.backend.stats()),
            Err(SpoolError::Storage { .. }) if self.kind == BackendKind::Redis => Ok(SpoolStats {
                stale: true,
                ..self.backend.stats()
            }),
            Err(e) => Err(e),
        }
    }

    /// `Ok` while the backend takes events; `Err(why)` while it cannot (Redis unreachable or
    /// failing), which `/readyz` names (as degraded, still ready). The redb backend is always healthy once open.
    pub fn health(&self) -> Result<(), String> {
        self.backend.health()
    }

    /// Checks now (blocking) that the backend answers: the operator commands fail with a clear
    /// error when Redis is unreachable instead of showing stale counters.
    pub fn check(&self) -> Result<(), SpoolError> {
        self.backend.check_now()
    }

    /// The first `limit` pending events or dead letters, oldest first. A record that does not
    /// decode is listed with the command `<undecodable>` and the decode error as `last_error`.
    pub fn list(&self, which: Which, limit: usize) -> Result<Vec<StoredEvent>, SpoolError> {
        self.backend.list(which, limit)
    }

    /// Counts pending events or dead letters, of one command if given.
    pub fn count(&self, which: Which, command: Option<&str>) -> Result<u64, SpoolError> {
        self.backend.count(which, command)
    }

    /// Moves dead letters (of one command if given) back to pending with their attempts reset;
    /// running workers pick them up, keeping their ids and delivery ids. Returns how many.
    /// Blocking: call it from a blocking context (the admin API uses `spawn_blocking`).
    pub fn replay_dead(&self, command: Option<&str>) -> Result<u64, SpoolError> {
        self.replay_selected(&Select::command(command))
    }

    /// Moves the dead letters `select` chooses back to pending, attempts reset. Returns how
    /// many. Blocking.
    pub fn replay_selected(&self, select: &Select) -> Result<u64, SpoolError> {
        self.all_chunks(|after| self.replay_dead_chunk(select, after, CHUNK))
    }

    /// Deletes pending events or dead letters (of one command if given). Returns how many.
    /// Pending events being delivered at the moment may still be delivered once. Blocking.
    pub fn purge(&self, which: Which, command: Option<&str>) -> Result<u64, SpoolError> {
        self.all_chunks(|after| self.purge_chunk(which, command, after, CHUNK))
    }

    /// One step of [`Spool::replay_dead`]: replays at most `max` dead letters after the
    /// position `after` (an event id for redb, an opaque position for Redis). Operator tools
    /// loop on it to show progress.
    pub fn replay_dead_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        self.backend.replay_dead_chunk(select, after, max.max(1))
    }

    /// One step of [`Spool::purge`]: deletes at most `max` events after the position `after`.
    pub fn purge_chunk(
        &self,
        which: Which,
        command: Option<&str>,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError> {
        self.backend.purge_chunk(which, command, after, max.max(1))
    }

    fn all_chunks(
        &self,
        mut step: impl FnMut(Option<u64>) -> Result<Progress, SpoolError>,
    ) -> Result<u64, SpoolError> {
        let mut total = 0;
        let mut after = None;
        // Each step advances `after` past at least one position, so this ends.
        loop {
            let chunk = step(after)?;
            total += chunk.count;
            match chunk.next_after {
                Some(next) => after = Some(next),
                None => return Ok(total),
            }
        }
    }
}
