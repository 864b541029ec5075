//! How a service's answer, status or failure becomes OpenIM's envelope (the README's status table, "The contract"), through
//! a real upstream.

use crate::support::*;
use openim_callback_gateway::decision::rejection_details;
use openim_callback_gateway::proto::v1 as pb;
use std::time::{Duration, Instant};

const CREATE: &str = "callbackBeforeCreateGroupCommand";
const SEND: &str = "callbackBeforeSendSingleMsgCommand";

async fn setup(extra: &str) -> (Upstream, openim_callback_gateway::gateway::Gateway) {
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), extra));
    (up, gw)
}

#[tokio::test]
async fn ok_without_rejection_allows_with_only_the_set_fields() {
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse::default(),
    );
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(a.json, allow());
}

#[tokio::test]
async fn rejection_in_the_response_rejects_with_its_code_message_and_detail() {
    let (up, gw) = setup("").await;
    up.reply(
        "BeforeSendSingleMsg",
        pb::BeforeSendSingleMsgResponse {
            rejection: Some(pb::Rejection {
                code: 20001,
                message: "message blocked by content policy".into(),
                detail: "keyword".into(),
            }),
        },
    );
    let a = post_command(&gw, SEND, payload(SEND)).await;
    assert_envelope(&a);
    // OpenIM's own sample rejection for this command is exactly this envelope.
    let sample = sample_reply(SEND).unwrap();
    assert_eq!(
        a.json,
        rejection(20001, "message blocked by content policy", "keyword")
    );
    assert_eq!(a.json["nextCode"], sample["nextCode"]);
    assert_eq!(a.json["actionCode"], sample["actionCode"]);
}

#[tokio::test]
async fn rejection_overrides_are_not_sent_and_codes_at_or_below_zero_use_the_default() {
    let (up, gw) =
        setup("commands: {callbackBeforeCreateGroupCommand: {reject_code: 24242}}").await;
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse {
            rejection: Some(pb::Rejection {
                code: 0,
                message: "no".into(),
                detail: String::new(),
            }),
            group_name: Some("ignored".into()),
            ..Default::default()
        },
    );
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(a.json, rejection(24242, "no", ""));
}

#[tokio::test]
async fn permission_denied_and_friends_reject_with_the_status_message() {
    for code in [
        tonic::Code::PermissionDenied,
        tonic::Code::InvalidArgument,
        tonic::Code::FailedPrecondition,
    ] {
        let (up, gw) = setup("").await;
        up.on(
            "BeforeCreateGroup",
            Behavior::Status(code, "not allowed here".into(), Default::default()),
        );
        let a = post_command(&gw, CREATE, payload(CREATE)).await;
        assert_eq!(a.json, rejection(20001, "not allowed here", ""), "{code:?}");
    }
}

#[tokio::test]
async fn a_rejection_in_the_status_details_gives_its_code_and_detail() {
    let (up, gw) = setup("").await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Status(
            tonic::Code::PermissionDenied,
            "group quota exceeded".into(),
            rejection_details(20777, "ignored: the status message wins", "quota=10"),
        ),
    );
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(a.json, rejection(20777, "group quota exceeded", "quota=10"));
}

#[tokio::test]
async fn unimplemented_continues() {
    let (up, gw) = setup("defaults: {on_failure: reject}").await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Status(tonic::Code::Unimplemented, "no".into(), Default::default()),
    );
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(
        a.json,
        allow(),
        "UNIMPLEMENTED is not a failure, even when failing closed"
    );
}

#[tokio::test]
async fn other_statuses_follow_the_failure_policy() {
    for code in [
        tonic::Code::Internal,
        tonic::Code::Unavailable,
        tonic::Code::ResourceExhausted,
        tonic::Code::NotFound,
    ] {
        let (up, gw) = setup("").await;
        up.on(
            "BeforeCreateGroup",
            Behavior::Status(code, "boom".into(), Default::default()),
        );
        assert_eq!(
            post_command(&gw, CREATE, payload(CREATE)).await.json,
            allow(),
            "{code:?} fails open"
        );

        let (up, gw) = setup(
            "commands: {callbackBeforeCreateGroupCommand: {on_failure: reject, reject_code: 20500, reject_message: try later}}",
        )
        .await;
        up.on(
            "BeforeCreateGroup",
            Behavior::Status(code, "boom".into(), Default::default()),
        );
        let a = post_command(&gw, CREATE, payload(CREATE)).await;
        assert_eq!(
            a.json,
            rejection(20500, "try later", "status"),
            "{code:?} fails closed"
        );
    }
}

