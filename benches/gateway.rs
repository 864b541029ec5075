//! What the gateway costs: the codec per body, and one before-callback through the gateway
//! compared with calling the same RPC of the same service directly over gRPC.
//!
//! `cargo bench --bench gateway`. Compare the two round-trip lines as a ratio from one run; the
//! absolute figures depend on the machine.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

// The tests' in-process harness, of which the bench uses a part.
#[allow(dead_code)]
#[path = "../tests/support/harness.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openim_callback_example::ExampleConfig;
use openim_callback_gateway::catalog::Catalog;
use openim_callback_gateway::config::Config;
use openim_callback_gateway::proto::v1 as pb;
use openim_callback_gateway::{decision, envelope, json};
use prost::Message as _;
use std::hint::black_box;
use tower::ServiceExt as _;

const COMMANDS: [&str; 3] = [
    "callbackBeforeCreateGroupCommand",
    "callbackAfterSendGroupMsgCommand",
    "callbackBeforeUserRegisterCommand",
];

fn codec(c: &mut Criterion) {
    let catalog = Catalog::load(
        openim_callback_gateway::proto::pool().unwrap(),
        "openim.callback.v1",
    )
    .unwrap();
    let mut group = c.benchmark_group("codec");
    for cmd in COMMANDS {
        let entry = catalog.get(cmd).unwrap();
        let body = support::payload(cmd);
        group.throughput(Throughput::Bytes(body.len() as u64));
        // The hot path: one pass from the body to protobuf bytes.
        group.bench_function(format!("transcode/{cmd}"), |b| {
            b.iter(|| {
                black_box(
                    entry
                        .transcoder
                        .transcode(black_box(&body))
                        .unwrap()
                        .payload,
                )
            })
        });
        // The reference (and the path of bodies with field errors): JSON tree, message, bytes.
        group.bench_function(format!("decode+encode/{cmd}"), |b| {
            b.iter(|| {
                let d = json::decode(&entry.request(), black_box(&body)).unwrap();
                black_box(d.message.encode_to_vec())
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let policy = decision::Policy {
        on_failure: decision::FailurePolicy::Continue,
        reject_code: 20001,
        reject_message: String::new(),
        allow_offline_push_info: false,
    };
    // A reply to the answer: the tree (the reply as a `DynamicMessage`, the rules on it, a JSON
    // map, its serialisation) against the one pass (the envelope written from the reply's bytes),
    // for an empty reply (allow), the sample reply (a modify) and, for the echo rule, SetGroupInfo's.
    for (name, cmd, modify) in [
        ("empty", "callbackBeforeCreateGroupCommand", false),
        ("modify", "callbackBeforeCreateGroupCommand", true),
        ("modify+echo", "callbackBeforeSetGroupInfoCommand", true),
    ] {
        let entry = catalog.get(cmd).unwrap();
        let reply = if modify {
            let sample = support::sample_reply(cmd).unwrap();
            envelope::read_reply(entry, sample.as_object().unwrap())
                .message
                .encode_to_vec()
        } else {
            Vec::new()
        };
        let reply = bytes::Bytes::from(reply);
        let request = json::decode(&entry.request(), &support::payload(cmd))
            .unwrap()
            .message;
        let target = envelope::Target {
            entry,
            request: Some(&request),
            policy: &policy,
        };
        let tree = {
            let d = decision::decide_by_tree(entry, Ok(reply.clone()), &policy);
            envelope::render(&d, Some(target)).to_bytes()
        };
        let one = envelope::answer(
            &decision::decide(entry, Ok(reply.clone()), &policy),
            Some(target),
        );
        assert!(
            one.one_pass && one.bytes == tree,
            "{name}: the paths differ"
        );
        group.bench_function(format!("reply/tree/{name}"), |b| {
            b.iter(|| {
                let d = decision::decide_by_tree(entry, Ok(black_box(reply.clone())), &policy);
                black_box(envelope::render(&d, Some(target)).to_bytes())
            })
        });
        group.bench_function(format!("reply/one-pass/{name}"), |b| {
            b.iter(|| {
                let d = decision::decide(entry, Ok(black_box(reply.clone())), &policy);
                black_box(envelope::answer(&d, Some(target)).bytes)
            })
        });
    }
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Channels are built inside a runtime.
    let _guard = rt.enter();
    // The built-in example service (generated tonic code) on loopback, as the upstream of both.
    let (addr, _task) = rt
        .block_on(openim_callback_example::spawn(ExampleConfig::default()))
        .unwrap();
    let uri = format!("http://{addr}");
    let config = Config::from_yaml(&format!(
        "upstreams: {{default: {{endpoints: ['{uri}']}}}}\ndefaults: {{delivery: sync}}"
    ))
    .unwrap();
    let gw = support::gateway(&config);
    let router = openim_callback_gateway::http::app(&gw);
    let body = bytes::Bytes::from(support::payload("callbackBeforeCreateGroupCommand"));
    let request: pb::BeforeCreateGroupRequest = {
        let entry = gw
            .catalog()
            .get("callbackBeforeCreateGroupCommand")
            .unwrap();
        let m = json::decode(&entry.request(), &body).unwrap().message;
        pb::BeforeCreateGroupRequest::decode(m.encode_to_vec().as_slice()).unwrap()
    };
    let client = rt.block_on(async {
        pb::group_callback_service_client::GroupCallbackServiceClient::connect(uri.clone())
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("before_create_group_round_trip");
    group.bench_function("direct gRPC (generated client)", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = client.clone();
            let request = request.clone();
            async move { black_box(client.before_create_group(request).await.unwrap()) }
        })
    });
    group.bench_function("through the gateway (JSON in, envelope out)", |b| {
        b.to_async(&rt).iter(|| {
            post(
                router.clone(),
                "/callbackExample/callbackBeforeCreateGroupCommand",
                body.clone(),
            )
        })
    });
    group.finish();
}

/// An after-event the gate holds back (a bot's own message, `skip.from_bots`) next to one it
/// forwards (synchronously to the same upstream), through the router: what a held-back event
/// costs is the transcode, the rule's field reads and the answer.
fn held_back(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (addr, _task) = rt
        .block_on(openim_callback_example::spawn(ExampleConfig::default()))
        .unwrap();
    let config = Config::from_yaml(&format!(
        "upstreams: {{default: {{endpoints: ['http://{addr}']}}}}\nbots: ['5283014967']\n\
         defaults: {{delivery: sync, skip: {{from_bots: true}}}}\n\
         commands: {{callbackAfterSendGroupMsgCommand: {{skip: {{from_bots: false}}}}}}"
    ))
    .unwrap();
    let gw = support::gateway(&config);
    let router = openim_callback_gateway::http::app(&gw);
    // The payload's sender is 5283014967: a bot in this config, except where from_bots is off.
    let mut group = c.benchmark_group("after_event");
    for (name, cmd) in [
        (
            "held back (skip.from_bots)",
            "callbackAfterSendSingleMsgCommand",
        ),
        ("forwarded (sync)", "callbackAfterSendGroupMsgCommand"),
    ] {
        let body = bytes::Bytes::from(support::payload(cmd));
        let path = format!("/callbackExample/{cmd}");
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| post(router.clone(), &path, body.clone()))
        });
    }
    group.finish();
}

/// One callback through the router, as OpenIM posts it; the envelope's bytes.
async fn post(router: axum::Router, path: &str, body: bytes::Bytes) -> bytes::Bytes {
    let req = http::Request::post(path)
        .header("operationID", "bench")
        .body(axum::body::Body::from(body))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    black_box(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
}

criterion_group!(benches, codec, round_trip, held_back);
criterion_main!(benches);
