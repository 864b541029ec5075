//! Spool tests: a scripted fake [`Deliver`], temp directories, polling with deadlines.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, join_all};

use super::admin::EventView;
use super::record::now_ms;
use super::rules::backoff;
use super::*;
use crate::cli::CliError;
use crate::cli::spool::{SpoolCommand, run_to};

// ---------------------------------------------------------------------------------------------
// Helpers

fn settings(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        workers: 4,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..SpoolConfig::default()
    }
}

/// A fake deliverer's failure without a status: its text is `text` as it is.
fn fault(text: &str) -> Fault {
    Fault::local("test", text)
}

fn event(command: &str, n: u32) -> NewEvent {
    NewEvent {
        command: command.to_owned(),
        order_key: None,
        operation_id: format!("op-{n}"),
        openim_key: Some("k".to_owned()),
        payload: n.to_be_bytes().to_vec(),
        trace: None,
    }
}

fn keyed(key: &str, n: u32) -> NewEvent {
    NewEvent {
        order_key: Some(key.to_owned()),
        ..event("callbackAfterSendGroupMsgCommand", n)
    }
}

fn n_of(ev: &StoredEvent) -> u32 {
    u32::from_be_bytes(ev.event.payload[..4].try_into().unwrap())
}

#[derive(Debug, Clone)]
struct Call {
    id: u64,
    delivery_id: String,
    attempt: u32,
    n: u32,
    key: Option<String>,
}

type Script = dyn Fn(&StoredEvent, u32) -> BoxFuture<'static, DeliveryResult> + Send + Sync;

/// A deliverer that records every attempt and answers what the test's script says.
struct Fake {
    calls: Mutex<Vec<Call>>,
    script: Box<Script>,
    deadline: Duration,
}

impl Fake {
    fn new(f: impl Fn(&StoredEvent, u32) -> DeliveryResult + Send + Sync + 'static) -> Arc<Fake> {
        Fake::new_async(move |ev, attempt| {
            let o = f(ev, attempt);
            Box::pin(async move { o })
        })
    }

    fn new_async(
        f: impl Fn(&StoredEvent, u32) -> BoxFuture<'static, DeliveryResult> + Send + Sync + 'static,
    ) -> Arc<Fake> {
        Arc::new(Fake {
            calls: Mutex::new(Vec::new()),
            script: Box::new(f),
            deadline: Duration::from_secs(2),
        })
    }

