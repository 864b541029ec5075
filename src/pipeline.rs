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
use crate::telemetry::{self, TraceContext};
use crate::upstream::Retry;
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

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
    /// The W3C trace context the request brought (`traceparent`, `tracestate`), if any.
    pub trace: Option<TraceContext>,
    /// When the request arrived: the log line's latency and OpenIM's budget (`openim_timeout`)
    /// count from here.
    pub received: Instant,
    /// The body, or why it is not available.
    pub body: Result<Bytes, BodyError>,
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
    #[error("body not read within limits.request_timeout ({})", crate::telemetry::human_duration(*.0))]
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
    /// The upstream's gRPC status, when a call got one.
    pub grpc_status: Option<tonic::Code>,
}

struct Known {
    entry: &'static CommandEntry,
    snapshot: Arc<Snapshot>,
    request: Option<Request>,
}

/// The request as read: its protobuf encoding, and the message when something needs its fields
/// (the body's operationID, an ordering key, an echo rule), decoded from the bytes only then.
struct Request {
    payload: Bytes,
    desc: prost_reflect::MessageDescriptor,
    message: std::sync::OnceLock<Option<DynamicMessage>>,
}

impl Request {
    /// From the one-pass transcoder: the message is decoded on first use.
    fn encoded(payload: Bytes, desc: prost_reflect::MessageDescriptor) -> Self {
        Self {
            payload,
            desc,
            message: std::sync::OnceLock::new(),
        }
    }

    /// From the tree decoder (`json::decode`); `payload`: its encoding, when it is to be sent.
    fn decoded(message: DynamicMessage, payload: Bytes) -> Self {
        Self {
            payload,
            desc: message.descriptor(),
            message: std::sync::OnceLock::from(Some(message)),
        }
    }

    fn message(&self) -> Option<&DynamicMessage> {
        self.message
            .get_or_init(|| DynamicMessage::decode(self.desc.clone(), &*self.payload).ok())
            .as_ref()
    }
}

/// Whether the command's reply rules read the request (so the envelope needs its fields).
fn rules_read_request(entry: &CommandEntry) -> bool {
    entry.row.rules.iter().any(|rule| {
        matches!(
            rule,
            crate::catalog::Rule::EchoFromRequest(_) | crate::catalog::Rule::OnlyIfInRequest(_)
        )
    })
}

