//! The Redis backend against a real `redis-server` (started per test on a free loopback port,
//! AOF on): every semantic of issue #11 item 2 except the multi-process proof
//! (`tests/it/spool_redis.rs`).
#![allow(clippy::unwrap_used)]

// The integration tests' redis-server, of which these tests use a part.
#[allow(dead_code)]
#[path = "../../../tests/support/redis_server.rs"]
mod redis_server;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use self::redis_server::RedisServer;
use crate::spool::{
    AppendError, BackendKind, Deliver, DeliveryResult, Durability, Fault, FullPolicy, NewEvent,
    RedisConfig, Spool, SpoolConfig, StoredEvent, Unreachable, Which,
};

/// A fake deliverer's failure without a status: its text is `text` as it is.
fn fault(text: &str) -> Fault {
    Fault::local("test", text)
}

/// Settings of one replica: its own local buffer in a new temp dir (kept: a test may reopen it).
fn settings(url: &str, prefix: &str, consumer: &str) -> SpoolConfig {
    SpoolConfig {
        backend: BackendKind::Redis,
        redis: RedisConfig {
            url: url.to_owned(),
            key_prefix: prefix.to_owned(),
            consumer: consumer.to_owned(),
            claim_idle: Duration::from_millis(300),
            buffer_dir: Some(tempfile::tempdir().unwrap().keep()),
            ..RedisConfig::default()
        },
        workers: 8,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..SpoolConfig::default()
    }
}

/// `s` as another replica's: a local buffer of its own.
fn own_buffer(mut s: SpoolConfig) -> SpoolConfig {
    s.redis.buffer_dir = Some(tempfile::tempdir().unwrap().keep());
    s
}

fn event(command: &str, n: u32, key: Option<&str>) -> NewEvent {
    NewEvent {
        command: command.to_owned(),
        order_key: key.map(str::to_owned),
        operation_id: format!("op-{n}"),
        openim_key: None,
        payload: n.to_be_bytes().to_vec(),
        trace: None,
    }
}

fn n_of(ev: &StoredEvent) -> u32 {
    u32::from_be_bytes(ev.event.payload.as_slice().try_into().unwrap())
}

/// One delivery attempt as the fake upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    n: u32,
    delivery_id: String,
    attempt: u32,
    key: Option<String>,
    replica: &'static str,
    result: &'static str,
}

type Script = dyn Fn(u32, u32) -> DeliveryResult + Send + Sync;

/// A deliverer that records every attempt and answers per `script(n, attempt)`, after an
/// optional pause; it also checks that no two attempts of one ordering key overlap.
struct Fake {
    replica: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    busy_keys: Arc<Mutex<HashSet<String>>>,
    overlaps: Arc<Mutex<Vec<String>>>,
    pause: Duration,
    script: Box<Script>,
    hang_on: Option<(u32, u32)>,
}

impl Fake {
    fn new(replica: &'static str, seen: &Arc<Mutex<Vec<Seen>>>, script: Box<Script>) -> Fake {
        Fake {
            replica,
            seen: seen.clone(),
            busy_keys: Arc::new(Mutex::new(HashSet::new())),
            overlaps: Arc::new(Mutex::new(Vec::new())),
            pause: Duration::ZERO,
            script,
            hang_on: None,
        }
    }
}

impl Deliver for Fake {
    fn deadline(&self, _ev: &StoredEvent) -> Duration {
        Duration::from_secs(60)
    }

