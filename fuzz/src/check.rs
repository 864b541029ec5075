//! The fuzz harness: how raw bytes become a command, a policy, an OpenIM body or an upstream reply,
//! and the invariants every answer of the gateway must satisfy.
//!
//! This file is the fuzz crate's module *and* is included (`#[path]`) by the gateway's
//! `tests/it/fuzz_regressions.rs`, so a regression test runs exactly the checks the fuzzer ran. It
//! uses only crates the gateway itself depends on.
//!
//! The invariants (design §3) are derived from the catalogue (`entry.row.rules`), not written per
//! command:
//!
//! - the envelope serialises to a JSON object whose first five keys are `actionCode, errCode,
//!   errMsg, errDlt, nextCode`, the three codes JSON integers, the two texts strings;
//! - `actionCode` is 0; a continue is `errCode 0, nextCode 0` with empty texts, a rejection is
//!   `nextCode 1, errCode > 0` with no override field;
//! - every other key is a JSON name of the response message (never `rejection`), and none equals
//!   an envelope key case-insensitively (Go decodes keys case-insensitively);
//! - an override is exactly what the service set (`json::encode_field`), except where a rule says
//!   otherwise, and then the rule holds: `DropUnlessAllowed` keys only with the switch on,
//!   `OnlyIfInRequest` keys only when the request had them, `JsonObjectString` keys only as a string
//!   holding a JSON object, `EntriesRequire` lists only with entries that carry their key,
//!   `EchoFromRequest` keys always when the request had them;
//! - the decision is the one design §2 gives for the reply or status;
//! - the one-pass answer (`decision::decide` + `envelope::answer`: the envelope written from the
//!   reply's bytes) is byte for byte the tree's (`decision::decide_by_tree` + `envelope::render`:
//!   a `DynamicMessage`, the rules on it, a JSON map), with the same fixes; and bytes the one-pass
//!   writer takes are bytes the tree decodes.

use bytes::Bytes;
use openim_callback_gateway::catalog::{Catalog, CommandEntry, Phase, REJECTION_FIELD, Rule};
use openim_callback_gateway::decision::{
    self, Decision, Failure, FailurePolicy, Policy, Reason, Reply,
};
use openim_callback_gateway::envelope::{self, Envelope, Target};
use openim_callback_gateway::json;
use openim_callback_gateway::upstream::CallError;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;

/// The five envelope keys, in the order the gateway writes them.
pub const ENVELOPE_KEYS: [&str; 5] = ["actionCode", "errCode", "errMsg", "errDlt", "nextCode"];

/// The fail-closed code of the fuzzed policies.
pub const REJECT_CODE: i32 = 20001;

/// The catalogue and each command's real OpenIM request, loaded once.
pub struct Harness {
    /// All 52 entries, in catalogue order.
    pub entries: Vec<&'static CommandEntry>,
    /// The 23 before entries, in catalogue order.
    pub before: Vec<&'static CommandEntry>,
    requests: HashMap<&'static str, DynamicMessage>,
}

impl Harness {
    /// Loads the catalogue and decodes `<payloads>/<command>.json` for every command.
    pub fn new(payloads: &Path) -> Self {
        let catalog = Catalog::contract().expect("the contract's catalogue loads");
        let entries: Vec<&'static CommandEntry> = catalog.entries().collect();
        assert_eq!(entries.len(), 52);
        let before = entries
            .iter()
            .copied()
            .filter(|e| e.phase == Phase::Before)
            .collect();
        let requests = entries
            .iter()
            .map(|e| {
                let path = payloads.join(format!("{}.json", e.row.command));
                let body =
                    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                let decoded = json::decode(&e.request(), &body).expect("real payload decodes");
                assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
                (e.row.command, decoded.message)
            })
            .collect();
        Self {
            entries,
            before,
            requests,
        }
    }

    /// The real OpenIM request of a command.
    pub fn request(&self, command: &str) -> &DynamicMessage {
        &self.requests[command]
    }

