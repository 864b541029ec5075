//! The reply safety rules (docs/commands.md, "OpenIM traps"): replies OpenIM can never trip on.

use crate::support::*;
use openim_callback_gateway::proto::v1 as pb;
use serde_json::json;

const SET_INFO: &str = "callbackBeforeSetGroupInfoCommand";
const SET_INFO_EX: &str = "callbackBeforeSetGroupInfoExCommand";

async fn setup(extra: &str) -> (Upstream, openim_callback_gateway::gateway::Gateway) {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), extra));
    (up, gw)
}

fn echo_of_set_group_info() -> serde_json::Value {
    // From payloads/callbackBeforeSetGroupInfoCommand.json: the four keys OpenIM copies always.
    let file = read_json(&format!("payloads/{SET_INFO}.json"));
    let mut expected = allow();
    for k in ["groupID", "groupName", "faceURL", "introduction"] {
        expected[k] = file[k].clone();
    }
    expected
}

#[tokio::test]
async fn set_group_info_echoes_on_every_continue_path() {
    let expected = echo_of_set_group_info();
    // 1. The service allows with an empty reply.
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeSetGroupInfo",
        pb::BeforeSetGroupInfoResponse::default(),
    );
    assert_eq!(
        post_command(&gw, SET_INFO, payload(SET_INFO)).await.json,
        expected
    );
    // 2. UNIMPLEMENTED.
    up.on(
        "BeforeSetGroupInfo",
        Behavior::Status(
            tonic::Code::Unimplemented,
            String::new(),
            Default::default(),
        ),
    );
    assert_eq!(
        post_command(&gw, SET_INFO, payload(SET_INFO)).await.json,
        expected
    );
    // 3. The failure policy continues.
    up.on(
        "BeforeSetGroupInfo",
        Behavior::Status(tonic::Code::Internal, "down".into(), Default::default()),
    );
    assert_eq!(
        post_command(&gw, SET_INFO, payload(SET_INFO)).await.json,
        expected
    );
    // 4. The upstream is gone.
    up.stop();
    assert_eq!(
        post_command(&gw, SET_INFO, payload(SET_INFO)).await.json,
        expected
    );
    // 5. The command is disabled.
    let (_up, gw) = setup(&format!("commands: {{{SET_INFO}: {{enabled: false}}}}")).await;
    assert_eq!(
        post_command(&gw, SET_INFO, payload(SET_INFO)).await.json,
        expected
    );
}

#[tokio::test]
async fn set_group_info_keeps_what_the_service_set_and_fills_the_rest() {
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeSetGroupInfo",
        pb::BeforeSetGroupInfoResponse {
            group_name: Some("Renamed".into()),
            need_verification: Some(1),
            ..Default::default()
        },
    );
    let mut expected = echo_of_set_group_info();
    expected["groupName"] = json!("Renamed");
    expected["needVerification"] = json!(1);
    assert_eq!(
        post_command(&gw, SET_INFO, payload(SET_INFO)).await.json,
        expected
    );
}

#[tokio::test]
async fn set_group_info_ex_echoes_exactly_the_fields_the_request_set() {
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeSetGroupInfoEx",
        pb::BeforeSetGroupInfoExResponse {
            need_verification: Some(1),
            ..Default::default()
        },
    );
    let a = post_command(&gw, SET_INFO_EX, payload(SET_INFO_EX)).await;
    // Request: groupName, ex, needVerification 2, applyMemberFriend set; introduction, faceURL,
    // lookMemberInfo null (so they stay null = "don't change"); notification is never applied.
    assert_eq!(
        a.json,
        json!({"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0,
               "groupID":"3411007805","groupName":"Phoenix v3","ex":"{\"color\":\"red\"}",
               "needVerification":1,"applyMemberFriend":1})
    );
}