    fn deliver<'a>(&'a self, ev: &'a StoredEvent, attempt: u32) -> BoxFuture<'a, DeliveryResult> {
        Box::pin(async move {
            let n = n_of(ev);
            let key = ev.event.order_key.clone();
            if let Some(k) = &key
                && !self.busy_keys.lock().unwrap().insert(k.clone())
            {
                self.overlaps.lock().unwrap().push(k.clone());
            }
            if self.hang_on == Some((n, attempt)) {
                self.seen.lock().unwrap().push(Seen {
                    n,
                    delivery_id: ev.delivery_id.clone(),
                    attempt,
                    key: key.clone(),
                    replica: self.replica,
                    result: "hang",
                });
                std::future::pending::<()>().await;
            }
            if !self.pause.is_zero() {
                tokio::time::sleep(Duration::from_micros(fastrand::u64(
                    0..=u64::try_from(self.pause.as_micros()).unwrap(),
                )))
                .await;
            }
            let result = (self.script)(n, attempt);
            self.seen.lock().unwrap().push(Seen {
                n,
                delivery_id: ev.delivery_id.clone(),
                attempt,
                key: key.clone(),
                replica: self.replica,
                result: match result {
                    DeliveryResult::Delivered => "delivered",
                    DeliveryResult::Retry(_) => "retry",
                    DeliveryResult::Permanent(_) => "permanent",
                    DeliveryResult::Deferred(..) => "deferred",
                },
            });
            if let Some(k) = &key {
                self.busy_keys.lock().unwrap().remove(k);
            }
            result
        })
    }
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delivered(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.result == "delivered")
        .cloned()
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_in_redis_when_acknowledged_and_two_spools_deliver_each_once() {
    let redis = RedisServer::start();
    let a = Spool::open(&settings(&redis.url(), "t1", "a")).unwrap();
    assert_eq!(a.backend(), BackendKind::Redis);
    assert_eq!(a.health(), Ok(()));
    let mut ids = HashSet::new();
    for n in 0..200 {
        let r = a.append(event("cmd", n, None)).await.unwrap();
        assert!(ids.insert(r.delivery_id.clone()), "delivery ids are unique");
        // Acknowledged = in Redis: the record and its token are there now.
        if n == 0 {
            assert_eq!(redis.int(&["HLEN", "{t1}:ev"]), 1);
            assert_eq!(redis.int(&["XLEN", "{t1}:q"]), 1);
        }
    }
    assert_eq!(redis.int(&["ZCARD", "{t1}:idx"]), 200);
    let b = Spool::open(&settings(&redis.url(), "t1", "b")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ok = || -> Box<Script> { Box::new(|_, _| DeliveryResult::Delivered) };
    let mut fa = Fake::new("a", &seen, ok());
    fa.pause = Duration::from_millis(3);
    let mut fb = Fake::new("b", &seen, ok());
    fb.pause = Duration::from_millis(3);
    a.start(Arc::new(fa));
    b.start(Arc::new(fb));
    wait_for("200 deliveries", Duration::from_secs(30), || {
        delivered(&seen).len() >= 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = delivered(&seen);
    assert_eq!(got.len(), 200, "each event delivered exactly once");
    let by_replica = |r: &str| got.iter().filter(|s| s.replica == r).count();
    assert!(
        by_replica("a") > 0 && by_replica("b") > 0,
        "both replicas consume from the group"
    );
    let got_ids: HashSet<_> = got.iter().map(|s| s.delivery_id.clone()).collect();
    assert_eq!(
        got_ids, ids,
        "every delivery carries its event's delivery id"
    );
    wait_for("nothing pending", Duration::from_secs(5), || {
        redis.int(&["ZCARD", "{t1}:idx"]) == 0
    })
    .await;
    assert_eq!(redis.int(&["XLEN", "{t1}:q"]), 0, "tokens are deleted");
    assert_eq!(redis.int(&["HLEN", "{t1}:ev"]), 0);
    a.shutdown().await;
    b.shutdown().await;
    assert!(matches!(
        a.append(event("cmd", 1, None)).await,
        Err(AppendError::Closed)
    ));
}

/// `calls` of `EVALSHA` and `EVAL` so far, from `INFO commandstats`.
fn script_runs(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_read_together_are_resolved_and_finished_with_one_script_run_each() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.url(), "tb", "a");
    s.workers = 64;
    let a = Spool::open(&s).unwrap();
    for n in 0..64 {
        a.append(event("cmd", n, None)).await.unwrap();
    }
    let before = script_runs(&redis);
    let seen = Arc::new(Mutex::new(Vec::new()));
    a.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(|_, _| DeliveryResult::Delivered),
    )));
    wait_for("64 deliveries", Duration::from_secs(20), || {
        delivered(&seen).len() >= 64
    })
    .await;
    wait_for("nothing pending", Duration::from_secs(5), || {
        redis.int(&["ZCARD", "{tb}:idx"]) == 0
    })
    .await;
    let runs = script_runs(&redis) - before;
    // One read takes all 64 tokens: one RESOLVE, then one FINISH per group of attempts that
    // ended together (the fake answers at once, so few groups). One script run per event each
    // way would be 128.
    assert!(
        runs <= 32,
        "{runs} script runs delivered 64 events read together"
    );
    assert_eq!(redis.int(&["XLEN", "{tb}:q"]), 0, "every token finished");
    assert_eq!(redis.int(&["HLEN", "{tb}:ev"]), 0);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_event_is_reclaimed_with_its_attempts_and_delivery_id() {
    let redis = RedisServer::start();
    let a = Spool::open(&settings(&redis.url(), "t2", "a")).unwrap();
    let r = a.append(event("cmd", 7, None)).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Replica a: attempt 1 fails, attempt 2 hangs (the replica "dies" during it).
    let mut fa = Fake::new(
        "a",
        &seen,
        Box::new(|_, _| DeliveryResult::Retry(fault("unavailable"))),
    );
    fa.hang_on = Some((7, 2));
    let task = a.start(Arc::new(fa));
    wait_for("the hanging attempt", Duration::from_secs(10), || {
        seen.lock().unwrap().iter().any(|s| s.result == "hang")
    })
    .await;
    // kill -9 of replica a, as far as Redis can tell: its loops (and heartbeat) stop.
    task.abort();
    let b = Spool::open(&settings(&redis.url(), "t2", "b")).unwrap();
    b.start(Arc::new(Fake::new(
        "b",
        &seen,
        Box::new(|_, _| DeliveryResult::Delivered),
    )));
    wait_for("the reclaimed delivery", Duration::from_secs(10), || {
        !delivered(&seen).is_empty()
    })
    .await;
    let got = delivered(&seen);
    assert_eq!(got[0].replica, "b");
    // a holds nothing now: the cleanup forgets it (a consumer with a token is never forgotten;
    // one forgotten while alive is made again by its next read, as b's next delivery shows).
    let cleaner = super::RedisSpool::open(&settings(&redis.url(), "t2", "cleaner"), false).unwrap();
    let forgotten = super::worker::forget_consumers(&cleaner.core, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(forgotten >= 1, "the stopped consumer a is forgotten");
    b.append(event("cmd", 8, None)).await.unwrap();
    wait_for(
        "b delivers after the cleanup",
        Duration::from_secs(10),
        || delivered(&seen).iter().any(|s| s.n == 8),
    )
    .await;
    assert_eq!(got[0].delivery_id, r.delivery_id, "delivery id unchanged");
    assert_eq!(
        got[0].attempt, 2,
        "the attempt count (1 failure recorded) is unchanged: the hanging attempt 2 is repeated"
    );
    wait_for("nothing pending", Duration::from_secs(5), || {
        redis.int(&["ZCARD", "{t2}:idx"]) == 0
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_in_the_due_set_then_dead_letters_replay_with_the_same_id() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.url(), "t3", "a");
    s.max_attempts = 3;
    s.backoff_initial = Duration::from_millis(100);
    s.backoff_max = Duration::from_millis(100);
    let spool = Spool::open(&s).unwrap();
    let failing = spool.append(event("flaky", 1, None)).await.unwrap();
    let permanent = spool.append(event("bad", 2, None)).await.unwrap();
    let deferred = spool.append(event("deferred", 3, None)).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let replaying = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = replaying.clone();
    let deferrals = std::sync::atomic::AtomicU32::new(0);
    spool.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(move |n, attempt| match n {
            _ if r2.load(std::sync::atomic::Ordering::SeqCst) => DeliveryResult::Delivered,
            1 if attempt == 2 => DeliveryResult::Retry(Fault::local(
                "timeout",
                format!("down on attempt {attempt}"),
            )),
            1 => DeliveryResult::Retry(Fault::status(
                "UNAVAILABLE",
                format!("down on attempt {attempt}"),
            )),
            2 => DeliveryResult::Permanent(Fault::status("INVALID_ARGUMENT", "no such group")),
            _ if deferrals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 => {
                DeliveryResult::Deferred(Duration::from_millis(50), fault("breaker open"))
            }
            _ => DeliveryResult::Delivered,
        }),
    )));
    wait_for("two dead letters", Duration::from_secs(15), || {
        redis.int(&["XLEN", "{t3}:dead"]) == 2
    })
    .await;
    let log = seen.lock().unwrap().clone();
    let flaky: Vec<_> = log.iter().filter(|s| s.n == 1).collect();
    assert_eq!(
        flaky.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "max_attempts 3"
    );
    assert_eq!(
        log.iter().filter(|s| s.n == 2).count(),
        1,
        "permanent: once"
    );
    // Deferred twice, then delivered, with attempt 1 each time: a deferral uses no attempt.
    wait_for(
        "the deferred one delivered",
        Duration::from_secs(10),
        || delivered(&seen).iter().any(|s| s.n == 3),
    )
    .await;
    let log = seen.lock().unwrap().clone();
    let def: Vec<_> = log.iter().filter(|s| s.n == 3).collect();
    assert_eq!(def.len(), 3, "{def:?}");
    assert!(def.iter().all(|s| s.attempt == 1), "{def:?}");
    assert_eq!(def.last().unwrap().result, "delivered");

