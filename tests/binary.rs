//! The built binary through real sockets: its flags, keep-alive across bad input, the embedded
//! default, and start-up errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use openim_callback_gateway::proto::v1 as pb;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_openim-callback-gateway");

/// A running gateway process, killed on drop.
struct Gateway {
    child: Child,
    addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `args` and waits (bounded) for its "listening" log line.
fn spawn(args: &[&str], spool_dir: &std::path::Path) -> Gateway {
    let mut child = Command::new(BIN)
        .args(args)
        .env("OPENIM_GATEWAY_SPOOL__DIR", spool_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening") {
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway logs its listening address within 30 s");
    Gateway { child, addr }
}

/// One HTTP/1.1 POST on an open connection; returns the status and the body.
fn post(conn: &mut TcpStream, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n\
         Content-Type: application/json; charset=utf-8\r\nOperationid: 1719800000123453781\r\n\
         Accept-Encoding: gzip\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (
        code,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_and_upstream_flags_serve_real_openim_requests() {
    let up = Upstream::start().await;
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse {
            group_name: Some("Phoenix".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let uri = up.uri();
    let (gw, _dir) = tokio::task::spawn_blocking(move || {
        let g = spawn(&["--listen", "127.0.0.1:0", "--upstream", &uri], dir.path());
        (g, dir)
    })
    .await
    .unwrap();
    let addr = gw.addr.clone();
    let results = tokio::task::spawn_blocking(move || {
        let mut conn = connect(&addr);
        let create = post(
            &mut conn,
            "/callbackExample/callbackBeforeCreateGroupCommand",
            &payload("callbackBeforeCreateGroupCommand"),
        );
        // Bad input on the same keep-alive connection, then a good request again.
        let bad = post(
            &mut conn,
            "/callbackExample/callbackBeforeCreateGroupCommand",
            b"{not json",
        );
        let unknown = post(&mut conn, "/callbackExample/callbackNoSuchCommand", b"{}");
        let again = post(
            &mut conn,
            "/callbackExample/callbackBeforeCreateGroupCommand",
            &payload("callbackBeforeCreateGroupCommand"),
        );
        (create, bad, unknown, again)
    })
    .await
    .unwrap();
    let mut expected = allow();
    expected["groupName"] = "Phoenix".into();
    assert_eq!(results.0, (200, expected.clone()));
    assert_eq!(results.1, (200, allow()));
    assert_eq!(results.2, (200, allow()));
    assert_eq!(results.3, (200, expected));
    let calls = up.calls();
    assert_eq!(
        calls.len(),
        2,
        "only the well-formed requests reach the upstream"
    );
    assert_eq!(
        calls[0].meta("openim-operation-id").as_deref(),
        Some("1719800000123453781")
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_arguments_the_embedded_example_allows_modifies_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let gw = tokio::task::spawn_blocking(move || {
        let g = spawn(&["--listen", "127.0.0.1:0"], dir.path());
        (g, dir)
    })
    .await
    .unwrap();
    let addr = gw.0.addr.clone();
    let (ok, blocked, quit) = tokio::task::spawn_blocking(move || {
        let mut conn = connect(&addr);
        let ok = post(
            &mut conn,
            "/callbackExample/callbackBeforeCreateGroupCommand",
            &payload("callbackBeforeCreateGroupCommand"),
        );
        let mut body = read_json("payloads/callbackBeforeCreateGroupCommand.json");
        body["groupName"] = "forbidden stuff".into();
        let blocked = post(
            &mut conn,
            "/callbackExample/callbackBeforeCreateGroupCommand",
            &wire(&body),
        );
        let quit = post(
            &mut conn,
            "/callbackExample/callbackAfterQuitGroupCommand",
            &payload("callbackAfterQuitGroupCommand"),
        );
        (ok, blocked, quit)
    })
    .await
    .unwrap();
    assert_eq!(ok.0, 200);
    assert_eq!(ok.1["nextCode"], 0, "{:?}", ok.1);
    assert!(
        ok.1.as_object().unwrap().len() > 5,
        "the example modifies a create: {:?}",
        ok.1
    );
    assert_eq!(blocked.1["nextCode"], 1, "{:?}", blocked.1);
    assert_eq!(blocked.1["errCode"], 20001, "{:?}", blocked.1);
    assert_eq!(quit.1, allow(), "after-events are acknowledged");
}

#[test]
fn an_invalid_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, "defaults:\n  timeout: 3s\ncommands:\n  callbackBeforeCreateGroupCommand:\n    reject_code: -1\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("commands.callbackBeforeCreateGroupCommand.reject_code"),
        "{err}"
    );

    std::fs::write(&cfg, "defaults:\n  timeout: 3 fortnights\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("defaults.timeout"), "{err}");

    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/gw.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(started.elapsed() < Duration::from_secs(30));
}
