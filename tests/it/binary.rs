//! The built binary through real sockets: its flags, keep-alive across bad input, the embedded
//! default, and start-up errors.

use crate::support::process;
use crate::support::*;
use openim_callback_gateway::proto::v1 as pb;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::process::{BIN, connect, post, post_quit_events, spawn, spawn_with_env};

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

/// `check-config` catches what a start would refuse (spool settings included) and reports the
/// warnings of a usable config; the start logs the same warnings once logging is set up.
#[test]
fn check_config_catches_spool_settings_and_reports_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, "spool:\n  workers: 0\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool.workers"), "{err}");

    std::fs::write(&cfg, "demo: true\ndefaults:\n  timeout: 6s\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: config key `defaults.timeout`") && err.contains("5s"),
        "{err}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON");
    assert_eq!(json["defaults"]["timeout"], "6s");
}

/// `proto --out DIR --descriptor-set FILE` writes the contract compiled into the binary: the same
/// `.proto` files as the repository's, and a descriptor set that holds all six services.
#[test]
fn proto_subcommand_writes_the_compiled_contract() {
    let dir = tempfile::tempdir().unwrap();
    let fds = dir.path().join("contract.binpb");
    let out = Command::new(BIN)
        .args(["proto", "--out"])
        .arg(dir.path().join("proto"))
        .arg("--descriptor-set")
        .arg(&fds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/openim/callback/v1");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&repo).unwrap() {
        let name = entry.unwrap().file_name();
        let written =
            std::fs::read_to_string(dir.path().join("proto/openim/callback/v1").join(&name))
                .unwrap_or_else(|e| panic!("{name:?} written: {e}"));
        assert_eq!(
            written,
            std::fs::read_to_string(repo.join(&name)).unwrap(),
            "{name:?}"
        );
        names.push(name);
    }
    assert_eq!(names.len(), 7);
    let pool = prost_reflect::DescriptorPool::decode(std::fs::read(&fds).unwrap().as_slice())
        .expect("a valid descriptor set");
    assert_eq!(
        pool.services()
            .filter(|s| s.package_name() == "openim.callback.v1")
            .count(),
        6
    );
    let out = Command::new(BIN).arg("proto").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "nothing to write is a usage error"
    );
}

