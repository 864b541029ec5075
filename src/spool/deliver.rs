//! The spool's side of a delivery: [`Deliver`] (implemented by the gateway, `crate::delivery`)
//! and what one attempt returns ([`DeliveryResult`], a [`Fault`] when it failed).

use std::time::Duration;

use super::event::StoredEvent;
use super::fault::Fault;

/// Per-attempt deadline of a [`Deliver`] that does not say otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

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
