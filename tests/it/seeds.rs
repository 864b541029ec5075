//! The four seed callbacks (and their real OpenIM payloads) round-trip field for field against a
//! real gRPC upstream, and OpenIM gets exactly the expected envelope back.

use crate::support::*;
use openim_callback_gateway::proto::v1 as pb;
use serde_json::json;

async fn setup() -> (Upstream, openim_callback_gateway::gateway::Gateway) {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), ""));
    (up, gw)
}

fn members(list: &[(&str, i32)]) -> Vec<pb::GroupAddMemberInfo> {
    list.iter()
        .map(|(u, r)| pb::GroupAddMemberInfo {
            user_id: (*u).into(),
            role_level: *r,
        })
        .collect()
}

#[tokio::test]
async fn before_create_group_seed_reaches_the_service_and_its_modifications_come_back() {
    let (up, gw) = setup().await;
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse {
            group_id: Some("G001".into()),
            group_name: Some("MyGroup [checked]".into()),
            need_verification: Some(0),
            ..Default::default()
        },
    );
    let a = post(
        &gw,
        "/callbackExample/callbackBeforeCreateGroupCommand?contenttype=json",
        &[("operationID", "op-seed-1")],
        seed("callbackBeforeCreateGroupCommand"),
    )
    .await;
    assert_envelope(&a);
    assert_eq!(
        a.json,
        json!({"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0,
               "groupID":"G001","groupName":"MyGroup [checked]","needVerification":0})
    );
    let call = up.only_call();
    assert_eq!(
        call.path,
        "/openim.callback.v1.GroupCallbackService/BeforeCreateGroup"
    );
    assert_eq!(
        call.decode::<pb::BeforeCreateGroupRequest>(),
        pb::BeforeCreateGroupRequest {
            operation_id: String::new(),
            callback_command: "callbackBeforeCreateGroupCommand".into(),
            group_id: "12345".into(),
            group_name: "MyGroup".into(),
            notification: "Welcome to MyGroup!".into(),
            introduction: "This is a group for discussing example topics.".into(),
            face_url: "http://example.com/path/to/face/image.png".into(),
            owner_user_id: "user123".into(),
            create_time: 1_673_048_592_000,
            member_count: 10,
            ex: "Extra data".into(),
            status: 1,
            creator_user_id: "user123".into(),
            group_type: 1,
            need_verification: 1,
            look_member_info: 1,
            apply_member_friend: 0,
            notification_update_time: 1_673_048_592_000,
            notification_user_id: "user456".into(),
            init_member_list: members(&[("user789", 60), ("user101112", 20)]),
        }
    );
    assert_eq!(
        call.meta("openim-operation-id").as_deref(),
        Some("op-seed-1")
    );
    assert_eq!(
        call.meta("openim-callback-command").as_deref(),
        Some("callbackBeforeCreateGroupCommand")
    );
    assert_eq!(call.meta("openim-key"), None);
    assert!(
        call.meta("grpc-timeout").is_some(),
        "the deadline is propagated"
    );
}

