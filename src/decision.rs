//! "What does OpenIM get": every exit of a callback as a [`Decision`], and the two gRPC-status
//! tables side by side: the synchronous one ([`sync_status`], the status table of the README's "The contract") and the spool's
//! retry/dead-letter classification ([`delivery_status`]), tested together as one table.
//!
//! [`decide`] turns an upstream call's result into a `Decision`; [`fail`] applies a command's
//! failure policy; `crate::envelope::render` turns any `Decision` into the envelope.

use crate::catalog::CommandEntry;
use crate::spool::{DeliveryResult, Fault};
use crate::upstream::{CallError, Refusal};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value};

pub use crate::config::FailurePolicy;

/// The per-command settings a decision and its envelope need.
#[derive(Debug, Clone)]
pub struct Policy {
    /// What to do when the upstream fails (`on_failure`).
    pub on_failure: FailurePolicy,
    /// errCode of a fail-closed rejection, and of a service rejection whose code is <= 0 (OpenIM
    /// would show those as error 500).
    pub reject_code: i32,
    /// errMsg of a fail-closed rejection.
    pub reject_message: String,
    /// Allow MsgModify replies to override `offlinePushInfo` (docs/commands.md, "OpenIM traps").
    pub allow_offline_push_info: bool,
}

/// Why a callback got no usable answer from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The call failed: an error status, a timeout, an unreachable upstream.
    #[error(transparent)]
    Call(CallError),
    /// The upstream answered with bytes that are not the reply message.
    #[error("upstream reply is not a valid {message}: {source}")]
    BadReply {
        /// The expected message type.
        message: String,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// The request from OpenIM could not be read.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A gateway limit shed the callback (`limits.max_in_flight`).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The after-event spool did not take the event.
    #[error(transparent)]
    Spool(crate::spool::AppendError),
}

impl Failure {
    /// A short stable label for logs, metrics and the `errDlt` of a fail-closed rejection.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Call(e) => e.label(),
            Self::BadReply { .. } => "bad_reply",
            Self::BadInput(_) => "bad_input",
            Self::Spool(_) => "spool",
            Self::Overloaded(_) => "overloaded",
        }
    }
}

/// Why a continue answer has no (or no usable) service reply.
#[derive(Debug)]
pub enum Reason {
    /// The service replied.
    Replied,
    /// The service does not implement this RPC.
    Unimplemented,
    /// The command is disabled in the config.
    Disabled,
    /// An after-event was stored in the durable spool.
    Spooled,
    /// The failure policy let the operation go on.
    FailOpen(Failure),
    /// The command is unknown to the gateway.
    UnknownCommand,
    /// A request-side rule of the gate (its name) answered without calling the service.
    HeldBack(&'static str),
    /// Shadow mode: the service is called aside, its verdict only counted.
    Shadow,
}

/// A service's OK reply without a rejection, as its decision keeps it for the envelope.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The upstream's bytes, which the one-pass writer takes: the envelope is written from them
    /// (`crate::envelope::answer`), no tree built.
    Encoded(Bytes),
    /// Read by the tree path (bytes the one-pass writer hands back).
    Decoded(DynamicMessage),
}

impl Reply {
    /// The reply as a message of the command's reply type (decoded here for [`Reply::Encoded`],
    /// which decodes: the one-pass writer took it).
    pub fn message(&self, entry: &CommandEntry) -> std::borrow::Cow<'_, DynamicMessage> {
        match self {
            Self::Decoded(m) => std::borrow::Cow::Borrowed(m),
            Self::Encoded(b) => std::borrow::Cow::Owned(
                DynamicMessage::decode(entry.response(), b.as_ref())
                    .unwrap_or_else(|_| DynamicMessage::new(entry.response())),
            ),
        }
    }
}

