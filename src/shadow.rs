//! Shadow mode (`commands.<command>.shadow: true`, before commands): the service is called off
//! OpenIM's path, and OpenIM is answered at once as if the service had continued (with the echo
//! rules it needs). The service's verdict (`continue`, `rejected`, `modified`, `failed`) is
//! counted in `gateway_shadow_verdicts_total{command, verdict}` and logged with what it would have
//! done; a new policy can so be tried on live traffic without affecting anyone. At most
//! `gateway::SHADOW_SLOTS` shadow calls run at once per snapshot; more are dropped (verdict
//! `dropped`).

use crate::catalog::CommandEntry;
use crate::decision::{self, Decision};
use crate::gateway::{CommandRoute, Snapshot};
use crate::upstream::{Call, Resilient, Retry};

/// Starts the shadow call of one callback, or counts it dropped when the snapshot's shadow slots
/// are all busy.
pub(crate) fn spawn(
    snapshot: &Snapshot,
    entry: &'static CommandEntry,
    route: &CommandRoute,
    upstream: &Resilient,
    mut call: Call,
    operation_id: &str,
) {
    let command = entry.row.command;
    let Ok(slot) = snapshot.shadow_slots.clone().try_acquire_owned() else {
        metrics::counter!("gateway_shadow_verdicts_total", "command" => command, "verdict" => "dropped")
            .increment(1);
        return;
    };
    // Off OpenIM's path: the command's own timeout, not what is left of OpenIM's budget.
    call.timeout = route.settings.timeout.0;
    let upstream = upstream.clone();
    let policy = route.policy.clone();
    let operation_id = operation_id.to_owned();
    tokio::spawn(async move {
        let result = upstream.call(command, call, Retry::Never).await;
        let decision = decision::decide(entry, result, &policy);
        let verdict = verdict(entry, &decision);
        metrics::counter!("gateway_shadow_verdicts_total", "command" => command, "verdict" => verdict)
            .increment(1);
        let (err_code, err_msg) = match &decision {
            Decision::Reject {
                code,
                message,
                failure: None,
                ..
            } => (
                Some(*code),
                Some(crate::telemetry::user_text(message).to_owned()),
            ),
            _ => (None, None),
        };
        let error = decision.failure().map(crate::decision::failure_text);
        tracing::info!(
            command,
            operation_id,
            verdict,
            err_code,
            err_msg,
            error,
            "shadow verdict (not applied: OpenIM was answered continue)"
        );
        drop(slot);
    });
}

/// What the service's answer would have done.
pub(crate) fn verdict(entry: &CommandEntry, decision: &Decision) -> &'static str {
    match decision {
        Decision::Reject { failure: None, .. } => "rejected",
        d if d.failure().is_some() => "failed",
        Decision::Continue {
            reply: Some(reply), ..
        } if reply.message(entry).fields().next().is_some() => "modified",
        _ => "continue",
    }
}
