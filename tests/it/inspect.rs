//! The inspector, `tail` and `replay` (issue #22) over real sockets: the ring bounded with the
//! newest kept, its filters, bodies only when captured and redacted as the logs are, the admin
//! token, the live stream printed by `tail`, and a capture replayed against a second gateway
//! whose service answers differently.

use crate::support;
use crate::support::process;
use crate::support::process::{BIN, connect, request};
use crate::support::{Behavior, Upstream, payload, rejection};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CREATE: &str = "callbackBeforeCreateGroupCommand";
const QUIT: &str = "callbackAfterQuitGroupCommand";

fn gateway(dir: &std::path::Path, up: &Upstream, extra: &str) -> process::Gateway {
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nupstreams: {{default: {{endpoints: ['{}']}}}}\n\
             defaults: {{delivery: sync}}\n{extra}",
            up.uri()
        ),
    )
    .unwrap();
    process::spawn(&["--config", cfg.to_str().unwrap()], &dir.join("spool"))
}

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = request(&mut connect(addr), "GET", path, &headers, b"").expect("answer");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn callbacks(addr: &str, query: &str) -> Value {
    let (status, body) = get(addr, &format!("/admin/callbacks{query}"), None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn send(addr: &str, command: &str, n: usize) {
    let mut c = connect(addr);
    for _ in 0..n {
        let (status, _) = process::post(
            &mut c,
            &format!("/cb/{command}?key=k%3D"),
            &payload(command),
        );
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_keeps_the_newest_filters_and_redacts_bodies_as_the_logs() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (plain, captured, uncovered) = {
        let (d, u) = (dir.path().to_owned(), up.clone());
        tokio::task::spawn_blocking(move || {
            let a = d.join("a");
            let b = d.join("b");
            let c = d.join("c");
            for p in [&a, &b, &c] {
                std::fs::create_dir_all(p).unwrap();
            }
            (
                gateway(&a, &u, "inspect: {keep: 5}\n"),
                gateway(&b, &u, "inspect: {keep: 50, capture_bodies: true}\n"),
                gateway(
                    &c,
                    &u,
                    "inspect: {keep: 50, capture_bodies: true}\nlog: {redact: false}\n",
                ),
            )
        })
        .await
        .unwrap()
    };
    let (pa, pb, pc) = (
        plain.addr.clone(),
        captured.addr.clone(),
        uncovered.addr.clone(),
    );
    tokio::task::spawn_blocking(move || {
        // Bounded under load, the newest kept, newest first.
        send(&pa, CREATE, 12);
        send(&pa, QUIT, 3);
        let all = callbacks(&pa, "");
        let list = all["callbacks"].as_array().unwrap();
        assert_eq!(list.len(), 5, "{all}");
        let seqs: Vec<u64> = list.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [15, 14, 13, 12, 11], "{all}");
        assert_eq!(list[0]["command"], QUIT);
        assert_eq!(list[0]["route"], "call default");
        assert_eq!(list[0]["outcome"], "continue");
        assert_eq!(list[0]["grpc_status"], "OK");
        assert_eq!(list[0]["operation_id"], "1719800000123453781");
        assert_eq!(list[0]["envelope"]["errCode"], 0);
        assert!(
            list[0].get("request").is_none(),
            "no body unless captured: {all}"
        );
        assert_eq!(all["seen"][CREATE], 12, "{all}");
        let never = all["never_seen"].as_array().unwrap();
        assert_eq!(never.len(), 50, "52 commands, 2 seen: {all}");
        assert!(!never.contains(&Value::from(CREATE)));
        // Filters.
        let only = callbacks(&pa, &format!("?command={CREATE}&limit=2"));
        let only = only["callbacks"].as_array().unwrap();
        assert_eq!(only.len(), 2);
        assert!(only.iter().all(|r| r["command"] == CREATE));
        assert!(
            callbacks(&pa, "?outcome=rejected")["callbacks"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        // An unknown command is listed under its name.
        let (status, _) = process::post(&mut connect(&pa), "/cb/callbackNoSuchCommand", b"{}");
        assert_eq!(status, 200);
        let unknown = callbacks(&pa, "?command=callbackNoSuchCommand");
        assert_eq!(
            unknown["callbacks"][0]["route"], "unknown command",
            "{unknown}"
        );

        // Captured bodies, redacted as the logs are.
        send(&pb, CREATE, 1);
        let r = &callbacks(&pb, "")["callbacks"][0];
        assert_eq!(r["request"]["callbackCommand"], CREATE, "{r}");
        assert_eq!(r["request"]["groupName"], "<redacted>", "{r}");
        assert_eq!(
            r["request"]["initMemberList"][0]["userID"], "<redacted>",
            "{r}"
        );
        assert_eq!(r["key"], "<redacted>", "{r}");
        // With log.redact: false, as sent.
        send(&pc, CREATE, 1);
        let r = &callbacks(&pc, "")["callbacks"][0];
        let sent: Value = serde_json::from_slice(&payload(CREATE)).unwrap();
        assert_eq!(r["request"], sent, "{r}");
        assert_eq!(r["key"], "k=", "{r}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_the_callbacks_and_tail_follows_them_live() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    let token_file = dir.path().join("token");
    let extra = format!(
        "admin_listen: 127.0.0.1:0\nadmin_token_file: {}\n",
        token_file.display()
    );
    let (d, u) = (dir.path().to_owned(), up.clone());
    let gw = tokio::task::spawn_blocking(move || gateway(&d, &u, &extra))
        .await
        .unwrap();
    let admin = gw.admin_addr().unwrap();
    let addr = gw.addr.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(get(&admin, "/admin/callbacks", None).0, 401);
        assert_eq!(get(&admin, "/admin/callbacks/stream", None).0, 401);
        let mut tail = Command::new(BIN)
            .args([
                "tail",
                "--admin",
                &format!("http://{admin}"),
                "--command",
                CREATE,
            ])
            .arg("--token-file")
            .arg(&token_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
        // The stream is open once an answer comes; send until tail prints (bounded).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.by_ref().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut got = Vec::new();
        for _ in 0..50 {
            send(&addr, QUIT, 1);
            send(&addr, CREATE, 1);
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                got.push(line);
            }
            if got.len() >= 2 {
                break;
            }
        }
        let _ = tail.kill();
        let _ = tail.wait();
        assert!(
            got.len() >= 2,
            "tail printed the callbacks as they came: {got:?}"
        );
        for line in &got {
            assert!(line.contains(CREATE) && line.contains("continue"), "{line}");
            assert!(!line.contains(QUIT), "filtered by command: {line}");
        }
        let (status, body) = get(&admin, "/admin/callbacks", Some("t0ken"));
        assert_eq!(status, 200, "{body}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replays_against_another_gateway_and_shows_what_changed() {
    let staging = Upstream::start().await;
    let laptop = Upstream::start().await;
    use prost::Message as _;
    laptop.on(
        "BeforeCreateGroup",
        Behavior::Reply(
            openim_callback_gateway::proto::v1::BeforeCreateGroupResponse {
                rejection: Some(openim_callback_gateway::proto::v1::Rejection {
                    code: 20042,
                    message: "new policy".into(),
                    detail: String::new(),
                }),
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let (d, s, l) = (dir.path().to_owned(), staging.clone(), laptop.clone());
    tokio::task::spawn_blocking(move || {
        let (a, b) = (d.join("staging"), d.join("laptop"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let capture_cfg = "inspect: {capture_bodies: true}\nlog: {redact: false}\n";
        let staging_gw = gateway(&a, &s, capture_cfg);
        let laptop_gw = gateway(&b, &l, "");
        send(&staging_gw.addr, CREATE, 2);
        send(&staging_gw.addr, QUIT, 1);
        let (status, jsonl) = get(&staging_gw.addr, "/admin/callbacks?format=jsonl", None);
        assert_eq!(status, 200);
        assert_eq!(jsonl.lines().count(), 3, "{jsonl}");
        let file = d.join("capture.jsonl");
        std::fs::write(&file, &jsonl).unwrap();
        let replay = |to: &str| {
            let out = Command::new(BIN)
                .args(["replay", file.to_str().unwrap(), "--to", to, "--fast"])
                .output()
                .unwrap();
            (
                out.status.code().unwrap(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        // Against the laptop's gateway: the new policy rejects.
        let (code, text) = replay(&format!("http://{}/callbackExample", laptop_gw.addr));
        assert_eq!(code, 1, "{text}");
        assert!(text.contains(&format!("CHANGED  {CREATE}")), "{text}");
        let now = serde_json::to_string(&rejection(20042, "new policy", "")).unwrap();
        assert!(text.contains(&format!("now: {now}")), "{text}");
        assert!(text.contains(&format!("same     {QUIT}")), "{text}");
        assert!(
            text.contains("replayed 3: 1 same, 2 changed, 0 failed"),
            "{text}"
        );
        // The laptop's service got them as OpenIM sent them, key included.
        let calls = l.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].meta("openim-key").as_deref(), Some("k="));
        // Against staging itself: nothing changed.
        let (code, text) = replay(&format!("http://{}/cb", staging_gw.addr));
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains("replayed 3: 3 same, 0 changed, 0 failed"),
            "{text}"
        );
        // An unreachable --to: every line failed, with the summary.
        let port = support::free_port();
        let (code, text) = replay(&format!("http://127.0.0.1:{port}/cb"));
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("FAILED") && text.contains("cannot reach it"),
            "{text}"
        );
        assert!(
            text.contains("replayed 3: 0 same, 0 changed, 3 failed"),
            "{text}"
        );
        // A line that is not a callback, and a redacted capture: one message, exit 2.
        let bad = d.join("bad.jsonl");
        std::fs::write(
            &bad,
            format!("{}\nnot json\n", jsonl.lines().next().unwrap()),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args([
                "replay",
                bad.to_str().unwrap(),
                "--to",
                "http://127.0.0.1:1",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("bad.jsonl:2: not a captured callback"),
            "{err}"
        );
        let (_, redacted) = get(&laptop_gw.addr, "/admin/callbacks?format=jsonl", None);
        let red = d.join("red.jsonl");
        std::fs::write(&red, redacted).unwrap();
        let out = Command::new(BIN)
            .args([
                "replay",
                red.to_str().unwrap(),
                "--to",
                "http://127.0.0.1:1",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("inspect.capture_bodies: true"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_shows_the_live_configuration_and_what_a_reload_changed() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (d, u) = (dir.path().to_owned(), up.clone());
    tokio::task::spawn_blocking(move || {
        let cfg = d.join("gateway.yaml");
        let write = |timeout: &str| {
            let tmp = d.join("gateway.yaml.tmp");
            std::fs::write(
                &tmp,
                format!(
                    "listen: 127.0.0.1:0\nupstreams: {{default: {{endpoints: ['{}']}}}}\n\
                     defaults: {{delivery: sync, timeout: {timeout}}}\n\
                     reload: {{poll_interval: 100ms}}\nauth: {{path_secrets: [s3cret]}}\n",
                    u.uri()
                ),
            )
            .unwrap();
            std::fs::rename(&tmp, &cfg).unwrap();
        };
        write("2s");
        let gw = process::spawn(&["--config", cfg.to_str().unwrap()], &d.join("spool"));
        let (status, body) = get(&gw.addr, "/admin/config", None);
        assert_eq!(status, 200, "{body}");
        let live: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(live["trigger"], "start", "{live}");
        assert_eq!(live["config"]["defaults"]["timeout"], "2s", "{live}");
        assert_eq!(
            live["config"]["auth"]["path_secrets"][0], "<redacted>",
            "secrets redacted: {live}"
        );
        write("1s");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let live = loop {
            let live: Value =
                serde_json::from_str(&get(&gw.addr, "/admin/config", None).1).unwrap();
            if live["trigger"] == "file change" {
                break live;
            }
            assert!(std::time::Instant::now() < deadline, "reloaded: {live}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            live["changed"],
            serde_json::json!(["defaults.timeout"]),
            "{live}"
        );
        assert_eq!(live["config"]["defaults"]["timeout"], "1s", "{live}");
        let log = gw.log_with("configuration reloaded", 1);
        assert!(
            log.lines()
                .any(|l| l.contains("configuration reloaded") && l.contains("defaults.timeout")),
            "the reload line names the keys:\n{log}"
        );
        // `routes --admin`: the live table, not the file's, which now holds a value the reload
        // refuses (the live 1s keeps serving).
        write("soon");
        let out = Command::new(BIN)
            .args(["routes", "--admin", &format!("http://{}", gw.addr)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with(CREATE))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(row.contains(" 1s "), "{row}");
        assert!(row.contains(&u.uri()), "{row}");
    })
    .await
    .unwrap();
}
