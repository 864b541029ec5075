//! One callback, one path: read → decode → (disabled | spool | call) → [`Decision`]. Every exit,
//! bad input and unknown commands included, is an [`Exit`] holding a `Decision`; the HTTP layer
//! renders it once (`crate::envelope::render`) and counts it.

use crate::catalog::{CommandEntry, OrderBy, Phase};
use crate::config::Delivery;
use crate::decision::{self, Decision, Failure, Reason};
use crate::envelope::{Envelope, Target};
use crate::gateway::{CallIds, CommandRoute, Gateway, Snapshot};
use crate::json;
use crate::spool;
use crate::upstream::Retry;
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use std::sync::Arc;
use std::time::Instant;

/// A callback as the HTTP layer read it.
#[derive(Debug)]
pub struct Callback {
    /// The command: the last path segment.
    pub command: String,
    /// The full path, for the unknown-command log line.
    pub path: String,
    /// The URL-decoded `key` query parameter.
    pub key: Option<String>,
    /// The `operationID` header, empty when absent.
    pub header_operation_id: String,
    /// The body, or why it is not available.
    pub body: Result<Bytes, BodyError>,
    /// When the request arrived: OpenIM's budget (`openim_timeout`) runs from here.
    pub received: Instant,
}

/// Why a callback's body is not available.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than `max_body_bytes` (`drained`: the rest was read and discarded).
    #[error("body larger than max_body_bytes ({limit}): {seen} bytes read")]
    TooLarge {
        /// `max_body_bytes`.
        limit: usize,
        /// Bytes read.
        seen: u64,
        /// Whether the whole body was read (else the connection closes after the answer).
        drained: bool,
    },
    /// Not read within `limits.request_timeout`.
    #[error("body not read within limits.request_timeout ({0:?})")]
    Timeout(std::time::Duration),
    /// The body could not be read.
    #[error("body could not be read: {0}")]
    Unreadable(String),
    /// Over `limits.max_in_flight`: not handled.
    #[error("over limits.max_in_flight: callback shed")]
    Shed,
}

/// How a callback ended: the decision and what rendering it needs.
pub struct Exit {
    /// What OpenIM will be told.
    pub decision: Decision,
    /// The known command, the snapshot the request started with, and the request as read.
    known: Option<Known>,
    /// The operationID used in logs (header, else body).
    pub operation_id: String,
}

struct Known {
    entry: &'static CommandEntry,
    snapshot: Arc<Snapshot>,
    request: Option<DynamicMessage>,
}

impl Exit {
    /// The command, when it is known.
    pub fn command(&self) -> Option<&'static str> {
        self.known.as_ref().map(|k| k.entry.row.command)
    }

    /// The envelope: rendered here, once per request.
    pub fn render(&self) -> Envelope {
        let target = self.known.as_ref().and_then(|k| {
            k.snapshot.route(k.entry.row.command).map(|route| Target {
                entry: k.entry,
                request: k.request.as_ref(),
                policy: &route.policy,
            })
        });
        let env = crate::envelope::render(&self.decision, target);
        if let Some(command) = self.command() {
            for fix in &env.fixes {
                if fix.dropped {
                    tracing::warn!(command, operation_id = %self.operation_id, field = %fix.field, "reply field {}", fix.what);
                } else {
                    tracing::debug!(command, operation_id = %self.operation_id, field = %fix.field, "reply field {}", fix.what);
                }
            }
        }
        env
    }
}

/// Runs one callback to its decision, on `snapshot`: the one the request started with (its body
/// was read under the same snapshot's limits), held however long the request takes.
pub async fn run(gw: &Gateway, snapshot: Arc<Snapshot>, cb: Callback) -> Exit {
    let route = gw
        .catalog()
        .get(&cb.command)
        .and_then(|entry| Some((entry, snapshot.route(entry.row.command)?.clone())));
    let Some((entry, route)) = route else {
        metrics::counter!("gateway_unknown_commands_total").increment(1);
        tracing::warn!(
            command = %cb.command.chars().take(120).collect::<String>(),
            path = %cb.path.chars().take(200).collect::<String>(),
            operation_id = %cb.header_operation_id,
            "unknown callback command: answering continue; check OpenIM's webhooks.yml url (the command must be the last path segment)"
        );
        return Exit {
            decision: Decision::continue_for(Reason::UnknownCommand),
            known: None,
            operation_id: cb.header_operation_id,
        };
    };
    let mut operation_id = cb.header_operation_id.clone();
    let mut request = None;
    let decision = decide(
        gw,
        &snapshot,
        entry,
        &route,
        cb,
        &mut operation_id,
        &mut request,
    )
    .await;
    let exit = Exit {
        decision,
        known: Some(Known {
            entry,
            snapshot,
            request,
        }),
        operation_id,
    };
    log(&exit, entry.row.command);
    exit
}

