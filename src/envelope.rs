//! The reply envelope and the decision "what does OpenIM get" (design §2 table, §3 rules).
//!
//! Every path of the gateway ends here: a service reply, a gRPC status, a transport failure, bad
//! input, an unknown command. [`decide`] turns the outcome into a [`Decision`]; [`respond`] applies
//! the command's reply safety rules and renders the envelope OpenIM's Go decoder accepts: the five
//! keys always present, integers as numbers, override fields only when set.

use crate::catalog::{Entry, Rule};
use crate::json;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use serde_json::{Map, Value as Json};

/// What a command does when its upstream cannot give an answer (design §2, last row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let the user's operation go on unchanged (fail open).
    Continue,
    /// Reject the operation with this code (fail closed).
    Reject {
        /// The errCode OpenIM passes to the client.
        code: i32,
        /// The errMsg OpenIM passes to the client.
        message: String,
    },
}

/// The per-command settings the decision needs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// What to do when the upstream fails.
    pub on_failure: FailurePolicy,
    /// The code used when a rejection carries a code <= 0 (OpenIM would show those as 500).
    pub default_reject_code: i32,
    /// Allow MsgModify replies to override `offlinePushInfo` (design §3).
    pub allow_offline_push_info: bool,
}

/// Why a call produced no usable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The upstream answered with a gRPC status that is not a rejection or UNIMPLEMENTED.
    #[error("upstream status {code:?}: {message}")]
    Status {
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// No answer within the command's deadline.
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The upstream could not be reached.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream answered with bytes that are not the reply message.
    #[error("upstream reply is not a valid {message}: {error}")]
    BadReply {
        /// The expected message type.
        message: String,
        /// The decode error.
        error: String,
    },
    /// The request from OpenIM could not be read.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The gateway is over its limits (e.g. the after-event spool is full).
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl CallFailure {
    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::BadReply { .. } => "bad_reply",
            Self::BadInput(_) => "bad_input",
            Self::Overloaded(_) => "overloaded",
        }
    }
}

/// What came back from the upstream for one call.
#[derive(Debug)]
pub enum Outcome {
    /// An OK reply, decoded.
    Reply(DynamicMessage),
    /// A non-OK gRPC status.
    Status(tonic::Status),
    /// No usable reply.
    Failed(CallFailure),
}

/// Why a continue answer has no service reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The service replied.
    Replied,
    /// The service does not implement this RPC.
    Unimplemented,
    /// The command is disabled in the config.
    Disabled,
    /// An after-event was accepted (spooled or delivered).
    Accepted,
    /// The failure policy let the operation go on.
    FailOpen(CallFailure),
    /// The command is unknown to the gateway.
    UnknownCommand,
}

/// What OpenIM will be told.
#[derive(Debug)]
pub enum Decision {
    /// Let the operation go on, with the service's modifications if any.
    Continue {
        /// The service's reply, whose set fields become overrides.
        reply: Option<DynamicMessage>,
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
        /// The failure behind a fail-closed rejection, `None` when the service rejected.
        failure: Option<CallFailure>,
    },
}

