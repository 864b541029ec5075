//! A spooled event's delivery attempt, routed by the current snapshot.
//!
//! A stored event keeps its command, payload and ids; its upstream, method and deadline are
//! looked up in the snapshot current at each attempt, so a config change (an upstream renamed or
//! moved) applies to pending events too. The result is classified by `crate::decision`.

use crate::decision;
use crate::gateway::{CallIds, Gateway};
use crate::spool::{Deliver, DeliveryResult, Fault, StoredEvent};
use crate::telemetry::{self, TraceContext};
use crate::upstream::Retry;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

impl Deliver for Gateway {
    fn deadline(&self, ev: &StoredEvent) -> Duration {
        self.snapshot().route(&ev.event.command).map_or(
            Duration::from_millis(crate::spool::DEFAULT_TIMEOUT_MS),
            |r| r.settings.timeout.0,
        )
    }

    fn deliver<'a>(&'a self, ev: &'a StoredEvent, attempt: u32) -> BoxFuture<'a, DeliveryResult> {
        let span = telemetry::delivery_span(
            &ev.event.command,
            &ev.delivery_id,
            attempt,
            ev.event.trace.as_ref(),
        );
        Box::pin(deliver(self, ev, attempt).instrument(span))
    }
}

async fn deliver(gw: &Gateway, ev: &StoredEvent, attempt: u32) -> DeliveryResult {
    let command = ev.event.command.as_str();
    let Some(entry) = gw.catalog().get(command) else {
        return DeliveryResult::Permanent(Fault::local(
            "unknown_command",
            format!("`{command}` is not a command of this gateway's contract"),
        ));
    };
    let snapshot = gw.snapshot();
    let Some(route) = snapshot.route(entry.row.command) else {
        return DeliveryResult::Permanent(Fault::local(
            "no_route",
            format!("`{command}` has no route"),
        ));
    };
    let Some(upstream) = route.upstream.as_ref() else {
        // Kept (and eventually a dead letter an operator can replay) rather than dropped: the
        // command may be enabled again.
        return DeliveryResult::Retry(Fault::local(
            "disabled",
            format!(
                "`{command}` is disabled in the current config; the event waits for it to be enabled"
            ),
        ));
    };
    // The attempt's span: the upstream sees it as the parent.
    let trace = TraceContext::of(&tracing::Span::current());
    let call = route.call(
        entry,
        Bytes::copy_from_slice(&ev.event.payload),
        CallIds {
            operation_id: &ev.event.operation_id,
            key: ev.event.openim_key.as_deref(),
            delivery: Some((&ev.delivery_id, attempt)),
            trace: trace.as_ref(),
        },
    );
    let started = Instant::now();
    let result = upstream.call(entry.row.command, call, Retry::Never).await;
    metrics::histogram!("gateway_delivery_duration_seconds", "command" => entry.row.command)
        .record(started.elapsed().as_secs_f64());
    let span = tracing::Span::current();
    let status = crate::upstream::call_status(&result);
    let verdict = decision::delivery_result(&result);
    let outcome = match &verdict {
        DeliveryResult::Delivered => "delivered",
        DeliveryResult::Retry(_) => "retry",
        DeliveryResult::Permanent(_) => "dead_letter",
        DeliveryResult::Deferred(..) => "deferred",
    };
    telemetry::record_delivery(&span, status, outcome);
    verdict
}
