//! The delivery rules both backends share: what an attempt's [`DeliveryResult`] means for the
//! event (delivered, retried after a backoff, deferred, dead letter), with its log lines and
//! metrics. `max_attempts`, `max_age`, the backoff ([`backoff`]: exponential, full jitter) and the
//! metric names are the same for redb and Redis. Also the words and metric of an event refused
//! because the spool is full ([`note_rejected`]).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use humantime::format_duration;

use super::deliver::{Deliver, DeliveryResult};
use super::event::{NewEvent, StoredEvent};
use super::fault::{Attempt, Fault};
use super::record::now_ms;
use crate::config::{FullPolicy, SpoolConfig};

/// How long a spool's shutdown waits for delivery attempts already running.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a spool is for: its log lines and metrics say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A spool whose events are delivered to the upstreams (redb or Redis).
    Spool,
    /// The Redis backend's local buffer (a redb spool): events moved into Redis.
    Buffer,
}

/// A duration for a log line, to the millisecond: `58ms`, `1s 200ms` (not `58ms 463us 162ns`).
pub(crate) fn rounded(d: Duration) -> humantime::FormattedDuration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    format_duration(Duration::from_millis(ms))
}

/// The spool's own guard on top of the deliverer's deadline, so that the deliverer's more
/// precise error is normally the one recorded.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// One attempt `number` of `ev`, with a panic caught (a panicking deliverer costs one attempt,
/// not the event's key) and under the deliverer's deadline plus [`DEADLINE_SLACK`]. It runs in
/// the caller's task, so that a worker can run several attempts at once without a task (and a
/// wake-up) per attempt.
pub(crate) async fn attempt(
    deliverer: &Arc<dyn Deliver>,
    ev: StoredEvent,
    number: u32,
) -> DeliveryResult {
    let timeout = deliverer.deadline(&ev);
    // The deliverer is called inside the future, so a panic in the call itself is caught too.
    let call = AssertUnwindSafe(async { deliverer.deliver(&ev, number).await }).catch_unwind();
    match tokio::time::timeout(timeout + DEADLINE_SLACK, call).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => DeliveryResult::Retry(Fault::local(
            "task_failed",
            format!("the delivery task failed: {}", panic_text(&*panic)),
        )),
        Err(_) => DeliveryResult::Retry(Fault::local(
            "timeout",
            format!("no answer within the deadline of {}", rounded(timeout)),
        )),
    }
}

/// What a caught panic says, as tokio words a panicked task.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned());
    match msg {
        Some(m) => format!("panicked with message {m:?}"),
        None => "panicked".to_owned(),
    }
}

/// What happens to an event after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Delivered: remove it.
    Delivered,
    /// Not attempted (an open circuit breaker): try again after the wait, attempt not used.
    Defer(Duration),
    /// Failed: record the attempt (its number is the attempts made) and `error`, try again
    /// after the wait.
    Retry {
        /// This attempt, for the record's history.
        attempt: Attempt,
        /// The error of this attempt (becomes `last_error`).
        error: String,
        /// The backoff before the next attempt.
        wait: Duration,
    },
    /// Given up: a dead letter with this reason.
    Dead {
        /// This (last) attempt, for the record's history.
        attempt: Attempt,
        /// Why it was given up (becomes `last_error`).
        reason: String,
    },
}

/// The ids of the event, for the log lines.
pub(crate) struct Ids<'a> {
    pub(crate) delivery_id: &'a str,
    pub(crate) command: &'a str,
    pub(crate) operation_id: &'a str,
}

/// Makes attempt `number` of `ev` ([`attempt`]) and judges it ([`judge`]): what both backends'
/// workers do with every event they take.
pub(crate) async fn attempt_and_judge(
    deliverer: &Arc<dyn Deliver>,
    s: &SpoolConfig,
    role: Role,
    ev: StoredEvent,
    number: u32,
    since_ms: u64,
) -> Verdict {
    let delivery_id = ev.delivery_id.clone();
    let command = ev.event.command.clone();
    let operation_id = ev.event.operation_id.clone();
    let outcome = attempt(deliverer, ev, number).await;
    let ids = Ids {
        delivery_id: &delivery_id,
        command: &command,
        operation_id: &operation_id,
    };
    judge(s, role, outcome, number, since_ms, &ids)
}

