//! The gate's OpenIM-aware rules (issue #21) with the real payloads and a real upstream that
//! records its calls: each condition forwarding and holding back, the bot preset's loop guard,
//! `to_bots` by `recvID`, `atUserList` and `AtAllTag`, notifications held back, the echo rules on
//! a held-back before callback, config errors, a reload changing a condition, shadow mode, and
//! the `openim-conversation-id` metadata.

use crate::support::*;
use openim_callback_gateway::config::Config;
use openim_callback_gateway::gateway::Gateway;
use serde_json::{Value, json};
use std::time::Duration;

const SINGLE: &str = "callbackAfterSendSingleMsgCommand";
const GROUP: &str = "callbackAfterSendGroupMsgCommand";
const BEFORE_GROUP: &str = "callbackBeforeSendGroupMsgCommand";
const SET_GROUP: &str = "callbackBeforeSetGroupInfoCommand";
const CREATE: &str = "callbackBeforeCreateGroupCommand";

fn config(up: &Upstream, yaml: &str) -> Config {
    Config::from_yaml(&format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n{yaml}",
        up.uri()
    ))
    .expect("valid config")
}

/// A real payload with some keys changed.
fn body(command: &str, changes: Value) -> Vec<u8> {
    let mut v = read_json(&format!("payloads/{command}.json"));
    for (k, val) in changes.as_object().unwrap() {
        v[k] = val.clone();
    }
    wire(&v)
}

fn count(gw: &Gateway, name: &str, parts: &[&str]) -> f64 {
    sample(&scrape(gw), name, parts)
}

/// Posts and says whether the service was called.
async fn forwarded(gw: &Gateway, up: &Upstream, command: &str, body: Vec<u8>) -> (bool, Answer) {
    let before = up.calls().len();
    let a = post_command(gw, command, body).await;
    assert_envelope(&a);
    (up.calls().len() > before, a)
}

#[tokio::test]
async fn the_bot_preset_forwards_only_messages_for_the_bot_and_guards_the_loop() {
    let up = Upstream::start().await;
    let gw = gateway(&config(
        &up,
        "bots: [bot_1]\ndefaults:\n  only: {to_bots: true, content_types: [101, 106]}\n  skip: {from_bots: true, notifications: true}\n",
    ));
    // To the bot by recvID: forwarded.
    let (sent, a) = forwarded(&gw, &up, SINGLE, body(SINGLE, json!({"recvID": "bot_1"}))).await;
    assert!(sent);
    assert_eq!(a.json, allow());
    // To someone else: held back, acknowledged.
    let (sent, a) = forwarded(&gw, &up, SINGLE, payload(SINGLE)).await;
    assert!(!sent, "not addressed to the bot");
    assert_eq!(a.json, allow());
    // The bot's own message to itself: the loop guard.
    let own = body(SINGLE, json!({"sendID": "bot_1", "recvID": "bot_1"}));
    assert!(!forwarded(&gw, &up, SINGLE, own).await.0, "loop guard");
    // A group message @-mentioning the bot: forwarded; @everyone without at_all: held back.
    let at_bot = body(GROUP, json!({"atUserList": ["u9", "bot_1"]}));
    assert!(forwarded(&gw, &up, GROUP, at_bot).await.0);
    let at_all = body(GROUP, json!({"atUserList": ["AtAllTag"]}));
    assert!(!forwarded(&gw, &up, GROUP, at_all).await.0);
    // Notifications (1400, read receipts 2200) are held back even when addressed to the bot.
    for t in [1400, 2200] {
        let n = body(SINGLE, json!({"recvID": "bot_1", "contentType": t}));
        assert!(!forwarded(&gw, &up, SINGLE, n).await.0, "notification {t}");
    }
    // A picture (102) is not in only.content_types.
    let pic = body(SINGLE, json!({"recvID": "bot_1", "contentType": 102}));
    assert!(!forwarded(&gw, &up, SINGLE, pic).await.0);
    assert_eq!(up.calls().len(), 2);
    // Counted by command and rule.
    for (rule, n) in [
        ("only.to_bots", 2.0),
        ("skip.from_bots", 1.0),
        ("skip.notifications", 2.0),
        ("only.content_types", 1.0),
    ] {
        let c = count(
            &gw,
            "gateway_held_back_total",
            &[&format!("rule=\"{rule}\"")],
        );
        assert!(c >= n, "{rule}: {c}");
    }
    // With at_all, @everyone counts.
    let up2 = Upstream::start().await;
    let gw2 = gateway(&config(
        &up2,
        "bots: [bot_1]\ndefaults: {only: {to_bots: true, at_all: true}}\n",
    ));
    let at_all = body(GROUP, json!({"atUserList": ["AtAllTag"]}));
    assert!(forwarded(&gw2, &up2, GROUP, at_all).await.0);
}

