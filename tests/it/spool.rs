//! After callbacks through the durable spool: acknowledged at once, delivered when the upstream
//! is up, dead letters, a full spool, ordering, and a broken spool file at start.

use crate::support::*;
use openim_callback_gateway::config::Config;
use openim_callback_gateway::gateway::Gateway;
use openim_callback_gateway::proto::v1 as pb;
use openim_callback_gateway::spool::{Spool, Which};
use std::sync::Arc;
use std::time::Duration;

const QUIT: &str = "callbackAfterQuitGroupCommand";

/// A gateway with a real spool in `dir`, delivering to `upstream_uri` with short backoffs.
struct Spooled {
    gw: Gateway,
    spool: Spool,
    _delivery: tokio::task::JoinHandle<()>,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        self._delivery.abort();
    }
}

fn spooled(upstream_uri: &str, dir: &std::path::Path, extra: &str) -> Spooled {
    spooled_with(
        upstream_uri,
        dir,
        "backoff_initial: 20ms, backoff_max: 100ms",
        extra,
    )
}

/// Like [`spooled`], with the spool settings after `dir` given as YAML flow entries.
fn spooled_with(upstream_uri: &str, dir: &std::path::Path, spool: &str, extra: &str) -> Spooled {
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{upstream_uri}'], connect_timeout: 200ms}}}}\n\
         defaults: {{timeout: 1s}}\n\
         spool: {{dir: '{}', {spool}}}\n{extra}",
        dir.display()
    );
    let config = Config::from_yaml(&yaml).expect("valid config");
    let spool = Spool::open(&config.spool).expect("spool opens");
    let gw = Gateway::new(&config, Some(spool.clone())).expect("gateway");
    let delivery = spool.start(Arc::new(gw.clone()));
    Spooled {
        gw,
        spool,
        _delivery: delivery,
    }
}

fn quit_body(user: &str) -> Vec<u8> {
    let mut body = read_json(&format!("payloads/{QUIT}.json"));
    body["userID"] = user.into();
    wire(&body)
}

/// A loopback port nobody listens on, kept reserved (bound, not listening) while the returned
/// socket lives, so that no other test's listener can be given the same port meanwhile:
/// connections to it are refused. Drop the socket to bind a listener there.
fn dead_port() -> (std::net::SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

#[tokio::test]
async fn events_are_acked_while_the_upstream_is_down_and_delivered_when_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, reserved) = dead_port();
    let s = spooled(&format!("http://{addr}"), dir.path(), "");
    for i in 0..50 {
        let a = post_command(&s.gw, QUIT, quit_body(&format!("u{i}"))).await;
        assert_eq!(
            a.json,
            allow(),
            "acknowledged at once while the upstream is down"
        );
    }
    assert_eq!(s.spool.stats().pending, 50);

    drop(reserved);
    let up = Upstream::start_on(tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    eventually("all 50 delivered", PATIENCE, async || {
        s.spool.stats().pending == 0
    })
    .await;
    let calls = up.calls();
    let mut users: Vec<String> = calls
        .iter()
        .map(|c| c.decode::<pb::AfterQuitGroupRequest>().user_id)
        .collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 50, "every event arrived");
    for c in &calls {
        assert!(
            c.meta("openim-delivery-id")
                .is_some_and(|id| !id.is_empty())
        );
        assert!(c.meta("openim-delivery-attempt").is_some());
        assert_eq!(c.meta("openim-callback-command").as_deref(), Some(QUIT));
        assert_eq!(
            c.meta("openim-operation-id").as_deref(),
            Some("1719800000123453781")
        );
    }
}