/// Judges attempt `number` (1-based) of an event stored since `since_ms` (first stored, or
/// replayed), logging and counting it as the redb spool does. For the local buffer (`role`) an
/// "attempt" is a move into Redis, which is only ever delivered or deferred.
pub(crate) fn judge(
    s: &SpoolConfig,
    role: Role,
    outcome: DeliveryResult,
    number: u32,
    since_ms: u64,
    ids: &Ids<'_>,
) -> Verdict {
    let Ids {
        delivery_id,
        command,
        operation_id,
    } = *ids;
    let command_label = command.to_owned();
    // `why` words the reason around the fault's text: once whole (kept), once as logged.
    let dead = |fault: &Fault, why: &dyn Fn(&str) -> String, label: &'static str| {
        tracing::error!(
            delivery_id,
            command,
            operation_id,
            attempts = number,
            reason = %why(&fault.log_text()),
            "after-callback moved to the dead letters; replay it with `spool replay`"
        );
        metrics::counter!("gateway_spool_dead_total", "command" => command_label.clone(), "reason" => label)
            .increment(1);
        metrics::counter!("gateway_delivery_attempts_total", "command" => command_label.clone(), "result" => "dead")
            .increment(1);
        Verdict::Dead {
            attempt: Attempt::new(number, now_ms(), fault),
            reason: why(&fault.text()),
        }
    };
    if role == Role::Buffer {
        return match outcome {
            DeliveryResult::Delivered => {
                metrics::counter!("gateway_spool_buffer_moved_total").increment(1);
                tracing::debug!(
                    delivery_id,
                    command,
                    "after-event moved from the local buffer into redis"
                );
                Verdict::Delivered
            }
            DeliveryResult::Deferred(wait, _) => Verdict::Defer(wait),
            // The mover only defers; whatever else happens, a buffered event is never given up.
            DeliveryResult::Retry(_) | DeliveryResult::Permanent(_) => {
                Verdict::Defer(s.backoff_max)
            }
        };
    }
    match outcome {
        DeliveryResult::Delivered => {
            metrics::counter!("gateway_spool_delivered_total", "command" => command_label.clone())
                .increment(1);
            metrics::counter!("gateway_delivery_attempts_total", "command" => command_label.clone(), "result" => "delivered")
                .increment(1);
            tracing::info!(
                delivery_id,
                command,
                operation_id,
                attempt = number,
                "after-callback delivered"
            );
            Verdict::Delivered
        }
        DeliveryResult::Deferred(wait, why) => {
            tracing::debug!(delivery_id, command, why = %why.log_text(), wait = %rounded(wait), "after-callback delivery deferred");
            metrics::counter!("gateway_delivery_attempts_total", "command" => command_label.clone(), "result" => "deferred")
                .increment(1);
            Verdict::Defer(wait)
        }
        DeliveryResult::Permanent(fault) => dead(
            &fault,
            &|e| format!("permanent error on attempt {number}: {e}"),
            "permanent",
        ),
        DeliveryResult::Retry(fault) => {
            metrics::counter!("gateway_spool_retries_total", "command" => command_label.clone())
                .increment(1);
            metrics::counter!("gateway_delivery_attempts_total", "command" => command_label.clone(), "result" => "retry")
                .increment(1);
            let age = Duration::from_millis(now_ms().saturating_sub(since_ms));
            if number >= s.max_attempts {
                dead(
                    &fault,
                    &|e| format!("gave up after {number} attempts: {e}"),
                    "attempts",
                )
            } else if age >= s.max_age {
                dead(
                    &fault,
                    &|e| {
                        format!(
                            "gave up after {number} attempts, older than max_age {}: {e}",
                            format_duration(s.max_age)
                        )
                    },
                    "age",
                )
            } else {
                let wait = backoff(s.backoff_initial, s.backoff_max, number);
                // Every failure is counted; the log shows the first and then every power of two.
                if number.is_power_of_two() {
                    tracing::warn!(
                        delivery_id, command, operation_id, attempt = number,
                        error = %fault.log_text(),
                        retry_in = %rounded(wait),
                        "after-callback delivery failed; will retry"
                    );
                }
                Verdict::Retry {
                    attempt: Attempt::new(number, now_ms(), &fault),
                    error: fault.text(),
                    wait,
                }
            }
        }
    }
}

/// Wait before attempt `failed + 1`: up to `min(max, initial * 2^(failed-1))`, full jitter.
pub(crate) fn backoff(initial: Duration, max: Duration, failed: u32) -> Duration {
    let exp = failed.saturating_sub(1).min(31);
    let cap = initial.saturating_mul(1 << exp).min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Logs and counts an event refused because the spool is full: never silent.
pub(crate) fn note_rejected(
    path: &Path,
    ev: &NewEvent,
    pending: u64,
    bytes: u64,
    policy: FullPolicy,
) {
    match policy {
        FullPolicy::Reject => tracing::error!(
            path = %path.display(),
            command = ev.command,
            operation_id = ev.operation_id,
            pending,
            bytes,
            "spool full (when_full: reject): the after-callback was NOT stored and will not be delivered"
        ),
        FullPolicy::DropOldest => tracing::error!(
            path = %path.display(),
            command = ev.command,
            operation_id = ev.operation_id,
            pending,
            bytes,
            "spool full and no pending event left to drop: dead letters fill the disk budget \
             (max_bytes); the after-callback was NOT stored; replay or purge the dead letters"
        ),
    }
    metrics::counter!("gateway_spool_rejected_total", "command" => ev.command.clone()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::rounded;
    use std::time::Duration;

    #[test]
    fn log_durations_are_rounded_to_the_millisecond() {
        assert_eq!(
            rounded(Duration::from_nanos(58_463_162)).to_string(),
            "58ms"
        );
        assert_eq!(
            rounded(Duration::from_nanos(1_200_999_999)).to_string(),
            "1s 200ms"
        );
        assert_eq!(rounded(Duration::from_micros(300)).to_string(), "0s");
    }
}