#[tokio::test]
async fn a_held_back_before_callback_continues_with_the_echo_rules_and_ids_can_be_skipped() {
    let up = Upstream::start().await;
    let gw = gateway(&config(
        &up,
        "commands:\n  callbackBeforeSetGroupInfoCommand: {skip: {group_ids: ['34110*']}}\n  \
         callbackBeforeSendGroupMsgCommand: {skip: {send_ids: [system_admin], content_types: ['110-114']}}\n",
    ));
    let (sent, a) = forwarded(&gw, &up, SET_GROUP, payload(SET_GROUP)).await;
    assert!(!sent, "group 3411007805 matches 34110*");
    // OpenIM needs the group's fields echoed on a continue of SetGroupInfo.
    assert_eq!(a.json["groupID"], "3411007805", "{}", a.json);
    assert_eq!(a.json["groupName"], "Phoenix v2", "{}", a.json);
    assert_eq!(a.json["errCode"], 0);
    let other = body(SET_GROUP, json!({"groupID": "999"}));
    assert!(forwarded(&gw, &up, SET_GROUP, other).await.0);
    let admin = body(BEFORE_GROUP, json!({"sendID": "system_admin"}));
    assert!(!forwarded(&gw, &up, BEFORE_GROUP, admin).await.0);
    let typing = body(BEFORE_GROUP, json!({"contentType": 113}));
    assert!(!forwarded(&gw, &up, BEFORE_GROUP, typing).await.0);
    assert!(
        forwarded(&gw, &up, BEFORE_GROUP, payload(BEFORE_GROUP))
            .await
            .0
    );
}

#[test]
fn a_condition_on_a_field_the_command_lacks_is_a_config_error() {
    let base = "upstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n";
    let err = Config::from_yaml(&format!(
        "{base}commands: {{callbackAfterQuitGroupCommand: {{skip: {{send_ids: [u1]}}}}}}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("commands.callbackAfterQuitGroupCommand.skip.send_ids")
            && err.contains("`sendID`"),
        "{err}"
    );
    let err = Config::from_yaml(&format!(
        "{base}commands: {{callbackAfterQuitGroupCommand: {{shadow: true}}}}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("callbackAfterQuitGroupCommand.shadow"),
        "{err}"
    );
    let err = Config::from_yaml(&format!("{base}defaults: {{skip: {{from_bots: true}}}}\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bots:"), "{err}");
    // Under defaults, a condition applies where the field exists: valid.
    Config::from_yaml(&format!("{base}defaults: {{skip: {{send_ids: [u1]}}}}\n")).expect("valid");
}

#[tokio::test]
async fn a_reload_changes_a_condition_without_restart() {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up, ""));
    assert!(forwarded(&gw, &up, SINGLE, payload(SINGLE)).await.0);
    gw.swap(&config(
        &up,
        "defaults: {skip: {send_ids: ['5283014967']}}\n",
    ))
    .expect("swapped");
    assert!(
        !forwarded(&gw, &up, SINGLE, payload(SINGLE)).await.0,
        "the new rule applies"
    );
    gw.swap(&config(&up, "")).expect("swapped");
    assert!(forwarded(&gw, &up, SINGLE, payload(SINGLE)).await.0);
}

#[tokio::test]
async fn shadow_mode_answers_continue_at_once_and_counts_what_the_service_would_have_done() {
    use openim_callback_gateway::proto::v1 as pb;
    use prost::Message as _;
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Delay(
            Duration::from_millis(1500),
            Box::new(Behavior::Reply(
                pb::BeforeCreateGroupResponse {
                    rejection: Some(pb::Rejection {
                        code: 20009,
                        message: "new policy says no".into(),
                        detail: String::new(),
                    }),
                    ..Default::default()
                }
                .encode_to_vec()
                .into(),
            )),
        ),
    );
    let gw = gateway(&config(
        &up,
        "commands: {callbackBeforeCreateGroupCommand: {shadow: true}}\n",
    ));
    let rejected = |gw: &Gateway| {
        count(
            gw,
            "gateway_shadow_verdicts_total",
            &[
                "command=\"callbackBeforeCreateGroupCommand\"",
                "verdict=\"rejected\"",
            ],
        )
    };
    let before = rejected(&gw);
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    // Answered as continue while the service is still thinking (it answers after 1.5 s).
    assert_eq!(a.json["nextCode"], 0, "{}", a.json);
    assert_eq!(a.json["errCode"], 0, "{}", a.json);
    assert_eq!(rejected(&gw), before, "the service has not answered yet");
    up.wait_calls(1, Duration::from_secs(5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rejected(&gw) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow verdict is counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected(&gw), before + 1.0);
}

#[tokio::test]
async fn the_conversation_id_is_sent_as_openim_computes_it() {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up, ""));
    let cases = [
        (SINGLE, payload(SINGLE), "si_5283014967_7716190472"),
        (GROUP, payload(GROUP), "sg_3411007805"),
        (
            GROUP,
            body(GROUP, json!({"sessionType": 2})),
            "g_3411007805",
        ),
        (
            SINGLE,
            body(
                SINGLE,
                json!({"sessionType": 4, "sendID": "z9", "recvID": "a1"}),
            ),
            "sn_a1_z9",
        ),
    ];
    for (command, b, id) in cases {
        let before = up.calls().len();
        post_command(&gw, command, b).await;
        let calls = up.calls();
        assert_eq!(calls.len(), before + 1);
        assert_eq!(
            calls[before].meta("openim-conversation-id").as_deref(),
            Some(id),
            "{command}"
        );
    }
    // A command without sessionType gets none.
    post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(
        up.calls().last().unwrap().meta("openim-conversation-id"),
        None
    );
}