/// What OpenIM will be told: the end of every path of a callback.
#[derive(Debug)]
pub enum Decision {
    /// Let the operation go on, with the service's modifications if any.
    Continue {
        /// The service's reply, whose set fields become overrides.
        reply: Option<Reply>,
        /// Why.
        reason: Reason,
    },
    /// Reject the operation.
    Reject {
        /// errCode, > 0.
        code: i32,
        /// errMsg.
        message: String,
        /// errDlt.
        detail: String,
        /// The failure behind a fail-closed (or spool) rejection; `None` when the service
        /// rejected.
        failure: Option<Failure>,
    },
}

impl Decision {
    /// The `outcome` label of `gateway_callbacks_total` and of the per-callback log line:
    /// `continue` (also disabled and unimplemented), `rejected` (by the service), `failed-open`,
    /// `failed-closed` (the failure policy), `spooled`, `spool-full` (the spool did not take it),
    /// `held-back` (a rule of the gate answered), `shadowed` (shadow mode answered continue).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Continue { reason, .. } => match reason {
                Reason::Spooled => "spooled",
                Reason::FailOpen(_) => "failed-open",
                Reason::HeldBack(_) => "held-back",
                Reason::Shadow => "shadowed",
                _ => "continue",
            },
            Self::Reject { failure: None, .. } => "rejected",
            Self::Reject {
                failure: Some(Failure::Spool(_)),
                ..
            } => "spool-full",
            Self::Reject {
                failure: Some(_), ..
            } => "failed-closed",
        }
    }

    /// The failure behind this decision, if any.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Continue {
                reason: Reason::FailOpen(f),
                ..
            }
            | Self::Reject {
                failure: Some(f), ..
            } => Some(f),
            _ => None,
        }
    }

    /// A plain continue for `reason`, with no reply.
    pub fn continue_for(reason: Reason) -> Self {
        Self::Continue {
            reply: None,
            reason,
        }
    }
}

/// What a before callback does with a non-OK status (the README's status table, "The contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    /// The service rejects the operation (code and text from the status and its details).
    Reject,
    /// The service has nothing to say: continue unchanged.
    Continue,
    /// An error: the command's failure policy decides.
    Fail,
}

/// What the spool does with a delivery that ended in a non-OK status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Done: the event is removed.
    Delivered,
    /// Transient: retried after a backoff.
    Retry,
    /// Retrying will not help: the event becomes a dead letter.
    DeadLetter,
}

/// The synchronous status table.
pub fn sync_status(code: tonic::Code) -> SyncStatus {
    use tonic::Code::*;
    match code {
        PermissionDenied | InvalidArgument | FailedPrecondition => SyncStatus::Reject,
        Unimplemented => SyncStatus::Continue,
        _ => SyncStatus::Fail,
    }
}

/// The spool's status table.
pub fn delivery_status(code: tonic::Code) -> DeliveryStatus {
    use tonic::Code::*;
    match code {
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled | Unknown
        | Internal => DeliveryStatus::Retry,
        // The service does not want this event; nothing to retry.
        Unimplemented => DeliveryStatus::Delivered,
        _ => DeliveryStatus::DeadLetter,
    }
}

/// Decides the answer to OpenIM for a synchronous call's result (the README's status table, "The contract").
///
/// A reply the one-pass writer takes ([`crate::json::ReplyWriter::takes`]) is kept as its bytes
/// ([`Reply::Encoded`]), its rejection read from them; any other goes the tree path,
/// [`decide_by_tree`], which is the reference and names what is wrong with a bad reply.
pub fn decide(entry: &CommandEntry, result: Result<Bytes, CallError>, policy: &Policy) -> Decision {
    if let Ok(bytes) = &result
        && let Some(decision) = replied_one_pass(entry, bytes, policy)
    {
        return decision;
    }
    decide_by_tree(entry, result, policy)
}

