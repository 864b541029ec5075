//! The whole catalogue against OpenIM's real bodies: every command reaches its RPC with every
//! field, every sample reply maps to the contract's response and back to the same OpenIM JSON,
//! and the command set is exactly OpenIM's 52.

use crate::support::*;
use openim_callback_gateway::catalog::{Catalog, Phase, ROWS};
use openim_callback_gateway::{decision, envelope, json};
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use serde_json::Value as Json;

fn catalog() -> Catalog {
    Catalog::load(
        openim_callback_gateway::proto::pool().unwrap(),
        "openim.callback.v1",
    )
    .unwrap()
}

/// Every non-null key of `body` is a field of `msg` holding the same value; every null key is
/// absent (or an empty list).
fn assert_same_fields(msg: &DynamicMessage, body: &Json, what: &str) {
    let obj = body.as_object().unwrap();
    for (key, value) in obj {
        let field = msg
            .descriptor()
            .get_field_by_json_name(key)
            .unwrap_or_else(|| panic!("{what}: no field for key `{key}`"));
        let got = json::encode_value(&msg.get_field(&field));
        if value.is_null() {
            let empty = !msg.has_field(&field) || got == Json::Array(vec![]);
            assert!(empty, "{what}.{key}: null must stay absent, got {got}");
        } else {
            assert_eq!(got, json::strip_nulls(value), "{what}.{key}");
        }
    }
}

#[test]
fn the_command_set_is_openims_52_and_every_payload_has_a_row() {
    let rows: std::collections::BTreeSet<_> = ROWS.iter().map(|r| r.command.to_owned()).collect();
    let files: std::collections::BTreeSet<_> = payload_commands().into_iter().collect();
    assert_eq!(rows.len(), 52);
    assert_eq!(rows, files);
    let c = catalog();
    for entry in c.entries() {
        assert_eq!(
            sample_reply(entry.row.command).is_some(),
            entry.phase == Phase::Before,
            "{}: a sample reply exists exactly for before commands",
            entry.row.command
        );
    }
}

#[test]
fn every_payload_decodes_with_no_unknown_key_and_every_field() {
    let c = catalog();
    for entry in c.entries() {
        let body = payload(entry.row.command);
        let decoded = json::decode(&entry.request(), &body).unwrap();
        assert!(
            decoded.unknown_keys.is_empty(),
            "{}: {:?}",
            entry.row.command,
            decoded.unknown_keys
        );
        assert!(
            decoded.errors.is_empty(),
            "{}: {:?}",
            entry.row.command,
            decoded.errors
        );
        let file = read_json(&format!("payloads/{}.json", entry.row.command));
        assert_same_fields(&decoded.message, &file, entry.row.command);
        assert_eq!(file["callbackCommand"], entry.row.command);
    }
}

#[tokio::test]
async fn every_command_reaches_its_rpc_with_every_field() {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), ""));
    let c = catalog();
    for entry in c.entries() {
        let a = post_command(&gw, entry.row.command, payload(entry.row.command)).await;
        assert_envelope(&a);
        // An empty reply allows; commands whose reply OpenIM copies unconditionally also get the
        // request's values echoed (SetGroupInfo, SetGroupInfoEx).
        let mut expected = allow();
        let file = read_json(&format!("payloads/{}.json", entry.row.command));
        for rule in entry.row.rules {
            if let openim_callback_gateway::catalog::Rule::EchoFromRequest(keys) = rule {
                for k in *keys {
                    if !file[*k].is_null() {
                        expected[*k] = file[*k].clone();
                    }
                }
            }
        }
        assert_eq!(a.json, expected, "{}", entry.row.command);
    }
    let calls = up.calls();
    assert_eq!(calls.len(), 52);
    for (entry, call) in c.entries().zip(calls) {
        let cmd = entry.row.command;
        assert_eq!(call.path, entry.path.as_str(), "{cmd}");
        assert_eq!(call.meta("openim-callback-command").as_deref(), Some(cmd));
        assert_eq!(
            call.meta("openim-operation-id").as_deref(),
            Some("1719800000123453781")
        );
        let file = read_json(&format!("payloads/{cmd}.json"));
        assert_same_fields(&call.dynamic(), &file, cmd);
    }
}

