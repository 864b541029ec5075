//! The reply envelope and the reply safety rules (docs/commands.md, "OpenIM traps"), rendered once per request.
//!
//! Every exit of a callback is a [`Decision`] (`crate::decision`); [`answer`] is the one place
//! that turns it into the envelope OpenIM's Go decoder accepts: the five keys always present,
//! integers as numbers, override fields only when set, the command's safety rules applied on
//! every continue answer.
//!
//! Two paths, one answer: [`answer`] writes the envelope's bytes in one pass from the reply's
//! protobuf bytes (`crate::json::reply`), the rules reading and editing those bytes; [`render`]
//! is the tree path (the reply as a `DynamicMessage`, the rules applied on it, a JSON map), the
//! reference, which [`answer`] falls back to for whatever the one pass does not take. The fuzz
//! target `reply` holds both to the same bytes and the same [`Fix`]es.

use crate::catalog::{CommandEntry, Rule};
use crate::decision::{Decision, Policy, Reply};
use crate::json;
use crate::json::reply::{Edit, ReplyField, ReplyWriter, write_json};
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

impl Fix {
    fn filled(key: &str) -> Self {
        Self {
            field: key.into(),
            what: "filled from the request (OpenIM copies it unconditionally)",
            dropped: false,
        }
    }

    fn null_in_request(key: &str) -> Self {
        Self {
            field: key.into(),
            what: "dropped: the request had it null and OpenIM would crash overriding it",
            dropped: true,
        }
    }

    fn not_allowed(key: &str) -> Self {
        Self {
            field: key.into(),
            what: "dropped: overriding it fails the send when the message has none \
                   (set allow_offline_push_info to keep it)",
            dropped: true,
        }
    }

    fn entry_without(list: &str, key: &str) -> Self {
        Self {
            field: format!("{list}[].{key}"),
            what: "entry dropped: it has no userID and OpenIM would crash on it",
            dropped: true,
        }
    }

    fn not_object(key: &str) -> Self {
        Self {
            field: key.into(),
            what: "dropped: OpenIM fails the send unless it is a JSON object string",
            dropped: true,
        }
    }
}

/// Whether a string holds a JSON object, as the `JsonObjectString` rule asks.
fn is_json_object(s: &str) -> bool {
    serde_json::from_str::<Json>(s).is_ok_and(|j| j.is_object())
}

/// The envelope as sent: its JSON bytes, and the fixes for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The JSON object, with the five envelope keys first.
    pub bytes: Vec<u8>,
    /// Fields the safety rules dropped or filled.
    pub fixes: Vec<Fix>,
    /// Whether the one-pass writer wrote it (false: the tree path, [`render`]).
    pub one_pass: bool,
}

/// The OpenIM envelope as a JSON map: the tree path's answer.
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

/// The answer to a decision: written in one pass where the one-pass writer takes it, else by the
/// tree ([`render`]). `target` is `None` for an unknown command (a plain continue).
pub fn answer(decision: &Decision, target: Option<Target<'_>>) -> Answer {
    if let Some(answer) = answer_one_pass(decision, target) {
        return answer;
    }
    let env = render(decision, target);
    Answer {
        bytes: env.to_bytes(),
        fixes: env.fixes,
        one_pass: false,
    }
}

/// The five envelope keys, as `serde_json` writes [`Envelope::new`]'s map, without the closing
/// brace.
fn head(out: &mut Vec<u8>, code: i32, message: &str, detail: &str, next: i32) {
    out.extend_from_slice(b"{\"actionCode\":0,\"errCode\":");
    write_json(out, &code);
    out.extend_from_slice(b",\"errMsg\":");
    write_json(out, message);
    out.extend_from_slice(b",\"errDlt\":");
    write_json(out, detail);
    out.extend_from_slice(b",\"nextCode\":");
    write_json(out, &next);
}

fn answer_one_pass(decision: &Decision, target: Option<Target<'_>>) -> Option<Answer> {
    let mut out = Vec::with_capacity(128);
    let mut fixes = Vec::new();
    match decision {
        Decision::Reject {
            code,
            message,
            detail,
            ..
        } => head(&mut out, *code, message, detail, 1),
        Decision::Continue { reply, .. } => {
            let bytes: &[u8] = match reply {
                None => &[],
                Some(Reply::Encoded(b)) => b,
                Some(Reply::Decoded(_)) => return None,
            };
            out.reserve(bytes.len() * 2);
            head(&mut out, 0, "", "", 0);
            // After callbacks: OpenIM ignores the reply; nothing to override.
            if let Some(Target {
                entry,
                request,
                policy,
            }) = target
                && let Some(rejection) = &entry.rejection
            {
                let writer = &entry.reply;
                let mut edits = Vec::new();
                for rule in entry.row.rules {
                    edit(
                        *rule, writer, bytes, request, policy, &mut edits, &mut fixes,
                    )?;
                }
                let skip = writer.field_by_number(rejection.number());
                writer.write_members(bytes, skip, &edits, &mut out);
            }
        }
    }
    out.push(b'}');
    Some(Answer {
        bytes: out,
        fixes,
        one_pass: true,
    })
}