impl Decision {
    /// A label for logs and metrics: `allow`, `modify`, `reject`, `fail_open`, `fail_closed`, ….
    pub fn label(&self) -> &'static str {
        match self {
            Self::Continue {
                reason: Reason::Replied,
                reply: Some(_),
            } => "continue",
            Self::Continue {
                reason: Reason::Replied,
                reply: None,
            } => "continue",
            Self::Continue {
                reason: Reason::Unimplemented,
                ..
            } => "unimplemented",
            Self::Continue {
                reason: Reason::Disabled,
                ..
            } => "disabled",
            Self::Continue {
                reason: Reason::Accepted,
                ..
            } => "accepted",
            Self::Continue {
                reason: Reason::FailOpen(_),
                ..
            } => "fail_open",
            Self::Continue {
                reason: Reason::UnknownCommand,
                ..
            } => "unknown_command",
            Self::Reject { failure: None, .. } => "reject",
            Self::Reject {
                failure: Some(_), ..
            } => "fail_closed",
        }
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

/// Decides the answer for an upstream outcome (design §2 table).
pub fn decide(entry: &Entry, outcome: Outcome, policy: &Policy) -> Decision {
    let code_or_default = |code: i32| {
        if code > 0 {
            code
        } else {
            policy.default_reject_code
        }
    };
    match outcome {
        Outcome::Reply(reply) => {
            let rejection = entry
                .rejection
                .as_ref()
                .filter(|f| reply.has_field(f))
                .map(|f| reply.get_field(f).into_owned());
            match rejection {
                Some(Value::Message(r)) => {
                    let get_str = |name: &str| {
                        r.get_field_by_name(name)
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    };
                    let code = r
                        .get_field_by_name("code")
                        .and_then(|v| v.as_i32())
                        .unwrap_or_default();
                    Decision::Reject {
                        code: code_or_default(code),
                        message: get_str("message"),
                        detail: get_str("detail"),
                        failure: None,
                    }
                }
                _ => Decision::Continue {
                    reply: Some(reply),
                    reason: Reason::Replied,
                },
            }
        }
        Outcome::Status(status) => match status.code() {
            tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition => {
                let detail = rejection_in_details(status.details());
                let message = if status.message().is_empty() {
                    detail
                        .as_ref()
                        .map(|d| d.message.clone())
                        .unwrap_or_default()
                } else {
                    status.message().to_owned()
                };
                Decision::Reject {
                    code: code_or_default(detail.as_ref().map_or(0, |d| d.code)),
                    message,
                    detail: detail.map(|d| d.detail).unwrap_or_default(),
                    failure: None,
                }
            }
            tonic::Code::Unimplemented => Decision::Continue {
                reply: None,
                reason: Reason::Unimplemented,
            },
            code => fail(
                CallFailure::Status {
                    code,
                    message: status.message().to_owned(),
                },
                policy,
            ),
        },
        Outcome::Failed(failure) => fail(failure, policy),
    }
}

/// The failure policy's decision for a failure.
pub fn fail(failure: CallFailure, policy: &Policy) -> Decision {
    match &policy.on_failure {
        FailurePolicy::Continue => Decision::Continue {
            reply: None,
            reason: Reason::FailOpen(failure),
        },
        FailurePolicy::Reject { code, message } => Decision::Reject {
            code: if *code > 0 {
                *code
            } else {
                policy.default_reject_code
            },
            message: message.clone(),
            detail: failure.label().to_owned(),
            failure: Some(failure),
        },
    }
}

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
pub fn rejection_details(code: i32, message: &str, detail: &str) -> bytes::Bytes {
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

/// A dropped or filled field, for the log line that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    /// The reply key.
    pub field: String,
    /// What was done and why.
    pub what: &'static str,
    /// True when something the service sent was dropped (worth a warning); false when the
    /// gateway only filled in what OpenIM needs (the normal path of the echo rule).
    pub dropped: bool,
}

/// The OpenIM envelope, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The JSON object, with the five envelope keys first.
    pub body: Map<String, Json>,
    /// Fields the safety rules dropped or filled.
    pub fixes: Vec<Fix>,
}

impl Envelope {
    /// An allow envelope with no overrides.
    pub fn allow() -> Self {
        Self::new(0, 0, "", "", 0)
    }

    /// A rejection envelope: `actionCode 0, nextCode 1, errCode code`.
    pub fn reject(code: i32, message: &str, detail: &str) -> Self {
        Self::new(0, code, message, detail, 1)
    }

    fn new(action: i32, code: i32, message: &str, detail: &str, next: i32) -> Self {
        let mut body = Map::new();
        body.insert("actionCode".into(), action.into());
        body.insert("errCode".into(), code.into());
        body.insert("errMsg".into(), message.into());
        body.insert("errDlt".into(), detail.into());
        body.insert("nextCode".into(), next.into());
        Self {
            body,
            fixes: Vec::new(),
        }
    }

