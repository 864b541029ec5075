//! Load script for the after-event spool (issue: "answer OpenIM in milliseconds, lose nothing").
//!
//! Runs the real gateway binary against a stopped upstream, sends N after-events over keep-alive
//! connections as OpenIM would, measures the acknowledgement latency, kills the gateway with
//! SIGKILL, restarts it, starts the upstream, and waits until every event arrived with its delivery
//! id. Prints a table. Run it with `bash bench/spool-load.sh` (it builds the release binary first).
//!
//! `--backend redb` (the default) uses the local spool file; `--backend redis` a `redis-server`
//! it starts on a free loopback port (AOF on, `appendfsync always`: acknowledged = on disk, as
//! with redb; `--redis-fsync everysec` for Redis's default); `--backend both` runs redb, then
//! Redis, in the same run, and prints one column each.
//!
//! With Redis, a second point (issue #19): Redis is killed, `--outage-events` more after-events
//! (default a tenth of `--events`) are sent while it is down, and their acknowledgement latency
//! (from the gateway's local buffer, `when_unreachable: local`) is printed next to the normal
//! figure; Redis restarts before the gateway's kill -9, so the restarted gateway moves its
//! buffer into Redis and those events are delivered with the others.
//!
//! Usage: spool_load <gateway-binary> [--events N] [--connections C] [--backend redb|redis|both]
//!        [--redis-fsync always|everysec] [--outage-events N]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

// The tests' in-process harness and redis-server, of which this tool uses a part.
#[allow(dead_code)]
#[path = "../tests/support/harness.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    binary: String,
    events: usize,
    connections: usize,
    backends: Vec<&'static str>,
    redis_fsync: String,
    /// After-events sent while Redis is down (Redis backend only).
    outage_events: Option<usize>,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        binary: String::new(),
        events: 10_000,
        connections: 16,
        backends: vec!["redb"],
        redis_fsync: "always".to_owned(),
        outage_events: None,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--connections" => {
                a.connections = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--connections C")
            }
            "--backend" => {
                a.backends = match it.next().as_deref() {
                    Some("redb") => vec!["redb"],
                    Some("redis") => vec!["redis"],
                    Some("both") => vec!["redb", "redis"],
                    other => panic!("--backend redb|redis|both, not {other:?}"),
                }
            }
            "--redis-fsync" => a.redis_fsync = it.next().expect("--redis-fsync always|everysec"),
            "--outage-events" => {
                a.outage_events = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--outage-events N"),
                )
            }
            other => a.binary = other.to_owned(),
        }
    }
    assert!(
        !a.binary.is_empty(),
        "usage: spool_load <gateway-binary> [--events N] [--connections C] [--backend redb|redis|both]"
    );
    a
}

fn start_gateway(
    binary: &str,
    port: u16,
    upstream: &str,
    spool: &std::path::Path,
    redis: Option<&str>,
) -> Child {
    let mut cmd = Command::new(binary);
    if let Some(url) = redis {
        // One consumer name across the restart, like a pod that comes back under its name: the
        // restarted process resumes the deliveries its predecessor had in flight at once. (Under
        // a new name another replica takes them over after spool.redis.claim_idle, as
        // tests/it/spool_redis.rs shows.)
        cmd.env("OPENIM_GATEWAY_SPOOL__BACKEND", "redis")
            .env("OPENIM_GATEWAY_SPOOL__REDIS__URL", url)
            .env("OPENIM_GATEWAY_SPOOL__REDIS__CONSUMER", "spool-load");
    }
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--upstream",
        upstream,
    ])
    .env("OPENIM_GATEWAY_SPOOL__DIR", spool)
    .env("RUST_LOG", "error")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("gateway starts")
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not listen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One POST on a keep-alive connection; returns the body.
async fn post(conn: &mut BufReader<TcpStream>, path: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nContent-Type: application/json; charset=utf-8\r\nOperationid: load\r\n\r\n",
        body.len()
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut out = vec![0; len];
    conn.read_exact(&mut out).await.unwrap();
    out
}