#[test]
fn every_sample_reply_maps_to_its_response_message_and_back() {
    let c = catalog();
    for entry in c.entries().filter(|e| e.phase == Phase::Before) {
        let cmd = entry.row.command;
        let sample = sample_reply(cmd).unwrap();
        let read = envelope::read_reply(entry, sample.as_object().unwrap());
        assert!(read.errors.is_empty(), "{cmd}: {:?}", read.errors);
        let non_null_unknown: Vec<_> = read
            .unknown_keys
            .iter()
            .filter(|k| !sample[k.as_str()].is_null())
            .collect();
        assert!(
            non_null_unknown.is_empty(),
            "{cmd}: reply keys not in the contract: {non_null_unknown:?}"
        );
        // What the service would return, rendered as the gateway does.
        let policy = decision::Policy {
            on_failure: decision::FailurePolicy::Continue,
            reject_code: 20001,
            reject_message: String::new(),
            allow_offline_push_info: true,
        };
        let request = json::decode(&entry.request(), &payload(cmd))
            .unwrap()
            .message;
        // Over the wire: the service's reply arrives as encoded bytes.
        let decision = decision::decide(entry, Ok(read.message.encode_to_vec().into()), &policy);
        let env = envelope::render(
            &decision,
            Some(envelope::Target {
                entry,
                request: Some(&request),
                policy: &policy,
            }),
        );
        assert_eq!(Json::Object(env.body), json::strip_nulls(&sample), "{cmd}");
        assert!(
            env.fixes.is_empty(),
            "{cmd}: the sample reply needs no fixing: {:?}",
            env.fixes
        );
    }
}

#[tokio::test]
async fn openims_decoder_reads_the_gateways_answers_as_the_services_replies() {
    // The service returns OpenIM's sample reply (as the contract's message) over real gRPC; the
    // gateway's answer, read back the way OpenIM reads it, is the same message.
    let up = Upstream::start().await;
    let gw = gateway(&config(
        &up.uri(),
        "defaults: {allow_offline_push_info: true}",
    ));
    let c = catalog();
    for entry in c.entries().filter(|e| e.phase == Phase::Before) {
        let cmd = entry.row.command;
        let sample = sample_reply(cmd).unwrap();
        let reply = envelope::read_reply(entry, sample.as_object().unwrap()).message;
        up.on(entry.row.rpc, Behavior::Reply(reply.encode_to_vec().into()));
        let a = post_command(&gw, cmd, payload(cmd)).await;
        assert_envelope(&a);
        let seen = envelope::read_reply(entry, a.json.as_object().unwrap());
        assert!(
            seen.unknown_keys.is_empty(),
            "{cmd}: {:?}",
            seen.unknown_keys
        );
        assert_eq!(seen.message, reply, "{cmd}");
        let rejected = a.json["actionCode"] == 0 && a.json["nextCode"] == 1;
        assert_eq!(rejected, sample["nextCode"] == 1, "{cmd}");
    }
}

/// Every RPC's comment says which OpenIM event it is (the command in backticks), when it fires,
/// and what its reply can change: read from the `.proto` sources the contract crate embeds, so a
/// new RPC without its comment fails here.
#[test]
fn every_rpc_comment_names_its_command_trigger_and_reply() {
    let mut found = 0;
    for row in ROWS {
        let rpc = format!("rpc {}(", row.rpc);
        let (path, text) = openim_callback_gateway::proto::PROTO_FILES
            .iter()
            .find(|(_, text)| text.contains(&rpc))
            .unwrap_or_else(|| panic!("{}: no `{rpc}` in the contract", row.command));
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&rpc))
            .unwrap();
        let comment: Vec<&str> = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//"))
            .map(|l| l.trim_start().trim_start_matches("//").trim())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let comment = comment.join(" ");
        assert!(
            comment.starts_with(&format!("`{}`", row.command)),
            "{path} {}: the comment starts with the command: {comment:?}",
            row.rpc
        );
        assert!(
            comment.contains("Fires") || comment.contains("Sent by"),
            "{path} {}: says when it fires: {comment:?}",
            row.rpc
        );
        assert!(
            comment.contains("reply") || comment.contains("Reply"),
            "{path} {}: says what the reply can change: {comment:?}",
            row.rpc
        );
        found += 1;
    }
    assert_eq!(found, 52);
}