    /// The same fake with a shorter per-attempt deadline.
    fn with_deadline(self: Arc<Fake>, deadline: Duration) -> Arc<Fake> {
        let mut fake = Arc::into_inner(self).expect("not shared yet");
        fake.deadline = deadline;
        Arc::new(fake)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Deliver for Fake {
    fn deadline(&self, _: &StoredEvent) -> Duration {
        self.deadline
    }

    fn deliver<'a>(&'a self, ev: &'a StoredEvent, attempt: u32) -> BoxFuture<'a, DeliveryResult> {
        self.calls.lock().unwrap().push(Call {
            id: ev.id,
            delivery_id: ev.delivery_id.clone(),
            attempt,
            n: n_of(ev),
            key: ev.event.order_key.clone(),
        });
        (self.script)(ev, attempt)
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The runtime a crash test reopens its spool on, after the child process died.
fn crash_recovery_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens the spool in `dir` again after a crash, delivers everything pending to a fake that
/// accepts all, and returns the spool with what was delivered (event id -> delivery id).
async fn reopen_and_deliver_all(dir: &Path) -> (Spool, HashMap<u64, String>) {
    let spool = Spool::open(&settings(dir)).unwrap();
    let fake = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &fake);
    wait_until("delivery after the crash", || spool.stats().pending == 0).await;
    let delivered = fake
        .calls()
        .into_iter()
        .map(|c| (c.id, c.delivery_id))
        .collect();
    (spool, delivered)
}

fn start(spool: &Spool, fake: &Arc<Fake>) {
    let d: Arc<dyn Deliver> = fake.clone();
    spool.start(d);
}

async fn close(spool: Spool) {
    spool.shutdown().await;
    drop(spool);
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_event_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let fake = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &fake);
    let r = spool
        .append(event("callbackAfterQuitGroupCommand", 7))
        .await
        .unwrap();
    wait_until("delivery", || spool.stats().pending == 0).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].delivery_id, r.delivery_id);
    assert_eq!((calls[0].attempt, calls[0].n, calls[0].id), (1, 7, r.id));
    let (instance, seq) = r.delivery_id.split_once('-').unwrap();
    assert_eq!((instance.len(), seq.len()), (32, 16), "{}", r.delivery_id);
    assert!(spool.list(Which::Pending, 10).unwrap().is_empty());
    assert_eq!(spool.stats().dead, 0);
    assert_eq!(spool.stats().bytes, 0);
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_success_keeps_the_delivery_id() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let fake = Fake::new(|_, attempt| {
        if attempt < 3 {
            DeliveryResult::Retry(fault("UNAVAILABLE: connection refused"))
        } else {
            DeliveryResult::Delivered
        }
    });
    start(&spool, &fake);
    let r = spool
        .append(event("callbackAfterQuitGroupCommand", 1))
        .await
        .unwrap();
    wait_until("delivery", || spool.stats().pending == 0).await;
    let calls = fake.calls();
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(calls.iter().all(|c| c.delivery_id == r.delivery_id));
    assert_eq!(spool.stats().dead, 0);
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_goes_dead_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let fake =
        Fake::new(|_, _| DeliveryResult::Permanent(fault("INVALID_ARGUMENT: no such group")));
    start(&spool, &fake);
    let r = spool
        .append(event("callbackAfterQuitGroupCommand", 1))
        .await
        .unwrap();
    wait_until("dead letter", || spool.stats().dead == 1).await;
    assert_eq!(spool.stats().pending, 0);
    assert_eq!(fake.calls().len(), 1);
    let dead = spool.list(Which::Dead, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, &dead[0].delivery_id, dead[0].attempts),
        (r.id, &r.delivery_id, 1)
    );
    let err = dead[0].last_error.as_deref().unwrap();
    assert!(
        err.contains("permanent") && err.contains("INVALID_ARGUMENT"),
        "{err}"
    );
    assert_eq!(dead[0].event.payload, 1u32.to_be_bytes());
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_go_dead() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        max_attempts: 3,
        ..settings(dir.path())
    })
    .unwrap();
    let fake = Fake::new(|_, _| DeliveryResult::Retry(fault("UNAVAILABLE: upstream down")));
    start(&spool, &fake);
    spool
        .append(event("callbackAfterQuitGroupCommand", 1))
        .await
        .unwrap();
    wait_until("dead letter", || spool.stats().dead == 1).await;
    assert_eq!(
        fake.calls().iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let dead = spool.list(Which::Dead, 10).unwrap();
    assert_eq!(dead[0].attempts, 3);
    let err = dead[0].last_error.as_deref().unwrap();
    assert!(
        err.contains("gave up after 3 attempts") && err.contains("upstream down"),
        "{err}"
    );
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_lists_each_attempt_with_its_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        max_attempts: 4,
        ..settings(dir.path())
    })
    .unwrap();
    // Attempts 1 and 3 get a status, 2 times out locally, 4 is refused for good.
    let fake = Fake::new(|_, attempt| match attempt {
        2 => DeliveryResult::Retry(Fault::local("timeout", "upstream did not answer within 1s")),
        4 => DeliveryResult::Permanent(Fault::status("INVALID_ARGUMENT", "no such group")),
        n => DeliveryResult::Retry(Fault::status("UNAVAILABLE", format!("down {n}"))),
    });
    start(&spool, &fake);
    let before = now_ms();
    spool
        .append(event("callbackAfterQuitGroupCommand", 1))
        .await
        .unwrap();
    wait_until("dead letter", || spool.stats().dead == 1).await;
    let dead = spool.list(Which::Dead, 10).unwrap();
    let h = &dead[0].history;
    assert_eq!(
        h.iter()
            .map(|a| (a.number, a.code.as_str(), a.message.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "UNAVAILABLE", "down 1"),
            (2, "timeout", "upstream did not answer within 1s"),
            (3, "UNAVAILABLE", "down 3"),
            (4, "INVALID_ARGUMENT", "no such group"),
        ]
    );
    assert!(h.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "{h:?}");
    assert!(h[0].at_ms >= before && h[3].at_ms <= now_ms(), "{h:?}");
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("permanent error on attempt 4: InvalidArgument: no such group")
    );
    // The admin API's view carries the history; a replay starts it afresh.
    let view = EventView::from(&dead[0]);
    assert_eq!(view.history, *h);
    let replayed = now_ms();
    assert_eq!(spool.replay_dead(None).unwrap(), 1);
    wait_until("dead again", || spool.stats().dead == 1).await;
    let again = spool.list(Which::Dead, 10).unwrap();
    assert_eq!(
        again[0]
            .history
            .iter()
            .map(|a| a.number)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{again:?}"
    );
    assert!(again[0].history.iter().all(|a| a.at_ms >= replayed));
    close(spool).await;
    // The history survives a restart.
    let spool = Spool::open(&settings(dir.path())).unwrap();
    assert_eq!(
        spool.list(Which::Dead, 10).unwrap()[0].history,
        again[0].history
    );
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_goes_dead() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        max_age: Duration::from_millis(1),
        ..settings(dir.path())
    })
    .unwrap();
    // A slow failing upstream: the event is older than max_age when the attempt fails.
    let fake = Fake::new_async(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            DeliveryResult::Retry(fault("DEADLINE_EXCEEDED"))
        })
    });
    start(&spool, &fake);
    spool
        .append(event("callbackAfterQuitGroupCommand", 1))
        .await
        .unwrap();
    wait_until("dead letter", || spool.stats().dead == 1).await;
    assert_eq!(fake.calls().len(), 1);
    let err = spool.list(Which::Dead, 1).unwrap()[0]
        .last_error
        .clone()
        .unwrap();
    assert!(err.contains("max_age 1ms"), "{err}");
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_panic_cost_one_attempt_each() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let fake = Fake::new_async(|ev, attempt| match (n_of(ev), attempt) {
        (1, 1) => Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            DeliveryResult::Delivered
        }),
        (1, 2) => panic!("deliverer bug (expected by the test)"),
        _ => Box::pin(async { DeliveryResult::Delivered }),
    })
    .with_deadline(Duration::from_millis(50));
    start(&spool, &fake);
    spool.append(keyed("g", 1)).await.unwrap();
    spool.append(keyed("g", 2)).await.unwrap();
    wait_until("delivery", || spool.stats().pending == 0).await;
    let calls = fake.calls();
    let attempts: Vec<_> = calls.iter().map(|c| (c.n, c.attempt)).collect();
    assert_eq!(attempts, [(1, 1), (1, 2), (1, 3), (2, 1)]);
    close(spool).await;
}

// ---------------------------------------------------------------------------------------------
// Operator actions

