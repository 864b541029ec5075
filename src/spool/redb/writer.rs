//! The one thread that owns the spool's write transactions: group commit, the full-spool policy,
//! attempt counts, deletes, dead letters, replays and purges.
//!
//! It takes every command queued at the moment (up to `batch_max`) into one transaction, with
//! the deletes of every event delivered since the last one (`Shared::delivered`: the workers
//! hand them over without a message while the writer looks by itself, see `Writer::wait`). A
//! batch with appends writes their records to the journal as one synced frame (`journal.rs`)
//! and commits without a sync of its own. A checkpoint commits with `Durability::Immediate` and
//! starts the journal's next epoch: a flush ([`FLUSH_EVERY`] after the first unsynced change), a
//! close, an operator's purge or replay, a full spool dropping its oldest, or a journal that is
//! full. A batch of deletes and attempt counts alone first waits up to [`LINGER`] for an append
//! to share its transaction, else commits without a sync. Waiters are answered, counters
//! published and new events queued for delivery only after the commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use prost::Message;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::super::error::{AppendError, SpoolError};
use super::super::event::{
    NewEvent, Place, Progress as ChunkResult, Select, StoredEventRef, Which,
};
use super::super::fault::Attempt;
use super::super::record::{Record, now_ms};
use super::super::rules::{Role, note_rejected};
use super::journal::Journal;
use super::store::{DEAD, KEY_JOURNAL_EPOCH, KEY_NEXT_ID, META, PENDING, entry_bytes};
use super::{FLUSH_EVERY, Shared};
use crate::config::{FullPolicy, SpoolConfig};

/// A replay or purge step.
pub(crate) struct ChunkOp {
    /// `true`: move dead letters to pending; `false`: delete from `which`.
    pub(crate) replay: bool,
    pub(crate) which: Which,
    pub(crate) select: Select,
    pub(crate) after: Option<u64>,
    pub(crate) max: usize,
}

/// A request to the writer thread.
pub(crate) enum Cmd {
    Append {
        rec: Record,
        reply: oneshot::Sender<Result<StoredEventRef, AppendError>>,
    },
    /// Delivered events wait in `Shared::delivered`, and the writer sleeps: look at them.
    Wake,
    /// A retryable failure: persist the attempt (count, history) and the error.
    Attempted {
        id: u64,
        attempt: Attempt,
        error: String,
    },
    /// Give up: move to the dead letters with the last attempt and why.
    Dead {
        id: u64,
        attempt: Attempt,
        reason: String,
    },
    /// A pending record that does not decode: move its bytes to the dead letters as they are.
    Quarantine { id: u64, error: String },
    Chunk {
        op: ChunkOp,
        reply: Sender<Result<ChunkResult, SpoolError>>,
    },
    /// Sync everything, answer, and stop the thread.
    Close { reply: Option<oneshot::Sender<()>> },
}

/// How long a batch of deletes and attempt counts waits for an append to share its commit.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(10);

impl Cmd {
    /// Whether nobody waits on it: a delete, an attempt count, a dead letter.
    fn can_linger(&self) -> bool {
        matches!(
            self,
            Cmd::Wake | Cmd::Attempted { .. } | Cmd::Dead { .. } | Cmd::Quarantine { .. }
        )
    }
}

/// Why the writer woke without a command.
enum Idle {
    /// Changes committed without a sync are due for one.
    Flush,
    /// Every sender is gone.
    Closed,
}

/// Counters as of the last commit, and what the current transaction changes.
#[derive(Clone, Copy)]
struct Counts {
    pending: u64,
    dead: u64,
    bytes: u64,
    next_id: u64,
    /// The `next_id` stored in the file: ids below it may have been given out. Stored a block
    /// ([`ID_BLOCK`]) ahead, so that an append rarely writes the meta table too.
    reserved: u64,
}

/// Ids reserved in the file at a time. A restart continues at the reserved mark, skipping the
/// ids of the block not given out: ids only grow, so no delivery id is ever reused.
const ID_BLOCK: u64 = 1024;