#[tokio::test]
async fn before_create_group_real_payload_round_trips() {
    let (up, gw) = setup().await;
    let sample = sample_reply("callbackBeforeCreateGroupCommand").expect("sample reply");
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse {
            group_id: Some("phoenix-2024".into()),
            group_name: Some("Project Phoenix [internal]".into()),
            need_verification: Some(1),
            ..Default::default()
        },
    );
    let a = post_command(
        &gw,
        "callbackBeforeCreateGroupCommand",
        payload("callbackBeforeCreateGroupCommand"),
    )
    .await;
    assert_envelope(&a);
    // The gateway's answer is OpenIM's own sample reply, with its nulls left out.
    assert_eq!(a.json, openim_callback_gateway::json::strip_nulls(&sample));
    let req = up.only_call().decode::<pb::BeforeCreateGroupRequest>();
    assert_eq!(
        req,
        pb::BeforeCreateGroupRequest {
            operation_id: "1719800000123453781".into(),
            callback_command: "callbackBeforeCreateGroupCommand".into(),
            group_name: "Project Phoenix".into(),
            notification: "Standup at 10:00".into(),
            introduction: "Phoenix core team".into(),
            face_url: "https://cdn.example.com/group/phoenix.png".into(),
            group_type: 2,
            init_member_list: members(&[
                ("5283014967", 100),
                ("7716190472", 60),
                ("3390125561", 20),
                ("8801234567", 20)
            ]),
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn after_set_group_info_ex_seed_with_value_wrappers_is_read() {
    let (up, gw) = setup().await;
    let a = post(
        &gw,
        "/callbackExample/callbackAfterSetGroupInfoExCommand?contenttype=json",
        &[],
        seed("callbackAfterSetGroupInfoExCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    let call = up.only_call();
    assert_eq!(
        call.path,
        "/openim.callback.v1.GroupCallbackService/AfterSetGroupInfoEx"
    );
    assert_eq!(
        call.decode::<pb::AfterSetGroupInfoExRequest>(),
        pb::AfterSetGroupInfoExRequest {
            callback_command: "callbackAfterSetGroupInfoExCommand".into(),
            operation_id: "1646445464564".into(),
            group_id: "G002".into(),
            group_name: Some("NewGroupName".into()),
            notification: Some("Updated group notification".into()),
            introduction: Some("Updated group introduction".into()),
            face_url: Some("http://example.com/new/path/to/face/image.png".into()),
            ex: Some("Updated extra data".into()),
            need_verification: Some(0),
            look_member_info: Some(1),
            apply_member_friend: Some(0),
        }
    );
    // No operationID header: the body's operationID is used.
    assert_eq!(
        call.meta("openim-operation-id").as_deref(),
        Some("1646445464564")
    );
}

#[tokio::test]
async fn after_set_group_info_ex_real_payload_keeps_null_apart_from_set() {
    let (up, gw) = setup().await;
    let a = post_command(
        &gw,
        "callbackAfterSetGroupInfoExCommand",
        payload("callbackAfterSetGroupInfoExCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    let req = up.only_call().decode::<pb::AfterSetGroupInfoExRequest>();
    let file = read_json("payloads/callbackAfterSetGroupInfoExCommand.json");
    assert_eq!(req.group_id, file["groupID"].as_str().unwrap());
    assert_eq!(req.group_name.as_deref(), file["groupName"].as_str());
    assert_eq!(req.notification.as_deref(), file["notification"].as_str());
    assert_eq!(req.introduction, None, "null stays absent");
    assert_eq!(req.face_url, None);
    assert_eq!(req.ex.as_deref(), file["ex"].as_str());
    assert_eq!(
        req.need_verification.map(i64::from),
        file["needVerification"].as_i64()
    );
    assert_eq!(req.look_member_info, None);
    assert_eq!(
        req.apply_member_friend.map(i64::from),
        file["applyMemberFriend"].as_i64()
    );
    assert_eq!(
        req.operation_id, "",
        "OpenIM leaves the body's operationID empty here"
    );
}

#[tokio::test]
async fn after_send_group_msg_seed_round_trips() {
    let (up, gw) = setup().await;
    let a = post(
        &gw,
        "/callbackExample/callbackAfterSendGroupMsgCommand?contenttype=json",
        &[("operationID", "1646445464564")],
        seed("callbackAfterSendGroupMsgCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    let call = up.only_call();
    assert_eq!(
        call.path,
        "/openim.callback.v1.MessageCallbackService/AfterSendGroupMsg"
    );
    assert_eq!(
        call.decode::<pb::AfterSendGroupMsgRequest>(),
        pb::AfterSendGroupMsgRequest {
            send_id: "sender123".into(),
            callback_command: "callbackAfterSendGroupMsgCommand".into(),
            server_msg_id: "serverMsg123".into(),
            client_msg_id: "clientMsg123".into(),
            operation_id: "1646445464564".into(),
            sender_platform_id: 1,
            sender_nickname: "JohnDoe".into(),
            session_type: 2,
            msg_from: 1,
            content_type: 1,
            status: 1,
            send_time: 1_673_048_592_000,
            create_time: 1_673_048_592_000,
            content: "Hello, this is a group message!".into(),
            seq: 1,
            at_user_id_list: vec!["user456".into(), "user789".into()],
            sender_face_url: "http://example.com/path/to/sender/face/image.png".into(),
            ex: "Extra data".into(),
            group_id: "group123".into(),
        }
    );
}

#[tokio::test]
async fn after_send_group_msg_real_payload_passes_the_key_query_on() {
    let (up, gw) = setup().await;
    let key =
        "eyJzZW5kSUQiOiI1MjgzMDE0OTY3IiwicmVjdklEIjoiIiwiZ3JvdXBJRCI6IjM0MTEwMDc4MDUifQ%3D%3D";
    let a = post(
        &gw,
        &format!("/callbackExample/callbackAfterSendGroupMsgCommand?key={key}"),
        &[("operationID", "1719800000123453781")],
        payload("callbackAfterSendGroupMsgCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    let call = up.only_call();
    assert_eq!(
        call.meta("openim-key").as_deref(),
        Some("eyJzZW5kSUQiOiI1MjgzMDE0OTY3IiwicmVjdklEIjoiIiwiZ3JvdXBJRCI6IjM0MTEwMDc4MDUifQ==")
    );
    let req = call.decode::<pb::AfterSendGroupMsgRequest>();
    let file = read_json("payloads/callbackAfterSendGroupMsgCommand.json");
    assert_eq!(req.send_id, file["sendID"].as_str().unwrap());
    assert_eq!(req.group_id, file["groupID"].as_str().unwrap());
    assert_eq!(req.content, file["content"].as_str().unwrap());
    assert_eq!(req.send_time, file["sendTime"].as_i64().unwrap());
    assert_eq!(i64::from(req.seq), file["seq"].as_i64().unwrap());
    assert_eq!(req.sender_face_url, file["faceURL"].as_str().unwrap());
    let at: Vec<String> = serde_json::from_value(file["atUserList"].clone()).unwrap();
    assert_eq!(req.at_user_id_list, at);
}

#[tokio::test]
async fn after_quit_group_seed_and_payload_round_trip() {
    let (up, gw) = setup().await;
    let a = post(
        &gw,
        "/callbackExample/callbackAfterQuitGroupCommand?contenttype=json",
        &[],
        seed("callbackAfterQuitGroupCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    assert_eq!(
        a.raw.as_ref(),
        br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#
    );
    let a = post_command(
        &gw,
        "callbackAfterQuitGroupCommand",
        payload("callbackAfterQuitGroupCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    let calls = up.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].path,
        "/openim.callback.v1.GroupCallbackService/AfterQuitGroup"
    );
    assert_eq!(
        calls[0].decode::<pb::AfterQuitGroupRequest>(),
        pb::AfterQuitGroupRequest {
            callback_command: "callbackAfterQuitGroupCommand".into(),
            group_id: "G001".into(),
            user_id: "user123".into(),
        }
    );
    assert_eq!(
        calls[1].decode::<pb::AfterQuitGroupRequest>(),
        pb::AfterQuitGroupRequest {
            callback_command: "callbackAfterQuitGroupCommand".into(),
            group_id: "3411007805".into(),
            user_id: "8801234567".into(),
        }
    );
    assert_eq!(
        calls[1].meta("openim-operation-id").as_deref(),
        Some("1719800000123453781")
    );
}