/// A rule on the reply's bytes, as [`apply`] does it on the tree: its changes become `edits`.
/// `None` when a rule would read or change a field an earlier rule changed (the tree applies the
/// rules one after another on the changed message): the tree path answers then.
fn edit(
    rule: Rule,
    writer: &ReplyWriter,
    bytes: &[u8],
    request: Option<&DynamicMessage>,
    policy: &Policy,
    edits: &mut Vec<(ReplyField, Edit)>,
    fixes: &mut Vec<Fix>,
) -> Option<()> {
    let untouched = |edits: &Vec<(ReplyField, Edit)>, f: ReplyField| {
        (!edits.iter().any(|(g, _)| *g == f)).then_some(())
    };
    let in_request = |key: &str| {
        request.is_some_and(|r| {
            r.descriptor()
                .get_field_by_json_name(key)
                .is_some_and(|qf| r.has_field(&qf))
        })
    };
    match rule {
        Rule::EchoFromRequest(keys) => {
            let Some(request) = request else {
                return Some(());
            };
            let req_desc = request.descriptor();
            for key in keys {
                let (Some(rf), Some(qf)) =
                    (writer.field(key), req_desc.get_field_by_json_name(key))
                else {
                    continue;
                };
                untouched(edits, rf)?;
                if !writer.has(bytes, rf) && (request.has_field(&qf) || !qf.supports_presence()) {
                    let value = json::encode_value(&request.get_field(&qf));
                    edits.push((rf, Edit::Fill(value)));
                    fixes.push(Fix::filled(key));
                }
            }
        }
        Rule::OnlyIfInRequest(keys) => {
            for key in keys {
                let Some(rf) = writer.field(key) else {
                    continue;
                };
                untouched(edits, rf)?;
                if writer.has(bytes, rf) && !in_request(key) {
                    edits.push((rf, Edit::Clear));
                    fixes.push(Fix::null_in_request(key));
                }
            }
        }
        Rule::DropUnlessAllowed(key) => {
            if let Some(rf) = writer.field(key)
                && !policy.allow_offline_push_info
            {
                untouched(edits, rf)?;
                if writer.has(bytes, rf) {
                    edits.push((rf, Edit::Clear));
                    fixes.push(Fix::not_allowed(key));
                }
            }
        }
        Rule::EntriesRequire { list, key } => {
            if let Some(lf) = writer.field(list) {
                untouched(edits, lf)?;
                // Not a list of messages (the catalogue rules it out): the tree's business.
                let (all, kept) = writer.entries_with(bytes, lf, key)?;
                if kept < all {
                    edits.push((lf, Edit::Require(key)));
                    fixes.extend((kept..all).map(|_| Fix::entry_without(list, key)));
                }
            }
        }
        Rule::JsonObjectString(key) => {
            if let Some(rf) = writer.field(key) {
                untouched(edits, rf)?;
                if writer.has(bytes, rf) && !writer.string(bytes, rf).is_some_and(is_json_object) {
                    edits.push((rf, Edit::Clear));
                    fixes.push(Fix::not_object(key));
                }
            }
        }
    }
    Some(())
}

/// Renders a decision as the envelope by the tree, applying the command's safety rules on
/// continue answers: the reference of [`answer`]. `target` is `None` for an unknown command (a
/// plain continue).
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
            let mut reply = reply.as_ref().map_or_else(
                || DynamicMessage::new(entry.response()),
                |r| r.message(entry).into_owned(),
            );
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
                    fixes.push(Fix::filled(key));
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
                    fixes.push(Fix::null_in_request(key));
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
                fixes.push(Fix::not_allowed(key));
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
                fixes.push(Fix::entry_without(list, key));
            }
        }
        Rule::JsonObjectString(key) => {
            let Some(rf) = reply_desc.get_field_by_json_name(key) else {
                return;
            };
            if !reply.has_field(&rf) {
                return;
            }
            if !reply.get_field(&rf).as_str().is_some_and(is_json_object) {
                reply.clear_field(&rf);
                fixes.push(Fix::not_object(key));
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