enum Reply {
    Append(
        oneshot::Sender<Result<StoredEventRef, AppendError>>,
        Result<StoredEventRef, AppendError>,
        String,
    ),
    Chunk(
        Sender<Result<ChunkResult, SpoolError>>,
        Result<ChunkResult, SpoolError>,
    ),
    Close(oneshot::Sender<()>),
}

/// What a transaction did, acted on only once it is committed.
#[derive(Default)]
struct Effects {
    replies: Vec<Reply>,
    /// (id, ordering key, the record of a fresh append for its first attempt).
    enqueue: Vec<(u64, Option<String>, Option<Record>)>,
    /// (delivery id, command, operation id) of events deleted by `drop_oldest`.
    dropped: Vec<(String, String, String)>,
    /// (id, record bytes) of the events appended, for the journal.
    journal: Vec<(u64, Vec<u8>)>,
    /// Commit durably and start the journal's next epoch.
    checkpoint: bool,
    close: bool,
    changed: bool,
    /// Pending events were removed undelivered (dropped or purged): carried records are stale.
    removed: bool,
}

impl Effects {
    /// Pending event `id` was removed undelivered.
    fn removed_pending(&mut self, id: u64) {
        self.removed = true;
        // Appended in this same transaction: its first attempt must read the store (and find
        // nothing) rather than deliver the record it would carry.
        for (eid, _, rec) in &mut self.enqueue {
            if *eid == id {
                *rec = None;
            }
        }
    }
}

