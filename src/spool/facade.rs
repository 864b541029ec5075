//! [`Spool`], the handle the gateway holds: the facade over the configured backend
//! (`spool.backend`), the local redb file (`redb/`) or Redis Streams (`redis/`). Nothing outside
//! the spool needs to know which one runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::{Backend, CHUNK};
use super::deliver::Deliver;
use super::error::{AppendError, SpoolError};
use super::event::{NewEvent, Progress, Select, SpoolStats, StoredEvent, StoredEventRef, Which};
use super::redb::RedbSpool;
use super::redis::RedisSpool;
use crate::config::{BackendKind, SpoolConfig};

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

    /// [`Spool::open`] for the operator commands, which never append. redb: the file must exist
    /// ([`SpoolError::NotFound`] otherwise; the commands create none), and fails with
    /// [`SpoolError::AlreadyOpen`] while a gateway holds it. Redis (no lock: the commands work
    /// beside running gateways, from anywhere): without the local buffer (a running gateway
    /// holds it), and checked to answer now. Blocking.
    pub fn open_for_operator(settings: &SpoolConfig) -> Result<Spool, SpoolError> {
        let spool = Self::open_with(settings, false)?;
        spool.check()?;
        Ok(spool)
    }

    /// `for_gateway`: as the gateway opens it (a redb file is created when missing; Redis with
    /// its local buffer), else as the operator commands do.
    fn open_with(settings: &SpoolConfig, for_gateway: bool) -> Result<Spool, SpoolError> {
        let backend: Arc<dyn Backend> = match settings.backend {
            BackendKind::Redb if for_gateway => Arc::new(RedbSpool::open(settings)?),
            BackendKind::Redb => Arc::new(RedbSpool::open_existing(settings)?),
            BackendKind::Redis => Arc::new(RedisSpool::open(settings, for_gateway)?),
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
    /// [`super::rules::SHUTDOWN_GRACE`] to finish, then everything is flushed (later appends fail with
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
        self.backend.stats_now()
    }

    /// Logs that the spool was opened, naming where it keeps its events (the start's log line).
    pub fn log_opened(&self) {
        self.backend.log_opened();
    }

    /// Who delivers dead letters an operator command replayed on the backend directly: "the
    /// gateway delivers them when it starts" (redb, whose file the command held) or "the
    /// running gateways deliver them" (Redis).
    pub fn replayed_delivered_by(&self) -> &'static str {
        self.backend.replayed_delivered_by()
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
