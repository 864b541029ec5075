//! The reply envelope and the reply safety rules (docs/commands.md, "OpenIM traps"), rendered once per request.
//!
//! Every exit of a callback is a [`Decision`] (`crate::decision`); [`render`] is the one place
//! that turns it into the envelope OpenIM's Go decoder accepts: the five keys always present,
//! integers as numbers, override fields only when set, the command's safety rules applied on
//! every continue answer.

use crate::catalog::{CommandEntry, Rule};
use crate::decision::{Decision, Policy};
use crate::json;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use serde_json::{Map, Value as Json};

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

/// The known command a decision answers, with what OpenIM sent and the command's policy.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The catalogue entry.
    pub entry: &'a CommandEntry,
    /// What OpenIM sent, as far as it could be read; the echo rules fill from it.
    pub request: Option<&'a DynamicMessage>,
    /// The command's policy.
    pub policy: &'a Policy,
}

/// Renders a decision as the envelope, applying the command's safety rules on continue answers.
/// `target` is `None` for an unknown command (a plain continue).
pub fn render(decision: &Decision, target: Option<Target<'_>>) -> Envelope {
    match decision {
        Decision::Reject {
            code,
            message,
            detail,
            ..
        } => Envelope::reject(*code, message, detail),
        Decision::Continue { reply, .. } => {
            let mut env = Envelope::allow();
            let Some(Target {
                entry,
                request,
                policy,
            }) = target
            else {
                return env;
            };
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
/// inverse of [`render`], used to check replies against OpenIM's own sample replies.
pub fn read_reply(entry: &CommandEntry, body: &Map<String, Json>) -> json::Decoded {
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