/// Runs an operator command of the binary against a spool directory.
fn spool_cli(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("spool")
        .args(args)
        .env("OPENIM_GATEWAY_SPOOL__DIR", dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_pending_events_then_restart_delivers_every_acknowledged_event() {
    const EVENTS: usize = 300;
    let upstream_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let uri = format!("http://{upstream_addr}");
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().to_owned();

    // 1. Upstream down: every after-event is acknowledged from the spool.
    let (gw, spool_dir) = tokio::task::spawn_blocking(move || {
        let gw = spawn(&["--listen", "127.0.0.1:0", "--upstream", &uri], &spool_dir);
        post_quit_events(&gw.addr, 0..EVENTS);
        (gw, spool_dir)
    })
    .await
    .unwrap();

    // 2. The operator looks: the file is locked by the running gateway, the admin API answers.
    let (code, _, err) = spool_cli(&spool_dir, &["count"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--admin"), "{err}");
    let admin = format!("http://{}", gw.addr);
    let (code, out, err) = spool_cli(&spool_dir, &["--admin", &admin, "count"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("pending: {EVENTS}")), "{out}");

    // 3. kill -9. The spool file still has every acknowledged event.
    drop(gw);
    let (code, out, err) = spool_cli(&spool_dir, &["count"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("pending: {EVENTS}")), "{out}");
    let (code, out, _) = spool_cli(&spool_dir, &["list", "--limit", "2"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("callbackAfterQuitGroupCommand"), "{out}");

    // 4. The upstream starts, the gateway restarts, everything arrives with its delivery id.
    let up = Upstream::start_on(tokio::net::TcpListener::bind(upstream_addr).await.unwrap()).await;
    let uri = up.uri();
    let sd = spool_dir.clone();
    let gw = tokio::task::spawn_blocking(move || {
        spawn(&["--listen", "127.0.0.1:0", "--upstream", &uri], &sd)
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = std::collections::HashMap::<String, Vec<String>>::new();
    while Instant::now() < deadline {
        ids.clear();
        for c in up.calls() {
            let user = c.decode::<pb::AfterQuitGroupRequest>().user_id;
            ids.entry(user)
                .or_default()
                .push(c.meta("openim-delivery-id").unwrap_or_default());
        }
        if ids.len() == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids.len(),
        EVENTS,
        "every acknowledged event was delivered after kill -9"
    );
    for (user, seen) in &ids {
        assert!(!seen[0].is_empty(), "{user} has a delivery id");
        assert!(
            seen.iter().all(|id| id == &seen[0]),
            "{user}: duplicates carry the same id"
        );
    }
    // 5. A graceful stop (SIGTERM, as Kubernetes sends) flushes the deletions: nothing pending.
    let mut gw = gw;
    let status = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the gateway drains and exits on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, out, _) = spool_cli(&spool_dir, &["count"]);
    assert!(out.contains("pending: 0"), "{out}");
    drop(dir);
}

/// One HTTP/1.1 request with no body on a fresh connection; returns the status and body text.
fn request(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut conn = connect(addr);
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn admin_listen_moves_health_metrics_and_the_spool_api_off_openims_port() {
    let dir = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let gw = spawn_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
        ],
        dir.path(),
        &[("OPENIM_GATEWAY_ADMIN_LISTEN", &admin)],
    );

    assert_eq!(request(&admin, "GET", "/healthz"), (200, "ok".into()));
    let (code, body) = request(&admin, "GET", "/admin/spool");
    assert_eq!(code, 200);
    assert!(body.contains("\"pending\""), "{body}");
    assert_eq!(request(&admin, "GET", "/metrics").0, 200);
    // On OpenIM's port only callbacks: a POST to an admin path is just an unknown command.
    assert_eq!(request(&gw.addr, "GET", "/admin/spool").0, 405);
    let (code, body) = request(&gw.addr, "POST", "/admin/spool/purge?which=dead");
    assert_eq!(code, 200);
    assert!(body.contains("\"nextCode\":0"), "{body}");
}

/// Runs the binary to completion with `args` and extra environment variables.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    process::run(args, env.iter().copied())
}

/// The README's start command: callbacks on every interface, the admin API on loopback. Without
/// `--admin-listen` it is refused, naming the ways out and not blaming `--upstream`.
#[test]
fn the_readme_start_command_starts_with_the_admin_api_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap();
    let (code, _, err) = run(
        &[
            "--listen",
            "0.0.0.0:0",
            "--upstream",
            "http://im-hooks:50051",
        ],
        &[("OPENIM_GATEWAY_SPOOL__DIR", spool)],
    );
    assert_eq!(code, Some(2), "{err}");
    for way_out in ["--admin-listen", "admin_listen", "admin_token_file"] {
        assert!(err.contains(way_out), "{way_out}: {err}");
    }
    assert!(
        !err.contains("--upstream"),
        "not blamed on --upstream: {err}"
    );

    let gw = spawn(
        &[
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "http://im-hooks:50051",
        ],
        dir.path(),
    );
    let admin = gw.admin_addr().expect("the admin port is logged");
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    assert_eq!(request(&admin, "GET", "/healthz"), (200, "ok".into()));
    assert!(gw.addr.starts_with("0.0.0.0:"), "{}", gw.addr);
}

/// `--upstream URL` sets the endpoint of `upstreams.default`; an environment override of the
/// same upstream's other settings merges with it instead of refusing the start (#18).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_flag_merges_with_env_overrides_of_its_upstream() {
    let env = [
        (
            "OPENIM_GATEWAY_UPSTREAMS__DEFAULT__BREAKER__ENABLED",
            "false",
        ),
        (
            "OPENIM_GATEWAY_UPSTREAMS__DEFAULT__CONNECT_TIMEOUT",
            "250ms",
        ),
        ("OPENIM_GATEWAY_DEFAULTS__DELIVERY", "sync"),
    ];
    let (code, out, err) = run(&["--upstream", "http://im-hooks:50051", "check"], &env);
    assert_eq!(code, Some(0), "{err}");
    let effective: serde_json::Value = serde_json::from_str(&out).unwrap();
    let default = &effective["upstreams"]["default"];
    assert_eq!(
        default["endpoints"],
        serde_json::json!(["http://im-hooks:50051"])
    );
    assert_eq!(default["breaker"]["enabled"], false);
    assert_eq!(default["connect_timeout"], "250ms");

    let up = Upstream::start().await;
    up.reply(
        "BeforeCreateGroup",
        pb::BeforeCreateGroupResponse {
            group_name: Some("Merged".into()),
            ..Default::default()
        },
    );
    let uri = up.uri();
    let dir = tempfile::tempdir().unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let gw = spawn_with_env(
            &["--listen", "127.0.0.1:0", "--upstream", &uri],
            dir.path(),
            &env,
        );
        post(
            &mut connect(&gw.addr),
            "/callbackExample/callbackBeforeCreateGroupCommand",
            &payload("callbackBeforeCreateGroupCommand"),
        )
    })
    .await
    .unwrap();
    assert_eq!(answer.0, 200);
    assert_eq!(answer.1["groupName"], "Merged", "{:?}", answer.1);
}