/// [`decide`] by the tree: the reply decoded into a `DynamicMessage` ([`Reply::Decoded`]).
pub fn decide_by_tree(
    entry: &CommandEntry,
    result: Result<Bytes, CallError>,
    policy: &Policy,
) -> Decision {
    let status = match result {
        Ok(bytes) => {
            let reply = match DynamicMessage::decode(entry.response(), bytes) {
                Ok(reply) => reply,
                Err(source) => {
                    return fail(
                        Failure::BadReply {
                            message: entry.response().full_name().to_owned(),
                            source,
                        },
                        policy,
                    );
                }
            };
            let rejection = entry
                .rejection
                .as_ref()
                .filter(|f| reply.has_field(f))
                .map(|f| reply.get_field(f).into_owned());
            return match rejection {
                Some(Value::Message(r)) => {
                    let text = |name: &str| {
                        r.get_field_by_name(name)
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    };
                    let code = r
                        .get_field_by_name("code")
                        .and_then(|v| v.as_i32())
                        .unwrap_or_default();
                    rejected(code, text("message"), text("detail"), policy)
                }
                _ => Decision::Continue {
                    reply: Some(Reply::Decoded(reply)),
                    reason: Reason::Replied,
                },
            };
        }
        Err(CallError::Status(status)) => status,
        Err(other) => return fail(Failure::Call(other), policy),
    };
    match sync_status(status.code()) {
        SyncStatus::Reject => {
            let detail = rejection_in_details(status.details());
            let message = if status.message().is_empty() {
                detail
                    .as_ref()
                    .map(|d| d.message.clone())
                    .unwrap_or_default()
            } else {
                status.message().to_owned()
            };
            rejected(
                detail.as_ref().map_or(0, |d| d.code),
                message,
                detail.map(|d| d.detail).unwrap_or_default(),
                policy,
            )
        }
        SyncStatus::Continue => Decision::continue_for(Reason::Unimplemented),
        SyncStatus::Fail => fail(Failure::Call(CallError::Status(status)), policy),
    }
}

/// A rejection by the service: a code <= 0 becomes the configured default (OpenIM shows those as
/// error 500).
fn rejected(code: i32, message: String, detail: String, policy: &Policy) -> Decision {
    Decision::Reject {
        code: if code > 0 { code } else { policy.reject_code },
        message,
        detail,
        failure: None,
    }
}

/// An OK reply read in one pass, without a tree; `None` when the one-pass writer hands the bytes
/// back.
fn replied_one_pass(entry: &CommandEntry, bytes: &Bytes, policy: &Policy) -> Option<Decision> {
    let writer = &entry.reply;
    if !writer.takes(bytes) {
        return None;
    }
    let rejection = entry
        .rejection
        .as_ref()
        .and_then(|f| writer.field_by_number(f.number()))
        .and_then(|f| writer.message(bytes, f));
    Some(match rejection {
        // The contract's `Rejection`, checked by the writer: prost reads it as the tree does.
        Some(r) => {
            let r = RejectionDetail::decode(r).ok()?;
            rejected(r.code, r.message, r.detail, policy)
        }
        None => Decision::Continue {
            reply: Some(Reply::Encoded(bytes.clone())),
            reason: Reason::Replied,
        },
    })
}

/// The spool's verdict on one delivery attempt's result.
pub fn delivery_result(result: &Result<Bytes, CallError>) -> DeliveryResult {
    match result {
        Ok(_) => DeliveryResult::Delivered,
        Err(CallError::Status(status)) => {
            let fault = Fault::status(
                crate::telemetry::grpc_code_name(status.code()),
                status.message(),
            );
            match delivery_status(status.code()) {
                DeliveryStatus::Delivered => DeliveryResult::Delivered,
                DeliveryStatus::Retry => DeliveryResult::Retry(fault),
                DeliveryStatus::DeadLetter => DeliveryResult::Permanent(fault),
            }
        }
        // Not sent: wait for the breaker (or a free slot) without using up an attempt.
        Err(e @ CallError::Refused(refusal)) => DeliveryResult::Deferred(
            match refusal {
                Refusal::BreakerOpen(wait) => *wait,
                Refusal::MaxConcurrency => MAX_CONCURRENCY_WAIT,
                Refusal::NotServing => crate::upstream::FAST_RECHECK,
            },
            Fault::local(e.label(), e.to_string()),
        ),
        Err(other) => DeliveryResult::Retry(Fault::local(other.label(), other.to_string())),
    }
}