#[tokio::test]
async fn update_user_info_ex_drops_overrides_of_fields_the_request_had_null() {
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeUpdateUserInfoEx",
        pb::BeforeUpdateUserInfoExResponse {
            nickname: Some("Alice Wang".into()),
            face_url: Some("https://x/avatar.png".into()),
            ex: Some("{}".into()),
            ..Default::default()
        },
    );
    let cmd = "callbackBeforeUpdateUserInfoExCommand";
    let a = post_command(&gw, cmd, payload(cmd)).await;
    // The request has nickName set, faceURL and ex null.
    let mut expected = allow();
    expected["nickName"] = json!("Alice Wang");
    assert_eq!(a.json, expected);
}

#[tokio::test]
async fn msg_modify_drops_offline_push_info_unless_allowed_and_bad_content() {
    let cmd = "callbackBeforeMsgModifyCommand";
    let push = pb::OfflinePushInfo {
        title: "t".into(),
        desc: "d".into(),
        ..Default::default()
    };
    let reply = pb::BeforeMsgModifyResponse {
        content: Some("{\"content\":\"hi ***\"}".into()),
        offline_push_info: Some(push),
        ..Default::default()
    };
    let (up, gw) = setup("").await;
    up.reply("BeforeMsgModify", reply.clone());
    let a = post_command(&gw, cmd, payload(cmd)).await;
    let mut expected = allow();
    expected["content"] = json!("{\"content\":\"hi ***\"}");
    assert_eq!(a.json, expected, "offlinePushInfo dropped by default");

    let (up, gw) = setup(&format!(
        "commands: {{{cmd}: {{allow_offline_push_info: true}}}}"
    ))
    .await;
    up.reply("BeforeMsgModify", reply);
    let a = post_command(&gw, cmd, payload(cmd)).await;
    expected["offlinePushInfo"] = json!({"title":"t","desc":"d","ex":"","iOSPushSound":"","iOSBadgeCount":false,"signalInfo":""});
    assert_eq!(a.json, expected, "kept when the switch allows it");

    let (up, gw) = setup("").await;
    up.reply(
        "BeforeMsgModify",
        pb::BeforeMsgModifyResponse {
            content: Some("plain text, not a JSON object".into()),
            ex: Some("e".into()),
            ..Default::default()
        },
    );
    let a = post_command(&gw, cmd, payload(cmd)).await;
    let mut expected = allow();
    expected["ex"] = json!("e");
    assert_eq!(
        a.json, expected,
        "content that is not a JSON object string is dropped"
    );
}

#[tokio::test]
async fn members_join_group_drops_entries_without_user_id() {
    let cmd = "callbackBeforeMembersJoinGroupCommand";
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeMembersJoinGroup",
        pb::BeforeMembersJoinGroupResponse {
            member_callback_list: vec![
                pb::MemberJoinGroupCallback {
                    nickname: Some("nobody".into()),
                    ..Default::default()
                },
                pb::MemberJoinGroupCallback {
                    user_id: Some("3390125561".into()),
                    mute_end_time: Some(1_719_886_400_000),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    let a = post_command(&gw, cmd, payload(cmd)).await;
    let mut expected = allow();
    expected["memberCallbackList"] =
        json!([{"userID":"3390125561","muteEndTime":1_719_886_400_000_i64}]);
    assert_eq!(a.json, expected);
}

#[tokio::test]
async fn overrides_follow_the_five_keys_as_bare_values() {
    let cmd = "callbackBeforeSetGroupInfoExCommand";
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeSetGroupInfoEx",
        pb::BeforeSetGroupInfoExResponse {
            group_name: Some("x".into()),
            look_member_info: Some(1),
            ..Default::default()
        },
    );
    let a = post_command(&gw, cmd, payload(cmd)).await;
    let text = String::from_utf8(a.raw.to_vec()).unwrap();
    assert!(text.contains(r#""groupName":"x""#), "{text}");
    assert!(text.contains(r#""lookMemberInfo":1"#), "{text}");
    assert!(!text.contains("\"value\""), "{text}");
    assert!(
        text.starts_with(r#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0"#),
        "{text}"
    );
}