/// `routes | head -1` and friends: stdout closed before anything is written. Every printing
/// subcommand exits quietly with the code it would have had (0; doctor's by its findings), no
/// panic, no "Broken pipe".
#[test]
fn printing_subcommands_exit_quietly_when_the_reader_closes_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("proto");
    let out = out.to_str().unwrap();
    let webhooks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/openim/webhooks.yml"
    );
    let (doctor_code, _, _) = run(&["doctor", "--openim", webhooks], &[]);
    for args in [
        &["routes"][..],
        &["routes", "--json"],
        &["check"],
        &["proto", "--out", out],
        &["doctor", "--openim", webhooks],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        // The reader is gone before the command writes: every write meets EPIPE.
        drop(reader);
        let done = Command::new(BIN)
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        let code = if args[0] == "doctor" {
            doctor_code
        } else {
            Some(0)
        };
        assert_eq!(done.status.code(), code, "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

/// Config errors name where the key was written (file line and column, or the environment
/// variable), the key as written, what was expected with an example, and the nearest key. The
/// missing upstream of enabled commands is refused by `check` and at start, naming them.
#[test]
fn config_errors_say_where_and_what_was_meant() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    let path = cfg.to_str().unwrap();
    std::fs::write(&cfg, "demo: true\ndefaults:\n  timout: 3s\n").unwrap();
    let (code, _, err) = run(&["--config", path, "check"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        format!(
            "openim-callback-gateway: invalid configuration: config key `defaults.timout` ({path} line 3, column 3): `timout` is not a known key here; did you mean `timeout`?\n"
        )
    );

    let (code, _, err) = run(&["check"], &[("OPENIM_GATEWAY_DEFAULTS__TIMEOUT", "soon")]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "openim-callback-gateway: invalid configuration: config key `defaults.timeout` (environment variable OPENIM_GATEWAY_DEFAULTS__TIMEOUT): expected a duration such as 800ms or 3s, found \"soon\"\n"
    );

    std::fs::write(&cfg, "defaults:\n  timeout: 2s\n").unwrap();
    for args in [&["--config", path, "check"][..], &["--config", path]] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        for part in [
            "upstreams.default",
            "callbackBeforeSendSingleMsgCommand",
            "`demo: true`",
        ] {
            assert!(err.contains(part), "{args:?}: {part}: {err}");
        }
    }
    // Asked for by name, the demo answers.
    let (code, _, err) = run(&["--config", path, "--demo", "check"], &[]);
    assert_eq!(code, Some(0), "{err}");
}

/// A refused reload says why once: no doubled "invalid configuration", the file's line, the
/// nearest key.
#[test]
fn a_refused_reload_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    let good = "listen: 127.0.0.1:0\nreload: {poll_interval: 100ms}\nupstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n";
    std::fs::write(&cfg, good).unwrap();
    let gw = spawn(&["--config", cfg.to_str().unwrap()], dir.path());
    std::fs::write(&cfg, format!("{good}defaults: {{timout: 1s}}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        if let Some(l) = gw
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("configuration reload refused"))
        {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "the reload is refused");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        line.contains("invalid configuration: config key `defaults.timout` (")
            && line.contains("line 4, column 12")
            && line.contains("did you mean `timeout`?"),
        "{line}"
    );
    assert_eq!(line.matches("invalid configuration").count(), 1, "{line}");
}

/// A probe answered 503 (here: draining after SIGTERM) is an answer, not an error: no ERROR line.
#[test]
fn a_503_probe_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let gw = spawn_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
        ],
        dir.path(),
        &[("OPENIM_GATEWAY_SHUTDOWN_DELAY", "60s")],
    );
    let status = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(&gw.addr, "GET", "/readyz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz turns 503 while draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(request(&gw.addr, "GET", "/readyz").0, 503);
    // A line logged after the probes: everything the probes logged is in by then.
    let _ = request(&gw.addr, "POST", "/cb/callbackNoSuchCommand");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.log_text().contains("unknown callback command") {
        assert!(Instant::now() < deadline, "the marker line is logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}
