//! Bad and odd input from OpenIM (docs/commands.md, "OpenIM traps"): every case gets a valid envelope, nothing panics,
//! the upstream sees only what was well-formed.

use crate::support::*;
use openim_callback_gateway::proto::v1 as pb;

const CREATE: &str = "callbackBeforeCreateGroupCommand";
const QUIT: &str = "callbackAfterQuitGroupCommand";

async fn setup(extra: &str) -> (Upstream, openim_callback_gateway::gateway::Gateway) {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), extra));
    (up, gw)
}

#[tokio::test]
async fn malformed_json_gets_the_failure_policy_envelope_and_no_call() {
    for body in [
        &b"{"[..],
        b"",
        b"not json",
        b"[]",
        b"null",
        b"{} trailing",
        b"\xff\xfe",
    ] {
        let (up, gw) = setup("").await;
        let a = post_command(&gw, CREATE, body.to_vec()).await;
        assert_envelope(&a);
        assert_eq!(a.json, allow(), "fail open for {body:?}");
        assert!(up.calls().is_empty());

        let (_up, gw) = setup(
            "defaults: {on_failure: reject, reject_code: 20400, reject_message: bad request}",
        )
        .await;
        let a = post_command(&gw, CREATE, body.to_vec()).await;
        assert_eq!(
            a.json,
            rejection(20400, "bad request", "bad_input"),
            "fail closed for {body:?}"
        );
    }
}

