//! The gateway binary's lifecycle: `/readyz` and the gateway's own grpc.health.v1 staying ready
//! whatever the upstream does (issue #18), its health at `/admin/upstreams`; SIGTERM with a callback in flight (readiness
//! first, then drain, exit 0); reloads on file change and SIGHUP, with a bad file and a
//! start-up-only change refused; the `check` and `routes` subcommands.

use crate::support;
use crate::support::process;
use crate::support::process::{BIN, connect, request};
use crate::support::{Behavior, Upstream, eventually_blocking, payload};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

const CREATE: &str = "callbackBeforeCreateGroupCommand";

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut c = connect(addr);
    let r = request(&mut c, "GET", path, &[], b"").expect("answer");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Waits (bounded, off the runtime's threads) until `/readyz` on `admin` answers 200.
async fn until_ready(admin: &str, what: &'static str) {
    let a = admin.to_owned();
    tokio::task::spawn_blocking(move || {
        eventually_blocking(what, Duration::from_secs(10), || {
            get(&a, "/readyz").0 == 200
        })
    })
    .await
    .unwrap();
}

fn serving(status: ServingStatus) -> Behavior {
    use prost::Message as _;
    Behavior::Reply(
        HealthCheckResponse {
            status: status as i32,
        }
        .encode_to_vec()
        .into(),
    )
}

async fn gateway_health(admin: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
        .unwrap()
        .connect()
        .await
        .expect("the admin port speaks h2c");
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = client
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the gateway serves grpc.health.v1");
    r.into_inner().status()
}

fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.yaml");
    // Write then rename, as a ConfigMap update does, so the watcher never reads half a file.
    let tmp = dir.join("gateway.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn kill(signal: &str, pid: u32) {
    assert!(
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// `/admin/upstreams` of `admin`, as JSON.
fn admin_upstreams(admin: &str) -> serde_json::Value {
    let (status, body) = get(admin, "/admin/upstreams");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The one upstream `default` of an `/admin/upstreams` answer.
fn default_upstream(view: &serde_json::Value) -> &serde_json::Value {
    let list = view["upstreams"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{view}");
    assert_eq!(list[0]["name"], "default", "{view}");
    &list[0]
}

/// Posts every command's real payload on one connection; checks each answer is its failure
/// policy's (`continue`: allowed with nothing overridden but the echo rules; after-events
/// acknowledged), and returns how many after-events were acknowledged.
fn every_command_gets_its_failure_policy(addr: &str, phase: &str) -> usize {
    use openim_callback_gateway::catalog::{Catalog, Phase};
    let catalog = Catalog::contract().unwrap();
    let mut conn = connect(addr);
    let mut after = 0;
    for entry in catalog.entries() {
        let command = entry.row.command;
        let (status, env) = process::post(&mut conn, &format!("/cb/{command}"), &payload(command));
        assert_eq!(status, 200, "{phase}: {command}");
        assert_eq!(
            (
                env["actionCode"].as_i64(),
                env["errCode"].as_i64(),
                env["nextCode"].as_i64()
            ),
            (Some(0), Some(0), Some(0)),
            "{phase}: {command} continues: {env}"
        );
        if entry.phase == Phase::After {
            assert_eq!(env, support::allow(), "{phase}: {command} acknowledged");
            after += 1;
        }
    }
    assert_eq!(catalog.entries().count(), 52);
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_never_follows_the_upstream_whose_health_stays_visible_at_admin_upstreams() {
    let up = Upstream::start().await;
    let upstream_addr = up.addr;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nhealth_check_interval: 100ms\n\
             upstreams: {{default: {{endpoints: ['{}'], connect_timeout: 300ms, \
             health_service: openim.callback.v1.GroupCallbackService}}}}\n\
             defaults: {{timeout: 1s}}\nspool: {{backoff_initial: 100ms, backoff_max: 500ms}}\n",
            up.uri()
        ),
    );
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let sd = dir.path().join("spool");
    let gw = tokio::task::spawn_blocking(move || process::spawn(&["--config", &cfg_arg], &sd))
        .await
        .unwrap();
    let admin = gw.admin_addr().expect("admin port logged");
    // No health service on the upstream (UNIMPLEMENTED) but reachable: up.
    until_ready(&admin, "ready").await;
    assert_eq!(gateway_health(&admin).await, ServingStatus::Serving);
    let a = admin.clone();
    let view = tokio::task::spawn_blocking(move || {
        let mut view = serde_json::Value::Null;
        eventually_blocking("upstream checked", Duration::from_secs(10), || {
            view = admin_upstreams(&a);
            default_upstream(&view)["up"] == true
        });
        view
    })
    .await
    .unwrap();
    let upstream = default_upstream(&view);
    assert_eq!(upstream["breaker"], "closed", "{view}");
    assert_eq!(upstream["in_flight"], 0, "{view}");
    let member = &upstream["members"][0];
    assert_eq!(member["health"], "SERVING", "{view}");
    assert_eq!(member["connected"], true, "{view}");
    assert!(member["checked_at"].is_string(), "{view}");
    assert!(up.health_checks() > 0, "the upstream was asked");

    // 1. NOT_SERVING: the gateway stays ready; every command gets its failure policy at once,
    //    without a call; the admin view, the body of /readyz and the metric say why.
    up.on("Check", serving(ServingStatus::NotServing));
    let a = admin.clone();
    tokio::task::spawn_blocking(move || {
        eventually_blocking("NOT_SERVING seen", Duration::from_secs(10), || {
            let view = admin_upstreams(&a);
            default_upstream(&view)["members"][0]["health"]
                .as_str()
                .is_some_and(|h| h.starts_with("NOT_SERVING"))
        })
    })
    .await
    .unwrap();
    let calls_before = up.calls().len();
    let (addr, a) = (gw.addr.clone(), admin.clone());
    let (acked, readyz, view, metrics) = tokio::task::spawn_blocking(move || {
        let acked = every_command_gets_its_failure_policy(&addr, "NOT_SERVING");
        (
            acked,
            get(&a, "/readyz"),
            admin_upstreams(&a),
            get(&a, "/metrics").1,
        )
    })
    .await
    .unwrap();
    assert_eq!(readyz.0, 200, "{readyz:?}");
    assert!(
        readyz.1.contains("upstream `default`") && readyz.1.contains("NOT_SERVING"),
        "the 200 body names what is degraded: {readyz:?}"
    );
    assert_eq!(gateway_health(&admin).await, ServingStatus::Serving);
    assert_eq!(default_upstream(&view)["up"], false, "{view}");
    assert!(
        metrics.contains("gateway_upstream_up{upstream=\"default\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_ready 1"), "{metrics}");
    assert_eq!(
        up.calls().len(),
        calls_before,
        "a NOT_SERVING upstream gets no callback (its after-events wait in the spool)"
    );

    // 2. The upstream stops: still ready; every command gets its failure policy.
    up.stop();
    let (addr, a) = (gw.addr.clone(), admin.clone());
    let (acked_down, readyz, view) = tokio::task::spawn_blocking(move || {
        eventually_blocking("upstream seen unreachable", Duration::from_secs(10), || {
            default_upstream(&admin_upstreams(&a))["members"][0]["connected"] == false
        });
        let acked = every_command_gets_its_failure_policy(&addr, "stopped");
        (acked, get(&a, "/readyz"), admin_upstreams(&a))
    })
    .await
    .unwrap();
    assert_eq!(readyz.0, 200, "{readyz:?}");
    assert_eq!(gateway_health(&admin).await, ServingStatus::Serving);
    assert_eq!(default_upstream(&view)["up"], false, "{view}");

    // 3. It comes back: every after-event acknowledged meanwhile is delivered, with an id.
    let listener = tokio::net::TcpListener::bind(upstream_addr).await.unwrap();
    let back = Upstream::start_on(listener).await;
    let calls = back
        .wait_calls(acked + acked_down, Duration::from_secs(30))
        .await;
    let after: Vec<_> = calls
        .iter()
        .filter(|c| c.meta("openim-delivery-id").is_some())
        .collect();
    assert_eq!(
        after.len(),
        acked + acked_down,
        "every acknowledged after-event delivered once the upstream is back"
    );
    let a = admin.clone();
    tokio::task::spawn_blocking(move || {
        eventually_blocking("up again", Duration::from_secs(10), || {
            default_upstream(&admin_upstreams(&a))["up"] == true
        })
    })
    .await
    .unwrap();
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_first_then_drains_the_callback_in_flight_and_exits_0() {
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Delay(
            Duration::from_millis(1500),
            Box::new(Behavior::Reply(Default::default())),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nhealth_check_interval: 100ms\nshutdown_grace: 10s\n\
             upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n",
            up.uri()
        ),
    );
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let sd = dir.path().join("spool");
    let mut gw = tokio::task::spawn_blocking(move || {
        process::spawn_with_env(
            &["--config", &cfg_arg],
            &sd,
            &[("OPENIM_GATEWAY_SHUTDOWN_DELAY", "800ms")],
        )
    })
    .await
    .unwrap();
    let admin = gw.admin_addr().unwrap();
    until_ready(&admin, "ready").await;
    let addr = gw.addr.clone();
    let in_flight = std::thread::spawn(move || {
        process::post(
            &mut connect(&addr),
            &format!("/cb/{CREATE}"),
            &payload(CREATE),
        )
    });
    up.wait_calls(1, Duration::from_secs(10)).await;
    kill("-TERM", gw.child.id());
    let a = admin.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut last = (0, String::new());
        eventually_blocking("readyz 503 after SIGTERM", Duration::from_secs(5), || {
            last = get(&a, "/readyz");
            last.0 == 503
        });
        last
    })
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    let (status, env) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        env["errCode"], 0,
        "the callback in flight got the upstream's answer: {env}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "exits after draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit 0: {exit:?}");
    let log = gw.log_text();
    let term = log.find("shutting down").expect("logs the shutdown");
    assert!(
        !log[term..].contains("connections still open"),
        "drained within the grace:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_or_sighup_reloads_and_a_bad_file_or_a_restart_only_change_is_refused() {
    let up = Upstream::start().await;
    up.on(
        "BeforeCreateGroup",
        Behavior::Status(tonic::Code::Unavailable, "down".into(), Default::default()),
    );
    let dir = tempfile::tempdir().unwrap();
    let uri = up.uri();
    let yaml = move |code: i32, extra: &str| {
        format!(
            "listen: 127.0.0.1:0\nreload: {{poll_interval: 100ms}}\n\
             upstreams: {{default: {{endpoints: ['{}'], breaker: {{enabled: false}}}}}}\n\
             defaults: {{delivery: sync, on_failure: reject, reject_code: {code}}}\n{extra}",
            uri
        )
    };
    let yaml2 = yaml.clone();
    let cfg = write_config(dir.path(), &yaml(20010, ""));
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let sd = dir.path().join("spool");
    let gw = tokio::task::spawn_blocking(move || process::spawn(&["--config", &cfg_arg], &sd))
        .await
        .unwrap();
    let addr = gw.addr.clone();
    let code = move || {
        let (_, env) = process::post(
            &mut connect(&addr),
            &format!("/cb/{CREATE}"),
            &payload(CREATE),
        );
        env["errCode"].as_i64().unwrap_or(-1)
    };
    let dirp = dir.path().to_owned();
    let logs = gw.logs.clone();
    let log_has = move |s: &str| logs.lock().unwrap().iter().any(|l| l.contains(s));
    tokio::task::spawn_blocking(move || {
        assert_eq!(code(), 20010);
        // 1. A good change is picked up from the file.
        write_config(&dirp, &yaml(20020, ""));
        eventually_blocking(
            "the new reject_code serves",
            Duration::from_secs(10),
            || code() == 20020,
        );
        assert!(log_has("configuration reloaded"));
        // 2. A bad file is refused; the old config keeps serving.
        write_config(&dirp, &yaml(20030, "no_such_key: 1\n"));
        eventually_blocking("the bad file is refused", Duration::from_secs(10), || {
            log_has("configuration reload refused")
        });
        assert_eq!(code(), 20020, "the previous configuration keeps serving");
        // 3. A start-up-only change is refused and named.
        write_config(
            &dirp,
            &yaml(20040, "").replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1"),
        );
        eventually_blocking(
            "the listen change is named",
            Duration::from_secs(10),
            || log_has("only take effect at start-up; restart to change them: listen"),
        );
        assert_eq!(code(), 20020);
    })
    .await
    .unwrap();
    let metrics = {
        let addr = gw.addr.clone();
        tokio::task::spawn_blocking(move || get(&addr, "/metrics").1)
            .await
            .unwrap()
    };
    assert!(
        metrics.contains("gateway_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
    drop(gw);

    // SIGHUP, with the file watcher off.
    let cfg = write_config(
        dir.path(),
        &yaml2(20050, "").replace("reload: {poll_interval: 100ms}", "reload: {watch: false}"),
    );
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let sd = dir.path().join("spool2");
    let gw = tokio::task::spawn_blocking(move || process::spawn(&["--config", &cfg_arg], &sd))
        .await
        .unwrap();
    let addr = gw.addr.clone();
    let pid = gw.child.id();
    let dirp = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let code = || {
            let (_, env) = process::post(
                &mut connect(&addr),
                &format!("/cb/{CREATE}"),
                &payload(CREATE),
            );
            env["errCode"].as_i64().unwrap_or(-1)
        };
        assert_eq!(code(), 20050);
        write_config(
            &dirp,
            &yaml2(20060, "").replace("reload: {poll_interval: 100ms}", "reload: {watch: false}"),
        );
        kill("-HUP", pid);
        eventually_blocking("SIGHUP reloads", Duration::from_secs(10), || {
            code() == 20060
        });
    })
    .await
    .unwrap();
    drop(gw);
}

#[test]
fn routes_prints_the_effective_table_and_check_exits_2_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "upstreams:\n  default: {endpoints: ['http://hooks:50051']}\n  groups: {endpoints: ['http://groups:50051']}\n\
         commands:\n  callbackBeforeCreateGroupCommand: {upstream: groups, timeout: 700ms, on_failure: reject, reject_code: 20010}\n  \
         callbackAfterQuitGroupCommand: {ordered: true}\n  callbackAfterUserOnlineCommand: {enabled: false}\n",
    );
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "routes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 53, "a header and 52 commands:\n{text}");
    assert!(lines[0].starts_with("COMMAND"));
    let row = |cmd: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{cmd} ")))
            .unwrap()
    };
    let create: Vec<&str> = row(CREATE).split_whitespace().collect();
    assert_eq!(
        &create[..5],
        &[
            CREATE,
            "true",
            "groups",
            "/openim.callback.v1.GroupCallbackService/BeforeCreateGroup",
            "700ms"
        ]
    );
    assert!(row(CREATE).contains("reject 20010"));
    assert!(row("callbackAfterQuitGroupCommand").contains("spool, ordered"));
    assert!(row("callbackAfterUserOnlineCommand").contains(" false "));
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "routes", "--json"])
        .output()
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        first["rpc"]
            .as_str()
            .unwrap()
            .starts_with("/openim.callback.v1.")
    );

    for sub in ["check", "check-config"] {
        let out = Command::new(BIN)
            .args(["--config", cfg.to_str().unwrap(), sub])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub}: {out:?}");
    }
    let bad = write_config(
        dir.path(),
        "upstreams: {default: {endpoints: ['https://x:1'], tls: {ca_file: /nonexistent/ca.pem}}}\n",
    );
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("upstreams.default.tls.ca_file"),
        "{out:?}"
    );
}

/// The container image sets `OPENIM_GATEWAY_CONFIG`; it names the file and is not a config key.
/// The Kubernetes config file passes `check` (with its admin token file pointed at a temp file).
#[test]
fn the_config_file_from_the_environment_and_the_kubernetes_config_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let k8s =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/gateway.yaml");
    let out = Command::new(BIN)
        .arg("check")
        .env("OPENIM_GATEWAY_CONFIG", &k8s)
        .env("OPENIM_GATEWAY_ADMIN_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        effective["listen"], "0.0.0.0:10006",
        "the file named by the variable was read"
    );
    // The multi-replica variant: the Redis spool, its password from a mounted file.
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "secret\n").unwrap();
    let multi = k8s.with_file_name("multi-replica").join("gateway.yaml");
    let out = Command::new(BIN)
        .arg("check")
        .env("OPENIM_GATEWAY_CONFIG", &multi)
        .env("OPENIM_GATEWAY_ADMIN_TOKEN_FILE", &token)
        .env("OPENIM_GATEWAY_SPOOL__REDIS__PASSWORD_FILE", &password)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["spool"]["backend"], "redis");
}