#[tokio::test]
async fn retries_keep_the_delivery_id_and_count_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.on(
        "AfterQuitGroup",
        Behavior::Status(tonic::Code::Unavailable, "busy".into(), Default::default()),
    );
    let s = spooled(&up.uri(), dir.path(), "");
    post_command(&s.gw, QUIT, quit_body("u1")).await;
    up.wait_calls(3, Duration::from_secs(20)).await;
    up.on("AfterQuitGroup", Behavior::Reply(Default::default()));
    eventually("delivered after retries", PATIENCE, async || {
        s.spool.stats().pending == 0
    })
    .await;
    let calls = up.calls();
    assert!(calls.len() >= 4, "{}", calls.len());
    let id = calls[0].meta("openim-delivery-id").unwrap();
    for (n, c) in calls.iter().enumerate() {
        assert_eq!(
            c.meta("openim-delivery-id").as_deref(),
            Some(id.as_str()),
            "stable id"
        );
        assert_eq!(c.meta("openim-delivery-attempt"), Some((n + 1).to_string()));
    }
}

#[tokio::test]
async fn permanent_errors_become_dead_letters_an_operator_can_replay() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.on(
        "AfterQuitGroup",
        Behavior::Status(
            tonic::Code::InvalidArgument,
            "bad".into(),
            Default::default(),
        ),
    );
    let s = spooled(&up.uri(), dir.path(), "");
    post_command(&s.gw, QUIT, quit_body("u1")).await;
    eventually("a dead letter", PATIENCE, async || {
        s.spool.stats().dead == 1
    })
    .await;
    assert_eq!(up.calls().len(), 1, "a permanent error is not retried");
    let dead = s.spool.list(Which::Dead, 10).unwrap();
    assert_eq!(dead[0].event.command, QUIT);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("bad")
    );

    // The operator fixes the service, then replays through the admin API of the running gateway.
    up.on("AfterQuitGroup", Behavior::Reply(Default::default()));
    let a = post(&s.gw, "/admin/spool/replay", &[], Vec::new()).await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
    eventually("replayed", PATIENCE, async || {
        s.spool.stats().dead == 0 && s.spool.stats().pending == 0
    })
    .await;
    let calls = up.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].meta("openim-delivery-id"),
        calls[1].meta("openim-delivery-id")
    );
}

#[tokio::test]
async fn a_full_spool_rejects_loudly_or_drops_the_oldest_as_configured() {
    let (addr, _reserved) = dead_port();
    let dir = tempfile::tempdir().unwrap();
    let s = spooled_with(
        &format!("http://{addr}"),
        dir.path(),
        "max_events: 3, backoff_initial: 1s",
        "",
    );
    for i in 0..3 {
        assert_eq!(
            post_command(&s.gw, QUIT, quit_body(&format!("u{i}")))
                .await
                .json,
            allow()
        );
    }
    let a = post_command(&s.gw, QUIT, quit_body("u3")).await;
    assert_envelope(&a);
    assert_eq!(a.json["nextCode"], 1);
    assert_eq!(
        a.json["errMsg"],
        "gateway spool is full: event not accepted"
    );
    assert_eq!(s.spool.stats().pending, 3);
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let s = spooled_with(
        &format!("http://{addr}"),
        dir.path(),
        "max_events: 3, when_full: drop_oldest, backoff_initial: 1s",
        "",
    );
    for i in 0..5 {
        assert_eq!(
            post_command(&s.gw, QUIT, quit_body(&format!("u{i}")))
                .await
                .json,
            allow()
        );
    }
    assert_eq!(s.spool.stats().pending, 3);
    let kept: Vec<String> = s
        .spool
        .list(Which::Pending, 10)
        .unwrap()
        .iter()
        .map(|e| pb::AfterQuitGroupRequest::decode_from(&e.event.payload).user_id)
        .collect();
    assert_eq!(kept, ["u2", "u3", "u4"], "the oldest were dropped");
}

trait DecodeFrom: prost::Message + Default {
    fn decode_from(bytes: &[u8]) -> Self {
        Self::decode(bytes).unwrap()
    }
}
impl<T: prost::Message + Default> DecodeFrom for T {}