    /// The body as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a map of JSON values cannot fail.
        serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Renders a decision as the envelope for `entry`, applying its safety rules on continue answers.
///
/// `request` is what OpenIM sent (as far as it could be read); the echo rules fill from it.
pub fn respond(
    entry: &Entry,
    decision: &Decision,
    request: Option<&DynamicMessage>,
    policy: &Policy,
) -> Envelope {
    match decision {
        Decision::Reject {
            code,
            message,
            detail,
            ..
        } => Envelope::reject(*code, message, detail),
        Decision::Continue { reply, .. } => {
            let mut env = Envelope::allow();
            if entry.rejection.is_none() {
                // After callbacks: OpenIM ignores the reply; nothing to override.
                return env;
            }
            let mut reply = reply
                .clone()
                .unwrap_or_else(|| DynamicMessage::new(entry.response()));
            for rule in entry.row.rules {
                apply(*rule, &mut reply, request, policy, &mut env.fixes);
            }
            for (k, v) in json::encode(&reply, &[crate::catalog::REJECTION_FIELD]) {
                env.body.insert(k, v);
            }
            env
        }
    }
}

fn apply(
    rule: Rule,
    reply: &mut DynamicMessage,
    request: Option<&DynamicMessage>,
    policy: &Policy,
    fixes: &mut Vec<Fix>,
) {
    let reply_desc = reply.descriptor();
    match rule {
        Rule::EchoFromRequest(keys) => {
            let Some(request) = request else { return };
            let req_desc = request.descriptor();
            for key in keys {
                let (Some(rf), Some(qf)) = (
                    reply_desc.get_field_by_json_name(key),
                    req_desc.get_field_by_json_name(key),
                ) else {
                    continue;
                };
                if !reply.has_field(&rf) && (request.has_field(&qf) || !qf.supports_presence()) {
                    reply.set_field(&rf, request.get_field(&qf).into_owned());
                    fixes.push(Fix {
                        field: (*key).into(),
                        what: "filled from the request (OpenIM copies it unconditionally)",
                        dropped: false,
                    });
                }
            }
        }
        Rule::OnlyIfInRequest(keys) => {
            for key in keys {
                let Some(rf) = reply_desc.get_field_by_json_name(key) else {
                    continue;
                };
                if !reply.has_field(&rf) {
                    continue;
                }
                let in_request = request.is_some_and(|r| {
                    r.descriptor()
                        .get_field_by_json_name(key)
                        .is_some_and(|qf| r.has_field(&qf))
                });
                if !in_request {
                    reply.clear_field(&rf);
                    fixes.push(Fix {
                        field: (*key).into(),
                        what: "dropped: the request had it null and OpenIM would crash overriding it",
                        dropped: true,
                    });
                }
            }
        }
        Rule::DropUnlessAllowed(key) => {
            if policy.allow_offline_push_info {
                return;
            }
            if let Some(rf) = reply_desc.get_field_by_json_name(key)
                && reply.has_field(&rf)
            {
                reply.clear_field(&rf);
                fixes.push(Fix {
                    field: key.into(),
                    what: "dropped: overriding it fails the send when the message has none \
                           (set allow_offline_push_info to keep it)",
                    dropped: true,
                });
            }
        }
        Rule::EntriesRequire { list, key } => {
            let Some(lf) = reply_desc.get_field_by_json_name(list) else {
                return;
            };
            let Value::List(items) = reply.get_field_mut(&lf) else {
                return;
            };
            let before = items.len();
            items.retain(|item| match item {
                Value::Message(m) => m
                    .descriptor()
                    .get_field_by_json_name(key)
                    .is_some_and(|kf| m.has_field(&kf)),
                _ => false,
            });
            for _ in items.len()..before {
                fixes.push(Fix {
                    field: format!("{list}[].{key}"),
                    what: "entry dropped: it has no userID and OpenIM would crash on it",
                    dropped: true,
                });
            }
        }
        Rule::JsonObjectString(key) => {
            let Some(rf) = reply_desc.get_field_by_json_name(key) else {
                return;
            };
            if !reply.has_field(&rf) {
                return;
            }
            let is_object = reply
                .get_field(&rf)
                .as_str()
                .and_then(|s| serde_json::from_str::<Json>(s).ok())
                .is_some_and(|j| j.is_object());
            if !is_object {
                reply.clear_field(&rf);
                fixes.push(Fix {
                    field: key.into(),
                    what: "dropped: OpenIM fails the send unless it is a JSON object string",
                    dropped: true,
                });
            }
        }
    }
}

/// Reads an OpenIM reply body the way OpenIM's decoder does, into the contract's response message:
/// `actionCode == 0 && nextCode == 1` becomes `rejection`, the other keys become fields. This is the
/// inverse of [`respond`], used to check replies against OpenIM's own sample replies.
pub fn read_reply(entry: &Entry, body: &Map<String, Json>) -> json::Decoded {
    let envelope_keys = ["actionCode", "errCode", "errMsg", "errDlt", "nextCode"];
    let fields: Map<String, Json> = body
        .iter()
        .filter(|(k, _)| !envelope_keys.iter().any(|e| e.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut decoded = json::decode_object(&entry.response(), &fields);
    let int = |k: &str| body.get(k).and_then(Json::as_i64).unwrap_or(0);
    let text = |k: &str| body.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
    if let Some(rf) = &entry.rejection
        && int("actionCode") == 0
        && int("nextCode") == 1
        && let prost_reflect::Kind::Message(rd) = rf.kind()
    {
        let mut r = DynamicMessage::new(rd);
        r.set_field_by_name("code", Value::I32(int("errCode") as i32));
        r.set_field_by_name("message", Value::String(text("errMsg")));
        r.set_field_by_name("detail", Value::String(text("errDlt")));
        decoded.message.set_field(rf, Value::Message(r));
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::load(crate::proto::pool().expect("pool"), crate::proto::PACKAGE)
            .expect("catalogue")
    }

    fn policy(on_failure: FailurePolicy) -> Policy {
        Policy {
            on_failure,
            default_reject_code: 20001,
            allow_offline_push_info: false,
        }
    }

    fn status(code: tonic::Code) -> Outcome {
        Outcome::Status(tonic::Status::new(code, "msg"))
    }

    /// The design §2 table, row by row: outcome × failure policy → envelope.
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
            Outcome::Reply(m)
        };
        let open = || policy(FailurePolicy::Continue);
        let closed = || {
            policy(FailurePolicy::Reject {
                code: 20500,
                message: "unavailable".into(),
            })
        };
        let allow = json!({"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0});
        let reject = |code: i32, msg: &str, dlt: &str| json!({"actionCode":0,"errCode":code,"errMsg":msg,"errDlt":dlt,"nextCode":1});
        let unreachable = || Outcome::Failed(CallFailure::Unreachable("refused".into()));
        let timeout = || Outcome::Failed(CallFailure::Timeout(std::time::Duration::from_secs(3)));
        let table: Vec<(&str, Outcome, Policy, Json)> = vec![
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
        ];
        for (name, outcome, policy, expected) in table {
            let decision = decide(entry, outcome, &policy);
            let env = respond(entry, &decision, None, &policy);
            assert_eq!(Json::Object(env.body), expected, "{name}");
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
    fn envelope_keys_come_first_and_integers_are_numbers() {
        let text =
            String::from_utf8(Envelope::reject(20001, "a\"b", "<d>").to_bytes()).expect("utf8");
        assert_eq!(
            text,
            r#"{"actionCode":0,"errCode":20001,"errMsg":"a\"b","errDlt":"<d>","nextCode":1}"#
        );
    }
}