/// How long a delivery refused by `max_concurrency` waits before it is tried again.
const MAX_CONCURRENCY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The failure policy's decision for a failure.
pub fn fail(failure: Failure, policy: &Policy) -> Decision {
    match &policy.on_failure {
        FailurePolicy::Continue => Decision::continue_for(Reason::FailOpen(failure)),
        FailurePolicy::Reject => Decision::Reject {
            code: policy.reject_code,
            message: policy.reject_message.clone(),
            detail: failure.label().to_owned(),
            failure: Some(failure),
        },
    }
}

/// The `Rejection` message of the contract, for reading it from status details.
#[derive(Clone, PartialEq, prost::Message)]
struct RejectionDetail {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(string, tag = "3")]
    detail: String,
}

/// `google.rpc.Status`, the carrier of gRPC status details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The type URL suffix of the contract's `Rejection` inside status details.
pub const REJECTION_TYPE: &str = "openim.callback.v1.Rejection";

fn rejection_in_details(details: &[u8]) -> Option<RejectionDetail> {
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with(REJECTION_TYPE))
        .and_then(|any| RejectionDetail::decode(any.value.as_slice()).ok())
}

/// Builds status details that carry a `Rejection`, for services (and tests) that reject by status.
pub fn rejection_details(code: i32, message: &str, detail: &str) -> Bytes {
    let rejection = RejectionDetail {
        code,
        message: message.to_owned(),
        detail: detail.to_owned(),
    };
    let status = RpcStatus {
        code: tonic::Code::PermissionDenied as i32,
        message: message.to_owned(),
        details: vec![prost_types::Any {
            type_url: format!("type.googleapis.com/{REJECTION_TYPE}"),
            value: rejection.encode_to_vec(),
        }],
    };
    status.encode_to_vec().into()
}

/// A failure as the logs show it: a gRPC status message from the service (which can echo user
/// content) and the problem of a bad body (which can quote values) are redacted.
pub fn failure_text(f: &Failure) -> String {
    if !crate::telemetry::redact() {
        return f.to_string();
    }
    match f {
        Failure::Call(CallError::Status(s)) => {
            format!(
                "upstream status {}: {}",
                crate::telemetry::grpc_code_name(s.code()),
                crate::telemetry::REDACTED
            )
        }
        // A bad body's problem was built redacted already ([`field_problem`]).
        other => other.to_string(),
    }
}