#[tokio::test]
async fn an_undecodable_reply_follows_the_failure_policy() {
    let (up, gw) = setup("defaults: {on_failure: reject, reject_code: 20999}").await;
    up.on("BeforeCreateGroup", Behavior::Garbage);
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(
        a.json,
        rejection(20999, "callback service unavailable", "bad_reply")
    );
}

#[tokio::test]
async fn a_dead_upstream_answers_in_time_by_the_failure_policy() {
    // Bind and drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("http://127.0.0.1:{port}");
    let gw = gateway(&config(&uri, ""));
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_envelope(&a);
    assert_eq!(a.json, allow());
    let gw = gateway(&config(&uri, "defaults: {on_failure: reject}"));
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(
        a.json,
        rejection(20001, "callback service unavailable", "unreachable")
    );
}

#[tokio::test]
async fn a_slow_upstream_is_cut_at_the_command_deadline() {
    let (up, gw) = setup(
        "commands: {callbackBeforeCreateGroupCommand: {timeout: 200ms, on_failure: reject, reject_code: 20408}}",
    )
    .await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Delay(
            Duration::from_secs(10),
            Box::new(Behavior::Reply(Default::default())),
        ),
    );
    let started = Instant::now();
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    let took = started.elapsed();
    assert_eq!(a.json["nextCode"], 1);
    assert_eq!(a.json["errCode"], 20408);
    // The 10 s reply was not awaited (a generous bound: this checks "cut", not speed).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let call = up.only_call();
    let timeout = call.meta("grpc-timeout").expect("grpc-timeout sent");
    assert!(
        timeout.ends_with('m') || timeout.ends_with('u') || timeout.ends_with('n'),
        "{timeout}"
    );
}

#[tokio::test]
async fn disabled_commands_continue_without_a_call() {
    let (up, gw) = setup("commands: {callbackBeforeCreateGroupCommand: {enabled: false}}").await;
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(a.json, allow());
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn sync_after_callbacks_wait_for_the_service_and_answer_with_a_valid_envelope() {
    let (up, gw) = setup("").await;
    up.on(
        "AfterQuitGroup",
        Behavior::Status(tonic::Code::Internal, "x".into(), Default::default()),
    );
    let a = post_command(
        &gw,
        "callbackAfterQuitGroupCommand",
        payload("callbackAfterQuitGroupCommand"),
    )
    .await;
    assert_eq!(a.json, allow());
    assert_eq!(up.only_call().rpc, "AfterQuitGroup");
}

#[tokio::test]
async fn several_endpoints_of_one_upstream_share_the_calls() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}', '{}']}}}}\ndefaults: {{delivery: sync}}",
        a.uri(),
        b.uri()
    );
    let gw = gateway(&openim_callback_gateway::config::Config::from_yaml(&yaml).unwrap());
    for _ in 0..40 {
        assert_eq!(
            post_command(&gw, CREATE, payload(CREATE)).await.json,
            allow()
        );
    }
    let (na, nb) = (a.calls().len(), b.calls().len());
    assert_eq!(na + nb, 40);
    assert!(na > 0 && nb > 0, "both endpoints get calls: {na} / {nb}");
}

/// An upstream marked `https://` is spoken to in TLS, never in plaintext HTTP/2: the socket sees
/// a TLS ClientHello, and without a certificate it trusts the gateway answers by the failure
/// policy (here: reject) instead of sending the message in clear.
#[tokio::test]
async fn an_https_upstream_gets_tls_never_plaintext() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first_bytes = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf.truncate(n);
        buf
    });
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['https://localhost:{}'], connect_timeout: 2s}}}}\n\
         defaults: {{delivery: sync, timeout: 3s, on_failure: reject, reject_code: 20500}}\n",
        addr.port()
    );
    let gw = gateway(&openim_callback_gateway::config::Config::from_yaml(&yaml).unwrap());
    let a = post_command(
        &gw,
        "callbackBeforeCreateGroupCommand",
        payload("callbackBeforeCreateGroupCommand"),
    )
    .await;
    assert_envelope(&a);
    assert_eq!(a.json["errCode"], 20500, "fail closed: {:?}", a.json);
    let bytes = first_bytes.await.unwrap();
    assert!(
        !bytes.starts_with(b"PRI"),
        "plaintext HTTP/2 preface: {bytes:?}"
    );
    assert_eq!(
        bytes.first(),
        Some(&0x16),
        "a TLS handshake record: {bytes:?}"
    );
}
