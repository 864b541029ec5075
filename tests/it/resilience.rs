//! The resilience controls of issue #8 through the real gateway and a real tonic upstream: the
//! circuit breaker opening and closing, the per-upstream concurrency limit, retries of before
//! calls only, the deadline as min(command timeout, OpenIM's budget), and the spool waiting on an
//! open breaker instead of burning its attempts. Every control answers with the command's failure
//! policy and is counted in `gateway_resilience_trips_total{control}`.

use crate::support;
use crate::support::*;
use openim_callback_gateway::config::Config;
use openim_callback_gateway::gateway::Gateway;
use openim_callback_gateway::spool::{Spool, Which};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CREATE: &str = "callbackBeforeCreateGroupCommand";
const QUIT: &str = "callbackAfterQuitGroupCommand";

fn fail_closed(a: &Answer, code: i64) {
    assert_envelope(a);
    assert_eq!(a.json["nextCode"], 1, "rejected: {}", a.json);
    assert_eq!(a.json["errCode"], code, "{}", a.json);
}

#[tokio::test]
async fn the_breaker_opens_on_consecutive_failures_answers_at_once_and_closes_after_a_probe() {
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Status(tonic::Code::Unavailable, "down".into(), Default::default()),
    );
    let yaml = format!(
        "upstreams: {{breaking: {{endpoints: ['{}'], breaker: {{consecutive_failures: 3, cool_down: 300ms}}, retries: {{max_retries: 0}}}}}}\n\
         defaults: {{upstream: breaking, on_failure: reject, reject_code: 20077}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    for _ in 0..3 {
        fail_closed(&post_command(&gw, CREATE, payload(CREATE)).await, 20077);
    }
    assert_eq!(up.calls().len(), 3);
    // Open: answered by the failure policy without a call.
    let before = sample(
        &scrape(&gw),
        "gateway_resilience_trips_total",
        &["control=\"breaker\"", "upstream=\"breaking\""],
    );
    for _ in 0..5 {
        let a = post_command(&gw, CREATE, payload(CREATE)).await;
        fail_closed(&a, 20077);
        assert_eq!(a.json["errDlt"], "breaker_open");
    }
    assert_eq!(up.calls().len(), 3, "an open breaker sends nothing");
    let text = scrape(&gw);
    assert_eq!(
        sample(
            &text,
            "gateway_resilience_trips_total",
            &["control=\"breaker\"", "upstream=\"breaking\""]
        ) - before,
        5.0
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("gateway_breaker_state{upstream=\"breaking\"}") && l.ends_with(" 2")
        ),
        "breaker state 2 (open) exported:\n{text}"
    );
    // The upstream recovers; after the cool-down one probe closes the breaker.
    up.on("BeforeCreateGroup", Behavior::Reply(Default::default()));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(a.json["errCode"], 0, "{}", a.json);
    for _ in 0..3 {
        assert_eq!(
            post_command(&gw, CREATE, payload(CREATE)).await.json["errCode"],
            0
        );
    }
    assert_eq!(up.calls().len(), 7, "closed again: every call goes through");
    let text = scrape(&gw);
    assert!(
        text.lines().any(
            |l| l.starts_with("gateway_breaker_state{upstream=\"breaking\"}") && l.ends_with(" 0")
        ),
        "breaker state 0 (closed):\n{text}"
    );
}

#[tokio::test]
async fn a_service_rejection_never_opens_the_breaker() {
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Status(
            tonic::Code::PermissionDenied,
            "no".into(),
            Default::default(),
        ),
    );
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}'], breaker: {{consecutive_failures: 2}}}}}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    for _ in 0..6 {
        let a = post_command(&gw, CREATE, payload(CREATE)).await;
        assert_eq!(a.json["nextCode"], 1, "{}", a.json);
    }
    assert_eq!(
        up.calls().len(),
        6,
        "rejections are answers; all six went through"
    );
}

#[tokio::test]
async fn max_concurrency_answers_the_extra_call_at_once_by_the_failure_policy() {
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Delay(
            Duration::from_millis(600),
            Box::new(Behavior::Reply(Default::default())),
        ),
    );
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}'], max_concurrency: 1}}}}\n\
         defaults: {{on_failure: reject, reject_code: 20078}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { post_command(&gw, CREATE, payload(CREATE)).await })
    };
    up.wait_calls(1, Duration::from_secs(5)).await;
    let started = Instant::now();
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    let shed_in = started.elapsed();
    fail_closed(&a, 20078);
    assert_eq!(a.json["errDlt"], "max_concurrency");
    let first = slow.await.unwrap();
    assert_eq!(first.json["errCode"], 0, "the call in flight is unaffected");
    assert!(
        shed_in < Duration::from_millis(600),
        "shed while the first call was still in flight ({shed_in:?})"
    );
    assert_eq!(up.calls().len(), 1);
    assert!(
        sample(
            &scrape(&gw),
            "gateway_resilience_trips_total",
            &["control=\"max_concurrency\""]
        ) >= 1.0
    );
}