/// The steps of a known command. Sets `operation_id` from the body when the header had none, and
/// `request` to the request as far as it could be read (the echo rules fill from it).
async fn decide(
    gw: &Gateway,
    snapshot: &Snapshot,
    entry: &'static CommandEntry,
    route: &CommandRoute,
    cb: Callback,
    operation_id: &mut String,
    request_out: &mut Option<DynamicMessage>,
) -> Decision {
    let command = entry.row.command;
    let policy = &route.policy;
    let budget = snapshot.openim_timeout;
    let bad_input = |problem: String, operation_id: &str| {
        metrics::counter!("gateway_bad_requests_total", "command" => command).increment(1);
        tracing::warn!(command, operation_id, %problem, "bad callback body: answering by the failure policy");
        decision::fail(Failure::BadInput(problem), policy)
    };
    let bytes = match cb.body {
        Ok(b) => b,
        Err(BodyError::Shed) => {
            tracing::warn!(command, operation_id = %operation_id, "over limits.max_in_flight: answering by the failure policy");
            return decision::fail(
                Failure::Overloaded("over limits.max_in_flight".into()),
                policy,
            );
        }
        Err(e) => return bad_input(e.to_string(), operation_id),
    };
    let decoded = match json::decode(&entry.request(), &bytes) {
        Ok(d) => d,
        Err(e) => return bad_input(e.to_string(), operation_id),
    };
    if operation_id.is_empty() {
        *operation_id = decoded
            .message
            .get_field_by_name("operation_id")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
    }
    gw.note_unknown_keys(command, &decoded.unknown_keys, operation_id);
    let request = request_out.insert(decoded.message);
    if let Some(first) = decoded.errors.first() {
        let problem = if decoded.errors.len() > 1 {
            format!("{first} (and {} more)", decoded.errors.len() - 1)
        } else {
            first.to_string()
        };
        return bad_input(problem, operation_id);
    }
    let Some(upstream) = route.upstream.as_ref() else {
        return Decision::continue_for(Reason::Disabled);
    };
    let payload: Bytes = request.encode_to_vec().into();
    if entry.phase == Phase::After && route.settings.delivery == Delivery::Spool {
        if let Some(spool) = gw.spool() {
            let event = spool::NewEvent {
                command: command.to_owned(),
                order_key: route.settings.ordered.then(|| order_key(entry, request)),
                operation_id: operation_id.clone(),
                openim_key: cb.key.clone(),
                payload: payload.to_vec(),
            };
            match spool.append(event).await {
                Ok(_) => return Decision::continue_for(Reason::Spooled),
                // The backend cannot store it now (Redis unreachable, `when_unreachable: sync`):
                // deliver it synchronously below rather than lose it.
                Err(spool::AppendError::Unavailable(why)) => {
                    tracing::warn!(command, operation_id, error = %why,
                        "spool backend unavailable: delivering the after-event synchronously");
                    metrics::counter!("gateway_spool_unavailable_total", "command" => command, "policy" => "sync")
                        .increment(1);
                }
                Err(e) => {
                    let message = match e {
                        spool::AppendError::Full { .. } => {
                            "gateway spool is full: event not accepted"
                        }
                        spool::AppendError::Closed => {
                            "gateway is shutting down: event not accepted"
                        }
                        spool::AppendError::Storage(_) | spool::AppendError::Unavailable(_) => {
                            "gateway spool cannot write: event not accepted"
                        }
                    };
                    // OpenIM ignores after replies; the rejection tells a person reading traffic.
                    return Decision::Reject {
                        code: route.settings.reject_code,
                        message: message.to_owned(),
                        detail: e.to_string(),
                        failure: Some(Failure::Spool(e)),
                    };
                }
            }
        }
    }
    let mut call = route.call(
        entry,
        payload,
        CallIds {
            operation_id,
            key: cb.key.as_deref(),
            delivery: None,
        },
    );
    // The deadline sent as grpc-timeout: the command's, or what is left of OpenIM's budget.
    let left = budget.saturating_sub(cb.received.elapsed());
    call.timeout = call.timeout.min(left.saturating_sub(ANSWER_MARGIN));
    let retry = match entry.phase {
        Phase::Before => Retry::Allowed,
        Phase::After => Retry::Never,
    };
    let result = upstream.call(command, call, retry).await;
    decision::decide(entry, result, policy)
}

/// Kept back from OpenIM's budget for writing the answer, so that OpenIM gets the failure
/// policy's envelope before it gives up itself.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The one log line of a decision worth logging.
fn log(exit: &Exit, command: &'static str) {
    let operation_id = exit.operation_id.as_str();
    match &exit.decision {
        Decision::Continue {
            reason: Reason::FailOpen(f),
            ..
        } => {
            tracing::warn!(command, operation_id, failure = %f, "upstream failed: continuing (on_failure: continue)")
        }
        Decision::Reject {
            failure: Some(Failure::Spool(e)),
            ..
        } => {
            tracing::error!(command, operation_id, error = %e, "after-event NOT accepted by the spool")
        }
        Decision::Reject {
            failure: Some(Failure::BadInput(_)),
            ..
        } => {}
        Decision::Reject {
            failure: Some(f),
            code,
            ..
        } => {
            tracing::warn!(command, operation_id, failure = %f, code, "upstream failed: rejecting (on_failure: reject)")
        }
        Decision::Reject { code, message, .. } => {
            tracing::info!(command, operation_id, code, err_msg = %message, "service rejected the operation")
        }
        Decision::Continue { .. } => tracing::debug!(command, operation_id, "service answered"),
    }
}

/// The ordering key of an after-event (the catalogue row's `order_by`).
pub fn order_key(entry: &CommandEntry, request: &DynamicMessage) -> String {
    let get = |key: &str| {
        request
            .descriptor()
            .get_field_by_json_name(key)
            .map(|f| {
                request
                    .get_field(&f)
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    match entry.row.order_by {
        OrderBy::Key(k) => format!("{k}:{}", get(k)),
        OrderBy::Conversation => {
            let group = get("groupID");
            if group.is_empty() {
                let (a, b) = (get("sendID"), get("recvID"));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                format!("single:{lo}:{hi}")
            } else {
                format!("group:{group}")
            }
        }
    }
}