#[tokio::test]
async fn wrong_types_are_bad_input_and_name_nothing_secret() {
    let (up, gw) = setup("defaults: {on_failure: reject}").await;
    let body = br#"{"callbackCommand":"callbackAfterQuitGroupCommand","groupID":123,"userID":"u"}"#;
    let a = post_command(&gw, QUIT, body.to_vec()).await;
    assert_envelope(&a);
    assert_eq!(a.json["errDlt"], "bad_input");
    assert!(up.calls().is_empty());
    // Out of int32 range, and a fraction where an integer is needed.
    for body in [
        &br#"{"groupID":"g","needVerification":4294967297}"#[..],
        br#"{"groupID":"g","createTime":1.5}"#,
        br#"{"groupID":"g","initMemberList":{"userID":"x"}}"#,
    ] {
        let a = post_command(&gw, CREATE, body.to_vec()).await;
        assert_eq!(a.json["nextCode"], 1, "{}", String::from_utf8_lossy(body));
    }
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn bad_input_on_set_group_info_still_echoes_what_could_be_read() {
    // A continue answer for SetGroupInfo must carry groupID, or OpenIM fails the operation.
    let (up, gw) = setup("").await;
    let body = br#"{"groupID":"3411007805","groupName":"n","faceURL":"f","introduction":"i","needVerification":"high"}"#;
    let a = post_command(&gw, "callbackBeforeSetGroupInfoCommand", body.to_vec()).await;
    assert_eq!(a.json["nextCode"], 0);
    assert_eq!(a.json["groupID"], "3411007805");
    assert_eq!(a.json["groupName"], "n");
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_an_envelope() {
    let (up, gw) = setup("max_body_bytes: 1024\ndefaults: {on_failure: reject}").await;
    let mut big = br#"{"groupID":"g","userID":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 4096));
    big.extend_from_slice(b"\"}\n");
    let a = post_command(&gw, QUIT, big).await;
    assert_envelope(&a);
    assert_eq!(a.json["errDlt"], "bad_input");
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn unknown_commands_continue_and_are_counted() {
    let (up, gw) = setup("").await;
    for path in [
        "/callbackExample/callbackNoSuchCommand",
        "/",
        "/callbackExample/",
    ] {
        let a = post(&gw, path, &[], payload(QUIT)).await;
        assert_envelope(&a);
        assert_eq!(a.json, allow(), "{path}");
    }
    assert!(up.calls().is_empty());
    let metrics = post_metrics(&gw).await;
    assert!(
        metrics.contains("gateway_unknown_commands_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_keys_are_ignored_counted_per_command_and_key() {
    let (up, gw) = setup("").await;
    let body = br#"{"callbackCommand":"callbackAfterQuitGroupCommand","groupID":"g","userID":"u","keyVersion":2,"signature":{"alg":"x"}}"#;
    for _ in 0..3 {
        let a = post_command(&gw, QUIT, body.to_vec()).await;
        assert_eq!(a.json, allow());
    }
    let calls = up.calls();
    assert_eq!(calls.len(), 3, "unknown keys do not stop delivery");
    assert_eq!(calls[0].decode::<pb::AfterQuitGroupRequest>().group_id, "g");
    let metrics = post_metrics(&gw).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("gateway_unknown_keys_total")
                && l.contains("command=\"callbackAfterQuitGroupCommand\"")
                && l.contains("key=\"keyVersion\"")
        })
        .unwrap_or_else(|| panic!("counter for keyVersion: {metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
}

#[tokio::test]
async fn go_encoding_quirks_are_read_as_go_wrote_them() {
    let (up, gw) = setup("").await;
    // HTML-escaped characters, a control character, numbers as strings, case-folded keys.
    let body = "{\"callbackCommand\":\"callbackAfterDisMissGroupCommand\",\"GROUPID\":\"g\\u003c1\\u003e\",\
                \"ownerID\":\"o\",\"groupType\":\"\\u0002\",\"membersID\":null}\n";
    let a = post_command(&gw, "callbackAfterDisMissGroupCommand", body).await;
    assert_eq!(a.json, allow());
    let req = up.only_call().decode::<pb::AfterDismissGroupRequest>();
    assert_eq!(req.group_id, "g<1>");
    assert_eq!(req.group_type, "\u{2}");
    assert!(req.members_id.is_empty());

    let body = br#"{"callbackCommand":"callbackBeforeCreateGroupCommand","createTime":"1719800000123","memberCount":"3","groupType":2}"#;
    let a = post_command(&gw, CREATE, body.to_vec()).await;
    assert_eq!(a.json, allow());
    let req = up.calls()[1].decode::<pb::BeforeCreateGroupRequest>();
    assert_eq!((req.create_time, req.member_count), (1_719_800_000_123, 3));
}

#[tokio::test]
async fn operation_id_comes_from_the_header_then_the_body() {
    let (up, gw) = setup("").await;
    post(
        &gw,
        &format!("/x/{CREATE}"),
        &[("operationID", "from-header")],
        payload(CREATE),
    )
    .await;
    post(
        &gw,
        &format!("/x/{CREATE}"),
        &[("Operationid", "")],
        payload(CREATE),
    )
    .await;
    post(
        &gw,
        &format!("/x/{CREATE}"),
        &[("operationid", "caf\u{e9}")],
        payload(CREATE),
    )
    .await;
    let calls = up.calls();
    assert_eq!(
        calls[0].meta("openim-operation-id").as_deref(),
        Some("from-header")
    );
    assert_eq!(
        calls[1].meta("openim-operation-id").as_deref(),
        Some("1719800000123453781"),
        "empty header: body"
    );
    assert_eq!(
        calls.len(),
        3,
        "a header that is not ASCII does not stop the call"
    );
}

#[tokio::test]
async fn any_prefix_works_and_the_query_is_ignored_but_key() {
    let (up, gw) = setup("").await;
    for path in [
        format!("/{QUIT}"),
        format!("/a/b/c/{QUIT}?contenttype=json"),
        format!("//callbackExample/{QUIT}?key=abc%2Bdef%3D&contenttype=json"),
    ] {
        assert_eq!(post(&gw, &path, &[], payload(QUIT)).await.json, allow());
    }
    let calls = up.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].meta("openim-key").as_deref(), Some("abc+def="));
    assert_eq!(calls[0].meta("openim-key"), None);
}

async fn post_metrics(gw: &openim_callback_gateway::gateway::Gateway) -> String {
    use tower::ServiceExt as _;
    let req = http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = openim_callback_gateway::http::app(gw)
        .oneshot(req)
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
