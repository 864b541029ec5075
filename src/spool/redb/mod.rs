//! The redb backend (`spool.backend: redb`, the default): one local file, one process.
//!
//! - `mod.rs` (this file): [`RedbSpool`], opening, appending, the operator operations, and its
//!   [`Backend`] implementation.
//! - `store.rs`: the on-disk format (redb tables of [`Record`]s), opening with clear errors, reads.
//! - `writer.rs`: the one thread that owns write transactions: group commit, limits, dead letters.
//! - `journal.rs`: the append journal that makes a batch of appends durable with one write.
//! - `delivery.rs`: the scheduler (ordering keys, retry timers) and the delivery workers.
//!
//! The same type, in the role of a buffer ([`Role::Buffer`]), is the Redis backend's local
//! buffer for Redis outages.
//!
//! [`RedbSpool::append`] hands the event to the writer thread, which puts every event queued at
//! that moment (up to `batch_max`) into one redb write transaction, and writes the batch's new
//! records to the journal as one frame with one disk sync (`journal.rs`); the redb commit itself
//! is not synced. Only then does `append` return, so an acknowledged event survives `kill -9` and
//! power loss: opening the spool replays the journal. At least every [`FLUSH_EVERY`] (and for any
//! change other than appends) a durable redb commit, a checkpoint, makes the journal's contents
//! redundant and starts it over. The writer then queues the event id for delivery.
//! Delivery workers read the event, call the [`Deliver`] implementation with a deadline, and
//! report back as the shared rules (`super::rules`) say: success deletes the event, a retryable
//! failure persists the attempt and schedules a retry, a permanent failure or exhausted attempts
//! or age move it to the dead letters. Deletes and attempt counts are committed without a disk
//! sync of their own (losing one causes a duplicate delivery, which receivers must tolerate
//! anyway: the `openim-delivery-id` metadata is stable across retries and restarts), and are
//! synced at the latest [`FLUSH_EVERY`] later.

mod delivery;
mod journal;
pub(super) mod store;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redb::Database;
use tokio::sync::{Semaphore, oneshot, watch};

use self::delivery::Sched;
use self::writer::{ChunkOp, Cmd};
use super::backend::Backend;
use super::deliver::Deliver;
use super::error::{AppendError, SpoolError};
use super::event::{NewEvent, Progress, Select, SpoolStats, StoredEvent, StoredEventRef, Which};
use super::record::{Record, now_ms};
use super::rules::{Role, SHUTDOWN_GRACE};
use crate::config::{FullPolicy, SpoolConfig};

/// Longest time between a delete / attempt-count update and the disk sync that makes it durable.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The redb backend: the live spool file, cheap to clone. `Spool` dispatches to it.
#[derive(Clone)]
pub(crate) struct RedbSpool {
    inner: Arc<SpoolCore>,
}

/// Counters shared by the writer thread, the workers and [`RedbSpool::stats`].
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pub(crate) role: Role,
    pub(crate) pending: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) sched: Sched,
    /// Delivered events to delete, on their way to the writer without a message of their own.
    pub(crate) delivered: Delivered,
}

/// The ids of delivered events waiting for the writer's next transaction. Adding them wakes the
/// writer thread only when it sleeps without looking again by itself: while deliveries run it
/// looks every [`writer::LINGER`], and the deletes usually share the next append's transaction
/// without a wake-up of their own.
#[derive(Default)]
pub(crate) struct Delivered {
    ids: Mutex<Vec<u64>>,
    /// The writer sleeps until a message comes.
    sleeping: AtomicBool,
}

impl Delivered {
    /// Adds delivered ids; `true`: the writer sleeps, send it [`Cmd::Wake`].
    pub(crate) fn add(&self, ids: impl IntoIterator<Item = u64>) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(ids);
        // SeqCst with the writer's store before it looks at `ids` (in `Writer::wait`): either it
        // sees these ids, or this sees it sleeping.
        self.sleeping.swap(false, Ordering::SeqCst)
    }

    /// The ids added since the last call.
    pub(crate) fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn is_empty(&self) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The writer is about to sleep until a message comes; `false`: ids wait, do not sleep.
    fn sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.is_empty() {
            return true;
        }
        self.sleeping.store(false, Ordering::SeqCst);
        false
    }

    /// The writer is awake.
    fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
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

/// An appender waiting for the writer's answer. The writer queues an appended event for delivery
/// without waking the dispatcher while its appender waits: the appender wakes it once answered
/// (from its own task: no wake-up across threads), or when dropped after the answer was sent;
/// the writer does it when the answer finds nobody.
struct Answer<'a> {
    rx: oneshot::Receiver<Result<StoredEventRef, AppendError>>,
    answered: bool,
    sched: &'a Sched,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Closed first: from here either the answer is in (the event is queued) or the writer's
        // send fails and the writer wakes the dispatcher.
        self.rx.close();
        if matches!(self.rx.try_recv(), Ok(Ok(_))) {
            self.sched.kick();
        }
    }
}

impl RedbSpool {
    /// Opens (or creates) the spool in `settings.dir` and starts its writer thread. Every event
    /// pending in the file is queued for delivery, which begins with [`RedbSpool::start`].
    ///
    /// Fails with a clear [`SpoolError`] when the directory cannot be created, the file cannot be
    /// read, is not a spool or is corrupted, or is already open. Needs no tokio runtime.
    pub(crate) fn open(settings: &SpoolConfig) -> Result<RedbSpool, SpoolError> {
        Self::open_as(settings, Role::Spool)
    }

    /// [`RedbSpool::open`] of a file that must exist ([`SpoolError::NotFound`] otherwise): the
    /// operator commands create none.
    pub(crate) fn open_existing(settings: &SpoolConfig) -> Result<RedbSpool, SpoolError> {
        let path = settings.path();
        match path.try_exists() {
            Ok(true) => Self::open(settings),
            Ok(false) => Err(SpoolError::NotFound { path }),
            Err(source) => Err(SpoolError::Io { path, source }),
        }
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
            delivered: Delivered::default(),
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
            opened.journal,
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
                super::rules::note_rejected(
                    &self.inner.shared.path,
                    &ev,
                    pending,
                    bytes,
                    s.when_full,
                );
                return Err(AppendError::Full { pending, bytes });
            }
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append { rec, reply })
            .map_err(|_| AppendError::Closed)?;
        let mut answer = Answer {
            rx,
            answered: false,
            sched: &self.inner.shared.sched,
        };
        let result = (&mut answer.rx).await;
        answer.answered = true;
        if matches!(result, Ok(Ok(_))) {
            // Stored and queued: the dispatcher learns of it from this task, on this thread.
            answer.sched.kick();
        }
        result.map_err(|_| AppendError::Closed)?
    }

    /// Starts delivery: a dispatcher task that runs attempts on at most `workers` tasks. Every
    /// event pending when the spool was opened is already queued (restart safety). Call once,
    /// inside a tokio runtime; the task ends on [`RedbSpool::shutdown`] or when the spool is dropped.
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

    /// One step of `Spool::replay_dead`: replays at most `max` dead letters with an id above
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
            max,
        })
    }

    /// One step of `Spool::purge`: deletes at most `max` events with an id above `after`.
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
            max,
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

    fn log_opened(&self) {
        let dir = self.inner.settings.dir.display();
        tracing::info!(dir = %dir, "after-event spool open");
    }

    fn replayed_delivered_by(&self) -> &'static str {
        "the gateway delivers them when it starts"
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