#[tokio::test]
async fn ordered_commands_deliver_one_group_in_order_even_across_retries() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    // The first attempts fail, so without ordering later events would overtake.
    up.on(
        "AfterSendGroupMsg",
        Behavior::Status(
            tonic::Code::Unavailable,
            "warming up".into(),
            Default::default(),
        ),
    );
    let s = spooled(
        &up.uri(),
        dir.path(),
        "commands: {callbackAfterSendGroupMsgCommand: {ordered: true}}",
    );
    let cmd = "callbackAfterSendGroupMsgCommand";
    for i in 0..20 {
        let mut body = read_json(&format!("payloads/{cmd}.json"));
        body["clientMsgID"] = format!("m{i:02}").into();
        assert_eq!(post_command(&s.gw, cmd, wire(&body)).await.json, allow());
    }
    up.wait_calls(3, Duration::from_secs(20)).await;
    up.on("AfterSendGroupMsg", Behavior::Reply(Default::default()));
    eventually("all delivered", PATIENCE, async || {
        s.spool.stats().pending == 0
    })
    .await;
    let order: Vec<String> = up
        .calls()
        .iter()
        .map(|c| c.decode::<pb::AfterSendGroupMsgRequest>().client_msg_id)
        .collect();
    let mut dedup = order.clone();
    dedup.dedup();
    let expected: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(
        dedup, expected,
        "one group's messages arrive in order (retries repeat in place)"
    );
}

#[tokio::test]
async fn delivery_sync_waits_for_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let s = spooled(
        &up.uri(),
        dir.path(),
        &format!("commands: {{{QUIT}: {{delivery: sync}}}}"),
    );
    let a = post_command(&s.gw, QUIT, quit_body("u1")).await;
    assert_eq!(a.json, allow());
    let call = up.only_call();
    assert_eq!(
        call.meta("openim-delivery-id"),
        None,
        "sync calls are not spool deliveries"
    );
    assert_eq!(s.spool.stats().pending, 0);
}

#[tokio::test]
async fn a_corrupted_spool_file_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_yaml(&format!(
        "upstreams: {{default: {{endpoints: ['http://127.0.0.1:1']}}}}\nspool: {{dir: '{}'}}",
        dir.path().display()
    ))
    .unwrap();
    std::fs::write(
        cfg.spool.path(),
        b"this is not a redb database, it is garbage",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = openim_callback_gateway::run(cfg.clone(), listener, std::future::pending())
        .await
        .expect_err("the gateway must not start on a broken spool");
    let text = err.to_string();
    assert!(
        text.contains(&cfg.spool.path().display().to_string()),
        "names the file: {text}"
    );
    let garbage = std::fs::read(cfg.spool.path()).unwrap();
    assert_eq!(
        garbage, b"this is not a redb database, it is garbage",
        "nothing was deleted"
    );
}

