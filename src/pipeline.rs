//! One callback, one path, in named stages over one value (`Flight`): read (the HTTP layer) →
//! decode → gate ([`crate::gate`]) → route (spool | call) → decide. Each stage is a small
//! function that leaves the flight for the next or ends it with a [`Decision`]. Every exit, bad
//! input and unknown commands included, is an [`Exit`] holding a `Decision`; the HTTP layer
//! writes it once (`crate::envelope::answer`) and counts it.

use crate::catalog::{CommandEntry, OrderBy, Phase};
use crate::config::Delivery;
use crate::decision::{self, Decision, Failure, Reason};
use crate::envelope::{Answer, Target};
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
pub(crate) struct Callback {
    /// The command: the last path segment.
    pub(crate) command: String,
    /// The full path, for the unknown-command log line.
    pub(crate) path: String,
    /// The URL-decoded `key` query parameter.
    pub(crate) key: Option<String>,
    /// The `operationID` header, empty when absent.
    pub(crate) header_operation_id: String,
    /// The W3C trace context the request brought (`traceparent`, `tracestate`), if any.
    pub(crate) trace: Option<TraceContext>,
    /// When the request arrived: the log line's latency and OpenIM's budget (`openim_timeout`)
    /// count from here.
    pub(crate) received: Instant,
    /// Whether it got a `limits.max_in_flight` slot. A shed callback's body was drained, not
    /// kept; the gate's first rule answers it.
    pub(crate) admitted: bool,
    /// The body, or why it is not available.
    pub(crate) body: Result<Bytes, BodyError>,
}

/// Why a callback's body is not available.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
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
}

/// How a callback ended: the decision and what rendering it needs.
pub(crate) struct Exit {
    /// What OpenIM will be told.
    pub(crate) decision: Decision,
    /// The known command, the snapshot the request started with, and the request as read.
    known: Option<Known>,
    /// The operationID used in logs (header, else body).
    pub(crate) operation_id: String,
    /// The upstream's gRPC status, when a call got one.
    pub(crate) grpc_status: Option<tonic::Code>,
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