    /// `decode`'s first byte: the command at `b % 52` in catalogue order.
    pub fn decode_command(&self, b: u8) -> &'static CommandEntry {
        self.entries[usize::from(b) % self.entries.len()]
    }

    /// `reply`/`status`'s first byte: `0..=127` a before command (`b % 23`), `128..=255` any
    /// command (`(b - 128) % 52`).
    pub fn reply_command(&self, b: u8) -> &'static CommandEntry {
        if b < 128 {
            self.before[usize::from(b) % self.before.len()]
        } else {
            self.entries[usize::from(b - 128) % self.entries.len()]
        }
    }

    /// The `decode` command byte of a command.
    pub fn decode_byte(&self, command: &str) -> u8 {
        let i = self.entries.iter().position(|e| e.row.command == command);
        u8::try_from(i.expect("known command")).expect("52 < 256")
    }

    /// The `reply`/`status` command byte of a command.
    pub fn reply_byte(&self, command: &str) -> u8 {
        match self.before.iter().position(|e| e.row.command == command) {
            Some(i) => u8::try_from(i).expect("23 < 128"),
            None => 128 + self.decode_byte(command),
        }
    }
}

/// The policy byte: bit 0 fail closed (`reject`) instead of open, bit 1
/// `allow_offline_push_info`; bit 2 (for `reply`/`status`) an empty request instead of the real
/// one.
pub fn policy(b: u8) -> Policy {
    Policy {
        on_failure: if b & 1 == 0 {
            FailurePolicy::Continue
        } else {
            FailurePolicy::Reject
        },
        reject_code: REJECT_CODE,
        reject_message: "callback service unavailable".into(),
        allow_offline_push_info: b & 2 != 0,
    }
}

fn request_for<'h>(
    h: &'h Harness,
    entry: &CommandEntry,
    policy_byte: u8,
    empty: &'h DynamicMessage,
) -> &'h DynamicMessage {
    if policy_byte & 4 == 0 {
        h.request(entry.row.command)
    } else {
        empty
    }
}

/// Target `decode`: `[command, body…]`. Decodes the body as OpenIM JSON; on success round-trips
/// it through protobuf and through the JSON codec and renders the disabled-command continue;
/// on failure renders the bad-input answer of both failure policies.
pub fn decode(h: &Harness, data: &[u8]) {
    let Some((&b, body)) = data.split_first() else {
        return;
    };
    let entry = h.decode_command(b);
    let desc = entry.request();
    let slow = json::decode(&desc, body);
    // The hot path's one-pass transcoder either hands the body back or means exactly what the
    // tree decoder reads: the same message, the same unknown keys, and no field errors.
    if let Some(fast) = entry.transcoder.transcode(body) {
        let slow = slow
            .as_ref()
            .expect("the transcoder took a body the tree decoder refuses");
        assert!(
            slow.errors.is_empty(),
            "the transcoder took a body with field errors: {:?}",
            slow.errors
        );
        assert_eq!(
            fast.unknown_keys, slow.unknown_keys,
            "transcoder unknown keys"
        );
        let got = DynamicMessage::decode(desc.clone(), fast.payload.as_slice())
            .expect("the transcoder's protobuf decodes");
        let want = DynamicMessage::decode(desc.clone(), slow.message.encode_to_vec().as_slice())
            .expect("the gateway's own protobuf decodes");
        assert_eq!(got, want, "transcoder and tree decoder differ");
    }
    match slow {
        Err(_) => {
            for p in [policy(0), policy(1)] {
                let d = decision::fail(Failure::BadInput("fuzz".into()), &p);
                let target = Target {
                    entry,
                    request: None,
                    policy: &p,
                };
                let env = envelope::render(&d, Some(target));
                check_answer(entry, None, &p, &d, &env);
                same_answer(&d, &d, target);
            }
        }
        Ok(decoded) => {
            let msg = &decoded.message;
            let json_form = json::encode(msg, &[]);
            // Protobuf: what the gateway sends upstream decodes back to the same message.
            let wire = msg.encode_to_vec();
            let back = DynamicMessage::decode(desc.clone(), wire.as_slice())
                .expect("the gateway's own protobuf decodes");
            assert_eq!(json::encode(&back, &[]), json_form, "protobuf round trip");
            // JSON: the encoder's output is read back without a problem, to the same message.
            let again = json::decode_object(&desc, &json_form);
            assert!(again.errors.is_empty(), "{:?}", again.errors);
            assert!(again.unknown_keys.is_empty(), "{:?}", again.unknown_keys);
            assert_eq!(
                json::encode(&again.message, &[]),
                json_form,
                "JSON round trip"
            );
            // The answer to a disabled command, filled from this request.
            let p = policy(0);
            let d = Decision::continue_for(Reason::Disabled);
            let target = Target {
                entry,
                request: Some(msg),
                policy: &p,
            };
            let env = envelope::render(&d, Some(target));
            check_answer(entry, Some(msg), &p, &d, &env);
            same_answer(&d, &d, target);
        }
    }
}

