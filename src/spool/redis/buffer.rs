//! The local buffer's mover: the redb spool that holds this replica's after-events while Redis
//! cannot take them "delivers" each one by appending it to Redis, with its record (delivery id,
//! attempts, first-seen time) unchanged.
//!
//! The redb spool's scheduler keeps the events of an ordering key one after another in append
//! order, so they reach Redis in order. A move never uses up an attempt and never gives an event
//! up: while Redis is down, a move waits for the probe to see it again (at most [`MOVE_WAIT`],
//! then it is deferred), so a full buffer costs a few sleeping tasks, not a busy loop.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::super::deliver::{Deliver, DeliveryResult};
use super::super::event::StoredEvent;
use super::super::fault::Fault;
use super::super::record::Record;
use super::Core;

/// Longest wait of one move for Redis to come back before it is deferred.
const MOVE_WAIT: Duration = Duration::from_secs(5);

/// Moves buffered events into Redis (the local buffer's [`Deliver`]).
pub(crate) struct Mover {
    core: Weak<Core>,
    deadline: Duration,
}

impl Mover {
    pub(crate) fn new(core: &Arc<Core>) -> Mover {
        let rc = &core.settings.redis;
        Mover {
            core: Arc::downgrade(core),
            deadline: MOVE_WAIT + rc.timeout + rc.wait_timeout,
        }
    }
}

/// A pause before the next try of a move that did not happen, with jitter so that the moves of
/// a large buffer do not all come back at once.
fn closed() -> Fault {
    Fault::local("closed", "the spool is closed")
}

fn later() -> Duration {
    Duration::from_millis(fastrand::u64(200..=1_000))
}

impl Deliver for Mover {
    fn deadline(&self, _ev: &StoredEvent) -> Duration {
        self.deadline
    }

    fn deliver<'a>(&'a self, ev: &'a StoredEvent, _attempt: u32) -> BoxFuture<'a, DeliveryResult> {
        Box::pin(async move {
            let Some(core) = self.core.upgrade() else {
                return DeliveryResult::Deferred(later(), closed());
            };
            if !*core.up.borrow() {
                core.probe();
                let mut up = core.up.subscribe();
                let mut stop = core.stop.subscribe();
                tokio::select! {
                    r = up.wait_for(|up| *up) => if r.is_err() {
                        return DeliveryResult::Deferred(later(), closed());
                    },
                    _ = stop.wait_for(|s| *s) => {
                        return DeliveryResult::Deferred(later(), Fault::local("shutting_down", "the spool is shutting down"));
                    }
                    () = tokio::time::sleep(MOVE_WAIT) => {
                        return DeliveryResult::Deferred(later(), Fault::local("unreachable", "redis is unreachable"));
                    }
                }
            }
            let mut rec = Record::new(ev.event.clone(), ev.first_seen_ms);
            rec.delivery_id.clone_from(&ev.delivery_id);
            rec.attempts = ev.attempts;
            rec.last_error.clone_from(&ev.last_error);
            rec.history.clone_from(&ev.history);
            match core.write(&rec).await {
                Ok(w) if w.id != 0 => {
                    let _ = core.written(rec, w);
                    DeliveryResult::Delivered
                }
                // Full: kept here until the shared spool has room.
                Ok(_) => DeliveryResult::Deferred(
                    core.settings.backoff_max,
                    Fault::local("full", "the redis spool is full"),
                ),
                Err(why) => {
                    core.set_health(Err(why.clone()));
                    core.probe();
                    DeliveryResult::Deferred(later(), Fault::local("unreachable", why))
                }
            }
        })
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
