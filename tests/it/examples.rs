//! The contract from five languages: each example hook service (`examples/<lang>/serve PORT`)
//! behind the real gateway binary, OpenIM-style POSTs of all 52 real payloads plus the policy's
//! variants, and the same assertions for every language (`examples/POLICY.md`).
//!
//! The expected envelope of every request is what the gateway answers in-process with the Rust
//! example library as its upstream; on top of that the policy's effects are asserted literally
//! (reject 20001 with its message, masked content, the avatar, the group tag), so the reference
//! cannot drift either. After-events must each reach the service once with a delivery id, health
//! (`grpc.health.v1`) must be SERVING and reflection must list the six services.
//!
//! These need each language's toolchain and registry, so they are `#[ignore]`d in a plain
//! `cargo test`; `.ci/run` runs them: `cargo test --release --test it -- --ignored
//! --test-threads=1 examples::`. One language: `cargo test --release --test it -- --ignored
//! examples::go`.

use crate::support;
use crate::support::process;
use crate::support::{free_port, payload_commands, read_json, wire};
use openim_callback_gateway::catalog::{Catalog, Phase};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a first `serve` may take to build (cold Maven, Go module and cargo caches).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Go and the Go module proxy; run by .ci/run"]
async fn go() {
    check("go").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Java 17, Maven and Maven Central; run by .ci/run"]
async fn java() {
    check("java").await;
}

/// The Python echo bot (`examples/python/src/openim_hook/bot.py`) behind the gateway's bot
/// preset: a message to the bot is answered through OpenIM's `send_simple_msg` with the same
/// `key`; the bot's own message (the loop guard) and a message to someone else never reach it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Python 3.11 and PyPI; run by .ci/run"]
async fn python_bot() {
    // OpenIM's API, as far as the bot uses it.
    let sent: Arc<Mutex<Vec<(String, String, Json)>>> = Arc::default();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let sink = sent.clone();
    let app = axum::Router::new().route(
        "/msg/send_simple_msg",
        axum::routing::post(
            move |axum::extract::RawQuery(q): axum::extract::RawQuery,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let key = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                        .find(|(k, _)| k == "key")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    let token = headers
                        .get("token")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
                    sink.lock().unwrap().push((key, token, body));
                    axum::Json(json!({"errCode": 0, "errMsg": "", "errDlt": "", "data": {}}))
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(api, app).await });

    let port = free_port();
    let api_url = format!("http://{api_addr}");
    let (_bot, _lines) = tokio::task::spawn_blocking(move || {
        serve_with(
            "python",
            port,
            &[
                ("OPENIM_HOOK_MODULE", "openim_hook.bot"),
                ("OPENIM_API", &api_url),
                ("OPENIM_ADMIN_TOKEN", "adm1n"),
                ("BOT_ID", "bot_1"),
            ],
        )
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nupstreams: {{default: {{endpoints: ['http://127.0.0.1:{port}']}}}}\n\
             bots: [bot_1]\ndefaults:\n  only: {{to_bots: true, content_types: [101, 106]}}\n  \
             skip: {{from_bots: true, notifications: true}}\n"
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let gateway = tokio::task::spawn_blocking(move || {
        process::spawn(&["--config", cfg.to_str().unwrap()], &spool)
    })
    .await
    .unwrap();
    let addr = gateway.addr.clone();
    let command = "callbackAfterSendSingleMsgCommand";
    let message = move |send: &str, recv: &str, text: &str| {
        let mut v = read_json(&format!("payloads/{command}.json"));
        v["sendID"] = send.into();
        v["recvID"] = recv.into();
        v["content"] = json!({ "content": text }).to_string().into();
        wire(&v)
    };
    let key = "eyJzZW5kSUQiOiJ1MSIsInJlY3ZJRCI6ImJvdF8xIiwiZ3JvdXBJRCI6IiJ9";
    tokio::task::spawn_blocking({
        let addr = addr.clone();
        let path = format!(
            "/cb/{command}?key={}",
            form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
        );
        move || {
            let mut c = process::connect(&addr);
            // The bot's own message and one to someone else: held back; then one to the bot.
            for (send, recv, text) in [
                ("bot_1", "bot_1", "loop"),
                ("u1", "u2", "not for the bot"),
                ("u1", "bot_1", "hello"),
            ] {
                let (status, env) = process::post(&mut c, &path, &message(send, recv, text));
                assert_eq!((status, env["errCode"].as_i64()), (200, Some(0)));
            }
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the bot answered through OpenIM's API"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answers = sent.lock().unwrap().clone();
    assert_eq!(
        answers.len(),
        1,
        "only the message to the bot was answered: {answers:?}"
    );
    let (got_key, token, body) = &answers[0];
    assert_eq!(
        got_key, key,
        "the same key, so OpenIM answers into the same conversation"
    );
    assert_eq!(token, "adm1n");
    assert_eq!(body["content"], "echo: hello", "{body}");
    let (_, metrics) = tokio::task::spawn_blocking(move || {
        let r =
            process::request(&mut process::connect(&addr), "GET", "/metrics", &[], b"").unwrap();
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    })
    .await
    .unwrap();
    for rule in ["skip.from_bots", "only.to_bots"] {
        assert!(
            metrics.contains(&format!(
                "gateway_held_back_total{{command=\"{command}\",rule=\"{rule}\"}} 1"
            )),
            "{rule}:\n{metrics}"
        );
    }
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Python 3.11 and PyPI; run by .ci/run"]
async fn python() {
    check("python").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Node 20 and npm; run by .ci/run"]
async fn node() {
    check("node").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "builds the example crate in release mode; run by .ci/run"]
async fn rust() {
    check("rust").await;
}

/// One request of the run: a path and a body.
struct Case {
    name: String,
    command: String,
    body: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = payload_commands()
        .into_iter()
        .map(|c| Case {
            name: c.clone(),
            body: support::payload(&c),
            command: c,
        })
        .collect();
    let variant = |name: &str, command: &str, edit: &dyn Fn(&mut Json)| {
        let mut body = read_json(&format!("payloads/{command}.json"));
        edit(&mut body);
        Case {
            name: name.to_owned(),
            command: command.to_owned(),
            body: wire(&body),
        }
    };
    out.push(variant(
        "single message with SPAM",
        "callbackBeforeSendSingleMsgCommand",
        &|b| b["content"] = r#"{"content":"buy SPAM now"}"#.into(),
    ));
    out.push(variant(
        "group message with Forbidden",
        "callbackBeforeSendGroupMsgCommand",
        &|b| b["content"] = r#"{"text":"a Forbidden word"}"#.into(),
    ));
    out.push(variant(
        "modified message, nested",
        "callbackBeforeMsgModifyCommand",
        &|b| {
            b["content"] =
                r#"{"content":"no Forbidden words","n":1,"parts":["spam",{"t":"SpAm!"}]}"#.into()
        },
    ));
    out.push(variant(
        "modified message, nothing to mask",
        "callbackBeforeMsgModifyCommand",
        &|b| b["content"] = r#"{"content":"hello"}"#.into(),
    ));
    out.push(variant(
        "remark with spam",
        "callbackBeforeSetFriendRemarkCommand",
        &|b| b["remark"] = "my spam friend".into(),
    ));
    out.push(variant(
        "group name with Spam",
        "callbackBeforeCreateGroupCommand",
        &|b| b["groupName"] = "Spam club".into(),
    ));
    out.push(variant(
        "group with ex",
        "callbackBeforeCreateGroupCommand",
        &|b| b["ex"] = r#"{"color":"red"}"#.into(),
    ));
    out.push(variant(
        "users who all have an avatar",
        "callbackBeforeUserRegisterCommand",
        &|b| {
            for u in b["users"].as_array_mut().unwrap() {
                u["faceURL"] = "https://cdn.example.com/a.png".into();
            }
        },
    ));
    out
}

/// The gateway's envelope for each case with the in-process Rust example library as upstream.
async fn reference(cases: &[Case]) -> Vec<Json> {
    let (addr, task) = openim_callback_example::spawn(Default::default())
        .await
        .unwrap();
    let config = support::config(&format!("http://{addr}"), "");
    let gw = support::gateway(&config);
    let mut out = Vec::new();
    for case in cases {
        let a = support::post_command(&gw, &case.command, case.body.clone()).await;
        support::assert_envelope(&a);
        out.push(normalise(&case.command, a.json));
    }
    task.abort();
    out
}

/// Parses a JSON-string `content` override, so that JSON serialisers that differ only in
/// spacing or escaping compare equal.
fn normalise(command: &str, mut env: Json) -> Json {
    if command == "callbackBeforeMsgModifyCommand"
        && let Some(text) = env.get("content").and_then(Json::as_str)
    {
        env["content"] = json!({ "parsed": serde_json::from_str::<Json>(text).unwrap() });
    }
    env
}

/// The policy itself, asserted literally (so the in-process reference is checked too).
fn assert_policy(name: &str, env: &Json) {
    let reject = |msg: &str, word: &str| json!({"actionCode":0,"errCode":20001,"errMsg":msg,"errDlt":word,"nextCode":1});
    match name {
        "single message with SPAM" => {
            assert_eq!(env, &reject("message contains a blocked word", "spam"))
        }
        "group message with Forbidden" => {
            assert_eq!(env, &reject("message contains a blocked word", "forbidden"))
        }
        "group name with Spam" => {
            assert_eq!(env, &reject("group name contains a blocked word", "spam"))
        }
        "callbackBeforeMsgModifyCommand" => assert_eq!(
            env["content"]["parsed"],
            json!({"content":"this is xxx ***"}),
            "{env}"
        ),
        "modified message, nested" => assert_eq!(
            env["content"]["parsed"],
            json!({"content":"no *** words","n":1,"parts":["***",{"t":"***!"}]}),
            "{env}"
        ),
        "remark with spam" => assert_eq!(env["remark"], "my *** friend", "{env}"),
        "callbackBeforeCreateGroupCommand" => assert_eq!(
            env["ex"], r#"{"createdVia":"openim-callback-gateway"}"#,
            "{env}"
        ),
        "callbackBeforeUserRegisterCommand" => {
            let users = env["users"].as_array().expect("the whole list");
            let faces: Vec<&str> = users
                .iter()
                .map(|u| u["faceURL"].as_str().unwrap())
                .collect();
            assert_eq!(
                faces,
                [
                    "https://example.com/avatar/default.png",
                    "https://cdn.example.com/avatar/1100223355.png"
                ],
                "{env}"
            );
        }
        "modified message, nothing to mask"
        | "group with ex"
        | "users who all have an avatar"
        | "callbackBeforeSendSingleMsgCommand"
        | "callbackBeforeSendGroupMsgCommand"
        | "callbackBeforeSetFriendRemarkCommand" => {
            assert_eq!(env, &support::allow(), "{name}: nothing to change")
        }
        _ => {}
    }
}

/// A running process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `examples/<lang>/serve PORT`, waits for its `listening on` line, and collects the rest
/// of its stdout.
fn serve(lang: &str, port: u16) -> (Proc, Arc<Mutex<Vec<String>>>) {
    serve_with(lang, port, &[])
}

/// [`serve`] with extra environment variables.
fn serve_with(lang: &str, port: u16, env: &[(&str, &str)]) -> (Proc, Arc<Mutex<Vec<String>>>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(lang)
        .join("serve");
    let mut child = Command::new(&script)
        .arg(port.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = lines.clone();
    std::thread::spawn(move || {
        let mut first = true;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if first {
                let _ = tx.send(line);
                first = false;
            } else {
                sink.lock().unwrap().push(line);
            }
        }
    });
    let proc = Proc(child);
    let first = rx
        .recv_timeout(BUILD_TIMEOUT)
        .unwrap_or_else(|_| panic!("{lang}: no `listening on` line within {BUILD_TIMEOUT:?}"));
    assert_eq!(
        first,
        format!("listening on 127.0.0.1:{port}"),
        "{lang}: the first stdout line"
    );
    (proc, lines)
}

async fn check(lang: &str) {
    let cases = cases();
    let expected = reference(&cases).await;
    for (case, env) in cases.iter().zip(&expected) {
        assert_policy(&case.name, env);
    }

    let port = free_port();
    let (service, lines) = tokio::task::spawn_blocking({
        let lang = lang.to_owned();
        move || serve(&lang, port)
    })
    .await
    .unwrap();
    let upstream = format!("http://127.0.0.1:{port}");
    check_health_and_reflection(lang, &upstream).await;

    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_owned();
    let gateway = tokio::task::spawn_blocking(move || {
        process::spawn(
            &["--listen", "127.0.0.1:0", "--upstream", &upstream],
            &spool_dir,
        )
    })
    .await
    .unwrap();
    let addr = gateway.addr.clone();
    let bodies: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|c| (format!("/callbackExample/{}", c.command), c.body.clone()))
        .collect();
    // One keep-alive connection for everything, as OpenIM's client pools them.
    let got: Vec<(u16, Json)> = tokio::task::spawn_blocking(move || {
        let mut conn = process::connect(&addr);
        bodies
            .iter()
            .map(|(path, body)| process::post(&mut conn, path, body))
            .collect()
    })
    .await
    .unwrap();
    for ((case, want), (status, env)) in cases.iter().zip(&expected).zip(got) {
        assert_eq!(status, 200, "{lang} {}", case.name);
        let env = normalise(&case.command, env);
        assert_eq!(&env, want, "{lang}: {}", case.name);
        assert_policy(&case.name, &env);
    }

    // Every after-event reached the service once, with a delivery id.
    let catalog = Catalog::contract().unwrap();
    let after: Vec<&str> = catalog
        .entries()
        .filter(|e| e.phase == Phase::After)
        .map(|e| e.row.command)
        .collect();
    assert_eq!(after.len(), 29);
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in lines.lock().unwrap().iter() {
            let mut parts = line.split(' ');
            if let (Some("after"), Some(command), Some(id), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                seen.entry(command.to_owned())
                    .or_default()
                    .push(id.to_owned());
            }
        }
        if seen.len() >= after.len() || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for command in &after {
        let ids = seen
            .get(*command)
            .unwrap_or_else(|| panic!("{lang}: no `after {command} <id>` line; saw {seen:?}"));
        assert!(
            ids.iter()
                .all(|id| !id.is_empty() && id != "-" && id.contains('-')),
            "{lang}: {command} delivered without a delivery id: {ids:?}"
        );
    }
    assert_eq!(
        seen.len(),
        after.len(),
        "{lang}: only after commands print lines: {seen:?}"
    );
    drop(gateway);

    // SIGTERM stops the service cleanly.
    let mut service = service;
    let pid = service.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{lang}: still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{lang}: SIGTERM exit status {status:?}");
}

/// `grpc.health.v1.Health/Check` is SERVING for the server and the six services, and reflection
/// (v1, or v1alpha for servers that only have that) lists the six services.
async fn check_health_and_reflection(lang: &str, uri: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(uri.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{lang}: connect {uri}: {e}"));
    let services: Vec<String> = Catalog::contract()
        .unwrap()
        .entries()
        .map(|e| format!("openim.callback.v1.{}", e.row.service))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(services.len(), 6);
    let mut health = HealthClient::new(channel.clone());
    for service in std::iter::once("").chain(services.iter().map(String::as_str)) {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("{lang}: Health/Check {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "{lang}: health of {service:?}"
        );
    }
    let listed = match list_services_v1(channel.clone()).await {
        Ok(names) => names,
        Err(_) => list_services_v1alpha(channel)
            .await
            .unwrap_or_else(|e| panic!("{lang}: reflection (v1 and v1alpha): {e}")),
    };
    for service in &services {
        assert!(
            listed.contains(service),
            "{lang}: reflection lists {service}: {listed:?}"
        );
    }
}

macro_rules! list_services {
    ($name:ident, $pb:path) => {
        async fn $name(channel: tonic::transport::Channel) -> Result<Vec<String>, tonic::Status> {
            use $pb as r;
            let mut client = r::server_reflection_client::ServerReflectionClient::new(channel);
            let request = r::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(r::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                )),
            };
            let mut stream = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            let reply = stream
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unknown("no reflection reply"))?;
            match reply.message_response {
                Some(r::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                    Ok(l.service.into_iter().map(|s| s.name).collect())
                }
                other => Err(tonic::Status::unknown(format!(
                    "unexpected reply {other:?}"
                ))),
            }
        }
    };
}

list_services!(list_services_v1, tonic_reflection::pb::v1);
list_services!(list_services_v1alpha, tonic_reflection::pb::v1alpha);