/// The one-pass answer of `fast` (`decision::decide`) is the tree's answer of `tree`
/// (`decision::decide_by_tree`) for the same call result: the same envelope bytes, the same
/// fixes, the same outcome. Returns whether the one pass wrote it.
pub fn same_answer(fast: &Decision, tree: &Decision, target: Target<'_>) -> bool {
    assert_eq!(
        fast.outcome(),
        tree.outcome(),
        "one pass and tree decide alike"
    );
    let one = envelope::answer(fast, Some(target));
    let reference = envelope::render(tree, Some(target));
    assert_eq!(
        String::from_utf8_lossy(&one.bytes),
        String::from_utf8_lossy(&reference.to_bytes()),
        "one-pass envelope and tree envelope differ (one pass: {})",
        one.one_pass
    );
    assert_eq!(one.fixes, reference.fixes, "one-pass and tree fixes differ");
    one.one_pass
}

/// The one-pass path against the tree path for one OK reply: both decisions and both answers
/// (see [`same_answer`]); bytes the one-pass writer takes must be bytes the tree decodes.
/// Returns whether the answer was written in one pass.
pub fn one_pass_is_the_tree(entry: &CommandEntry, reply: &[u8], target: Target<'_>) -> bool {
    let takes = entry.reply.takes(reply);
    if takes {
        assert!(
            DynamicMessage::decode(entry.response(), reply).is_ok(),
            "the one-pass writer took bytes the tree refuses: {reply:?}"
        );
    }
    let bytes = Bytes::copy_from_slice(reply);
    let fast = decision::decide(entry, Ok(bytes.clone()), target.policy);
    let tree = decision::decide_by_tree(entry, Ok(bytes), target.policy);
    if takes {
        assert!(
            !matches!(
                fast,
                Decision::Continue {
                    reply: Some(Reply::Decoded(_)),
                    ..
                }
            ),
            "a reply the writer takes is kept encoded"
        );
    }
    same_answer(&fast, &tree, target)
}