    let sp = spool.clone();
    let dead = blocking(move || sp.list(Which::Dead, 10).unwrap()).await;
    assert_eq!(dead.len(), 2);
    let f = dead.iter().find(|e| e.event.command == "flaky").unwrap();
    assert_eq!(f.delivery_id, failing.delivery_id);
    assert_eq!(f.attempts, 3);
    assert!(
        f.last_error.as_deref().unwrap().contains("gave up after 3"),
        "{f:?}"
    );
    // Each attempt is in the dead letter's history, with its code and message.
    assert_eq!(
        f.history
            .iter()
            .map(|a| (a.number, a.code.as_str(), a.message.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "UNAVAILABLE", "down on attempt 1"),
            (2, "timeout", "down on attempt 2"),
            (3, "UNAVAILABLE", "down on attempt 3"),
        ],
        "{f:?}"
    );
    assert!(
        f.history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms) && f.history[0].at_ms > 0,
        "{f:?}"
    );
    let p = dead.iter().find(|e| e.event.command == "bad").unwrap();
    assert_eq!(p.delivery_id, permanent.delivery_id);
    assert!(p.last_error.as_deref().unwrap().contains("permanent"));
    assert_eq!(
        p.history
            .iter()
            .map(|a| (a.number, a.code.as_str(), a.message.as_str()))
            .collect::<Vec<_>>(),
        [(1, "INVALID_ARGUMENT", "no such group")],
        "{p:?}"
    );
    let _ = deferred;
    let sp = spool.clone();
    assert_eq!(
        blocking(move || sp.count(Which::Dead, Some("flaky")).unwrap()).await,
        1
    );

    // Replay the flaky one by its id: delivered with its original delivery id, attempts reset.
    replaying.store(true, std::sync::atomic::Ordering::SeqCst);
    let (flaky_id, bad_id) = (f.id, p.id);
    let by_id = move |id: u64| crate::spool::Select {
        id: Some(id),
        command: Some("flaky".into()),
        ..Default::default()
    };
    let sp = spool.clone();
    assert_eq!(
        blocking(move || sp.replay_selected(&by_id(bad_id)).unwrap()).await,
        0,
        "the id of another command's dead letter takes nothing"
    );
    let sp = spool.clone();
    assert_eq!(
        blocking(move || sp.replay_selected(&by_id(flaky_id)).unwrap()).await,
        1
    );
    wait_for("the replayed delivery", Duration::from_secs(10), || {
        delivered(&seen).iter().any(|s| s.n == 1)
    })
    .await;
    let again = delivered(&seen).into_iter().find(|s| s.n == 1).unwrap();
    assert_eq!(again.delivery_id, failing.delivery_id);
    assert_eq!(again.attempt, 1, "a replay resets the attempts");
    // Purge the other dead letter.
    let sp = spool.clone();
    assert_eq!(
        blocking(move || sp.purge(Which::Dead, None).unwrap()).await,
        1
    );
    assert_eq!(redis.int(&["XLEN", "{t3}:dead"]), 0);
    wait_for("bytes back to 0", Duration::from_secs(5), || {
        redis.command(&["GET", "{t3}:bytes"]).unwrap() == "0"
    })
    .await;
    spool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_events_keep_their_order_across_two_spools() {
    let redis = RedisServer::start();
    let a = Spool::open(&settings(&redis.url(), "t4", "a")).unwrap();
    let b = Spool::open(&settings(&redis.url(), "t4", "b")).unwrap();
    const KEYS: u32 = 8;
    const EVENTS: u32 = 240;
    for n in 0..EVENTS {
        let key = format!("group:{}", n % KEYS);
        let spool = if n % 2 == 0 { &a } else { &b };
        spool.append(event("cmd", n, Some(&key))).await.unwrap();
    }
    // Unordered ones beside them.
    for n in EVENTS..EVENTS + 40 {
        a.append(event("cmd", n, None)).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Every 5th event fails its first attempt: its key must wait for it.
    let script = || -> Box<Script> {
        Box::new(|n, attempt| {
            if n % 5 == 0 && attempt == 1 {
                DeliveryResult::Retry(fault("flaky"))
            } else {
                DeliveryResult::Delivered
            }
        })
    };
    let mut fa = Fake::new("a", &seen, script());
    fa.pause = Duration::from_millis(2);
    let mut fb = Fake::new("b", &seen, script());
    fb.pause = Duration::from_millis(2);
    // One set of busy keys for both replicas: an overlap across replicas is caught too.
    fb.busy_keys = fa.busy_keys.clone();
    fb.overlaps = fa.overlaps.clone();
    let overlaps = fa.overlaps.clone();
    a.start(Arc::new(fa));
    b.start(Arc::new(fb));
    wait_for("every event delivered", Duration::from_secs(60), || {
        delivered(&seen).len() >= (EVENTS + 40) as usize
    })
    .await;
    let got = delivered(&seen);
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for s in &got {
        if let Some(k) = &s.key {
            per_key.entry(k.clone()).or_default().push(s.n);
        }
    }
    assert_eq!(per_key.len(), KEYS as usize);
    for (k, ns) in &per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {k} delivered in append order");
    }
    assert!(
        overlaps.lock().unwrap().is_empty(),
        "two attempts of one key overlapped: {:?}",
        overlaps.lock().unwrap()
    );
    let replicas: HashSet<_> = got.iter().map(|s| s.replica).collect();
    assert_eq!(replicas.len(), 2, "both replicas delivered");
    wait_for("no key state left", Duration::from_secs(5), || {
        redis.int(&["HLEN", "{t4}:tok"]) == 0 && redis.int(&["ZCARD", "{t4}:idx"]) == 0
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_rejects_or_drops_the_oldest() {
    let redis = RedisServer::start();
    let mut s = settings(&redis.url(), "t5", "a");
    s.max_events = 3;
    let spool = Spool::open(&s).unwrap();
    for n in 0..3 {
        spool.append(event("cmd", n, Some("k"))).await.unwrap();
    }
    match spool.append(event("cmd", 3, None)).await {
        Err(AppendError::Full { pending: 3, .. }) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    drop(spool);
    s.when_full = FullPolicy::DropOldest;
    let spool = Spool::open(&s).unwrap();
    spool.append(event("cmd", 4, None)).await.unwrap();
    let sp = spool.clone();
    let left: Vec<u32> = blocking(move || sp.list(Which::Pending, 10).unwrap())
        .await
        .iter()
        .map(n_of)
        .collect();
    assert_eq!(left, vec![1, 2, 4], "the oldest (0) was dropped");
    // The key's token survives the drop of its head: 1 and 2 still arrive, in order.
    let seen = Arc::new(Mutex::new(Vec::new()));
    spool.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(|_, _| DeliveryResult::Delivered),
    )));
    wait_for("three deliveries", Duration::from_secs(10), || {
        delivered(&seen).len() >= 3
    })
    .await;
    let keyed: Vec<u32> = delivered(&seen)
        .iter()
        .filter(|s| s.key.is_some())
        .map(|s| s.n)
        .collect();
    assert_eq!(keyed, vec![1, 2]);
    spool.shutdown().await;

    // max_bytes: a budget of about two records.
    let mut s = settings(&redis.url(), "t5b", "a");
    s.max_bytes = 40;
    let spool = Spool::open(&s).unwrap();
    let mut stored = 0;
    for n in 0..10 {
        match spool.append(event("cmd", n, None)).await {
            Ok(_) => stored += 1,
            Err(AppendError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        (1..10).contains(&stored),
        "max_bytes stops appends: {stored}"
    );
}

/// Which place an append answered, or the error.
fn place(r: &Result<crate::spool::StoredEventRef, AppendError>) -> String {
    match r {
        Ok(s) => format!("{:?}", s.place),
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_each_policy_keeps_its_promise_and_the_buffer_moves_with_the_same_ids() {
    let mut redis = RedisServer::not_started();
    let mut s = settings(&redis.url(), "t6", "a");
    s.redis.timeout = Duration::from_millis(300);

    // local (the default): stored in the local buffer, acknowledged.
    let local = Spool::open(&s).unwrap();
    assert!(local.health().is_err(), "reported unhealthy");
    let first = local.append(event("cmd", 1, Some("k"))).await;
    assert_eq!(place(&first), "Buffer");
    // Known down: the next appends go straight to the buffer (no reconnect wait; the bench
    // measures it), in order behind the first.
    let second = local.append(event("cmd", 2, Some("k"))).await.unwrap();
    let unordered = local.append(event("cmd", 3, None)).await.unwrap();
    assert_eq!(
        local.stats().buffered,
        3,
        "the buffer depth is in the stats"
    );
    let sp = local.clone();
    assert!(blocking(move || sp.check()).await.is_err());

    // reject: not stored, and said so.
    let mut r = settings(&redis.url(), "t6", "r");
    r.redis.timeout = Duration::from_millis(300);
    r.redis.when_unreachable = Unreachable::Reject;
    let rejecting = Spool::open(&r).unwrap();
    let refused = rejecting.append(event("cmd", 9, None)).await;
    assert!(
        matches!(refused, Err(AppendError::Unavailable(_))),
        "reject: {}",
        place(&refused)
    );
    assert_eq!(rejecting.stats().buffered, 0, "reject stores nothing");

    // sync: delivered now with its delivery id when the upstream answers; buffered when not.
    let mut y = settings(&redis.url(), "t6", "y");
    y.redis.timeout = Duration::from_millis(300);
    y.redis.when_unreachable = Unreachable::Sync;
    let sync = Spool::open(&y).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    sync.start(Arc::new(Fake::new(
        "y",
        &seen,
        Box::new(|n, _| {
            if n == 21 {
                DeliveryResult::Retry(fault("unavailable"))
            } else {
                DeliveryResult::Delivered
            }
        }),
    )));
    let now = sync.append(event("cmd", 20, None)).await.unwrap();
    assert_eq!(format!("{:?}", now.place), "Delivered");
    let got = delivered(&seen);
    assert_eq!(
        (got[0].n, got[0].delivery_id.as_str()),
        (20, now.delivery_id.as_str())
    );
    assert!(
        !now.delivery_id.is_empty(),
        "a synchronous delivery has a delivery id"
    );
    let kept = sync.append(event("cmd", 21, None)).await;
    assert_eq!(
        place(&kept),
        "Buffer",
        "sync: a failed delivery is buffered"
    );
    assert_eq!(sync.stats().buffered, 1);
    sync.shutdown().await;

    // Redis comes up: the buffered events move into Redis with their ids, in order per key,
    // and are delivered from there.
    let seen = Arc::new(Mutex::new(Vec::new()));
    local.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(|_, _| DeliveryResult::Delivered),
    )));
    redis.restart();
    wait_for("healthy again", Duration::from_secs(15), || {
        local.health().is_ok()
    })
    .await;
    wait_for("three deliveries", Duration::from_secs(15), || {
        delivered(&seen).len() >= 3
    })
    .await;
    assert_eq!(local.stats().buffered, 0, "the buffer is empty");
    let got = delivered(&seen);
    let id_of = |n: u32| got.iter().find(|s| s.n == n).unwrap().delivery_id.clone();
    assert_eq!(id_of(1), first.unwrap().delivery_id);
    assert_eq!(id_of(2), second.delivery_id);
    assert_eq!(id_of(3), unordered.delivery_id);
    let keyed: Vec<u32> = got
        .iter()
        .filter(|s| s.key.is_some())
        .map(|s| s.n)
        .collect();
    assert_eq!(keyed, vec![1, 2], "in order per key");
    // Up again: appends go to Redis.
    let direct = local.append(event("cmd", 4, None)).await;
    assert_eq!(place(&direct), "Spool");
    local.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_while_the_upstream_is_down_every_acked_event_arrives_with_one_id() {
    let mut redis = RedisServer::start();
    let mut s = settings(&redis.url(), "t9", "a");
    s.redis.timeout = Duration::from_millis(300);
    s.redis.when_unreachable = Unreachable::Sync;
    s.backoff_initial = Duration::from_millis(20);
    s.backoff_max = Duration::from_millis(100);
    let spool = Spool::open(&s).unwrap();
    let upstream_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = upstream_up.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    spool.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(move |_, _| {
            if up.load(std::sync::atomic::Ordering::SeqCst) {
                DeliveryResult::Delivered
            } else {
                DeliveryResult::Retry(fault("unavailable: the upstream is down"))
            }
        }),
    )));
    let mut acked = HashMap::new();
    // The upstream is down; Redis takes the first events.
    for n in 0..20 {
        let r = spool
            .append(event("cmd", n, Some(&format!("k{}", n % 3))))
            .await
            .unwrap();
        acked.insert(n, r.delivery_id);
    }
    // Redis is killed during the upstream outage: the next events are acknowledged from the
    // local buffer (sync tried the upstream, which failed).
    redis.kill();
    for n in 20..60 {
        let r = spool
            .append(event("cmd", n, Some(&format!("k{}", n % 3))))
            .await;
        let r = r.unwrap_or_else(|e| panic!("event {n} acknowledged only once stored: {e}"));
        assert_ne!(format!("{:?}", r.place), "Delivered");
        acked.insert(n, r.delivery_id);
    }
    assert!(
        spool.stats().buffered > 0,
        "the outage's events are buffered"
    );
    // Both come back.
    redis.restart();
    upstream_up.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for(
        "every acknowledged event delivered",
        Duration::from_secs(60),
        || {
            let got: HashSet<u32> = delivered(&seen).iter().map(|s| s.n).collect();
            got.len() == acked.len()
        },
    )
    .await;
    // One delivery id per event across all its attempts, failed ones and the synchronous one
    // included.
    let mut ids: HashMap<u32, HashSet<String>> = HashMap::new();
    for a in seen.lock().unwrap().iter() {
        ids.entry(a.n).or_default().insert(a.delivery_id.clone());
    }
    for (n, id) in &acked {
        assert_eq!(ids[n], HashSet::from([id.clone()]), "event {n}");
    }
    wait_for("nothing pending", Duration::from_secs(10), || {
        redis.int(&["ZCARD", "{t9}:idx"]) == 0 && spool.stats().buffered == 0
    })
    .await;
    spool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_buffer_answers_by_the_full_policy_and_acks_nothing_unstored() {
    let redis = RedisServer::not_started();
    let mut s = settings(&redis.url(), "t10", "a");
    s.redis.timeout = Duration::from_millis(300);
    s.redis.buffer_max_events = 2;
    let spool = Spool::open(&s).unwrap();
    for n in 0..2 {
        let r = spool.append(event("cmd", n, None)).await;
        assert_eq!(place(&r), "Buffer");
    }
    match spool.append(event("cmd", 2, None)).await {
        Err(AppendError::Full { pending: 2, .. }) => {}
        other => panic!("when_full: reject: expected Full, got {}", place(&other)),
    }
    assert_eq!(
        spool.stats().buffered,
        2,
        "the refused event was not stored"
    );
    drop(spool);
    s.when_full = FullPolicy::DropOldest;
    let spool = Spool::open(&s).unwrap();
    let r = spool.append(event("cmd", 3, None)).await;
    assert_eq!(place(&r), "Buffer", "drop_oldest: stored");
    assert_eq!(spool.stats().buffered, 2, "the oldest was dropped for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_with_a_full_buffer_moves_it_once_redis_returns() {
    let mut redis = RedisServer::not_started();
    let mut s = settings(&redis.url(), "t11", "a");
    s.redis.timeout = Duration::from_millis(300);
    let spool = Spool::open(&s).unwrap();
    let mut acked = Vec::new();
    for n in 0..5 {
        acked.push(spool.append(event("cmd", n, Some("k"))).await.unwrap());
    }
    assert!(acked.iter().all(|r| format!("{:?}", r.place) == "Buffer"));
    spool.shutdown().await;
    drop(spool);
    // The replica restarts while Redis is still down: the buffer is found again.
    let spool = Spool::open(&s).unwrap();
    assert_eq!(spool.stats().buffered, 5);
    let seen = Arc::new(Mutex::new(Vec::new()));
    spool.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(|_, _| DeliveryResult::Delivered),
    )));
    redis.restart();
    wait_for("five deliveries", Duration::from_secs(20), || {
        delivered(&seen).len() >= 5
    })
    .await;
    let got = delivered(&seen);
    assert_eq!(
        got.iter().map(|s| s.n).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "in order"
    );
    for (g, a) in got.iter().zip(&acked) {
        assert_eq!(g.delivery_id, a.delivery_id, "ids unchanged");
    }
    wait_for("buffer empty", Duration::from_secs(5), || {
        spool.stats().buffered == 0
    })
    .await;
    spool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_replicas_waits_for_a_replica_and_fsync_needs_waitaof() {
    let primary = RedisServer::start();
    let mut s = settings(&primary.url(), "t7", "a");
    s.redis.durability = Durability::Replicas;
    s.redis.wait_timeout = Duration::from_millis(200);
    s.redis.timeout = Duration::from_secs(2);
    let spool = Spool::open(&s).unwrap();
    // Not acknowledged by a replica: not durable as configured, so the local buffer takes it.
    let first = spool.append(event("cmd", 1, None)).await;
    assert_eq!(place(&first), "Buffer");
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for("the replica is in sync", Duration::from_secs(20), || {
        replica
            .command(&["INFO", "replication"])
            .unwrap()
            .contains("master_link_status:up")
    })
    .await;
    // Generous waits for the replica's acknowledgement on a busy machine.
    s.redis.wait_timeout = Duration::from_secs(5);
    s.redis.timeout = Duration::from_secs(10);
    let spool = Spool::open(&own_buffer(s)).unwrap();
    let second = spool.append(event("cmd", 2, None)).await;
    assert_eq!(place(&second), "Spool");
    assert_eq!(replica.int(&["ZCARD", "{t7}:idx"]), 2, "the replica has it");

    let mut f = settings(&primary.url(), "t7f", "a");
    f.redis.durability = Durability::Fsync;
    f.redis.timeout = Duration::from_secs(2);
    if primary.version() < (7, 2) {
        let Err(err) = Spool::open(&f) else {
            panic!("fsync refused on Redis < 7.2")
        };
        assert!(err.to_string().contains("WAITAOF"), "{err}");
    } else {
        Spool::open(&f)
            .unwrap()
            .append(event("cmd", 1, None))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_list_count_purge_by_command_and_survive_a_redis_restart() {
    let mut redis = RedisServer::start();
    let spool = Spool::open(&settings(&redis.url(), "t8", "a")).unwrap();
    for n in 0..30 {
        let cmd = if n % 3 == 0 { "three" } else { "other" };
        let key = (n % 2 == 0).then_some("k");
        spool.append(event(cmd, n, key)).await.unwrap();
    }
    // kill -9 of Redis with everything pending: AOF (appendfsync always) keeps it all.
    redis.kill();
    redis.restart();
    let sp = spool.clone();
    let (list, three, all) = blocking(move || {
        (
            sp.list(Which::Pending, 100).unwrap(),
            sp.count(Which::Pending, Some("three")).unwrap(),
            sp.count(Which::Pending, None).unwrap(),
        )
    })
    .await;
    assert_eq!(
        list.iter().map(n_of).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>(),
        "oldest first, nothing lost"
    );
    assert_eq!((three, all), (10, 30));
    let sp = spool.clone();
    let chunk = blocking(move || {
        sp.purge_chunk(Which::Pending, Some("three"), None, 4)
            .unwrap()
    })
    .await;
    assert_eq!(chunk.count, 4);
    assert!(chunk.next_after.is_some());
    let sp = spool.clone();
    let rest = blocking(move || sp.purge(Which::Pending, Some("three")).unwrap()).await;
    assert_eq!(rest, 6);
    let seen = Arc::new(Mutex::new(Vec::new()));
    spool.start(Arc::new(Fake::new(
        "a",
        &seen,
        Box::new(|_, _| DeliveryResult::Delivered),
    )));
    wait_for("20 deliveries", Duration::from_secs(10), || {
        delivered(&seen).len() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = delivered(&seen);
    assert_eq!(got.len(), 20, "purged events are not delivered");
    assert!(got.iter().all(|s| s.n % 3 != 0));
    spool.shutdown().await;
}

#[test]
fn settings_are_validated_with_their_key() {
    let bad = |f: &dyn Fn(&mut SpoolConfig)| {
        let mut s = settings("redis://127.0.0.1:1", "p", "");
        f(&mut s);
        s.validate().unwrap_err().key
    };
    assert_eq!(bad(&|s| s.redis.url = "http://x".into()), "redis.url");
    assert_eq!(
        bad(&|s| s.redis.key_prefix = "a b".into()),
        "redis.key_prefix"
    );
    assert_eq!(bad(&|s| s.redis.group = String::new()), "redis.group");
    assert_eq!(
        bad(&|s| s.redis.claim_idle = Duration::from_millis(1)),
        "redis.claim_idle"
    );
    assert_eq!(
        bad(&|s| {
            s.redis.durability = Durability::Replicas;
            s.redis.replicas = 0;
        }),
        "redis.replicas"
    );
    assert_eq!(
        bad(&|s| {
            s.redis.durability = Durability::Fsync;
            s.redis.wait_timeout = Duration::from_secs(5);
        }),
        "redis.timeout"
    );
    let yaml: SpoolConfig = serde_json::from_str(
        r#"{"backend":"redis","redis":{"url":"rediss://r:6380","durability":"replicas","claim_idle":"2s","when_unreachable":"reject"}}"#,
    )
    .unwrap();
    assert_eq!(yaml.backend, BackendKind::Redis);
    assert_eq!(yaml.redis.claim_idle, Duration::from_secs(2));
    assert_eq!(yaml.redis.when_unreachable, Unreachable::Reject);
    assert!(serde_json::from_str::<SpoolConfig>(r#"{"redis":{"urll":"x"}}"#).is_err());
    // The gateway's config names the full key.
    let Err(err) =
        crate::config::Config::from_yaml("spool: {backend: redis, redis: {claim_idle: 1ms}}")
    else {
        panic!("a claim_idle of 1ms is refused")
    };
    let err = err.to_string();
    assert!(err.contains("spool.redis.claim_idle"), "{err}");
    // check-config prints the settings: never a password in the URL.
    let mut s = SpoolConfig::default();
    s.redis.url = "rediss://gw:s3cret@redis:6380/2".into();
    let shown = serde_json::to_string(&s).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("rediss://gw:<redacted>@redis:6380/2"),
        "{shown}"
    );
    assert_eq!(
        crate::config::redact_url("redis://:pw@h:1"),
        "redis://:<redacted>@h:1"
    );
    assert_eq!(crate::config::redact_url("redis://h:1"), "redis://h:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test redis CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = write("ca.pem", &ca_cert.pem());
    let cert = write("cert.pem", &cert.pem());
    let key = write("key.pem", &key.serialize_pem());
    let password = write("password", "s3cret\n");
    let redis = RedisServer::start_tls(&cert, &key, "s3cret");
    let url = format!("rediss://localhost:{}", redis.port);
    let mut s = settings(&url, "tls", "a");
    s.redis.ca_file = Some(ca);
    s.redis.password_file = Some(password);
    let spool = Spool::open(&s).unwrap();
    assert_eq!(spool.health(), Ok(()));
    let stored = spool.append(event("cmd", 1, None)).await.unwrap();
    let sp = spool.clone();
    let listed = blocking(move || sp.list(Which::Pending, 10).unwrap()).await;
    assert_eq!(listed[0].delivery_id, stored.delivery_id);
    // Without the private CA (the system's roots) the server is not trusted.
    let mut untrusted = own_buffer(s.clone());
    untrusted.redis.ca_file = None;
    untrusted.redis.timeout = Duration::from_millis(500);
    let spool = Spool::open(&untrusted).unwrap();
    assert!(spool.health().is_err());
    // Without the password Redis refuses.
    let mut anonymous = own_buffer(s.clone());
    anonymous.redis.password_file = None;
    let spool = Spool::open(&anonymous).unwrap();
    let err = spool.health().unwrap_err();
    assert!(err.to_lowercase().contains("auth"), "{err}");
}
