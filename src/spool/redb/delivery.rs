//! The scheduler (ordering keys, retry timers) and the delivery workers.
//!
//! The scheduler holds ids; a worker reads the event from the store when its attempt starts, so
//! a long backlog costs little memory. The exception is a fresh event's first attempt: the writer
//! hands over the record it has just committed (at most [`MAX_CARRIED`] at a time), which saves a
//! blocking-pool hand-off and a read transaction per event. Dropping or purging pending events
//! bumps a generation, and a record carried from an older one is read from the store again. Events without an ordering key are ready as
//! soon as they are stored. Of the events sharing a key only the oldest (the head) is ever ready,
//! waiting for a retry or in flight; the next one becomes ready when the head was delivered or
//! dead-lettered. Ids removed meanwhile (purged, dropped) are skipped when they come up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::super::deliver::Deliver;
use super::super::record::Record;
use super::super::rules::{Verdict, attempt_and_judge};
use super::store::{self, Loaded};
use super::writer::Cmd;
use super::{Shared, SpoolCore};

/// A schedulable event: its id and ordering key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) id: u64,
    pub(crate) key: Option<Arc<str>>,
    /// Attempts made, once this process made one: the stored count is updated asynchronously,
    /// so a retry must not read it back.
    pub(crate) attempts: Option<u32>,
    /// The record as committed, for a fresh event's first attempt.
    pub(crate) carried: Carried,
}

/// Fresh records handed from the writer to the first attempt, at most this many at a time.
pub(crate) const MAX_CARRIED: usize = 1024;

/// A record carried with its ticket, and the removal generation it was carried in; not part of
/// the ticket's identity.
#[derive(Debug, Clone, Default)]
pub(crate) struct Carried(Option<(Arc<Record>, u64)>);

impl PartialEq for Carried {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Carried {}

#[derive(Debug, PartialEq, Eq)]
struct Timer {
    due: Instant,
    entry: Ticket,
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.entry.id).cmp(&(other.due, other.entry.id))
    }
}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ticket>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Per ordering key, the ids waiting in append order; the front one is the head.
    keys: HashMap<Arc<str>, VecDeque<u64>>,
}

/// The delivery queue, shared by the writer (which enqueues committed events) and the workers.
#[derive(Default)]
pub(crate) struct Sched {
    state: Mutex<State>,
    notify: Notify,
    /// Records carried by queued tickets.
    carried: std::sync::atomic::AtomicUsize,
    /// Bumped whenever pending events are removed undelivered (dropped, purged): a record
    /// carried from an earlier generation may be one of them, so its attempt reads the store.
    removals: std::sync::atomic::AtomicU64,
}