    /// The body's operationID: read from the encoded bytes, or from the tree the decoder built
    /// (a request with field errors is not encoded).
    fn operation_id(&self, numbers: &crate::fields::FieldNumbers) -> String {
        if !self.payload.is_empty() {
            return crate::fields::Fields::new(&self.payload, numbers)
                .operation_id()
                .to_owned();
        }
        self.message()
            .and_then(|m| m.get_field_by_name("operation_id"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
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
    pub(crate) fn command(&self) -> Option<&'static str> {
        self.known.as_ref().map(|k| k.entry.row.command)
    }

    /// The upstream the command is routed to, when it is known and enabled.
    pub(crate) fn upstream(&self) -> Option<&str> {
        let k = self.known.as_ref()?;
        let route = k.snapshot.route(k.entry.row.command)?;
        route.upstream.as_ref()?;
        Some(route.settings.upstream.as_str())
    }

    /// The way the callback took, for the inspector: `call <upstream>`, `spool`, `disabled`,
    /// `unknown command`, `bad input`, `shed`.
    pub(crate) fn route(&self) -> String {
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

    /// The envelope: written here, once per request.
    pub(crate) fn render(&self) -> Answer {
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
        let env = crate::envelope::answer(&self.decision, target);
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
pub(crate) async fn run(gw: &Gateway, snapshot: Arc<Snapshot>, cb: Callback) -> Exit {
    let span = telemetry::callback_span(&cb.command, cb.trace.as_ref());
    run_in_span(gw, snapshot, cb).instrument(span).await
}

async fn run_in_span(gw: &Gateway, snapshot: Arc<Snapshot>, cb: Callback) -> Exit {
    let Some(entry) = gw.catalog().get(&cb.command) else {
        return unknown(cb);
    };
    let Some(route) = snapshot.route(entry.row.command) else {
        return unknown(cb);
    };
    let mut flight = Flight {
        gw,
        snapshot: &snapshot,
        entry,
        route,
        key: cb.key,
        received: cb.received,
        admitted: cb.admitted,
        body: Some(cb.body),
        operation_id: cb.header_operation_id,
        request: None,
        grpc_status: None,
        spooled: None,
    };
    let decision = stages(&mut flight).await;
    let Flight {
        operation_id,
        request,
        grpc_status,
        spooled,
        received,
        ..
    } = flight;
    let exit = Exit {
        decision,
        known: Some(Known {
            entry,
            snapshot: snapshot.clone(),
            request,
        }),
        operation_id,
        grpc_status,
    };
    log(&exit, route, spooled.as_ref(), received);
    exit
}

/// An unknown command: continue, and a line that says where to look.
fn unknown(cb: Callback) -> Exit {
    metrics::counter!("gateway_unknown_commands_total").increment(1);
    let decision = Decision::continue_for(Reason::UnknownCommand);
    // The callback's one line.
    tracing::warn!(
        command = %cb.command.chars().take(120).collect::<String>(),
        path = %cb.path.chars().take(200).collect::<String>(),
        operation_id = %cb.header_operation_id,
        outcome = decision.outcome(),
        latency_ms = latency_ms(cb.received),
        trace_id = telemetry::trace_id(&tracing::Span::current()),
        "unknown callback command: answering continue; check OpenIM's webhooks.yml url (the command must be the last path segment)"
    );
    Exit {
        decision,
        known: None,
        operation_id: cb.header_operation_id,
        grpc_status: None,
    }
}

/// A known command's callback on its way: what each stage reads, and what it leaves for the
/// next stage, the log line and the envelope.
struct Flight<'s> {
    gw: &'s Gateway,
    /// The snapshot the request started with (its body was read under its limits).
    snapshot: &'s Snapshot,
    entry: &'static CommandEntry,
    route: &'s CommandRoute,
    /// OpenIM's `key` query parameter.
    key: Option<String>,
    received: Instant,
    /// Whether it got a `limits.max_in_flight` slot.
    admitted: bool,
    /// The body as read; taken by [`decode`].
    body: Option<Result<Bytes, BodyError>>,
    /// The header's operationID, else the body's.
    operation_id: String,
    /// The request as far as it could be read (the echo rules fill from it).
    request: Option<Request>,
    /// The upstream's status, when a call got one.
    grpc_status: Option<tonic::Code>,
    /// Where the spool put an after-event, with its delivery id.
    spooled: Option<spool::StoredEventRef>,
}

/// decode → gate → route (spool | call) → decide. Each stage either leaves the flight for the
/// next or ends it with a decision.
async fn stages(f: &mut Flight<'_>) -> Decision {
    if let Err(answer) = decode(f) {
        return answer;
    }
    if let Some(answer) = gate(f) {
        return answer;
    }
    if let Some(spool) = spooled_by(f) {
        return to_spool(f, spool).await;
    }
    call(f).await
}

impl Flight<'_> {
    /// A body the gateway cannot use: the failure policy (logged by the callback's one line).
    fn bad_input(&self, problem: String) -> Decision {
        metrics::counter!("gateway_bad_requests_total", "command" => self.entry.row.command)
            .increment(1);
        decision::fail(Failure::BadInput(problem), &self.route.policy)
    }
}

/// Decode: the body to protobuf bytes in one pass, the tree decoder for what that pass hands
/// back (any field error, a key given twice), so that answers and log lines are the
/// reference's. A shed callback's body was not kept: nothing to decode, the gate answers it.
fn decode(f: &mut Flight<'_>) -> Result<(), Decision> {
    let body = f.body.take().unwrap_or_else(|| Ok(Bytes::new()));
    if !f.admitted {
        return Ok(());
    }
    let bytes = body.map_err(|e| f.bad_input(e.to_string()))?;
    let entry = f.entry;
    let (request, unknown_keys, errors) = match entry.transcoder.transcode(&bytes) {
        Some(t) => (
            Request::encoded(t.payload.into(), entry.request()),
            t.unknown_keys,
            Vec::new(),
        ),
        None => {
            let decoded =
                json::decode(&entry.request(), &bytes).map_err(|e| f.bad_input(e.to_string()))?;
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
    let request = f.request.insert(request);
    if f.operation_id.is_empty() {
        // The header had none: the body's, read from the bytes the transcoder wrote.
        f.operation_id = request.operation_id(&f.route.numbers);
    }
    f.gw.note_unknown_keys(entry.row.command, &unknown_keys, &f.operation_id);
    if let Some(first) = errors.first() {
        // The problem can quote a value: redacted unless `log.redact: false`.
        let first = crate::decision::field_problem(first);
        let problem = if errors.len() > 1 {
            format!("{first} (and {} more)", errors.len() - 1)
        } else {
            first
        };
        return Err(f.bad_input(problem));
    }
    Ok(())
}

/// Gate: the command's request-side rules ([`crate::gate`]), which may answer now.
fn gate(f: &Flight<'_>) -> Option<Decision> {
    f.route.gate.check(&crate::gate::Arrival {
        command: f.entry.row.command,
        operation_id: &f.operation_id,
        admitted: f.admitted,
        enabled: f.route.upstream.is_some(),
        payload: f.request.as_ref().map_or(&[], |r| &r.payload),
        policy: &f.route.policy,
    })
}

/// Route: the spool, for an after-event of a command delivered through it.
fn spooled_by<'g>(f: &Flight<'g>) -> Option<&'g spool::Spool> {
    let spooled = f.entry.phase == Phase::After && f.route.settings.delivery == Delivery::Spool;
    spooled.then(|| f.gw.spool()).flatten()
}

/// Route, spool: stored (in the spool, or in the local buffer while Redis is down) or delivered
/// before OpenIM is answered; otherwise refused, never acknowledged.
async fn to_spool(f: &mut Flight<'_>, spool: &spool::Spool) -> Decision {
    let (entry, route) = (f.entry, f.route);
    let Some(request) = f.request.as_ref() else {
        return Decision::continue_for(Reason::Disabled);
    };
    let event = spool::NewEvent {
        command: entry.row.command.to_owned(),
        order_key: route
            .settings
            .ordered
            .then(|| request.message().map(|m| order_key(entry, m)))
            .flatten(),
        operation_id: f.operation_id.clone(),
        openim_key: f.key.clone(),
        payload: request.payload.to_vec(),
        trace: TraceContext::of(&tracing::Span::current()),
    };
    match spool.append(event).await {
        Ok(stored) => {
            f.spooled = Some(stored);
            Decision::continue_for(Reason::Spooled)
        }
        Err(e) => {
            let message = match e {
                spool::AppendError::Full { .. } => "gateway spool is full: event not accepted",
                spool::AppendError::Closed => "gateway is shutting down: event not accepted",
                spool::AppendError::Storage(_) => "gateway spool cannot write: event not accepted",
                spool::AppendError::Unavailable(_) => {
                    "gateway spool unavailable: event not accepted"
                }
            };
            // OpenIM ignores after replies; the rejection tells a person reading traffic.
            Decision::Reject {
                code: route.settings.reject_code,
                message: message.to_owned(),
                detail: e.to_string(),
                failure: Some(Failure::Spool(e)),
            }
        }
    }
}

/// Route, call (or shadow), then decide: the service's answer, or its failure under the
/// command's policy, as OpenIM's decision.
async fn call(f: &mut Flight<'_>) -> Decision {
    let (entry, route) = (f.entry, f.route);
    // The gate's `Disabled` rule answered a command without an upstream, and the decode stage
    // one without a request.
    let (Some(upstream), Some(request)) = (route.upstream.as_ref(), f.request.as_ref()) else {
        return Decision::continue_for(Reason::Disabled);
    };
    let trace = TraceContext::of(&tracing::Span::current());
    let mut call = route.call(
        entry,
        request.payload.clone(),
        CallIds {
            operation_id: &f.operation_id,
            key: f.key.as_deref(),
            delivery: None,
            trace: trace.as_ref(),
        },
    );
    // The deadline sent as grpc-timeout: the command's, or what is left of OpenIM's budget.
    let left = f
        .snapshot
        .openim_timeout
        .saturating_sub(f.received.elapsed());
    call.timeout = call.timeout.min(left.saturating_sub(ANSWER_MARGIN));
    let retry = match entry.phase {
        Phase::Before => Retry::Allowed,
        Phase::After => Retry::Never,
    };
    if route.settings.shadow {
        crate::shadow::spawn(f.snapshot, entry, route, upstream, call, &f.operation_id);
        return Decision::continue_for(Reason::Shadow);
    }
    let result = upstream.call(entry.row.command, call, retry).await;
    f.grpc_status = crate::upstream::call_status(&result);
    decision::decide(entry, result, &route.policy)
}

/// Kept back from OpenIM's budget for writing the answer, so that OpenIM gets the failure
/// policy's envelope before it gives up itself.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The one log line of a callback: at info level, or warn / error when something failed. User
/// content (the service's rejection text, its status message, values quoted from a bad body) only
/// with `log.redact: false`.
fn log(
    exit: &Exit,
    route: &CommandRoute,
    spooled: Option<&spool::StoredEventRef>,
    received: Instant,
) {
    let Some(command) = exit.command() else {
        return;
    };
    let grpc_status = exit.grpc_status;
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
                // Read from the span only when the line is written.
                trace_id = telemetry::trace_id(&span).as_deref(),
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
pub(crate) fn order_key(entry: &CommandEntry, request: &DynamicMessage) -> String {
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