/// A service that answers every delivery with a permanent error (so events become dead letters)
/// until the returned flag is set, and then delivers them.
fn failing_until_healed() -> (Arc<Fake>, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let fake = Fake::new(move |_, _| {
        if h.load(Ordering::SeqCst) {
            DeliveryResult::Delivered
        } else {
            DeliveryResult::Permanent(fault("INVALID_ARGUMENT"))
        }
    });
    (fake, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_by_id_or_time_range_takes_only_those_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let (fake, healthy) = failing_until_healed();
    start(&spool, &fake);
    let a = spool.append(event("callbackAfterA", 1)).await.unwrap();
    let b = spool.append(event("callbackAfterA", 2)).await.unwrap();
    wait_until("two dead letters", || spool.stats().dead == 2).await;
    healthy.store(true, Ordering::SeqCst);
    let replay = |select: Select| {
        let s = spool.clone();
        async move {
            tokio::task::spawn_blocking(move || s.replay_selected(&select))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let missing = Select {
        id: Some(b.id + 100),
        ..Select::default()
    };
    assert_eq!(
        replay(missing).await,
        0,
        "an id that is not there takes nothing"
    );
    let future = Select {
        since_ms: Some(now_ms() + 60_000),
        ..Select::default()
    };
    assert_eq!(replay(future).await, 0, "nothing was stored in the future");
    let by_id = Select {
        id: Some(b.id),
        ..Select::default()
    };
    assert_eq!(replay(by_id).await, 1);
    wait_until("b delivered", || spool.stats().pending == 0).await;
    assert_eq!(spool.stats().dead, 1);
    assert_eq!(fake.calls().pop().unwrap().delivery_id, b.delivery_id);
    let past_minute = Select {
        since_ms: Some(now_ms() - 60_000),
        until_ms: Some(now_ms() + 1),
        ..Select::default()
    };
    assert_eq!(replay(past_minute).await, 1);
    wait_until("a delivered", || {
        let st = spool.stats();
        st.pending == 0 && st.dead == 0
    })
    .await;
    assert_eq!(fake.calls().pop().unwrap().delivery_id, a.delivery_id);
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let (fake, healthy) = failing_until_healed();
    start(&spool, &fake);
    let a = spool.append(event("callbackAfterA", 1)).await.unwrap();
    spool.append(event("callbackAfterB", 2)).await.unwrap();
    wait_until("two dead letters", || spool.stats().dead == 2).await;

    healthy.store(true, Ordering::SeqCst);
    let s = spool.clone();
    let n = tokio::task::spawn_blocking(move || s.replay_dead(Some("callbackAfterA")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    wait_until("replayed delivery", || {
        spool.stats().pending == 0 && fake.calls().len() == 3
    })
    .await;
    assert_eq!(spool.stats().dead, 1);
    let last = fake.calls().pop().unwrap();
    assert_eq!((last.delivery_id, last.attempt), (a.delivery_id, 1));

    let s = spool.clone();
    let n = tokio::task::spawn_blocking(move || s.replay_dead(None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    wait_until("everything delivered", || {
        let st = spool.stats();
        st.pending == 0 && st.dead == 0
    })
    .await;
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_by_table_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    for n in 0..5 {
        let cmd = if n < 3 {
            "callbackAfterA"
        } else {
            "callbackAfterB"
        };
        spool.append(event(cmd, n)).await.unwrap();
    }
    assert_eq!(
        spool.count(Which::Pending, Some("callbackAfterA")).unwrap(),
        3
    );
    assert_eq!(
        spool.purge(Which::Pending, Some("callbackAfterA")).unwrap(),
        3
    );
    let left: Vec<u32> = spool
        .list(Which::Pending, 10)
        .unwrap()
        .iter()
        .map(n_of)
        .collect();
    assert_eq!(left, [3, 4]);
    assert_eq!(spool.purge(Which::Dead, None).unwrap(), 0);

    let fake = Fake::new(|_, _| DeliveryResult::Permanent(fault("INVALID_ARGUMENT")));
    start(&spool, &fake);
    wait_until("dead letters", || spool.stats().dead == 2).await;
    assert_eq!(spool.purge(Which::Dead, Some("callbackAfterB")).unwrap(), 2);
    let st = spool.stats();
    assert_eq!((st.pending, st.dead, st.bytes), (0, 0, 0));
    close(spool).await;
}

// ---------------------------------------------------------------------------------------------
// Restart safety

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_spool_delivers_pending_events_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let spool = Spool::open(&s).unwrap();
    let mut refs = Vec::new();
    for n in 0..20 {
        let ev = if n % 2 == 0 {
            keyed("g", n)
        } else {
            event("callbackAfterX", n)
        };
        refs.push(spool.append(ev).await.unwrap());
    }
    // No shutdown: dropping is all a crash leaves behind (kill -9 itself is tested below).
    drop(spool);

    let spool = Spool::open(&s).unwrap();
    assert_eq!(spool.stats().pending, 20);
    let fake = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &fake);
    wait_until("all delivered", || spool.stats().pending == 0).await;
    let mut got: Vec<(u64, String)> = fake
        .calls()
        .into_iter()
        .map(|c| (c.id, c.delivery_id))
        .collect();
    got.sort();
    let want: Vec<(u64, String)> = refs.iter().map(|r| (r.id, r.delivery_id.clone())).collect();
    assert_eq!(got, want);
    let keyed_order: Vec<u32> = fake
        .calls()
        .iter()
        .filter(|c| c.key.is_some())
        .map(|c| c.n)
        .collect();
    assert_eq!(keyed_order, (0..20).step_by(2).collect::<Vec<_>>());
    close(spool).await;

    // Ids are never reused, even once the spool is empty.
    let spool = Spool::open(&s).unwrap();
    let r = spool.append(event("callbackAfterX", 99)).await.unwrap();
    assert_eq!(r.id, refs.last().unwrap().id + 1);
    assert_eq!(
        r.delivery_id.split_once('-').unwrap().0,
        refs[0].delivery_id.split_once('-').unwrap().0
    );
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_is_stored_with_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let spool = Spool::open(&s).unwrap();
    let trace = crate::telemetry::TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: "congo=t61rcWkgMzE".into(),
    };
    let only_parent = crate::telemetry::TraceContext {
        tracestate: String::new(),
        ..trace.clone()
    };
    for t in [Some(trace.clone()), Some(only_parent.clone()), None] {
        spool
            .append(NewEvent {
                trace: t,
                ..event("callbackAfterX", 1)
            })
            .await
            .unwrap();
    }
    drop(spool);
    let spool = Spool::open(&s).unwrap();
    let stored: Vec<_> = spool
        .list(Which::Pending, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.event.trace)
        .collect();
    assert_eq!(stored, vec![Some(trace), Some(only_parent), None]);
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_continue_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let spool = Spool::open(&s).unwrap();
    let failing = Fake::new(|_, _| DeliveryResult::Retry(fault("UNAVAILABLE")));
    start(&spool, &failing);
    let r = spool.append(event("callbackAfterX", 1)).await.unwrap();
    wait_until("two attempts", || failing.calls().len() >= 2).await;
    close(spool).await;
    let made = u32::try_from(failing.calls().len()).unwrap();

    let spool = Spool::open(&s).unwrap();
    let stored = spool.list(Which::Pending, 1).unwrap();
    assert_eq!(stored[0].attempts, made);
    assert!(
        stored[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("UNAVAILABLE")
    );
    let ok = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &ok);
    wait_until("delivery", || spool.stats().pending == 0).await;
    let calls = ok.calls();
    assert_eq!(
        (calls[0].attempt, &calls[0].delivery_id),
        (made + 1, &r.delivery_id)
    );
    close(spool).await;
}

const CHILD_ENV: &str = "SPOOL_TEST_CRASH_CHILD_DIR";

/// The test name of `f` in this module, as the test harness filters it.
fn test_name(f: &str) -> String {
    let m = module_path!();
    let m = m.split_once("::").map_or(m, |(_, rest)| rest);
    format!("{m}::{f}")
}

/// Not a test on its own: the child process of `kill_9_loses_no_acknowledged_event`, which
/// appends until it is killed and prints every acknowledged event.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let spool = Spool::open(&settings(Path::new(&dir))).unwrap();
        // Bounded: the parent kills this process long before.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while Instant::now() < deadline {
            let batch = (n..n + 16).map(|i| {
                let ev = if i % 3 == 0 {
                    keyed("g", i)
                } else {
                    event("callbackAfterCrash", i)
                };
                spool.append(ev)
            });
            for r in join_all(batch).await {
                let r = r.unwrap();
                println!("ACK {} {}", r.id, r.delivery_id);
            }
            n += 16;
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &test_name("crash_child"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: HashMap<u64, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = |line: String, acked: &mut HashMap<u64, String>| {
        if let Some((id, did)) = line.strip_prefix("ACK ").and_then(|r| r.split_once(' ')) {
            acked.insert(id.parse().unwrap(), did.to_owned());
        }
    };
    while acked.len() < 500 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => record(line, &mut acked),
            Err(e) => panic!(
                "child stopped after {} acknowledged events: {e}",
                acked.len()
            ),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acknowledgements already in the pipe count too; the reader ends at EOF.
    reader.join().unwrap();
    while let Ok(line) = rx.try_recv() {
        record(line, &mut acked);
    }

    crash_recovery_runtime().block_on(async {
        let (spool, delivered) = reopen_and_deliver_all(dir.path()).await;
        let missing: Vec<_> = acked
            .keys()
            .filter(|id| !delivered.contains_key(id))
            .collect();
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
        for (id, did) in &acked {
            assert_eq!(&delivered[id], did, "delivery id of {id} changed");
        }
        // Ids are reserved ahead in blocks: after the crash they continue above every id given
        // out, acknowledged or not.
        let next = spool.append(event("callbackAfterCrash", 0)).await.unwrap();
        let highest = delivered.keys().chain(acked.keys()).max().copied().unwrap();
        assert!(
            next.id > highest,
            "id {} reused (highest {highest})",
            next.id
        );
        close(spool).await;
    });
}

const DELIVERY_CHILD_ENV: &str = "SPOOL_TEST_DELIVERY_CRASH_DIR";

/// The delivery whose process dies before the spool records it, in
/// `a_crash_between_a_delivery_and_its_delete_delivers_the_event_again`.
const CRASH_AT: u32 = 10;

/// Not a test on its own: the child process of
/// `a_crash_between_a_delivery_and_its_delete_delivers_the_event_again`. It stores 64 events,
/// then delivers them and aborts inside the delivery of event [`CRASH_AT`], after the upstream
/// has it and before the spool hears of it.
#[test]
fn delivery_crash_child() {
    let Some(dir) = std::env::var_os(DELIVERY_CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let spool = Spool::open(&settings(Path::new(&dir))).unwrap();
        for r in join_all((0..64).map(|n| spool.append(event("callbackAfterCrash", n)))).await {
            let r = r.unwrap();
            println!("ACK {} {}", r.id, r.delivery_id);
        }
        let fake = Fake::new(|ev, _| {
            println!("DELIVERED {}", ev.id);
            if n_of(ev) == CRASH_AT {
                println!("CRASH {}", ev.id);
                std::process::abort();
            }
            DeliveryResult::Delivered
        });
        start(&spool, &fake);
        // Bounded: the abort ends this process long before.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn a_crash_between_a_delivery_and_its_delete_delivers_the_event_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &test_name("delivery_crash_child"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DELIVERY_CHILD_ENV, dir.path())
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child aborts");
    let text = String::from_utf8(out.stdout).unwrap();
    // What follows `tag` on each line that has it (the harness's own words may precede it).
    let tagged = |tag: &'static str| {
        text.lines()
            .filter_map(move |l| l.find(tag).map(|i| &l[i + tag.len()..]))
    };
    let acked: HashMap<u64, String> = tagged("ACK ")
        .filter_map(|rest| rest.split_once(' '))
        .map(|(id, did)| (id.parse().unwrap(), did.to_owned()))
        .collect();
    assert_eq!(acked.len(), 64);
    let crashed: u64 = tagged("CRASH ")
        .next()
        .expect("the child died in the delivery")
        .parse()
        .unwrap();
    let before: HashSet<u64> = tagged("DELIVERED ")
        .filter_map(|id| id.parse().ok())
        .collect();

    crash_recovery_runtime().block_on(async {
        let (spool, after) = reopen_and_deliver_all(dir.path()).await;
        assert!(
            after.contains_key(&crashed),
            "the event delivered when the process died is delivered again"
        );
        assert_eq!(after[&crashed], acked[&crashed], "with its delivery id");
        // The others: delivered before the crash (their deletes durable or not: a lost one is
        // delivered again) or after it, each with its own id.
        for (id, did) in &after {
            assert_eq!(Some(did), acked.get(id), "delivery id of {id}");
        }
        let lost: Vec<_> = acked
            .keys()
            .filter(|id| !before.contains(id) && !after.contains_key(id))
            .collect();
        assert!(lost.is_empty(), "acknowledged, never delivered: {lost:?}");
        close(spool).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Limits and group commit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_rejects_under_reject() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        max_events: 3,
        ..settings(dir.path())
    })
    .unwrap();
    for n in 0..3 {
        spool.append(event("callbackAfterX", n)).await.unwrap();
    }
    match spool.append(event("callbackAfterX", 3)).await {
        Err(e @ AppendError::Full { pending: 3, .. }) => {
            assert!(e.to_string().contains("full"), "{e}");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(spool.stats().pending, 3);
    close(spool).await;

    // The disk budget.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        max_bytes: 1_000,
        ..settings(dir.path())
    })
    .unwrap();
    let big = |n| NewEvent {
        payload: vec![7; 300],
        ..event("callbackAfterX", n)
    };
    let mut stored = 0;
    for n in 0..10 {
        match spool.append(big(n)).await {
            Ok(_) => stored += 1,
            Err(AppendError::Full { bytes, .. }) => {
                assert!(bytes >= 1_000);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        (2..=4).contains(&stored),
        "{stored} events of 300 bytes in a 1000-byte budget"
    );
    close(spool).await;
}

/// A spool of at most `max_events` that drops the oldest when full.
fn dropping_oldest(dir: &std::path::Path, max_events: u64) -> Spool {
    Spool::open(&SpoolConfig {
        max_events,
        when_full: FullPolicy::DropOldest,
        ..settings(dir)
    })
    .unwrap()
}

/// The ids of the pending events, oldest first.
fn pending_ids(spool: &Spool) -> Vec<u64> {
    spool
        .list(Which::Pending, 10)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_drops_oldest_under_drop_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dropping_oldest(dir.path(), 3);
    let mut refs = Vec::new();
    for n in 0..5 {
        refs.push(spool.append(event("callbackAfterX", n)).await.unwrap());
    }
    let left = pending_ids(&spool);
    assert_eq!(left, refs[2..].iter().map(|r| r.id).collect::<Vec<_>>());
    assert_eq!(spool.stats().pending, 3);

    // The dropped events are not delivered; the others are.
    let fake = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &fake);
    wait_until("delivery", || spool.stats().pending == 0).await;
    let mut ns: Vec<u32> = fake.calls().iter().map(|c| c.n).collect();
    ns.sort_unstable();
    assert_eq!(ns, [2, 3, 4]);
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dropped_in_the_batch_that_stored_them_are_not_delivered() {
    // Concurrent appends share transactions, so an event can be dropped by the very commit
    // that stored it: the record the writer hands to its first attempt must not be delivered.
    let dir = tempfile::tempdir().unwrap();
    let spool = dropping_oldest(dir.path(), 2);
    let results = join_all((0..40).map(|n| spool.append(event("callbackAfterX", n)))).await;
    assert!(results.iter().all(Result::is_ok));
    let left = pending_ids(&spool);
    assert_eq!(left.len(), 2);
    let fake = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &fake);
    wait_until("delivery", || spool.stats().pending == 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut delivered: Vec<u64> = fake.calls().iter().map(|c| c.id).collect();
    delivered.sort_unstable();
    assert_eq!(
        delivered, left,
        "only the events still pending are delivered"
    );
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    let before = spool.stats().commits;
    let results = join_all((0..1000).map(|n| spool.append(event("callbackAfterX", n)))).await;
    assert!(results.iter().all(Result::is_ok));
    let commits = spool.stats().commits - before;
    assert_eq!(spool.stats().pending, 1000);
    assert!(commits <= 20, "{commits} commits for 1000 appends");
    close(spool).await;
}

// ---------------------------------------------------------------------------------------------
// Ordering

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_is_sequential_in_append_order_even_with_retries() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        workers: 8,
        ..settings(dir.path())
    })
    .unwrap();
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
    let (a, o) = (active.clone(), overlaps.clone());
    let fake = Fake::new_async(move |ev, attempt| {
        let key = ev.event.order_key.clone().unwrap_or_default();
        let n = n_of(ev);
        let (a, o) = (a.clone(), o.clone());
        Box::pin(async move {
            if !a.lock().unwrap().insert(key.clone()) {
                o.lock()
                    .unwrap()
                    .push(format!("{key}: event {n} started while another ran"));
            }
            // Give a concurrent attempt of the same key every chance to show up.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            a.lock().unwrap().remove(&key);
            if n == 1 && attempt < 3 {
                DeliveryResult::Retry(fault("UNAVAILABLE"))
            } else {
                DeliveryResult::Delivered
            }
        })
    });
    start(&spool, &fake);
    for n in 0..5 {
        spool.append(keyed("g1", n)).await.unwrap();
        spool.append(keyed("g2", n + 10)).await.unwrap();
    }
    wait_until("delivery", || spool.stats().pending == 0).await;
    assert!(
        overlaps.lock().unwrap().is_empty(),
        "{:?}",
        overlaps.lock().unwrap()
    );
    let seq = |k: &str| -> Vec<(u32, u32)> {
        fake.calls()
            .iter()
            .filter(|c| c.key.as_deref() == Some(k))
            .map(|c| (c.n, c.attempt))
            .collect()
    };
    assert_eq!(
        seq("g1"),
        [(0, 1), (1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (4, 1)]
    );
    assert_eq!(seq("g2"), [(10, 1), (11, 1), (12, 1), (13, 1), (14, 1)]);
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_and_unordered_events_run_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        workers: 3,
        ..settings(dir.path())
    })
    .unwrap();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    // Each attempt waits (bounded) until three run at once: only possible if they are parallel.
    let fake = Fake::new_async(move |_, _| {
        let (r, p) = (r.clone(), p.clone());
        Box::pin(async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            r.fetch_sub(1, Ordering::SeqCst);
            DeliveryResult::Delivered
        })
    });
    start(&spool, &fake);
    spool.append(keyed("a", 1)).await.unwrap();
    spool.append(keyed("b", 2)).await.unwrap();
    spool.append(event("callbackAfterX", 3)).await.unwrap();
    for n in 4..12 {
        spool.append(event("callbackAfterX", n)).await.unwrap();
    }
    wait_until("delivery", || spool.stats().pending == 0).await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "never more than `workers`, and that many"
    );
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_in_batches_and_one_failure_costs_only_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&SpoolConfig {
        workers: 8,
        ..settings(dir.path())
    })
    .unwrap();
    // A backlog first: the dispatcher finds every event ready at once.
    for n in 0..40 {
        spool.append(event("callbackAfterX", n)).await.unwrap();
    }
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let fake = Fake::new_async(move |ev, attempt| {
        match (n_of(ev), attempt) {
            (5, 1) => panic!("deliverer bug (expected by the test)"),
            (7, 1) => return Box::pin(async { DeliveryResult::Retry(fault("UNAVAILABLE")) }),
            (9, 1) => return Box::pin(async { DeliveryResult::Permanent(fault("INVALID")) }),
            _ => {}
        }
        let (r, p) = (r.clone(), p.clone());
        Box::pin(async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            // Bounded: a batch's attempts run at once, so the others arrive meanwhile.
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.load(Ordering::SeqCst) < 8 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            r.fetch_sub(1, Ordering::SeqCst);
            DeliveryResult::Delivered
        })
    });
    start(&spool, &fake);
    wait_until("delivery", || {
        spool.stats().pending == 0 && spool.stats().in_flight == 0
    })
    .await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        8,
        "`workers` at once, never more"
    );
    let mut attempts: HashMap<u32, Vec<u32>> = HashMap::new();
    for c in fake.calls() {
        attempts.entry(c.n).or_default().push(c.attempt);
    }
    assert_eq!(attempts.len(), 40, "every event attempted");
    for (n, made) in &attempts {
        let expected: &[u32] = match n {
            5 | 7 => &[1, 2],
            _ => &[1],
        };
        assert_eq!(made, expected, "attempts of event {n}");
    }
    assert_eq!(spool.stats().dead, 1, "the permanent failure");
    assert_eq!(spool.list(Which::Dead, 10).unwrap()[0].attempts, 1);
    close(spool).await;
}