impl Sched {
    /// Pending events are being removed undelivered.
    pub(crate) fn note_removal(&self) {
        self.removals.fetch_add(1, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a stored event behind the others of its key and wakes the dispatcher.
    pub(crate) fn enqueue(&self, id: u64, key: Option<String>, rec: Option<Record>) {
        self.enqueue_quietly(id, key, rec);
        self.kick();
    }

    /// Wakes the dispatcher: something may be ready.
    pub(crate) fn kick(&self) {
        self.notify.notify_one();
    }

    /// Queues a stored event behind the others of its key, without waking the dispatcher (the
    /// caller does: [`Sched::kick`]); `rec`: the record just committed, kept for the first
    /// attempt if the event is ready at once and few are carried.
    pub(crate) fn enqueue_quietly(&self, id: u64, key: Option<String>, rec: Option<Record>) {
        let carry = || {
            let Some(rec) = rec else {
                return Carried::default();
            };
            if self.carried.fetch_add(1, Ordering::Relaxed) >= MAX_CARRIED {
                self.carried.fetch_sub(1, Ordering::Relaxed);
                return Carried::default();
            }
            Carried(Some((Arc::new(rec), self.removals.load(Ordering::SeqCst))))
        };
        let mut st = self.lock();
        match key {
            None => st.ready.push_back(Ticket {
                id,
                key: None,
                attempts: None,
                carried: carry(),
            }),
            Some(k) => {
                let k: Arc<str> = match st.keys.get_key_value(k.as_str()) {
                    Some((existing, _)) => existing.clone(),
                    None => Arc::from(k),
                };
                let queue = st.keys.entry(k.clone()).or_default();
                queue.push_back(id);
                if queue.len() == 1 {
                    st.ready.push_back(Ticket {
                        id,
                        key: Some(k),
                        attempts: None,
                        carried: carry(),
                    });
                }
            }
        }
    }

    /// The entry is done (delivered, dead, or gone): its key's next event becomes ready.
    pub(crate) fn finish(&self, entry: &Ticket) {
        let Some(k) = &entry.key else { return };
        let mut st = self.lock();
        let mut next = None;
        let mut empty = false;
        if let Some(queue) = st.keys.get_mut(k) {
            if queue.front() == Some(&entry.id) {
                queue.pop_front();
            } else {
                queue.retain(|id| *id != entry.id);
            }
            next = queue.front().copied();
            empty = queue.is_empty();
        }
        if empty {
            st.keys.remove(k);
        }
        if let Some(id) = next {
            st.ready.push_back(Ticket {
                id,
                key: Some(k.clone()),
                attempts: None,
                carried: Carried::default(),
            });
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Tries the entry again at `due`; its key stays blocked until then.
    pub(crate) fn retry(&self, entry: Ticket, due: Instant) {
        self.lock().timers.push(Reverse(Timer { due, entry }));
        self.notify.notify_one();
    }

    /// Up to `max` ready entries (due timers first become ready), or when the next timer is due.
    fn take(&self, now: Instant, max: usize) -> (Vec<Ticket>, Option<Instant>) {
        let mut st = self.lock();
        while st.timers.peek().is_some_and(|Reverse(t)| t.due <= now) {
            if let Some(Reverse(t)) = st.timers.pop() {
                st.ready.push_back(t.entry);
            }
        }
        let n = max.min(st.ready.len());
        let entries = st.ready.drain(..n).collect();
        (entries, st.timers.peek().map(|Reverse(t)| t.due))
    }

    /// Whether an entry is ready to start.
    pub(crate) fn has_ready(&self) -> bool {
        !self.lock().ready.is_empty()
    }

    /// Puts entries taken but not started back at the front, in their order.
    fn untake(&self, entries: Vec<Ticket>) {
        let mut st = self.lock();
        for entry in entries.into_iter().rev() {
            st.ready.push_front(entry);
        }
        drop(st);
        self.notify.notify_one();
    }
}

/// Most attempts one worker task runs at once: the events ready together, up to the free
/// `workers` slots, go out together (one task, their calls pipelined on the upstream's
/// connection) and their deletes reach the writer in one message.
pub(crate) const BATCH_MAX: usize = 64;

/// The dispatcher: takes ready entries, as many as there are free slots (at most `workers`
/// attempts run at a time), and runs them together on one worker task ([`run_batch`]). Holds the
/// spool weakly so that dropping the last handle ends it.
pub(crate) async fn dispatch(
    weak: Weak<SpoolCore>,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    deliverer: Arc<dyn Deliver>,
) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let mut permits = vec![permit];
        let entries = loop {
            // The slots free now, each taken only for an entry that is ready.
            let max = BATCH_MAX.min(1 + sem.available_permits());
            let (entries, next_due) = shared.sched.take(Instant::now(), max);
            if !entries.is_empty() {
                break entries;
            }
            // A notification sent after `take` is kept by `Notify`, so none is lost.
            let notified = shared.sched.notify.notified();
            let timer = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = notified => {}
                () = timer => {}
                _ = stop.changed() => return,
            }
        };
        while permits.len() < entries.len() {
            match sem.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut entries = entries;
        if permits.len() < entries.len() {
            shared.sched.untake(entries.split_off(permits.len()));
        }
        let Some(inner) = weak.upgrade() else { return };
        let batch: Vec<_> = entries
            .into_iter()
            .zip(permits)
            .map(|(entry, permit)| {
                shared.in_flight.fetch_add(1, Ordering::Relaxed);
                (entry, (permit, InFlight(shared.clone())))
            })
            .collect();
        tokio::spawn(run_batch(inner, deliverer.clone(), batch));
    }
}

/// Decrements `in_flight` however the attempt ends.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An attempt's slot: released however the attempt ends.
type Slot = (OwnedSemaphorePermit, InFlight);

/// Runs the attempts of a batch at once. The records not carried from the writer are read
/// together first (one blocking hand-off and one read transaction for the batch, not one per
/// event: a backlog's events are all read). The events delivered by the time the task looks again
/// are handed to the writer together (`Shared::delivered`, a wake-up only when the writer
/// sleeps), before their keys move on ([`Sched::finish`]), so that a key's deletes reach the
/// writer in the key's order.
async fn run_batch(inner: Arc<SpoolCore>, deliverer: Arc<dyn Deliver>, batch: Vec<(Ticket, Slot)>) {
    let sched = &inner.shared.sched;
    let mut batch: Vec<(Ticket, Slot, Option<Record>)> = batch
        .into_iter()
        .map(|(mut entry, slot)| {
            let carried = entry.carried.0.take().and_then(|(rec, generation)| {
                sched.carried.fetch_sub(1, Ordering::Relaxed);
                (sched.removals.load(Ordering::SeqCst) == generation)
                    .then(|| Arc::try_unwrap(rec).unwrap_or_else(|rec| (*rec).clone()))
            });
            (entry, slot, carried)
        })
        .collect();
    let ids: Vec<u64> = batch
        .iter()
        .filter(|(_, _, rec)| rec.is_none())
        .map(|(entry, _, _)| entry.id)
        .collect();
    let mut read = if ids.is_empty() {
        Ok(Vec::new())
    } else {
        let db = inner.db.clone();
        match tokio::task::spawn_blocking(move || store::load_many(&db, &ids)).await {
            Ok(Ok(loaded)) => Ok(loaded.into_iter()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .map(Iterator::collect::<Vec<_>>)
    };
    if let Ok(loaded) = &mut read {
        // In batch order, for `pop` below.
        loaded.reverse();
    }
    let mut running: FuturesUnordered<_> = batch
        .drain(..)
        .filter_map(|(entry, slot, carried)| {
            let loaded = match (carried, &mut read) {
                (Some(rec), _) => Loaded::Found(Box::new(rec)),
                (None, Ok(loaded)) => loaded.pop().unwrap_or(Loaded::Missing),
                (None, Err(e)) => {
                    read_failed(&inner, entry, e);
                    return None;
                }
            };
            Some(attempt(&inner, &deliverer, entry, slot, loaded))
        })
        .collect();
    let mut delivered = Vec::new();
    while let Some(done) = running.next().await {
        delivered.extend(done);
        // Whatever else has finished meanwhile shares the message.
        while let Some(Some(done)) = running.next().now_or_never() {
            delivered.extend(done);
        }
        if delivered.is_empty() {
            continue;
        }
        if inner
            .shared
            .delivered
            .add(delivered.iter().map(|(entry, _)| entry.id))
        {
            send(&inner, Cmd::Wake);
        }
        for (entry, slot) in delivered.drain(..) {
            inner.shared.sched.finish(&entry);
            drop(slot);
        }
    }
}

/// One attempt of a loaded event; a delivered event is handed back (with its slot) for the
/// batch's delete, every other outcome is recorded here.
async fn attempt(
    inner: &SpoolCore,
    deliverer: &Arc<dyn Deliver>,
    entry: Ticket,
    slot: Slot,
    loaded: Loaded,
) -> Option<(Ticket, Slot)> {
    let id = entry.id;
    let rec = match loaded {
        Loaded::Found(rec) => rec,
        Loaded::Missing => {
            inner.shared.sched.finish(&entry);
            return None;
        }
        Loaded::Undecodable(error) => {
            tracing::error!(
                id,
                error,
                "pending spool record does not decode; moving it to the dead letters"
            );
            metrics::counter!("gateway_spool_dead_total", "command" => "<undecodable>", "reason" => "undecodable")
                .increment(1);
            send(inner, Cmd::Quarantine { id, error });
            inner.shared.sched.finish(&entry);
            return None;
        }
    };
    let number = entry
        .attempts
        .unwrap_or(0)
        .max(rec.attempts)
        .saturating_add(1);
    let since_ms = rec.since_ms;
    let mut ev = rec.into_stored(id);
    ev.attempts = number - 1;
    match attempt_and_judge(
        deliverer,
        &inner.settings,
        inner.shared.role,
        ev,
        number,
        since_ms,
    )
    .await
    {
        Verdict::Delivered => return Some((entry, slot)),
        // The attempt did not happen: its number is not used up.
        Verdict::Defer(wait) => inner.shared.sched.retry(entry, Instant::now() + wait),
        Verdict::Dead { attempt, reason } => {
            send(
                inner,
                Cmd::Dead {
                    id,
                    attempt,
                    reason,
                },
            );
            inner.shared.sched.finish(&entry);
        }
        Verdict::Retry {
            attempt,
            error,
            wait,
        } => {
            let attempts = attempt.number;
            send(inner, Cmd::Attempted { id, attempt, error });
            let entry = Ticket {
                attempts: Some(attempts),
                ..entry
            };
            inner.shared.sched.retry(entry, Instant::now() + wait);
        }
    }
    drop(slot);
    None
}

fn read_failed(inner: &SpoolCore, entry: Ticket, e: &str) {
    tracing::error!(id = entry.id, error = %e, "reading a spooled event failed; trying again later");
    let due = Instant::now() + inner.settings.backoff_max;
    inner.shared.sched.retry(entry, due);
}

fn send(inner: &SpoolCore, cmd: Cmd) {
    if inner.tx.send(cmd).is_err() {
        // Only after shutdown: the event stays pending and is delivered again after a restart.
        tracing::debug!("spool writer stopped; a delivery result was not recorded");
    }
}