/// Target `reply`: `[command, policy, reply bytes…]`. The bytes are the upstream's OK reply.
pub fn reply(h: &Harness, data: &[u8]) {
    let [b0, b1, rest @ ..] = data else {
        return;
    };
    let entry = h.reply_command(*b0);
    let p = policy(*b1);
    let empty = DynamicMessage::new(entry.request());
    let request = request_for(h, entry, *b1, &empty);
    let d = decision::decide(entry, Ok(Bytes::copy_from_slice(rest)), &p);
    // The decision design §2 gives for these bytes.
    match DynamicMessage::decode(entry.response(), rest) {
        Err(_) => assert_policy(&d, &p, "bad_reply"),
        Ok(reply) => match entry.rejection.as_ref().filter(|f| reply.has_field(f)) {
            Some(rf) => {
                let r = reply.get_field(rf);
                let r = r.as_message().expect("rejection is a message");
                let text = |n: &str| {
                    r.get_field_by_name(n)
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                let code = r
                    .get_field_by_name("code")
                    .and_then(|v| v.as_i32())
                    .unwrap_or_default();
                let Decision::Reject {
                    code: got,
                    message,
                    detail,
                    failure: None,
                } = &d
                else {
                    panic!("a reply with a rejection must reject: {d:?}");
                };
                assert_eq!(*got, if code > 0 { code } else { p.reject_code });
                assert_eq!(*message, text("message"));
                assert_eq!(*detail, text("detail"));
            }
            None => {
                let Decision::Continue {
                    reply: Some(got),
                    reason: Reason::Replied,
                } = &d
                else {
                    panic!("a reply without a rejection must continue with it: {d:?}");
                };
                assert_eq!(
                    json::encode(&got.message(entry), &[]),
                    json::encode(&reply, &[])
                );
            }
        },
    }
    let target = Target {
        entry,
        request: Some(request),
        policy: &p,
    };
    let env = envelope::render(&d, Some(target));
    check_answer(entry, Some(request), &p, &d, &env);
    one_pass_is_the_tree(entry, rest, target);
}

/// Target `status`: `[command, policy, code, message length, message…, details…]`. The upstream
/// failed with that gRPC status (code `% 20`, so a few unknown codes too).
pub fn status(h: &Harness, data: &[u8]) {
    let [b0, b1, code, len, rest @ ..] = data else {
        return;
    };
    let entry = h.reply_command(*b0);
    let p = policy(*b1);
    let empty = DynamicMessage::new(entry.request());
    let request = request_for(h, entry, *b1, &empty);
    let n = usize::from(*len).min(rest.len());
    let message = String::from_utf8_lossy(&rest[..n]).into_owned();
    let code = tonic::Code::from(i32::from(*code % 20));
    let status =
        tonic::Status::with_details(code, message.clone(), Bytes::copy_from_slice(&rest[n..]));
    let d = decision::decide(entry, Err(CallError::Status(status)), &p);
    match decision::sync_status(code) {
        decision::SyncStatus::Reject => {
            let Decision::Reject {
                code, message: m, ..
            } = &d
            else {
                panic!("{code:?} must reject: {d:?}");
            };
            assert!(*code > 0);
            if !message.is_empty() {
                assert_eq!(*m, message, "errMsg is the status message");
            }
        }
        decision::SyncStatus::Continue => assert!(
            matches!(
                &d,
                Decision::Continue {
                    reply: None,
                    reason: Reason::Unimplemented
                }
            ),
            "{d:?}"
        ),
        decision::SyncStatus::Fail => assert_policy(&d, &p, "status"),
    }
    let target = Target {
        entry,
        request: Some(request),
        policy: &p,
    };
    let env = envelope::render(&d, Some(target));
    check_answer(entry, Some(request), &p, &d, &env);
    same_answer(&d, &d, target);
}

/// `d` is the failure policy's answer for a failure labelled `label`.
fn assert_policy(d: &Decision, p: &Policy, label: &str) {
    match p.on_failure {
        FailurePolicy::Continue => assert!(
            matches!(
                d,
                Decision::Continue {
                    reply: None,
                    reason: Reason::FailOpen(_)
                }
            ),
            "{d:?}"
        ),
        FailurePolicy::Reject => {
            let Decision::Reject {
                code,
                message,
                detail,
                failure: Some(_),
            } = d
            else {
                panic!("fail closed must reject: {d:?}");
            };
            assert_eq!(*code, p.reject_code);
            assert_eq!(*message, p.reject_message);
            assert_eq!(detail, label);
        }
    }
}

/// The envelope as OpenIM's decoder sees it: valid JSON, an object, the five keys first with
/// their types. Returns the parsed object.
pub fn check_envelope(env: &Envelope) -> Map<String, Json> {
    let bytes = env.to_bytes();
    let parsed: Json = serde_json::from_slice(&bytes).expect("the envelope is JSON");
    assert_eq!(
        parsed,
        Json::Object(env.body.clone()),
        "serialises faithfully"
    );
    let Json::Object(obj) = parsed else {
        panic!("the envelope is not an object: {parsed}");
    };
    let first: Vec<&str> = obj.keys().take(5).map(String::as_str).collect();
    assert_eq!(first, ENVELOPE_KEYS, "the five envelope keys come first");
    for k in ["actionCode", "errCode", "nextCode"] {
        let v = &obj[k];
        assert!(
            (v.is_i64() || v.is_u64()) && v.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            "{k} must be a JSON integer (Go int), got {v}"
        );
    }
    for k in ["errMsg", "errDlt"] {
        assert!(obj[k].is_string(), "{k} must be a string, got {}", obj[k]);
    }
    obj
}

/// The full check of one answer: envelope shape, decision ↔ envelope, override rules.
pub fn check_answer(
    entry: &CommandEntry,
    request: Option<&DynamicMessage>,
    policy: &Policy,
    decision: &Decision,
    env: &Envelope,
) {
    let obj = check_envelope(env);
    let int = |k: &str| obj[k].as_i64().unwrap_or(-1);
    let text = |k: &str| obj[k].as_str().unwrap_or("").to_owned();
    assert_eq!(int("actionCode"), 0);
    match decision {
        Decision::Reject {
            code,
            message,
            detail,
            ..
        } => {
            assert!(
                int("nextCode") == 1 && int("errCode") > 0,
                "a rejection is nextCode 1, errCode > 0"
            );
            assert_eq!(int("errCode"), i64::from(*code));
            assert_eq!(text("errMsg"), *message);
            assert_eq!(text("errDlt"), *detail);
            assert_eq!(obj.len(), 5, "a rejection carries no override: {obj:?}");
        }
        Decision::Continue { reply, .. } => {
            assert_eq!((int("nextCode"), int("errCode")), (0, 0));
            assert_eq!(
                (text("errMsg"), text("errDlt")),
                (String::new(), String::new())
            );
            check_overrides(entry, request, policy, reply.as_ref(), &obj);
        }
    }
}

fn check_overrides(
    entry: &CommandEntry,
    request: Option<&DynamicMessage>,
    policy: &Policy,
    reply: Option<&Reply>,
    obj: &Map<String, Json>,
) {
    let overrides: Vec<&String> = obj
        .keys()
        .filter(|k| !ENVELOPE_KEYS.contains(&k.as_str()))
        .collect();
    if entry.phase == Phase::After {
        assert!(overrides.is_empty(), "after answers carry no override");
        return;
    }
    let resp = entry.response();
    for k in &overrides {
        assert!(
            !ENVELOPE_KEYS.iter().any(|e| e.eq_ignore_ascii_case(k)),
            "override `{k}` shadows an envelope key for Go's case-insensitive decoder"
        );
        let f = resp
            .get_field_by_json_name(k)
            .unwrap_or_else(|| panic!("override `{k}` is not a key of {}", resp.name()));
        assert_ne!(f.name(), REJECTION_FIELD, "rejection is not an OpenIM key");
    }
    let reply = reply.map_or_else(
        || DynamicMessage::new(resp.clone()),
        |r| r.message(entry).into_owned(),
    );
    let reply = &reply;
    let req_has = |key: &str| {
        request.is_some_and(|r| {
            r.descriptor()
                .get_field_by_json_name(key)
                .is_some_and(|qf| r.has_field(&qf))
        })
    };
    let field = |key: &str| resp.get_field_by_json_name(key).expect("rule key");
    let mut ruled: Vec<&str> = Vec::new();
    for rule in entry.row.rules {
        match *rule {
            Rule::EchoFromRequest(keys) => {
                for &key in keys {
                    ruled.push(key);
                    let rf = field(key);
                    let qf = request.and_then(|r| r.descriptor().get_field_by_json_name(key));
                    let mut filled = reply.clone();
                    if !reply.has_field(&rf)
                        && let (Some(r), Some(qf)) = (request, &qf)
                        && (r.has_field(qf) || !qf.supports_presence())
                    {
                        filled.set_field(&rf, r.get_field(qf).into_owned());
                    }
                    assert_eq!(
                        obj.get(key),
                        json::encode_field(&filled, &rf).as_ref(),
                        "echo `{key}`: the service's value, else the request's"
                    );
                    if req_has(key) {
                        assert!(obj.contains_key(key), "echo `{key}` present");
                    }
                }
            }
            Rule::OnlyIfInRequest(keys) => {
                for &key in keys {
                    ruled.push(key);
                    if req_has(key) {
                        assert_eq!(
                            obj.get(key),
                            json::encode_field(reply, &field(key)).as_ref()
                        );
                    } else {
                        assert!(
                            !obj.contains_key(key),
                            "`{key}` was null in the request: it must not be overridden"
                        );
                    }
                }
            }
            Rule::DropUnlessAllowed(key) => {
                ruled.push(key);
                if policy.allow_offline_push_info {
                    assert_eq!(
                        obj.get(key),
                        json::encode_field(reply, &field(key)).as_ref()
                    );
                } else {
                    assert!(!obj.contains_key(key), "`{key}` only when allowed");
                }
            }
            Rule::EntriesRequire { list, key } => {
                ruled.push(list);
                if let Some(v) = obj.get(list) {
                    let items = v.as_array().expect("a list");
                    for item in items {
                        let item = item.as_object().expect("list entries are objects");
                        assert!(
                            item.get(key).is_some_and(|v| !v.is_null()),
                            "`{list}` entry without `{key}`: {item:?}"
                        );
                    }
                }
                let lf = field(list);
                let kept: Vec<Value> = match reply.get_field(&lf).as_ref() {
                    Value::List(items) => items
                        .iter()
                        .filter(|i| {
                            i.as_message().is_some_and(|m| {
                                m.descriptor()
                                    .get_field_by_json_name(key)
                                    .is_some_and(|kf| m.has_field(&kf))
                            })
                        })
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                };
                let expected = (!kept.is_empty()).then(|| json::encode_value(&Value::List(kept)));
                assert_eq!(
                    obj.get(list),
                    expected.as_ref(),
                    "`{list}`: the valid entries"
                );
            }
            Rule::JsonObjectString(key) => {
                ruled.push(key);
                if let Some(v) = obj.get(key) {
                    let s = v.as_str().expect("a JSON object string is a string");
                    let parsed: Json = serde_json::from_str(s).expect("holds JSON");
                    assert!(parsed.is_object(), "`{key}` holds a JSON object");
                }
                let expected = json::encode_field(reply, &field(key)).filter(|v| {
                    v.as_str()
                        .and_then(|s| serde_json::from_str::<Json>(s).ok())
                        .is_some_and(|j| j.is_object())
                });
                assert_eq!(obj.get(key), expected.as_ref());
            }
        }
    }
    for f in resp.fields() {
        let key = f.json_name();
        if f.name() == REJECTION_FIELD || ruled.contains(&key) {
            continue;
        }
        assert_eq!(
            obj.get(key),
            json::encode_field(reply, &f).as_ref(),
            "override `{key}` is exactly what the service set"
        );
    }
}

/// The seed inputs of each target, from the real payloads and sample replies in `payloads`:
/// `(target, file name, bytes)`.
pub fn seeds(h: &Harness, payloads: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in &h.entries {
        let command = entry.row.command;
        let body = std::fs::read(payloads.join(format!("{command}.json"))).expect("payload");
        let body: Json = serde_json::from_slice(&body).expect("payload JSON");
        // Go's wire form: compact plus a newline.
        let mut wire = serde_json::to_vec(&body).expect("serialises");
        wire.push(b'\n');
        let mut input = vec![h.decode_byte(command)];
        input.extend_from_slice(&wire);
        out.push(("decode", command.to_owned(), input));
        let sample = payloads.join(format!("{command}.response.json"));
        if let Ok(text) = std::fs::read(&sample) {
            let json: Json = serde_json::from_slice(&text).expect("sample reply JSON");
            let obj = json.as_object().expect("sample reply object");
            let reply = envelope::read_reply(entry, obj).message.encode_to_vec();
            for policy_byte in [0u8, 3] {
                let mut input = vec![h.reply_byte(command), policy_byte];
                input.extend_from_slice(&reply);
                out.push(("reply", format!("{command}-{policy_byte}"), input));
            }
            // The same reply as another encoder may write it: its fields in reverse order and an
            // unknown field (127, a varint); with an empty request (policy bit 2).
            let message = envelope::read_reply(entry, obj).message;
            let mut input = vec![h.reply_byte(command), 4];
            let mut fields: Vec<_> = message.fields().collect();
            fields.reverse();
            for (f, v) in fields {
                let mut one = DynamicMessage::new(message.descriptor());
                one.set_field(&f, v.clone());
                input.extend_from_slice(&one.encode_to_vec());
            }
            input.extend_from_slice(&[0xf8, 0x07, 0x01]);
            out.push(("reply", format!("{command}-reordered-4"), input));
        }
        if entry.phase == Phase::Before {
            // The empty reply: allow, the common answer.
            out.push((
                "reply",
                format!("{command}-empty-0"),
                vec![h.reply_byte(command), 0],
            ));
        }
        if entry.phase == Phase::Before {
            // A rejection by status with a Rejection in the details, and an INTERNAL error.
            let details = decision::rejection_details(20009, "no", "by status");
            let mut input = vec![
                h.reply_byte(command),
                0,
                tonic::Code::PermissionDenied as u8,
                2,
            ];
            input.extend_from_slice(b"no");
            input.extend_from_slice(&details);
            out.push(("status", format!("{command}-denied"), input));
            let mut input = vec![h.reply_byte(command), 1, tonic::Code::Internal as u8, 4];
            input.extend_from_slice(b"boom");
            out.push(("status", format!("{command}-internal"), input));
        }
    }
    out
}