// ---------------------------------------------------------------------------------------------
// Bad files and records

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let garbage = b"this is not a spool\n".repeat(100);
    std::fs::write(s.path(), &garbage).unwrap();
    let err = Spool::open(&s).err().unwrap();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&s.path().display().to_string()), "{msg}");
    assert!(
        msg.contains("Move it aside") && msg.contains("nothing was deleted"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(s.path()).unwrap(),
        garbage,
        "the file was changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_spool_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let spool = Spool::open(&s).unwrap();
    let evs = (0..400).map(|n| NewEvent {
        payload: vec![u8::try_from(n % 251).unwrap(); 700],
        ..event("callbackAfterX", n)
    });
    for r in join_all(evs.map(|e| spool.append(e))).await {
        r.unwrap();
    }
    close(spool).await;
    let mut bytes = std::fs::read(s.path()).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 4..len * 3 / 4] {
        *b ^= 0x5a;
    }
    std::fs::write(s.path(), &bytes).unwrap();
    let err = Spool::open(&s).err().unwrap();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_redb_file_already_open_and_bad_dir_are_clear_errors() {
    // A redb database that is not a spool.
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    {
        let db = ::redb::Database::create(s.path()).unwrap();
        let txn = db.begin_write().unwrap();
        let t: ::redb::TableDefinition<&str, u64> = ::redb::TableDefinition::new("users");
        txn.open_table(t).unwrap().insert("x", &1).unwrap();
        txn.commit().unwrap();
    }
    let err = Spool::open(&s).err().unwrap();
    assert!(err.to_string().contains("not a gateway spool"), "{err}");

    // Already open.
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let spool = Spool::open(&s).unwrap();
    let err = Spool::open(&s).err().unwrap();
    assert!(matches!(err, SpoolError::AlreadyOpen { .. }), "{err:?}");
    assert!(err.to_string().contains("--admin"), "{err}");
    close(spool).await;

    // A directory that cannot be created (a file is in the way).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = Spool::open(&settings(&blocker.join("spool")))
        .err()
        .unwrap();
    assert!(matches!(err, SpoolError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("spool.dir"), "{err}");

    // A spool "file" that cannot be opened (here: a directory).
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir(s.path()).unwrap();
    let err = Spool::open(&s).err().unwrap();
    assert!(matches!(err, SpoolError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("read and write access"), "{err}");

    // Bad settings.
    let err = Spool::open(&SpoolConfig {
        workers: 0,
        ..settings(dir.path())
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("workers"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_record_goes_to_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    close(Spool::open(&s).unwrap()).await;
    {
        let db = ::redb::Database::create(s.path()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(super::redb::store::PENDING)
            .unwrap()
            .insert(7, &[0xff; 16][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let spool = Spool::open(&s).unwrap();
    assert_eq!(spool.stats().pending, 1);
    let fake = Fake::new(|_, _| DeliveryResult::Delivered);
    start(&spool, &fake);
    wait_until("quarantine", || spool.stats().dead == 1).await;
    assert!(fake.calls().is_empty());
    let dead = spool.list(Which::Dead, 10).unwrap();
    assert_eq!(
        (dead[0].id, dead[0].event.command.as_str()),
        (7, "<undecodable>")
    );
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("does not decode")
    );
    // New ids stay above the record's.
    assert_eq!(
        spool.append(event("callbackAfterX", 1)).await.unwrap().id,
        8
    );
    close(spool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&settings(dir.path())).unwrap();
    spool.append(event("callbackAfterX", 1)).await.unwrap();
    spool.shutdown().await;
    assert!(matches!(
        spool.append(event("callbackAfterX", 2)).await,
        Err(AppendError::Closed)
    ));
    assert_eq!(spool.list(Which::Pending, 10).unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Settings

#[test]
fn settings_parse_durations_and_refuse_unknown_fields() {
    let s: SpoolConfig = serde_json::from_str(
        r#"{"dir":"/var/spool","max_age":"2h","backoff_initial":"250ms","backoff_max":"90s",
            "when_full":"drop_oldest","workers":2}"#,
    )
    .unwrap();
    assert_eq!(s.max_age, Duration::from_secs(7200));
    assert_eq!(s.backoff_initial, Duration::from_millis(250));
    assert_eq!(s.backoff_max, Duration::from_secs(90));
    assert_eq!(s.when_full, FullPolicy::DropOldest);
    assert_eq!((s.workers, s.batch_max, s.max_attempts), (2, 512, 20));

    let err = serde_json::from_str::<SpoolConfig>(r#"{"max_agee":"1h"}"#).unwrap_err();
    assert!(err.to_string().contains("max_agee"), "{err}");
    let err = serde_json::from_str::<SpoolConfig>(r#"{"max_age":"5x"}"#).unwrap_err();
    assert!(err.to_string().contains("5x"), "{err}");

    let d = SpoolConfig::default();
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["max_age"], "1day");
    assert_eq!(json["when_full"], "reject");
    assert_eq!(serde_json::from_value::<SpoolConfig>(json).unwrap(), d);
    assert_eq!(d.dir, PathBuf::from("data/spool"));
    assert_eq!(
        (d.max_events, d.max_bytes, d.workers),
        (1_000_000, 1 << 30, 64)
    );
    assert_eq!(d.max_age, Duration::from_secs(86_400));
    assert!(d.validate().is_ok());
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let (initial, max) = (Duration::from_millis(200), Duration::from_secs(60));
    for attempt in 1..=30 {
        let cap = (initial * 2u32.pow((attempt - 1).min(20))).min(max);
        for _ in 0..50 {
            assert!(backoff(initial, max, attempt) <= cap);
        }
    }
    // Full jitter: not always the cap.
    assert!((0..50).any(|_| backoff(initial, max, 5) < initial * 16));
}

// ---------------------------------------------------------------------------------------------
// Operator commands

async fn cli(cmd: SpoolCommand, s: &SpoolConfig, admin: Option<&str>) -> Result<String, CliError> {
    let mut out = Vec::new();
    run_to(cmd, s, admin, None, &mut out, 1).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn list(dead: bool, limit: usize, json: bool) -> SpoolCommand {
    SpoolCommand::List { dead, limit, json }
}

fn purge(dead: bool, pending: bool, yes: bool) -> SpoolCommand {
    SpoolCommand::Purge {
        dead,
        pending,
        command: None,
        yes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_on_the_spool_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let err = cli(SpoolCommand::Count, &s, None).await.unwrap_err();
    assert!(
        matches!(err, CliError::Spool(SpoolError::NotFound { .. })),
        "{err:?}"
    );

    // 5 dead letters (3 of A, 2 of B), then 2 pending events.
    let spool = Spool::open(&s).unwrap();
    let fake = Fake::new(|_, _| DeliveryResult::Permanent(fault("INVALID_ARGUMENT: bad")));
    start(&spool, &fake);
    for n in 0..5 {
        let cmd = if n < 3 {
            "callbackAfterA"
        } else {
            "callbackAfterB"
        };
        spool.append(event(cmd, n)).await.unwrap();
    }
    wait_until("dead letters", || spool.stats().dead == 5).await;
    close(spool).await;
    let spool = Spool::open(&s).unwrap();
    spool.append(event("callbackAfterC", 5)).await.unwrap();
    spool.append(keyed("g", 6)).await.unwrap();
    close(spool).await;

    let out = cli(SpoolCommand::Count, &s, None).await.unwrap();
    assert!(out.starts_with("pending: 2\ndead: 5\nbytes: "), "{out}");

    let out = cli(list(true, 20, false), &s, None).await.unwrap();
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("callbackAfter") && l.contains("last_error=")),
        "{out}"
    );
    assert!(
        out.contains("attempts=1") && out.contains("INVALID_ARGUMENT"),
        "{out}"
    );
    // Each line ends with the attempt history: `#1 <time> <code> "<message>"`.
    assert!(
        out.lines()
            .all(|l| l.contains("Z test \"INVALID_ARGUMENT: bad\"") && l.contains("  #1 20")),
        "{out}"
    );

    let out = cli(list(false, 1, false), &s, None).await.unwrap();
    assert!(
        out.contains("callbackAfterC") && out.contains("(the first 1 of 2; see --limit)"),
        "{out}"
    );

    let out = cli(list(false, 20, true), &s, None).await.unwrap();
    let views: Vec<EventView> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(views.len(), 2);
    assert_eq!(views[1].order_key.as_deref(), Some("g"));
    assert_eq!(views[1].payload_hex, "00000006");

    let replay = SpoolCommand::Replay {
        command: Some("callbackAfterA".into()),
        id: None,
        since: None,
        until: None,
    };
    let out = cli(replay, &s, None).await.unwrap();
    assert!(out.contains("replayed 1 dead letters so far…"), "{out}");
    assert!(
        out.contains("replayed 3 dead letters of callbackAfterA to pending"),
        "{out}"
    );
    let out = cli(SpoolCommand::Count, &s, None).await.unwrap();
    assert!(out.starts_with("pending: 5\ndead: 2\n"), "{out}");

    let out = cli(purge(true, false, false), &s, None).await.unwrap();
    assert!(
        out.contains("would purge 2 dead events") && out.contains("nothing was deleted"),
        "{out}"
    );
    let out = cli(purge(true, true, true), &s, None).await.unwrap();
    assert!(out.contains("purged 2 pending events so far…"), "{out}");
    assert!(
        out.contains("purged 5 pending events\n") && out.contains("purged 2 dead events\n"),
        "{out}"
    );
    let out = cli(SpoolCommand::Count, &s, None).await.unwrap();
    assert!(out.starts_with("pending: 0\ndead: 0\nbytes: 0\n"), "{out}");
    let out = cli(list(true, 20, false), &s, None).await.unwrap();
    assert_eq!(out, "no dead events\n");

    let err = cli(purge(false, false, true), &s, None).await.unwrap_err();
    assert!(err.to_string().contains("--dead, --pending"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_through_the_admin_api_of_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let spool = Spool::open(&s).unwrap();
    let (fake, healthy) = failing_until_healed();
    start(&spool, &fake);
    for n in 0..3 {
        spool.append(event("callbackAfterA", n)).await.unwrap();
    }
    wait_until("dead letters", || spool.stats().dead == 3).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, admin::router(spool.clone())).into_future());
    let admin = Some(url.as_str());

    // The file is locked by the running spool: the error says to use --admin.
    let err = cli(SpoolCommand::Count, &s, None).await.unwrap_err();
    assert!(err.to_string().contains("--admin"), "{err}");

    let out = cli(SpoolCommand::Count, &s, admin).await.unwrap();
    assert!(
        out.starts_with("pending: 0\ndead: 3\nbytes: ") && out.contains("in_flight: 0"),
        "{out}"
    );
    let out = cli(list(true, 2, true), &s, admin).await.unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = cli(list(true, 2, false), &s, admin).await.unwrap();
    assert!(out.contains("(the first 2 of 3; see --limit)"), "{out}");
    let out = cli(purge(true, false, false), &s, admin).await.unwrap();
    assert!(out.contains("would purge 3 dead events"), "{out}");

    healthy.store(true, Ordering::SeqCst);
    let out = cli(
        SpoolCommand::Replay {
            command: None,
            id: None,
            since: None,
            until: None,
        },
        &s,
        admin,
    )
    .await
    .unwrap();
    assert!(
        out.contains("replayed 3 dead letters to pending; the gateway is delivering them"),
        "{out}"
    );
    wait_until("replayed delivery", || {
        let st = spool.stats();
        st.pending == 0 && st.dead == 0
    })
    .await;
    let out = cli(purge(true, true, true), &s, admin).await.unwrap();
    assert!(
        out.contains("purged 0 pending events") && out.contains("purged 0 dead events"),
        "{out}"
    );

    // Unusable admin URLs.
    let err = cli(SpoolCommand::Count, &s, Some("https://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    let err = cli(SpoolCommand::Count, &s, Some("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");

    server.abort();
    close(spool).await;
}

#[test]
fn utc_timestamps() {
    assert_eq!(super::event::utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(super::event::utc(951_782_400_000), "2000-02-29T00:00:00Z");
    assert_eq!(super::event::utc(1_795_316_588_611), "2026-11-22T03:03:08Z");
}

#[test]
fn a_replay_selects_by_command_id_and_first_stored_time() {
    use super::Select;
    use prost::Message as _;
    let rec = |command: &str, first_seen_ms: u64| {
        let ev = NewEvent {
            command: command.into(),
            ..NewEvent::default()
        };
        super::record::Record::new(ev, first_seen_ms).encode_to_vec()
    };
    let a = rec("callbackAfterA", 1_000);
    assert!(Select::default().matches(7, &a));
    assert!(
        Select::default().matches(7, b"not a record"),
        "all takes everything"
    );
    assert!(Select::command(Some("callbackAfterA")).matches(7, &a));
    assert!(!Select::command(Some("callbackAfterB")).matches(7, &a));
    let id = |id| Select {
        id: Some(id),
        ..Select::default()
    };
    assert!(id(7).matches(7, &a));
    assert!(!id(8).matches(7, &a));
    let range = |since, until| Select {
        since_ms: since,
        until_ms: until,
        ..Select::default()
    };
    assert!(range(Some(1_000), Some(1_001)).matches(1, &a));
    assert!(!range(Some(1_001), None).matches(1, &a));
    assert!(
        !range(None, Some(1_000)).matches(1, &a),
        "until is exclusive"
    );
    assert!(!range(Some(0), None).matches(1, b"not a record"));
    assert_eq!(
        Select {
            command: Some("c".into()),
            id: Some(3),
            ..Select::default()
        }
        .describe(),
        " of c, with id 3"
    );
}

#[test]
fn replay_times_are_rfc3339_or_a_duration_ago() {
    use crate::cli::spool::parse_time;
    assert_eq!(parse_time("2026-05-01T12:00:00Z"), Ok(1_777_636_800_000));
    let ago = parse_time("2h").unwrap();
    let expected = now_ms() - 2 * 3600 * 1000;
    assert!(ago.abs_diff(expected) < 60_000, "{ago} vs {expected}");
    assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
}