/// `delivered 10000, retry 12, deferred 300` from the gateway's `/metrics`.
async fn attempts_by_result(port: u16) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    if stream.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    let mut by: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("gateway_delivery_attempts_total{")
            && let Some((labels, value)) = rest.rsplit_once(' ')
            && let Some(result) = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("result=\""))
                .map(|r| r.trim_end_matches(['"', '}']).to_owned())
        {
            *by.entry(result).or_default() += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    by.iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// What one backend measured.
struct Measured {
    /// Delivery attempts by result, from the gateway's /metrics.
    attempts: String,
    latencies: Vec<Duration>,
    ack_wall: Duration,
    /// Events sent while Redis was down, and their sorted ack latencies (Redis only).
    outage: usize,
    outage_latencies: Vec<Duration>,
    distinct: usize,
    first: Duration,
    deliver_wall: Duration,
    missing_id: usize,
    duplicates: usize,
    dup_same_id: bool,
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut results = Vec::new();
    for backend in &a.backends {
        let mut redis = (*backend == "redis")
            .then(|| redis_server::RedisServer::start_with(&["--appendfsync", &a.redis_fsync]));
        let m = run(&a, redis.as_mut()).await;
        results.push((*backend, m));
        drop(redis);
    }
    print(&a, &results);
    if results
        .iter()
        .any(|(_, m)| m.distinct != a.events + m.outage || m.missing_id > 0 || !m.dup_same_id)
    {
        eprintln!("FAILED: events were lost or lacked a stable delivery id");
        std::process::exit(1);
    }
}

/// Sends the after-events of users `from..to` over `connections` keep-alive connections;
/// returns the sorted acknowledgement latencies and the wall time.
async fn send(port: u16, from: usize, to: usize, connections: usize) -> (Vec<Duration>, Duration) {
    let template = support::read_json("payloads/callbackAfterQuitGroupCommand.json");
    let per_conn = (to - from).div_ceil(connections);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let template = template.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut conn = BufReader::new(stream);
            let mut latencies = Vec::with_capacity(per_conn);
            for i in (from + c * per_conn)..(from + (c + 1) * per_conn).min(to) {
                let mut body = template.clone();
                body["userID"] = format!("user-{i}").into();
                let t = Instant::now();
                let reply = post(
                    &mut conn,
                    "/callbackExample/callbackAfterQuitGroupCommand",
                    &support::wire(&body),
                )
                .await;
                latencies.push(t.elapsed());
                let json: serde_json::Value = serde_json::from_slice(&reply).unwrap();
                assert_eq!(json["nextCode"], 0, "event {i} not accepted: {json}");
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(to - from);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let wall = started.elapsed();
    latencies.sort();
    (latencies, wall)
}

async fn run(a: &Args, redis_server: Option<&mut redis_server::RedisServer>) -> Measured {
    let url = redis_server.as_ref().map(|r| r.url());
    let redis = url.as_deref();
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = support::free_port();
    let upstream_uri = format!("http://127.0.0.1:{upstream_port}");
    let port = support::free_port();

    // 1. Upstream stopped; the gateway acknowledges every event from its spool.
    let mut gw = start_gateway(&a.binary, port, &upstream_uri, dir.path(), redis);
    wait_listening(port).await;
    let (latencies, ack_wall) = send(port, 0, a.events, a.connections).await;

    // 1b. Redis: killed; the next events are acknowledged from the local buffer.
    let mut outage = 0;
    let mut outage_latencies = Vec::new();
    if let Some(server) = redis_server {
        outage = a.outage_events.unwrap_or(a.events / 10).max(1);
        server.kill();
        (outage_latencies, _) = send(port, a.events, a.events + outage, a.connections).await;
        server.restart();
    }
    let total = a.events + outage;

    // 2. kill -9, restart; the upstream comes up; everything arrives.
    gw.kill().unwrap();
    gw.wait().unwrap();
    let mut gw = start_gateway(&a.binary, port, &upstream_uri, dir.path(), redis);
    wait_listening(port).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", upstream_port))
        .await
        .unwrap();
    let up_started = Instant::now();
    let up = support::Upstream::start_on(listener).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut by_user: HashMap<String, Vec<String>>;
    let mut first_delivery: Option<Duration> = None;
    loop {
        let calls = up.calls();
        if first_delivery.is_none() && !calls.is_empty() {
            first_delivery = Some(up_started.elapsed());
        }
        by_user = HashMap::new();
        for call in &calls {
            let user = call
                .dynamic()
                .get_field_by_name("user_id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            by_user
                .entry(user)
                .or_default()
                .push(call.meta("openim-delivery-id").unwrap_or_default());
        }
        if by_user.len() >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deliver_wall = up_started.elapsed();
    let attempts = attempts_by_result(port).await;
    let calls = up.calls().len();
    gw.kill().unwrap();
    gw.wait().unwrap();

    let missing_id = by_user
        .values()
        .flatten()
        .filter(|id| id.is_empty())
        .count();
    let duplicates = calls - by_user.len();
    let dup_same_id = by_user
        .values()
        .filter(|ids| ids.len() > 1)
        .all(|ids| ids.iter().all(|id| *id == ids[0]));

    Measured {
        attempts,
        latencies,
        ack_wall,
        outage,
        outage_latencies,
        distinct: by_user.len(),
        first: first_delivery.unwrap_or_default(),
        deliver_wall,
        missing_id,
        duplicates,
        dup_same_id,
    }
}

fn print(a: &Args, results: &[(&str, Measured)]) {
    let head: Vec<String> = results.iter().map(|(b, _)| (*b).to_owned()).collect();
    println!("| metric | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(results.len()));
    let row = |name: &str, f: &dyn Fn(&Measured) -> String| {
        let cells: Vec<String> = results.iter().map(|(_, m)| f(m)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("events sent (after callbacks, upstream stopped)", &|_| {
        a.events.to_string()
    });
    row("connections", &|_| a.connections.to_string());
    row("ack latency p50", &|m| ms(percentile(&m.latencies, 0.50)));
    row("ack latency p90", &|m| ms(percentile(&m.latencies, 0.90)));
    row("ack latency p99", &|m| ms(percentile(&m.latencies, 0.99)));
    row("ack latency max", &|m| ms(*m.latencies.last().unwrap()));
    row("acks per second", &|m| {
        format!("{:.0}", a.events as f64 / m.ack_wall.as_secs_f64())
    });
    let outage = |p: Option<f64>| {
        move |m: &Measured| match (m.outage_latencies.last(), p) {
            (None, _) => "n/a".to_owned(),
            (Some(_), Some(p)) => ms(percentile(&m.outage_latencies, p)),
            (Some(max), None) => ms(*max),
        }
    };
    row(
        "Redis down: events sent (acknowledged from the local buffer)",
        &|m| {
            if m.outage == 0 {
                "n/a".to_owned()
            } else {
                m.outage.to_string()
            }
        },
    );
    row("Redis down: ack latency p50", &outage(Some(0.50)));
    row("Redis down: ack latency p99", &outage(Some(0.99)));
    row("Redis down: ack latency max", &outage(None));
    row("after kill -9 + restart: distinct events delivered", &|m| {
        format!("{} of {}", m.distinct, a.events + m.outage)
    });
    row(
        "upstream up → first delivery (reconnect + retry backoff)",
        &|m| ms(m.first),
    );
    row(
        "delivered per second (first delivery → all arrived)",
        &|m| {
            format!(
                "{:.0}",
                m.distinct as f64 / (m.deliver_wall - m.first).as_secs_f64().max(1e-9)
            )
        },
    );
    row("delivery attempts by result", &|m| m.attempts.clone());
    row("deliveries without openim-delivery-id", &|m| {
        m.missing_id.to_string()
    });
    row(
        "duplicate deliveries (allowed; all with the same delivery id)",
        &|m| format!("{} ({})", m.duplicates, m.dup_same_id),
    );
}
