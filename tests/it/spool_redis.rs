//! The multi-replica proof of the Redis spool (issues #11 item 4 and #19): two gateway PROCESSES
//! share one real `redis-server`; the upstream is down while 2 000 after-events are spread over
//! both; Redis is killed (-9) during the upstream outage and 200 more are acknowledged from the
//! replicas' local buffers (one replica `when_unreachable: local`, the other `sync`, whose
//! delivery fails); Redis restarts from its AOF with everything pending and the buffers move in;
//! the upstream comes up; one gateway is killed with -9 while delivering; the survivor takes
//! over its events after `claim_idle` and every acknowledged event arrives at least once, with
//! one delivery id across all its deliveries. Then the operator commands run against Redis
//! directly (no `--admin`). A second test shows each `when_unreachable` policy while Redis is
//! down and the upstream up, and a gateway killed (-9) with events in its local buffer that
//! moves them into Redis once it returns.

use crate::support::process;
use crate::support::process::{connect, post, post_quit_events, spawn_with_env};
use crate::support::redis_server::RedisServer;
use crate::support::*;
use openim_callback_gateway::proto::v1 as pb;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const EVENTS: usize = 2_000;

/// After-events acknowledged while Redis and the upstream are both down.
const DURING: usize = 200;

fn redis_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OPENIM_GATEWAY_SPOOL__BACKEND", "redis".to_owned()),
        ("OPENIM_GATEWAY_SPOOL__REDIS__URL", url.to_owned()),
        (
            "OPENIM_GATEWAY_SPOOL__REDIS__KEY_PREFIX",
            "proof".to_owned(),
        ),
        ("OPENIM_GATEWAY_SPOOL__REDIS__CLAIM_IDLE", "2s".to_owned()),
        ("OPENIM_GATEWAY_SPOOL__BACKOFF_MAX", "1s".to_owned()),
    ]
}