impl Exit {
    /// The command, when it is known.
    pub fn command(&self) -> Option<&'static str> {
        self.known.as_ref().map(|k| k.entry.row.command)
    }

    /// The upstream the command is routed to, when it is known and enabled.
    pub fn upstream(&self) -> Option<&str> {
        let k = self.known.as_ref()?;
        let route = k.snapshot.route(k.entry.row.command)?;
        route.upstream.as_ref()?;
        Some(route.settings.upstream.as_str())
    }

    /// The way the callback took, for the inspector: `call <upstream>`, `spool`, `disabled`,
    /// `unknown command`, `bad input`, `shed`.
    pub fn route(&self) -> String {
        use crate::decision::Failure;
        match &self.decision {
            Decision::Continue {
                reason: Reason::UnknownCommand,
                ..
            } => "unknown command".into(),
            Decision::Continue {
                reason: Reason::Disabled,
                ..
            } => "disabled".into(),
            Decision::Continue {
                reason: Reason::Spooled,
                ..
            } => "spool".into(),
            Decision::Continue {
                reason: Reason::HeldBack(rule),
                ..
            } => format!("held back ({rule})"),
            Decision::Continue {
                reason: Reason::Shadow,
                ..
            } => match self.upstream() {
                Some(u) => format!("shadow {u}"),
                None => "shadow".into(),
            },
            d if matches!(d.failure(), Some(Failure::BadInput(_))) => "bad input".into(),
            d if matches!(d.failure(), Some(Failure::Overloaded(_))) => "shed".into(),
            d if matches!(d.failure(), Some(Failure::Spool(_))) => "spool".into(),
            _ => match self.upstream() {
                Some(u) => format!("call {u}"),
                None => "continue".into(),
            },
        }
    }

    /// The envelope: rendered here, once per request.
    pub fn render(&self) -> Envelope {
        let target = self.known.as_ref().and_then(|k| {
            k.snapshot.route(k.entry.row.command).map(|route| Target {
                entry: k.entry,
                request: k
                    .request
                    .as_ref()
                    .filter(|_| rules_read_request(k.entry))
                    .and_then(Request::message),
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
/// was read under the same snapshot's limits), held however long the request takes. Runs in the
/// callback's span (a child of the request's trace context) and logs the one line of the callback.
pub async fn run(gw: &Gateway, snapshot: Arc<Snapshot>, cb: Callback) -> Exit {
    let span = telemetry::callback_span(&cb.command, cb.trace.as_ref());
    run_in_span(gw, snapshot, cb).instrument(span).await
}

async fn run_in_span(gw: &Gateway, snapshot: Arc<Snapshot>, cb: Callback) -> Exit {
    let received = cb.received;
    let route = gw
        .catalog()
        .get(&cb.command)
        .and_then(|entry| Some((entry, snapshot.route(entry.row.command)?.clone())));
    let Some((entry, route)) = route else {
        metrics::counter!("gateway_unknown_commands_total").increment(1);
        let decision = Decision::continue_for(Reason::UnknownCommand);
        // The callback's one line.
        tracing::warn!(
            command = %cb.command.chars().take(120).collect::<String>(),
            path = %cb.path.chars().take(200).collect::<String>(),
            operation_id = %cb.header_operation_id,
            outcome = decision.outcome(),
            latency_ms = latency_ms(received),
            trace_id = telemetry::trace_id(&tracing::Span::current()),
            "unknown callback command: answering continue; check OpenIM's webhooks.yml url (the command must be the last path segment)"
        );
        return Exit {
            decision,
            known: None,
            operation_id: cb.header_operation_id,
            grpc_status: None,
        };
    };
    let mut operation_id = cb.header_operation_id.clone();
    let mut request = None;
    let mut grpc_status = None;
    let mut spooled = None;
    let decision = decide(
        gw,
        &snapshot,
        entry,
        &route,
        cb,
        Found {
            operation_id: &mut operation_id,
            request: &mut request,
            grpc_status: &mut grpc_status,
            spooled: &mut spooled,
        },
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
        grpc_status,
    };
    log(
        &exit,
        entry.row.command,
        &route,
        grpc_status,
        spooled.as_ref(),
        received,
    );
    exit
}

/// What the log line and the envelope need from the way of a callback, filled by [`decide`].
struct Found<'a> {
    /// The header's operationID, else the body's.
    operation_id: &'a mut String,
    /// The request as far as it could be read (the echo rules fill from it).
    request: &'a mut Option<Request>,
    /// The upstream's status, when a call got one.
    grpc_status: &'a mut Option<tonic::Code>,
    /// Where the spool put an after-event, with its delivery id.
    spooled: &'a mut Option<spool::StoredEventRef>,
}

/// The steps of a known command; fills `found` on the way.
async fn decide(
    gw: &Gateway,
    snapshot: &Snapshot,
    entry: &'static CommandEntry,
    route: &CommandRoute,
    cb: Callback,
    found: Found<'_>,
) -> Decision {
    let Found {
        operation_id,
        request: request_out,
        grpc_status,
        spooled,
    } = found;
    let command = entry.row.command;
    let policy = &route.policy;
    let budget = snapshot.openim_timeout;
    // Logged by the callback's one line (`log`).
    let bad_input = |problem: String| {
        metrics::counter!("gateway_bad_requests_total", "command" => command).increment(1);
        decision::fail(Failure::BadInput(problem), policy)
    };
    let bytes = match cb.body {
        Ok(b) => b,
        Err(BodyError::Shed) => {
            return decision::fail(
                Failure::Overloaded("over limits.max_in_flight".into()),
                policy,
            );
        }
        Err(e) => return bad_input(e.to_string()),
    };
    // One pass to protobuf bytes; the tree decoder for what that pass hands back (any field
    // error, a key given twice), so that answers and log lines are the reference's.
    let (request, unknown_keys, errors) = match entry.transcoder.transcode(&bytes) {
        Some(t) => (
            Request::encoded(t.payload.into(), entry.request()),
            t.unknown_keys,
            Vec::new(),
        ),
        None => {
            let decoded = match json::decode(&entry.request(), &bytes) {
                Ok(d) => d,
                Err(e) => return bad_input(e.to_string()),
            };
            // With field errors it is not sent, only kept for the failure answer's echo rules.
            let payload = if decoded.errors.is_empty() {
                decoded.message.encode_to_vec().into()
            } else {
                Bytes::new()
            };
            (
                Request::decoded(decoded.message, payload),
                decoded.unknown_keys,
                decoded.errors,
            )
        }
    };
    let request = request_out.insert(request);
    if operation_id.is_empty() {
        // The header had none: the body's.
        *operation_id = request
            .message()
            .and_then(|m| m.get_field_by_name("operation_id"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
    }
    gw.note_unknown_keys(command, &unknown_keys, operation_id);
    if let Some(first) = errors.first() {
        // The problem can quote a value: redacted unless `log.redact: false`.
        let first = crate::decision::field_problem(first);
        let problem = if errors.len() > 1 {
            format!("{first} (and {} more)", errors.len() - 1)
        } else {
            first
        };
        return bad_input(problem);
    }
    let Some(upstream) = route.upstream.as_ref() else {
        return Decision::continue_for(Reason::Disabled);
    };
    // The gate: a request-side rule may answer now, without the service.
    if let Some(rule) = route.gate.check(&request.payload) {
        metrics::counter!("gateway_held_back_total", "command" => command, "rule" => rule)
            .increment(1);
        tracing::debug!(
            command,
            operation_id,
            rule,
            "held back by a rule: answered without calling the service"
        );
        return Decision::continue_for(Reason::HeldBack(rule));
    }
    let payload = request.payload.clone();
    if entry.phase == Phase::After
        && route.settings.delivery == Delivery::Spool
        && let Some(spool) = gw.spool()
    {
        {
            let event = spool::NewEvent {
                command: command.to_owned(),
                order_key: route
                    .settings
                    .ordered
                    .then(|| request.message().map(|m| order_key(entry, m)))
                    .flatten(),
                operation_id: operation_id.clone(),
                openim_key: cb.key.clone(),
                payload: payload.to_vec(),
                trace: TraceContext::of(&tracing::Span::current()),
            };
            // Stored (in the spool, or in the local buffer while Redis is down) or delivered
            // before OpenIM is answered; otherwise refused, never acknowledged.
            match spool.append(event).await {
                Ok(stored) => {
                    *spooled = Some(stored);
                    return Decision::continue_for(Reason::Spooled);
                }
                Err(e) => {
                    let message = match e {
                        spool::AppendError::Full { .. } => {
                            "gateway spool is full: event not accepted"
                        }
                        spool::AppendError::Closed => {
                            "gateway is shutting down: event not accepted"
                        }
                        spool::AppendError::Storage(_) => {
                            "gateway spool cannot write: event not accepted"
                        }
                        spool::AppendError::Unavailable(_) => {
                            "gateway spool unavailable: event not accepted"
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
    let trace = TraceContext::of(&tracing::Span::current());
    let mut call = route.call(
        entry,
        payload,
        CallIds {
            operation_id,
            key: cb.key.as_deref(),
            delivery: None,
            trace: trace.as_ref(),
        },
    );
    // The deadline sent as grpc-timeout: the command's, or what is left of OpenIM's budget.
    let left = budget.saturating_sub(cb.received.elapsed());
    call.timeout = call.timeout.min(left.saturating_sub(ANSWER_MARGIN));
    let retry = match entry.phase {
        Phase::Before => Retry::Allowed,
        Phase::After => Retry::Never,
    };
    if route.settings.shadow {
        crate::shadow::spawn(snapshot, entry, route, upstream, call, operation_id);
        return Decision::continue_for(Reason::Shadow);
    }
    let result = upstream.call(command, call, retry).await;
    *grpc_status = crate::upstream::call_status(&result);
    decision::decide(entry, result, policy)
}

/// Kept back from OpenIM's budget for writing the answer, so that OpenIM gets the failure
/// policy's envelope before it gives up itself.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The one log line of a callback: at info level, or warn / error when something failed. User
/// content (the service's rejection text, its status message, values quoted from a bad body) only
/// with `log.redact: false`.
fn log(
    exit: &Exit,
    command: &'static str,
    route: &CommandRoute,
    grpc_status: Option<tonic::Code>,
    spooled: Option<&spool::StoredEventRef>,
    received: Instant,
) {
    let span = tracing::Span::current();
    let decision = &exit.decision;
    let outcome = decision.outcome();
    let failure = decision.failure();
    let (level, message) = match decision {
        Decision::Continue {
            reason: Reason::FailOpen(f),
            ..
        } => (tracing::Level::WARN, failed_message(f, true)),
        Decision::Reject {
            failure: Some(Failure::Spool(_)),
            ..
        } => (
            tracing::Level::ERROR,
            "after-event NOT accepted by the spool",
        ),
        Decision::Reject {
            failure: Some(f), ..
        } => (tracing::Level::WARN, failed_message(f, false)),
        Decision::Reject { failure: None, .. } => {
            (tracing::Level::INFO, "service rejected the operation")
        }
        Decision::Continue { reason, .. } => (
            tracing::Level::INFO,
            match reason {
                Reason::Spooled => spooled.map_or("after-event spooled", |s| s.place.message()),
                Reason::Disabled => "command disabled: continue",
                Reason::HeldBack(_) => "held back by a rule: answered without calling the service",
                Reason::Shadow => "shadow mode: answered continue, the service is called aside",
                Reason::Unimplemented => "service does not implement it: continue",
                _ => "service answered",
            },
        ),
    };
    let (err_code, err_msg) = match decision {
        Decision::Reject {
            failure: None,
            code,
            message,
            ..
        } => (Some(*code), Some(telemetry::user_text(message))),
        _ => (None, None),
    };
    let upstream = route
        .upstream
        .as_ref()
        .map(|_| route.settings.upstream.as_str());
    let latency_ms = latency_ms(received);
    let grpc_status_name = grpc_status.map(telemetry::grpc_code_name);
    let trace_id = telemetry::trace_id(&span);
    let failure_label = failure.map(Failure::label);
    let delivery_id = spooled.map(|s| s.delivery_id.as_str());
    let error = failure.map(crate::decision::failure_text);
    telemetry::record_outcome(
        &span,
        &exit.operation_id,
        outcome,
        grpc_status,
        failure.is_some(),
    );
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                command,
                operation_id = exit.operation_id.as_str(),
                delivery_id,
                upstream,
                outcome,
                latency_ms,
                grpc_status = grpc_status_name,
                trace_id = trace_id.as_deref(),
                failure = failure_label,
                error = error.as_deref(),
                err_code,
                err_msg,
                "{message}"
            )
        };
    }
    match level {
        tracing::Level::ERROR => line!(error),
        tracing::Level::WARN => line!(warn),
        _ => line!(info),
    }
}

/// The message of a failure's line; `open`: the failure policy let the operation go on.
fn failed_message(f: &Failure, open: bool) -> &'static str {
    match f {
        Failure::BadInput(_) => "bad callback body: answering by the failure policy",
        Failure::Overloaded(_) => "over limits.max_in_flight: answering by the failure policy",
        _ if open => "upstream failed: continuing (on_failure: continue)",
        _ => "upstream failed: rejecting (on_failure: reject)",
    }
}

/// Milliseconds since `from`, with microseconds.
fn latency_ms(from: Instant) -> f64 {
    // Whole microseconds: `1.234`, not float noise.
    from.elapsed().as_micros() as f64 / 1000.0
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