/// A field problem of a bad body as the logs show it: the field's path (key names, from the
/// contract) stays, what it held goes unless `log.redact: false`.
pub fn field_problem(e: &crate::json::FieldError) -> String {
    if crate::telemetry::redact() {
        format!("field `{}`: {}", e.path, crate::telemetry::REDACTED)
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::envelope::{Target, render};
    use serde_json::{Value as Json, json};

    fn catalog() -> Catalog {
        Catalog::load(crate::proto::pool().expect("pool"), crate::proto::PACKAGE)
            .expect("catalogue")
    }

    fn policy(on_failure: FailurePolicy, reject_code: i32, reject_message: &str) -> Policy {
        Policy {
            on_failure,
            reject_code,
            reject_message: reject_message.into(),
            allow_offline_push_info: false,
        }
    }

    /// Both status tables, side by side, for every gRPC code: what a before callback answers and
    /// what the spool does with a delivery.
    #[test]
    fn status_tables() {
        use DeliveryStatus::{DeadLetter, Delivered, Retry};
        use SyncStatus::{Continue, Fail as Policy_, Reject};
        use tonic::Code::*;
        let table = [
            (Ok, Policy_, DeadLetter),
            (Cancelled, Policy_, Retry),
            (Unknown, Policy_, Retry),
            (InvalidArgument, Reject, DeadLetter),
            (DeadlineExceeded, Policy_, Retry),
            (NotFound, Policy_, DeadLetter),
            (AlreadyExists, Policy_, DeadLetter),
            (PermissionDenied, Reject, DeadLetter),
            (ResourceExhausted, Policy_, Retry),
            (FailedPrecondition, Reject, DeadLetter),
            (Aborted, Policy_, Retry),
            (OutOfRange, Policy_, DeadLetter),
            (Unimplemented, Continue, Delivered),
            (Internal, Policy_, Retry),
            (Unavailable, Policy_, Retry),
            (DataLoss, Policy_, DeadLetter),
            (Unauthenticated, Policy_, DeadLetter),
        ];
        for (code, sync, delivery) in table {
            assert_eq!(
                (sync_status(code), delivery_status(code)),
                (sync, delivery),
                "{code:?}"
            );
        }
        // Every code is in the table once.
        let mut codes: Vec<i32> = table.iter().map(|(c, _, _)| *c as i32).collect();
        codes.dedup();
        assert_eq!(codes, (0..=16).collect::<Vec<_>>());
        // Failures without a status: the spool retries them.
        let unreachable = Err(CallError::Unreachable("refused".into()));
        assert!(matches!(
            delivery_result(&unreachable),
            DeliveryResult::Retry(_)
        ));
        let timeout = Err(CallError::Timeout(std::time::Duration::from_secs(1)));
        assert!(matches!(
            delivery_result(&timeout),
            DeliveryResult::Retry(_)
        ));
        assert_eq!(
            delivery_result(&Result::Ok(Bytes::new())),
            DeliveryResult::Delivered
        );
    }

    /// The README's status table ("The contract"), row by row: call result × failure policy → envelope.
    #[test]
    fn decision_table() {
        let c = catalog();
        let entry = c.get("callbackBeforeAddFriendCommand").expect("entry");
        let reply = |rejection: Option<(i32, &str, &str)>| {
            let mut m = DynamicMessage::new(entry.response());
            if let (Some((code, message, detail)), Some(rf)) = (rejection, &entry.rejection) {
                let mut r = DynamicMessage::new(rf.kind().as_message().expect("message").clone());
                r.set_field_by_name("code", Value::I32(code));
                r.set_field_by_name("message", Value::String(message.into()));
                r.set_field_by_name("detail", Value::String(detail.into()));
                m.set_field(rf, Value::Message(r));
            }
            Result::<Bytes, CallError>::Ok(m.encode_to_vec().into())
        };
        let status = |code| Err(CallError::Status(tonic::Status::new(code, "msg")));
        let open = || policy(FailurePolicy::Continue, 20001, "");
        let closed = || policy(FailurePolicy::Reject, 20500, "unavailable");
        let allow = json!({"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0});
        let reject = |code: i32, msg: &str, dlt: &str| json!({"actionCode":0,"errCode":code,"errMsg":msg,"errDlt":dlt,"nextCode":1});
        let unreachable = || Err(CallError::Unreachable("refused".into()));
        let timeout = || Err(CallError::Timeout(std::time::Duration::from_secs(3)));
        let garbage = || Ok(Bytes::from_static(&[0xff, 0xff, 0xff]));
        let table: Vec<(&str, Result<Bytes, CallError>, Policy, Json)> = vec![
            ("ok", reply(None), closed(), allow.clone()),
            (
                "rejection",
                reply(Some((20002, "m", "d"))),
                open(),
                reject(20002, "m", "d"),
            ),
            (
                "rejection code 0",
                reply(Some((0, "m", ""))),
                open(),
                reject(20001, "m", ""),
            ),
            (
                "rejection code < 0",
                reply(Some((-5, "m", ""))),
                open(),
                reject(20001, "m", ""),
            ),
            (
                "PERMISSION_DENIED",
                status(tonic::Code::PermissionDenied),
                open(),
                reject(20001, "msg", ""),
            ),
            (
                "INVALID_ARGUMENT",
                status(tonic::Code::InvalidArgument),
                open(),
                reject(20001, "msg", ""),
            ),
            (
                "FAILED_PRECONDITION",
                status(tonic::Code::FailedPrecondition),
                open(),
                reject(20001, "msg", ""),
            ),
            (
                "UNIMPLEMENTED open",
                status(tonic::Code::Unimplemented),
                open(),
                allow.clone(),
            ),
            (
                "UNIMPLEMENTED closed",
                status(tonic::Code::Unimplemented),
                closed(),
                allow.clone(),
            ),
            (
                "UNAVAILABLE open",
                status(tonic::Code::Unavailable),
                open(),
                allow.clone(),
            ),
            (
                "UNAVAILABLE closed",
                status(tonic::Code::Unavailable),
                closed(),
                reject(20500, "unavailable", "status"),
            ),
            (
                "INTERNAL closed",
                status(tonic::Code::Internal),
                closed(),
                reject(20500, "unavailable", "status"),
            ),
            (
                "DEADLINE closed",
                status(tonic::Code::DeadlineExceeded),
                closed(),
                reject(20500, "unavailable", "status"),
            ),
            ("unreachable open", unreachable(), open(), allow.clone()),
            (
                "unreachable closed",
                unreachable(),
                closed(),
                reject(20500, "unavailable", "unreachable"),
            ),
            (
                "timeout closed",
                timeout(),
                closed(),
                reject(20500, "unavailable", "timeout"),
            ),
            ("garbage open", garbage(), open(), allow.clone()),
            (
                "garbage closed",
                garbage(),
                closed(),
                reject(20500, "unavailable", "bad_reply"),
            ),
        ];
        for (name, result, policy, expected) in table {
            let decision = decide(entry, result, &policy);
            let target = Target {
                entry,
                request: None,
                policy: &policy,
            };
            let sent = crate::envelope::answer(&decision, Some(target));
            let env = render(&decision, Some(target));
            assert_eq!(Json::Object(env.body), expected, "{name}");
            assert_eq!(
                serde_json::from_slice::<Json>(&sent.bytes).ok(),
                Some(expected),
                "{name}"
            );
        }
    }

    #[test]
    fn rejection_details_round_trip() {
        let details = rejection_details(20333, "m", "d");
        let r = rejection_in_details(&details).expect("found");
        assert_eq!(
            (r.code, r.message.as_str(), r.detail.as_str()),
            (20333, "m", "d")
        );
        assert!(
            rejection_in_details(b"\xff\xff").is_none(),
            "garbage details are ignored"
        );
    }

    #[test]
    fn a_delivery_error_loses_the_status_message_only() {
        assert!(crate::telemetry::redact(), "on by default");
        let text = delivery_result(&Err(CallError::Status(tonic::Status::new(
            tonic::Code::Unavailable,
            "cannot store: hello bob",
        ))));
        let crate::spool::DeliveryResult::Retry(fault) = text else {
            panic!("{text:?}");
        };
        assert_eq!(fault.log_text(), "Unavailable: <redacted>");
        let text = fault.text();
        assert_eq!(
            crate::telemetry::delivery_error(&text),
            "Unavailable: <redacted>"
        );
        let reason = format!("gave up after 3 attempts: {text}");
        assert_eq!(
            crate::telemetry::delivery_error(&reason),
            "gave up after 3 attempts: Unavailable: <redacted>"
        );
        let plain = "gave up after 3 attempts: upstream did not answer within 1s";
        assert_eq!(crate::telemetry::delivery_error(plain), plain);
    }
}
