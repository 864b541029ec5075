//! The backend trait: what a spool backend (the redb wing `redb/`, the Redis wing `redis/`)
//! does for the `Spool` facade (`facade.rs`).
//!
//! The cut is where the delivery workers and the operator commands touch the store: appending,
//! running deliveries, counters, listing, replaying and purging, and what an operator is told
//! about a backend (its log line when opened, where replayed events are delivered). The retry,
//! backoff and dead-letter rules are the same for both (`rules.rs`).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::deliver::Deliver;
use super::error::{AppendError, SpoolError};
use super::event::{NewEvent, Progress, Select, SpoolStats, StoredEvent, StoredEventRef, Which};

/// Events per transaction (redb) or step (Redis) of a replay or purge.
pub(crate) const CHUNK: usize = 10_000;

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
    /// One step of a replay of dead letters: at most `max` (at least 1: the facade clamps it).
    fn replay_dead_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, SpoolError>;
    /// One step of a purge: at most `max` (at least 1: the facade clamps it).
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
    /// The counters with the shared ones read again first ([`Backend::refresh`]); a backend whose
    /// counters may be read while it does not answer returns the last ones, marked `stale`.
    fn stats_now(&self) -> Result<SpoolStats, SpoolError> {
        self.refresh()?;
        Ok(self.stats())
    }
    /// Logs that the spool was opened, naming where it keeps its events.
    fn log_opened(&self);
    /// Who delivers replayed dead letters when an operator command replayed them on the
    /// backend directly (not through a running gateway): the end of the command's last line.
    fn replayed_delivered_by(&self) -> &'static str;
}