pub(crate) struct Writer {
    db: Arc<Database>,
    rx: Receiver<Cmd>,
    shared: Arc<Shared>,
    max_events: u64,
    max_bytes: u64,
    when_full: FullPolicy,
    batch_max: usize,
    instance: String,
    counts: Counts,
    /// Set while committed changes wait for a checkpoint.
    unsynced_since: Option<Instant>,
    journal: Journal,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<Database>,
        rx: Receiver<Cmd>,
        shared: Arc<Shared>,
        settings: &SpoolConfig,
        instance: String,
        next_id: u64,
        journal: Journal,
    ) -> Writer {
        let counts = Counts {
            pending: shared.pending.load(Ordering::Relaxed),
            dead: shared.dead.load(Ordering::Relaxed),
            bytes: shared.bytes.load(Ordering::Relaxed),
            next_id,
            reserved: next_id,
        };
        Writer {
            db,
            rx,
            shared,
            max_events: settings.max_events,
            max_bytes: settings.max_bytes,
            when_full: settings.when_full,
            batch_max: settings.batch_max,
            instance,
            counts,
            unsynced_since: None,
            journal,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let first = match self.wait() {
                Ok(cmd) => cmd,
                Err(Idle::Flush) => {
                    self.commit_batch(Vec::new(), true);
                    continue;
                }
                Err(Idle::Closed) => break,
            };
            let mut batch = vec![first];
            self.drain(&mut batch);
            // Deletes and attempt counts alone need no sync: they wait up to LINGER for the next
            // append, to share its transaction (one commit per event instead of two).
            if batch.iter().all(Cmd::can_linger) {
                let until = Instant::now() + LINGER;
                while batch.len() < self.batch_max {
                    match self
                        .rx
                        .recv_timeout(until.saturating_duration_since(Instant::now()))
                    {
                        Ok(cmd) => {
                            batch.push(cmd);
                            self.drain(&mut batch);
                            // Something waits on this batch: the received command or one drained
                            // with it.
                            if !batch.iter().all(Cmd::can_linger) {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            if self.commit_batch(batch, false) {
                return;
            }
        }
        self.commit_batch(Vec::new(), true);
    }

    /// Waits for work: a message, delivered events to delete ([`Cmd::Wake`]), or the time to
    /// sync.
    ///
    /// While deliveries run (or are about to) their deletes arrive without a message: the writer
    /// looks again every [`LINGER`]. Otherwise it sleeps until a message comes, and a delivery
    /// reported meanwhile wakes it ([`super::Delivered::add`]).
    fn wait(&self) -> Result<Cmd, Idle> {
        let delivered = &self.shared.delivered;
        loop {
            let expecting =
                self.shared.in_flight.load(Ordering::SeqCst) > 0 || self.shared.sched.has_ready();
            if expecting {
                if !delivered.is_empty() {
                    return Ok(Cmd::Wake);
                }
            } else if !delivered.sleep() {
                return Ok(Cmd::Wake);
            }
            let to_sync = self
                .unsynced_since
                .map(|since| FLUSH_EVERY.saturating_sub(since.elapsed()));
            let timeout = match (to_sync, expecting) {
                (Some(left), true) => Some(left.min(LINGER)),
                (Some(left), false) => Some(left),
                (None, true) => Some(LINGER),
                (None, false) => None,
            };
            let got = match timeout {
                Some(t) => self.rx.recv_timeout(t),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            delivered.awake();
            match got {
                Ok(cmd) => return Ok(cmd),
                Err(RecvTimeoutError::Disconnected) => return Err(Idle::Closed),
                Err(RecvTimeoutError::Timeout) => {
                    if self
                        .unsynced_since
                        .is_some_and(|since| since.elapsed() >= FLUSH_EVERY)
                    {
                        return Err(Idle::Flush);
                    }
                }
            }
        }
    }

    /// Adds what is queued now to `batch`, up to `batch_max`.
    fn drain(&self, batch: &mut Vec<Cmd>) {
        while batch.len() < self.batch_max {
            match self.rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
    }

    /// Applies `batch` in one transaction and commits it; returns whether to stop.
    fn commit_batch(&mut self, batch: Vec<Cmd>, force_sync: bool) -> bool {
        let mut fx = Effects {
            checkpoint: force_sync
                || self
                    .unsynced_since
                    .is_some_and(|since| since.elapsed() >= FLUSH_EVERY),
            ..Effects::default()
        };
        let mut counts = self.counts;
        let mut journaled = false;
        let result = self
            .db
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|mut txn| {
                self.apply(&txn, batch, &mut counts, &mut fx)?;
                if fx.removed {
                    // Before the commit: an attempt that still sees the old generation
                    // delivers an event that was not yet removed.
                    self.shared.sched.note_removal();
                    // Durably: a replay of the journal must not bring the event back.
                    fx.checkpoint = true;
                }
                if !fx.checkpoint && !fx.journal.is_empty() {
                    // The appends' durability: written and synced before anyone is answered.
                    journaled = self.journal.append(&fx.journal)?;
                    fx.checkpoint = !journaled;
                }
                if !fx.checkpoint && txn.set_durability(Durability::None).is_err() {
                    fx.checkpoint = true;
                }
                if fx.checkpoint {
                    let mut meta = txn.open_table(META)?;
                    let next = self.journal.epoch().wrapping_add(1);
                    meta.insert(KEY_JOURNAL_EPOCH, next.to_le_bytes().as_slice())?;
                }
                txn.commit()?;
                Ok(())
            });
        match result {
            Ok(()) => {
                self.counts = counts;
                if fx.checkpoint {
                    self.journal.restart(self.journal.epoch().wrapping_add(1));
                    self.unsynced_since = None;
                } else if fx.changed && self.unsynced_since.is_none() {
                    self.unsynced_since = Some(Instant::now());
                }
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("gateway_spool_commits_total").increment(1);
                self.shared.pending.store(counts.pending, Ordering::Relaxed);
                self.shared.dead.store(counts.dead, Ordering::Relaxed);
                self.shared.bytes.store(counts.bytes, Ordering::Relaxed);
                publish_gauges(&self.shared);
                for (delivery_id, command, operation_id) in &fx.dropped {
                    tracing::error!(
                        path = %self.shared.path.display(),
                        delivery_id, command, operation_id,
                        "spool full (when_full: drop_oldest): deleted the oldest pending event undelivered"
                    );
                    metrics::counter!("gateway_spool_dropped_total", "command" => command.clone())
                        .increment(1);
                }
                // Appended events are announced to the dispatcher by their appenders, from their
                // own tasks (`super::Answer`); the writer does it for replayed events and for an
                // appender that stopped waiting.
                let mut kick = fx.enqueue.iter().any(|(_, _, rec)| rec.is_none());
                for (id, key, rec) in fx.enqueue {
                    self.shared.sched.enqueue_quietly(id, key, rec);
                }
                for reply in fx.replies {
                    match reply {
                        Reply::Append(tx, result, command) => {
                            if result.is_ok() {
                                let name = match self.shared.role {
                                    Role::Spool => "gateway_spool_appended_total",
                                    Role::Buffer => "gateway_spool_buffered_total",
                                };
                                metrics::counter!(name, "command" => command).increment(1);
                            }
                            if tx.send(result).is_err() {
                                kick = true;
                            }
                        }
                        Reply::Chunk(tx, result) => {
                            let _ = tx.send(result);
                        }
                        Reply::Close(tx) => {
                            let _ = tx.send(());
                        }
                    }
                }
                if kick {
                    self.shared.sched.kick();
                }
            }
            Err(e) => {
                if journaled {
                    // The journal holds the batch's records under their ids: a later append must
                    // not reuse them (a replay would mix the two).
                    self.counts.next_id = counts.next_id;
                }
                tracing::error!(
                    path = %self.shared.path.display(),
                    error = %e,
                    "spool write transaction failed; its events were not stored"
                );
                metrics::counter!("gateway_spool_write_errors_total").increment(1);
                for reply in fx.replies {
                    match reply {
                        Reply::Append(tx, result, _) => {
                            // A rejection stands; an accepted event was not stored after all.
                            let _ = tx.send(result.and(Err(AppendError::Storage(e.to_string()))));
                        }
                        Reply::Chunk(tx, _) => {
                            let _ = tx.send(Err(SpoolError::Storage {
                                path: self.shared.path.clone(),
                                detail: e.to_string(),
                            }));
                        }
                        Reply::Close(tx) => {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
        fx.close
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        batch: Vec<Cmd>,
        c: &mut Counts,
        fx: &mut Effects,
    ) -> Result<(), redb::Error> {
        let mut pending = txn.open_table(PENDING)?;
        let mut dead = txn.open_table(DEAD)?;
        // The deliveries reported so far. A retry's attempt count sent before an event's
        // delivery may come after its delete: it then finds nothing to update.
        for id in self.shared.delivered.take() {
            if let Some(old) = pending.remove(id)? {
                c.pending -= 1;
                c.bytes = c.bytes.saturating_sub(entry_bytes(old.value().len()));
                fx.changed = true;
            }
        }
        for cmd in batch {
            match cmd {
                Cmd::Append { rec, reply } => {
                    let command = rec.command.clone();
                    let result = self.append(&mut pending, rec, c, fx);
                    fx.replies.push(Reply::Append(reply, result?, command));
                }
                Cmd::Wake => {}
                Cmd::Attempted { id, attempt, error } => {
                    let Some(mut rec) = decode_at(&pending, id)? else {
                        continue;
                    };
                    rec.note_attempt(attempt, error);
                    let (old, new) = put(&mut pending, id, &rec)?;
                    c.bytes = c.bytes.saturating_sub(old).saturating_add(new);
                    fx.changed = true;
                }
                Cmd::Dead {
                    id,
                    attempt,
                    reason,
                } => {
                    let raw = match pending.remove(id)? {
                        Some(v) => v.value().to_vec(),
                        None => continue,
                    };
                    let bytes = match Record::decode(raw.as_slice()) {
                        Ok(mut rec) => {
                            rec.note_attempt(attempt, reason);
                            rec.encode_to_vec()
                        }
                        Err(_) => raw.clone(),
                    };
                    dead.insert(id, bytes.as_slice())?;
                    c.pending -= 1;
                    c.dead += 1;
                    c.bytes = c
                        .bytes
                        .saturating_sub(entry_bytes(raw.len()))
                        .saturating_add(entry_bytes(bytes.len()));
                    fx.changed = true;
                }
                Cmd::Quarantine { id, error } => {
                    let raw = match pending.remove(id)? {
                        Some(v) => v.value().to_vec(),
                        None => continue,
                    };
                    dead.insert(id, raw.as_slice())?;
                    tracing::error!(
                        id,
                        error,
                        "moved an undecodable pending record to the dead letters as it was"
                    );
                    c.pending -= 1;
                    c.dead += 1;
                    fx.changed = true;
                }
                Cmd::Chunk { op, reply } => {
                    fx.checkpoint = true;
                    fx.changed = true;
                    let result = chunk(&mut pending, &mut dead, &op, c, fx)?;
                    fx.replies.push(Reply::Chunk(reply, Ok(result)));
                }
                Cmd::Close { reply } => {
                    fx.checkpoint = true;
                    fx.close = true;
                    if let Some(reply) = reply {
                        fx.replies.push(Reply::Close(reply));
                    }
                }
            }
        }
        // Closing stores the exact next id, so that ids continue without a gap after a clean
        // stop; only a crash skips the rest of a block.
        let reserved = if fx.close {
            c.next_id
        } else if c.next_id > c.reserved {
            c.next_id.saturating_add(ID_BLOCK)
        } else {
            c.reserved
        };
        if reserved != c.reserved {
            c.reserved = reserved;
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_NEXT_ID, reserved.to_le_bytes().as_slice())?;
        }
        Ok(())
    }

    /// Stores one new event, applying the full-spool policy. The outer `Result` is a storage
    /// error (fails the transaction), the inner one the answer to the caller.
    #[allow(clippy::type_complexity)]
    fn append(
        &self,
        pending: &mut Table<'_, u64, &'static [u8]>,
        mut rec: Record,
        c: &mut Counts,
        fx: &mut Effects,
    ) -> Result<Result<StoredEventRef, AppendError>, redb::Error> {
        let full = |c: &Counts| c.pending >= self.max_events || c.bytes >= self.max_bytes;
        if full(c) && self.when_full == FullPolicy::DropOldest {
            while full(c) && c.pending > 0 {
                let Some((k, v)) = pending.pop_first()? else {
                    break;
                };
                c.pending -= 1;
                c.bytes = c.bytes.saturating_sub(entry_bytes(v.value().len()));
                fx.removed_pending(k.value());
                let (delivery_id, command, operation_id) = match Record::decode(v.value()) {
                    Ok(r) => (r.delivery_id, r.command, r.operation_id),
                    Err(_) => (
                        format!("id {}", k.value()),
                        "<undecodable>".into(),
                        String::new(),
                    ),
                };
                fx.dropped.push((delivery_id, command, operation_id));
            }
        }
        if full(c) {
            let ev = NewEvent {
                command: rec.command,
                operation_id: rec.operation_id,
                ..NewEvent::default()
            };
            note_rejected(&self.shared.path, &ev, c.pending, c.bytes, self.when_full);
            return Ok(Err(AppendError::Full {
                pending: c.pending,
                bytes: c.bytes,
            }));
        }
        let id = c.next_id;
        c.next_id += 1;
        // An event that already has one (the Redis backend's local buffer) keeps it.
        if rec.delivery_id.is_empty() {
            rec.delivery_id = format!("{}-{id:016x}", self.instance);
        }
        let bytes = rec.encode_to_vec();
        pending.insert(id, bytes.as_slice())?;
        c.pending += 1;
        c.bytes = c.bytes.saturating_add(entry_bytes(bytes.len()));
        fx.changed = true;
        fx.journal.push((id, bytes));
        let stored = StoredEventRef {
            id,
            delivery_id: rec.delivery_id.clone(),
            place: match self.shared.role {
                Role::Spool => Place::Spool,
                Role::Buffer => Place::Buffer,
            },
        };
        fx.enqueue.push((id, rec.order_key.clone(), Some(rec)));
        Ok(Ok(stored))
    }
}

fn decode_at(
    table: &Table<'_, u64, &'static [u8]>,
    id: u64,
) -> Result<Option<Record>, redb::Error> {
    Ok(table.get(id)?.and_then(|v| Record::decode(v.value()).ok()))
}

/// Writes `rec` at `id`; returns the entry bytes before and after.
fn put(
    table: &mut Table<'_, u64, &'static [u8]>,
    id: u64,
    rec: &Record,
) -> Result<(u64, u64), redb::Error> {
    let bytes = rec.encode_to_vec();
    let old = table
        .insert(id, bytes.as_slice())?
        .map_or(0, |v| entry_bytes(v.value().len()));
    Ok((old, entry_bytes(bytes.len())))
}

/// How many records one step may look at, so that a filtered step stays short.
const SCAN_PER_MATCH: usize = 8;

fn chunk(
    pending: &mut Table<'_, u64, &'static [u8]>,
    dead: &mut Table<'_, u64, &'static [u8]>,
    op: &ChunkOp,
    c: &mut Counts,
    fx: &mut Effects,
) -> Result<ChunkResult, redb::Error> {
    let Some(start) = op.after.map_or(Some(0), |a| a.checked_add(1)) else {
        return Ok(ChunkResult::default());
    };
    // One id: start there.
    let start = op.select.id.map_or(start, |id| id.max(start));
    let scan_limit = op.max.saturating_mul(SCAN_PER_MATCH);
    let mut picked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut last = None;
    let mut exhausted = true;
    {
        let source: &Table<'_, u64, &'static [u8]> = match op.which {
            Which::Pending => &*pending,
            Which::Dead => &*dead,
        };
        for (scanned, item) in source.range(start..)?.enumerate() {
            if picked.len() >= op.max || scanned >= scan_limit {
                exhausted = false;
                break;
            }
            let (k, v) = item?;
            last = Some(k.value());
            if op.select.matches(k.value(), v.value()) {
                picked.push((k.value(), v.value().to_vec()));
            }
        }
    }
    let now = now_ms();
    for (id, raw) in &picked {
        let len = entry_bytes(raw.len());
        if op.replay {
            dead.remove(*id)?;
            c.dead -= 1;
            let (bytes, key) = match Record::decode(raw.as_slice()) {
                Ok(mut rec) => {
                    rec.reset_for_replay(now);
                    let key = rec.order_key.clone();
                    (rec.encode_to_vec(), key)
                }
                // Replayed as it is: the worker moves it back with the decode error.
                Err(_) => (raw.clone(), None),
            };
            pending.insert(*id, bytes.as_slice())?;
            c.pending += 1;
            c.bytes = c
                .bytes
                .saturating_sub(len)
                .saturating_add(entry_bytes(bytes.len()));
            fx.enqueue.push((*id, key, None));
        } else {
            match op.which {
                Which::Pending => {
                    pending.remove(*id)?;
                    c.pending -= 1;
                    fx.removed_pending(*id);
                }
                Which::Dead => {
                    dead.remove(*id)?;
                    c.dead -= 1;
                }
            }
            c.bytes = c.bytes.saturating_sub(len);
        }
    }
    let count = u64::try_from(picked.len()).unwrap_or(u64::MAX);
    if count > 0 {
        let action = if op.replay { "replayed" } else { "purged" };
        tracing::warn!(
            which = %op.which,
            command = op.select.command.as_deref().unwrap_or("*"),
            id = ?op.select.id,
            count,
            "spool: operator {action} events"
        );
    }
    Ok(ChunkResult {
        count,
        next_after: if exhausted { None } else { last },
    })
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn publish_gauges(shared: &Shared) {
    if shared.role == Role::Buffer {
        let buffered = shared.pending.load(Ordering::Relaxed) + shared.dead.load(Ordering::Relaxed);
        metrics::gauge!("gateway_spool_buffered").set(buffered as f64);
        metrics::gauge!("gateway_spool_buffered_bytes")
            .set(shared.bytes.load(Ordering::Relaxed) as f64);
        return;
    }
    metrics::gauge!("gateway_spool_pending").set(shared.pending.load(Ordering::Relaxed) as f64);
    metrics::gauge!("gateway_spool_dead").set(shared.dead.load(Ordering::Relaxed) as f64);
    metrics::gauge!("gateway_spool_bytes").set(shared.bytes.load(Ordering::Relaxed) as f64);
}