fn start(
    uri: &str,
    url: &str,
    dir: &std::path::Path,
    name: &str,
    when_unreachable: &str,
) -> process::Gateway {
    let mut env = redis_env(url);
    env.push(("OPENIM_GATEWAY_SPOOL__REDIS__CONSUMER", name.to_owned()));
    env.push((
        "OPENIM_GATEWAY_SPOOL__REDIS__WHEN_UNREACHABLE",
        when_unreachable.to_owned(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_with_env(&["--listen", "127.0.0.1:0", "--upstream", uri], dir, &env)
}

/// Runs an operator command of the binary against Redis (no `--admin`).
fn spool_cli(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<&str> = std::iter::once("spool")
        .chain(args.iter().copied())
        .collect();
    process::run(&args, redis_env(url))
}

/// One HTTP/1.1 GET on a fresh connection; the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// Appends that went to Redis and found it unreachable, from the gateway's `/metrics`: once
/// one has, the later ones go straight to the fallback (fail fast), so this stays at most 1
/// per outage.
fn failed_appends(addr: &str) -> u64 {
    let (_, metrics) = get(addr, "/metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("gateway_spool_backend_errors_total") && l.contains("op=\"append\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (bounded) until `/readyz` of `addr` does or does not name the spool.
fn wait_readyz_spool(addr: &str, named: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(addr, "/readyz");
        if body.contains("spool:") == named {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz of {addr} should {}name the spool: {body}",
            if named { "" } else { "not " }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(addr: String, from: usize, to: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || post_quit_events(&addr, from..to))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_redis_survive_kill_9_of_one_and_a_redis_restart() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let upstream_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let uri = format!("http://{upstream_addr}");
    let dir = tempfile::tempdir().unwrap();

    // 1. Upstream down: both gateways acknowledge every after-event from Redis.
    let (u, d) = (uri.clone(), dir.path().to_owned());
    let (url2, d2) = (url.clone(), dir.path().to_owned());
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = start(&u, &url2, &d.join("a"), "replica-a", "local");
        let b = start(&u, &url2, &d2.join("b"), "replica-b", "sync");
        let half = EVENTS / 2;
        let ta = send(a.addr.clone(), 0, half);
        let tb = send(b.addr.clone(), half, EVENTS);
        ta.join().unwrap();
        tb.join().unwrap();
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(
        redis.int(&["ZCARD", "{proof}:idx"]),
        EVENTS as i64,
        "every acknowledged event is pending in Redis"
    );

    // 2. Redis is killed with -9: both gateways' /readyz say so. It restarts from its AOF:
    // nothing pending is lost, and readiness no longer names the spool.
    redis.kill();
    let (aa, ba) = (a.addr.clone(), b.addr.clone());
    let body = tokio::task::spawn_blocking(move || {
        wait_readyz_spool(&ba, true);
        wait_readyz_spool(&aa, true)
    })
    .await
    .unwrap();
    assert!(body.contains("unreachable"), "{body}");
    // Redis and the upstream are both down: every after-event is still acknowledged, each only
    // once it is in its replica's local buffer (a: `local`; b: `sync`, whose delivery fails).
    let (aa, ba) = (a.addr.clone(), b.addr.clone());
    let buffered = tokio::task::spawn_blocking(move || {
        let ta = send(aa.clone(), EVENTS, EVENTS + DURING / 2);
        let tb = send(ba.clone(), EVENTS + DURING / 2, EVENTS + DURING);
        ta.join().unwrap();
        tb.join().unwrap();
        for addr in [&aa, &ba] {
            assert!(
                failed_appends(addr) <= 1,
                "{addr}: after the first append found Redis down, none waited for it"
            );
        }
        let depth = |addr: &str| {
            let (_, body) = get(addr, "/admin/spool");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["buffered"]
                .as_u64()
                .unwrap()
        };
        depth(&aa) + depth(&ba)
    })
    .await
    .unwrap();
    assert_eq!(
        buffered, DURING as u64,
        "/admin/spool shows the local buffers' depth"
    );
    redis.restart();
    let (aa, ba) = (a.addr.clone(), b.addr.clone());
    tokio::task::spawn_blocking(move || {
        wait_readyz_spool(&aa, false);
        wait_readyz_spool(&ba, false);
    })
    .await
    .unwrap();
    let total = EVENTS + DURING;
    let moved_by = Instant::now() + Duration::from_secs(60);
    while redis.int(&["ZCARD", "{proof}:idx"]) < total as i64 {
        assert!(
            Instant::now() < moved_by,
            "the local buffers move into Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis.int(&["ZCARD", "{proof}:idx"]),
        total as i64,
        "after a Redis restart every event is pending: the earlier ones from its AOF, the \
         outage's moved in from the local buffers"
    );
    let (code, out, err) = spool_cli(&url, &["count"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("pending: {total}")), "{out}");

    // 3. The upstream comes up (slow, so that deliveries are in flight); gateway a is killed
    // with -9 while it delivers.
    let up = Upstream::start_on(tokio::net::TcpListener::bind(upstream_addr).await.unwrap()).await;
    up.on(
        "AfterQuitGroup",
        Behavior::Delay(
            Duration::from_millis(20),
            Box::new(Behavior::Reply(bytes::Bytes::new())),
        ),
    );
    let wait_started = Instant::now();
    while up.calls().len() < 200 {
        assert!(
            wait_started.elapsed() < Duration::from_secs(60),
            "deliveries started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(a); // kill -9
    let killed_at = Instant::now();

    // 4. The survivor delivers everything, a's in-flight events after claim_idle.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ids = HashMap::<String, Vec<String>>::new();
    while Instant::now() < deadline {
        ids.clear();
        for c in up.calls() {
            let user = c.decode::<pb::AfterQuitGroupRequest>().user_id;
            ids.entry(user)
                .or_default()
                .push(c.meta("openim-delivery-id").unwrap_or_default());
        }
        if ids.len() == total && redis.int(&["ZCARD", "{proof}:idx"]) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_in = killed_at.elapsed();
    assert_eq!(ids.len(), total, "every event was delivered at least once");
    let calls = up.calls().len();
    for (user, seen) in &ids {
        assert!(!seen[0].is_empty(), "{user} has a delivery id");
        assert!(
            seen.iter().all(|id| id == &seen[0]),
            "{user}: every delivery carries the event's one id: {seen:?}"
        );
    }
    let log = b.log_with("took over an event whose consumer stopped", 1);
    assert!(
        log.contains("took over an event whose consumer stopped"),
        "the survivor reclaimed the killed replica's events:\n{}",
        log.lines()
            .filter(|l| l.contains("spool"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "multi-replica proof: {total} events ({DURING} while Redis and the upstream were down), \
         {calls} deliveries ({} duplicates, same ids), everything in {:.1} s after kill -9 \
         (claim_idle 2s, backoff_max 1s)",
        calls - total,
        all_in.as_secs_f64()
    );

    let (_, metrics) = get(&b.addr, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_spool_reclaimed_total") && !l.ends_with(" 0")),
        "the survivor counts what it took over"
    );

    // 5. Operator commands on Redis, through b's admin API and directly while b runs.
    let admin = format!("http://{}", b.addr);
    let (code, out, err) = spool_cli(&url, &["--admin", &admin, "count"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("pending: 0"), "{out}");
    let (code, out, err) = spool_cli(&url, &["count"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("pending: 0"), "{out}");
    let (code, out, err) = spool_cli(&url, &["purge", "--dead"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("would purge 0 dead events"), "{out}");
    drop(b);

    // With Redis down, the CLI says so.
    redis.kill();
    let (code, _, err) = spool_cli(&url, &["count"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("cannot connect"), "{err}");
    drop(dir);
}

/// The delivery ids on the log lines containing `marker`.
fn logged_id(log: &str, marker: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let at = l.find("delivery_id=")? + "delivery_id=".len();
            Some(
                l[at..]
                    .split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_local_buffers_survive_kill_9_sync_delivers_now_with_its_id_reject_refuses() {
    let mut redis = RedisServer::not_started();
    let url = redis.url();
    let up = Upstream::start().await;
    let uri = up.uri();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let env_of = move |policy: &str| {
        let mut env = redis_env(&url);
        env.push(("OPENIM_GATEWAY_SPOOL__REDIS__TIMEOUT", "300ms".to_owned()));
        env.push((
            "OPENIM_GATEWAY_SPOOL__REDIS__WHEN_UNREACHABLE",
            policy.to_owned(),
        ));
        env
    };
    let (restart_env, restart_uri, restart_dir) = (env_of.clone(), uri.clone(), d.join("local"));
    let (local, admin, metrics, sync_log, reject_answer) = tokio::task::spawn_blocking(move || {
        let gateway = |policy: &str| {
            let env = env_of(policy);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            spawn_with_env(
                &["--listen", "127.0.0.1:0", "--upstream", &uri],
                &d.join(policy),
                &env,
            )
        };
        let callback = |gw: &process::Gateway, user: &str| {
            let mut body = read_json("payloads/callbackAfterQuitGroupCommand.json");
            body["userID"] = user.into();
            let mut conn = connect(&gw.addr);
            post(
                &mut conn,
                "/callbackExample/callbackAfterQuitGroupCommand",
                &wire(&body),
            )
        };
        // local (the default): acknowledged once in the local buffer.
        let local = gateway("local");
        for i in 0..3 {
            assert_eq!(callback(&local, &format!("local-{i}")), (200, allow()));
        }
        let (_, admin) = get(&local.addr, "/admin/spool");
        let (_, metrics) = get(&local.addr, "/metrics");
        // Down since the start: no append even tried Redis.
        assert_eq!(failed_appends(&local.addr), 0, "fail fast");
        // sync: delivered during the callback, with its delivery id.
        let sync = gateway("sync");
        assert_eq!(callback(&sync, "sync-user"), (200, allow()));
        let sync_log = sync.log_with("delivered synchronously", 1);
        drop(sync);
        // reject: refused, stored nowhere.
        let reject = gateway("reject");
        let (_, reject_answer) = callback(&reject, "rejected-user");
        drop(reject);
        (local, admin, metrics, sync_log, reject_answer)
    })
    .await
    .unwrap();
    let calls = up.calls();
    let users: Vec<String> = calls
        .iter()
        .map(|c| c.decode::<pb::AfterQuitGroupRequest>().user_id)
        .collect();
    assert_eq!(
        users,
        vec!["sync-user".to_owned()],
        "only sync delivered while Redis was down"
    );
    let sync_id = calls[0].meta("openim-delivery-id").expect("a delivery id");
    assert_eq!(
        logged_id(&sync_log, "delivered synchronously"),
        vec![sync_id],
        "the callback's line names the delivery id the upstream got"
    );
    let admin: serde_json::Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(admin["buffered"], 3, "{admin}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_spool_buffered ") && l.ends_with(" 3")),
        "the buffer depth is a metric"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_spool_unavailable_total")
                && l.contains("policy=\"local\"")),
        "counted"
    );
    assert_ne!(
        reject_answer,
        allow(),
        "reject: OpenIM gets a rejection envelope"
    );

    // The local gateway is killed (-9) with its buffer full while Redis is still down, and
    // starts again on the same disk.
    let logged = logged_id(&local.log_with("local buffer", 3), "local buffer");
    assert_eq!(logged.len(), 3, "{}", local.log_text());
    drop(local);
    let local = tokio::task::spawn_blocking(move || {
        let env = restart_env("local");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_with_env(
            &["--listen", "127.0.0.1:0", "--upstream", &restart_uri],
            &restart_dir,
            &env,
        )
    })
    .await
    .unwrap();
    let (_, admin) = get(&local.addr, "/admin/spool");
    assert!(admin.contains("\"buffered\":3"), "found again: {admin}");
    // Redis comes up: the restarted gateway moves the buffer into Redis, and each event is
    // delivered with the delivery id its callback's line named.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let got: HashMap<String, String> = up
            .calls()
            .iter()
            .map(|c| {
                (
                    c.decode::<pb::AfterQuitGroupRequest>().user_id,
                    c.meta("openim-delivery-id").unwrap_or_default(),
                )
            })
            .filter(|(u, _)| u.starts_with("local-"))
            .collect();
        if got.len() == 3 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the buffered events are delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut ids: Vec<String> = delivered.into_values().collect();
    ids.sort();
    let mut logged = logged;
    logged.sort();
    assert_eq!(
        ids, logged,
        "the ids given at the callback are the ids delivered"
    );
    assert!(
        !up.calls()
            .iter()
            .any(|c| c.decode::<pb::AfterQuitGroupRequest>().user_id == "rejected-user"),
        "reject: never delivered"
    );
    drop(local);
    drop(redis);
}