/// Connection-level failures of a before call are retried within the deadline; after calls are
/// not (the spool retries those).
#[tokio::test]
async fn before_calls_retry_connection_failures_after_calls_do_not() {
    // A port that refuses connections, kept reserved meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = socket.local_addr().unwrap();
    let yaml = format!(
        "upstreams: {{retrying: {{endpoints: ['http://{dead}'], connect_timeout: 200ms, retries: {{max_retries: 2, backoff: 10ms}}, breaker: {{enabled: false}}}}}}\n\
         defaults: {{upstream: retrying, delivery: sync, on_failure: reject}}\n"
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    let retries = |gw: &Gateway| {
        sample(
            &scrape(gw),
            "gateway_upstream_retries_total",
            &["upstream=\"retrying\""],
        )
    };
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    fail_closed(&a, 20001);
    assert_eq!(a.json["errDlt"], "unreachable");
    assert_eq!(retries(&gw), 2.0, "two retries of the before call");
    let a = post_command(&gw, QUIT, payload(QUIT)).await;
    assert_envelope(&a);
    assert_eq!(retries(&gw), 2.0, "no retry of an after call");
    // A retried call that succeeds: the upstream comes up on that port between attempts is not
    // deterministic; instead a slow-to-refuse budget: the deadline bounds the retries.
    let yaml = format!(
        "upstreams: {{retrying: {{endpoints: ['http://{dead}'], retries: {{max_retries: 50, backoff: 100ms}}, breaker: {{enabled: false}}}}}}\n\
         defaults: {{upstream: retrying, on_failure: reject, timeout: 350ms}}\n"
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    let before = retries(&gw);
    let started = Instant::now();
    fail_closed(&post_command(&gw, CREATE, payload(CREATE)).await, 20001);
    let took = started.elapsed();
    let done = retries(&gw) - before;
    assert!(
        (1.0..=4.0).contains(&done),
        "retries stop at the deadline: {done} retries in {took:?}"
    );
}

/// The deadline sent as grpc-timeout is min(command timeout, what is left of OpenIM's budget).
#[tokio::test]
async fn grpc_timeout_is_the_command_timeout_or_what_is_left_of_openims_budget() {
    let up = Upstream::start().await;
    let timeout_ms = |call: &support::Call| -> f64 {
        let v = call.meta("grpc-timeout").expect("grpc-timeout sent");
        let (n, unit) = v.split_at(v.len() - 1);
        let n: f64 = n.parse().unwrap();
        match unit {
            "H" => n * 3_600_000.0,
            "M" => n * 60_000.0,
            "S" => n * 1000.0,
            "m" => n,
            "u" => n / 1000.0,
            "n" => n / 1_000_000.0,
            other => panic!("unit {other}"),
        }
    };
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\n\
         openim_timeout: 5s\n\
         defaults: {{timeout: 800ms}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    post_command(&gw, CREATE, payload(CREATE)).await;
    let ms = timeout_ms(&up.only_call());
    assert!(ms <= 800.0 && ms > 500.0, "command timeout wins: {ms} ms");

    let up = Upstream::start().await;
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\n\
         openim_timeout: 1s\n\
         defaults: {{timeout: 3s}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    post_command(&gw, CREATE, payload(CREATE)).await;
    let ms = timeout_ms(&up.only_call());
    assert!(ms < 1000.0, "OpenIM's budget wins: {ms} ms");
}

/// An open breaker delays spooled deliveries instead of using up their attempts: with the
/// upstream failing for longer than `max_attempts` retries would last, nothing becomes a dead
/// letter, the deliveries are counted as deferred, and all arrive once the upstream recovers.
#[tokio::test]
async fn the_spool_waits_on_an_open_breaker_instead_of_burning_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.on(
        "AfterQuitGroup",
        Behavior::Status(tonic::Code::Unavailable, "down".into(), Default::default()),
    );
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}'], breaker: {{consecutive_failures: 2, cool_down: 400ms}}}}}}\n\
         defaults: {{timeout: 1s}}\n\
         spool: {{dir: '{}', max_attempts: 6, backoff_initial: 10ms, backoff_max: 20ms}}\n",
        up.uri(),
        dir.path().display()
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let spool = Spool::open(&config.spool).unwrap();
    let gw = Gateway::new(&config, Some(spool.clone())).unwrap();
    let delivery = spool.start(Arc::new(gw.clone()));
    for i in 0..5 {
        let mut body = read_json(&format!("payloads/{QUIT}.json"));
        body["userID"] = format!("user-{i}").into();
        let a = post_command(&gw, QUIT, wire(&body)).await;
        assert_eq!(a.json["actionCode"], 0);
    }
    // Without the breaker, 6 attempts 10-20 ms apart would dead-letter all five within ~100 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = scrape(&gw);
    assert!(
        sample(
            &text,
            "gateway_delivery_attempts_total",
            &["result=\"deferred\""]
        ) > 0.0,
        "deliveries were deferred:\n{text}"
    );
    assert_eq!(
        spool.count(Which::Dead, None).unwrap(),
        0,
        "no dead letters"
    );
    let sent = up.calls().len();
    assert!(
        sent < 5 * 6,
        "the breaker held deliveries back: {sent} calls"
    );
    up.on("AfterQuitGroup", Behavior::Reply(Default::default()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool.count(Which::Pending, None).unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "all five delivered after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spool.count(Which::Dead, None).unwrap(), 0);
    delivery.abort();
}

/// Issue #18: a status a live service sends about one request (`INTERNAL`, `UNKNOWN`,
/// `DATA_LOSS`, `RESOURCE_EXHAUSTED`) is that request's failure policy and nothing more: fifty in
/// a row open no breaker, other RPCs and the next call of the same RPC still reach the service,
/// and their rejections and modifications still reach OpenIM.
#[tokio::test]
async fn statuses_about_one_request_never_fail_other_requests_open() {
    use openim_callback_gateway::proto::v1 as pb;
    const SEND: &str = "callbackBeforeSendSingleMsgCommand";
    const MODIFY: &str = "callbackBeforeMsgModifyCommand";
    let up = Upstream::start().await;
    // The default breaker: it opens after 5 consecutive failures.
    let yaml = format!(
        "upstreams: {{one_request: {{endpoints: ['{}']}}}}\n\
         defaults: {{upstream: one_request, delivery: sync}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    up.reply(
        "BeforeSendSingleMsg",
        pb::BeforeSendSingleMsgResponse {
            rejection: Some(pb::Rejection {
                code: 20001,
                message: "blocked".into(),
                detail: "policy".into(),
            }),
        },
    );
    up.reply(
        "BeforeMsgModify",
        pb::BeforeMsgModifyResponse {
            content: Some(r#"{"content":"masked"}"#.into()),
            ..Default::default()
        },
    );
    let mut sent = 0;
    for (code, times) in [
        (tonic::Code::Internal, 50),
        (tonic::Code::Unknown, 8),
        (tonic::Code::DataLoss, 8),
        (tonic::Code::ResourceExhausted, 8),
    ] {
        up.on(
            "BeforeCreateGroup",
            Behavior::Status(code, "this one request broke me".into(), Default::default()),
        );
        for _ in 0..times {
            let a = post_command(&gw, CREATE, payload(CREATE)).await;
            assert_envelope(&a);
            assert_eq!(
                a.json["nextCode"], 0,
                "{code:?}: continue by default: {}",
                a.json
            );
            sent += 1;
        }
        // Between and after them, other RPCs' answers reach OpenIM.
        let rejected = post_command(&gw, SEND, payload(SEND)).await;
        assert_eq!(
            rejected.json,
            rejection(20001, "blocked", "policy"),
            "{code:?}"
        );
        let modified = post_command(&gw, MODIFY, payload(MODIFY)).await;
        assert_eq!(
            modified.json["content"], r#"{"content":"masked"}"#,
            "{code:?}: {}",
            modified.json
        );
        sent += 2;
    }
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse {
            rejection: Some(pb::Rejection {
                code: 20002,
                message: "no".into(),
                detail: String::new(),
            }),
            ..Default::default()
        },
    );
    let a = post_command(&gw, CREATE, payload(CREATE)).await;
    assert_eq!(
        a.json,
        rejection(20002, "no", ""),
        "the next call of the same RPC"
    );
    sent += 1;
    assert_eq!(up.calls().len(), sent, "every callback reached the service");
    let text = scrape(&gw);
    assert_eq!(
        sample(
            &text,
            "gateway_resilience_trips_total",
            &["control=\"breaker\"", "upstream=\"one_request\""]
        ),
        0.0,
        "{text}"
    );
}

/// Issue #18: the upstream killed and restarted under load: the breaker opens while it is dead,
/// and a passing health check closes it as soon as it is back, long before the 5 s cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_forwarded_again_within_a_second_of_the_upstreams_return() {
    let up = Upstream::start().await;
    let addr = up.addr;
    let yaml = format!(
        "upstreams: {{restarted: {{endpoints: ['{}'], connect_timeout: 300ms}}}}\n\
         defaults: {{upstream: restarted, delivery: sync, timeout: 2s}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    let checks = tokio::spawn(openim_callback_gateway::checks::run_checks(
        gw.clone(),
        Duration::from_secs(1),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut answers = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = post_command(&gw, CREATE, payload(CREATE)).await;
                assert_envelope(&a);
                answers += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        }));
    }
    up.wait_calls(20, Duration::from_secs(10)).await;
    up.stop();
    // Dead long enough for the breaker to open (5 consecutive failures).
    let opened = Instant::now() + Duration::from_secs(10);
    let tripped = |gw: &Gateway| {
        sample(
            &scrape(gw),
            "gateway_resilience_trips_total",
            &["control=\"breaker\"", "upstream=\"restarted\""],
        )
    };
    while tripped(&gw) == 0.0 {
        assert!(
            Instant::now() < opened,
            "the breaker opens while the upstream is dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let back = Upstream::start_on(listener).await;
    let returned = Instant::now();
    let calls = back.wait_calls(1, Duration::from_secs(10)).await;
    let forwarded_after = returned.elapsed();
    assert!(!calls.is_empty(), "callbacks reach the upstream again");
    assert!(
        forwarded_after < Duration::from_secs(1),
        "forwarded again {forwarded_after:?} after the upstream's return (cool-down is 5s)"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        assert!(l.await.unwrap() > 0);
    }
    checks.abort();
}

/// Issue #18: a fail-closed command with a dead upstream rejects with its `reject_code`, before
/// and after the breaker opens.
#[tokio::test]
async fn a_fail_closed_command_with_a_dead_upstream_rejects_with_its_code() {
    let up = Upstream::start().await;
    let uri = up.uri();
    up.stop();
    drop(up);
    let yaml = format!(
        "upstreams: {{dead: {{endpoints: ['{uri}'], connect_timeout: 300ms}}}}\n\
         defaults: {{upstream: dead}}\n\
         commands: {{{CREATE}: {{on_failure: reject, reject_code: 20099, reject_message: closed}}}}\n"
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    for _ in 0..8 {
        let a = post_command(&gw, CREATE, payload(CREATE)).await;
        fail_closed(&a, 20099);
        assert_eq!(a.json["errMsg"], "closed", "{}", a.json);
    }
    let text = scrape(&gw);
    assert!(
        sample(
            &text,
            "gateway_resilience_trips_total",
            &["control=\"breaker\"", "upstream=\"dead\""]
        ) > 0.0,
        "the breaker opened on the dead upstream meanwhile:\n{text}"
    );
}

/// Issue #18: `gateway_upstream_in_flight` goes back down when a call is dropped mid-way (the
/// client went away, the task was aborted), not only when it returns.
#[tokio::test]
async fn a_call_dropped_mid_way_leaves_no_call_in_flight() {
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Delay(
            Duration::from_secs(3),
            Box::new(Behavior::Reply(Default::default())),
        ),
    );
    let yaml = format!(
        "upstreams: {{dropped: {{endpoints: ['{}']}}}}\ndefaults: {{upstream: dropped}}\n",
        up.uri()
    );
    let gw = support::gateway(&Config::from_yaml(&yaml).unwrap());
    let in_flight = |gw: &Gateway| {
        sample(
            &scrape(gw),
            "gateway_upstream_in_flight",
            &["upstream=\"dropped\""],
        )
    };
    let call = {
        let gw = gw.clone();
        tokio::spawn(async move { post_command(&gw, CREATE, payload(CREATE)).await })
    };
    up.wait_calls(1, Duration::from_secs(5)).await;
    assert_eq!(in_flight(&gw), 1.0);
    call.abort();
    let _ = call.await;
    assert_eq!(in_flight(&gw), 0.0, "lowered when the call was dropped");
}