/// Spooled events resolve their route at delivery: an event stored while its command went to a
/// dead upstream `old` is delivered to `moved` once a new snapshot routes the command there, with
/// its delivery id, operation id and key unchanged, and nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_event_follows_a_snapshot_that_moves_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let new_upstream = Upstream::start().await;
    let (old_addr, _reserved) = dead_port();
    let yaml = |old: &str, routes_to: &str| {
        format!(
            "upstreams:\n{old}  moved: {{endpoints: ['{}']}}\n\
             defaults: {{timeout: 1s, upstream: {routes_to}}}\n\
             spool: {{dir: '{}', backoff_initial: 20ms, backoff_max: 100ms}}\n",
            new_upstream.uri(),
            dir.path().display()
        )
    };
    let old = format!("  old: {{endpoints: ['http://{old_addr}'], connect_timeout: 200ms}}\n");
    let config = Config::from_yaml(&yaml(&old, "old")).unwrap();
    let spool = Spool::open(&config.spool).unwrap();
    let gw = Gateway::new(&config, Some(spool.clone())).unwrap();
    let _delivery = spool.start(Arc::new(gw.clone()));

    let a = post(
        &gw,
        &format!("/callbackExample/{QUIT}?key=k-moved"),
        &[("operationID", "op-moved")],
        quit_body("u-moved"),
    )
    .await;
    assert_eq!(a.json, allow());
    // It is pending and failing against `old`.
    eventually(
        "a failed attempt against the old upstream",
        PATIENCE,
        async || {
            spool
                .list(Which::Pending, 10)
                .unwrap()
                .first()
                .is_some_and(|e| e.attempts >= 1)
        },
    )
    .await;
    let stored = spool.list(Which::Pending, 10).unwrap().remove(0);
    assert!(new_upstream.calls().is_empty());

    // Rename/move: the same command now routes to `moved`, and `old` no longer exists.
    let moved = Config::from_yaml(&yaml("", "moved")).unwrap();
    assert!(!moved.upstreams.contains_key("old"));
    gw.swap(&moved).expect("the new snapshot builds");

    let calls = new_upstream.wait_calls(1, Duration::from_secs(20)).await;
    assert_eq!(calls.len(), 1, "delivered once to the moved upstream");
    let call = &calls[0];
    assert_eq!(call.rpc, "AfterQuitGroup");
    assert_eq!(
        call.meta("openim-delivery-id").as_deref(),
        Some(stored.delivery_id.as_str())
    );
    assert_eq!(
        call.meta("openim-operation-id").as_deref(),
        Some("op-moved")
    );
    assert_eq!(call.meta("openim-key").as_deref(), Some("k-moved"));
    assert!(
        call.meta("openim-delivery-attempt")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 2),
        "the attempt count went on: {:?}",
        call.meta("openim-delivery-attempt")
    );
    let req: pb::AfterQuitGroupRequest = call.decode();
    assert_eq!(req.user_id, "u-moved");
    eventually("the event to leave the spool", PATIENCE, async || {
        spool.stats().pending == 0
    })
    .await;
    assert_eq!(spool.stats().dead, 0, "nothing dead-lettered");
}

/// A spool file written by release 0.1.0 (whose records also carried method, upstream and
/// timeout) is read by this release and every event is delivered with its original ids, routed
/// by the current config, here to an upstream that 0.1.0's `default` never named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_file_of_release_0_1_0_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spool-v0.1.0/spool.redb"),
        dir.path().join("spool.redb"),
    )
    .unwrap();
    let upstream = Upstream::start().await;
    let yaml = format!(
        "upstreams: {{renamed: {{endpoints: ['{}']}}}}\n\
         defaults: {{timeout: 1s, upstream: renamed}}\n\
         spool: {{dir: '{}', backoff_initial: 20ms, backoff_max: 100ms}}\n",
        upstream.uri(),
        dir.path().display()
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let spool = Spool::open(&config.spool).unwrap();
    assert_eq!(
        spool.stats().pending,
        3,
        "the three events of the 0.1.0 file"
    );
    let gw = Gateway::new(&config, Some(spool.clone())).unwrap();
    let _delivery = spool.start(Arc::new(gw.clone()));
    let calls = upstream.wait_calls(3, Duration::from_secs(20)).await;
    let mut seen: Vec<(String, String, String, String)> = calls
        .iter()
        .map(|c| {
            (
                c.rpc.clone(),
                c.meta("openim-delivery-id").unwrap_or_default(),
                c.meta("openim-operation-id").unwrap_or_default(),
                c.meta("openim-key").unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    let id = |n: u32| format!("f275d28ecb64053d2427cd08d459a326-{n:016}");
    let op = || "op-old-release".to_owned();
    let key = || "k1".to_owned();
    assert_eq!(
        seen,
        [
            ("AfterQuitGroup".to_owned(), id(1), op(), key()),
            ("AfterSendSingleMsg".to_owned(), id(2), op(), key()),
            ("AfterUserOnline".to_owned(), id(3), op(), key()),
        ]
    );
    let quit = calls.iter().find(|c| c.rpc == "AfterQuitGroup").unwrap();
    let req: pb::AfterQuitGroupRequest = quit.decode();
    assert!(
        !req.user_id.is_empty() && !req.group_id.is_empty(),
        "{req:?}"
    );
    eventually("the spool to empty", PATIENCE, async || {
        spool.stats().pending == 0
    })
    .await;
    assert_eq!(spool.stats().dead, 0);
}
