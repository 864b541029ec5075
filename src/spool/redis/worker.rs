//! Delivery from Redis: the reader (`XREADGROUP` on the consumer group), the reclaimer
//! (`XAUTOCLAIM` of tokens idle for `claim_idle`), the retry poller (`P:due`), the heartbeat
//! (`XCLAIM … JUSTID` of this replica's own tokens, so that a slow delivery is never taken for a
//! dead one), the health check, and one attempt with the same rules as the redb spool.
//!
//! Nothing spins: the reader blocks in Redis (`BLOCK`), the poller sleeps until the next due
//! retry (at most [`POLL_MAX`], since other replicas add retries too), the others tick.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use prost::Message;
use redis::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::super::deliver::Deliver;
use super::super::record::{Record, now_ms};
use super::super::rules::{Role, Verdict, attempt_and_judge};
use super::{Core, describe, scripts};

/// How long one `XREADGROUP` blocks in Redis.
const BLOCK: Duration = Duration::from_secs(2);

/// Longest sleep of the retry poller.
const POLL_MAX: Duration = Duration::from_secs(1);

/// Most tokens the retry poller moves per script run.
const POLL_BATCH: u32 = 512;

/// Pause after a failed Redis command of a background loop.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// One token taken from the stream.
struct Token {
    entry: String,
    token: String,
}

/// Runs every delivery loop until the spool stops; aborting this task aborts them all.
pub(crate) async fn run(core: Arc<Core>, deliverer: Arc<dyn Deliver>) {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(read_loop(core.clone(), deliverer.clone()));
    set.spawn(claim_loop(core.clone(), deliverer));
    set.spawn(poll_loop(core.clone()));
    set.spawn(heartbeat_loop(core.clone()));
    set.spawn(health_loop(core.clone()));
    while set.join_next().await.is_some() {}
}

/// Sleeps `d`, or returns `true` at once when the spool stops.
async fn pause(core: &Core, d: Duration) -> bool {
    let mut stop = core.stop.subscribe();
    if *stop.borrow_and_update() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn stopped(core: &Core) -> bool {
    *core.stop.borrow()
}

/// Takes the permits free now (at least one, waiting for it), at most `max`.
async fn permits(core: &Core, max: usize) -> Option<Vec<OwnedSemaphorePermit>> {
    let mut stop = core.stop.subscribe();
    let first = tokio::select! {
        p = core.sem.clone().acquire_owned() => p.ok()?,
        _ = stop.changed() => return None,
    };
    let mut out = vec![first];
    while out.len() < max {
        match core.sem.clone().try_acquire_owned() {
            Ok(p) => out.push(p),
            Err(_) => break,
        }
    }
    Some(out)
}

/// Entries of one stream in an `XREADGROUP` / `XAUTOCLAIM` answer: `[[id, [field, value…]]…]`.
fn entries(v: &Value) -> Vec<Token> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let entry = text(pair.first()?)?;
            let mut token = None;
            if let Some(Value::Array(fields)) = pair.get(1) {
                for kv in fields.chunks(2) {
                    if let [k, v] = kv
                        && text(k).as_deref() == Some("t")
                    {
                        token = text(v);
                    }
                }
            }
            // A token without its field (deleted meanwhile) is acknowledged as done.
            Some(Token {
                entry,
                token: token.unwrap_or_default(),
            })
        })
        .collect()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

async fn read_loop(core: Arc<Core>, deliverer: Arc<dyn Deliver>) {
    let rc = &core.settings.redis;
    let mut conn = None;
    // First this consumer's own history (a restart with the same consumer name), then new tokens.
    let mut from = "0".to_owned();
    while !stopped(&core) {
        let Some(mut slots) = permits(&core, 64).await else {
            return;
        };
        if conn.is_none() {
            match core.blocking_conn(BLOCK).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    metrics::counter!("gateway_spool_backend_errors_total", "op" => "read")
                        .increment(1);
                    core.set_health(Err(describe(&e)));
                    drop(slots);
                    if pause(&core, ERROR_PAUSE).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&rc.group)
            .arg(&core.consumer)
            .arg("COUNT")
            .arg(slots.len());
        if from == ">" {
            cmd.arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(2000));
        }
        cmd.arg("STREAMS").arg(core.key("q")).arg(&from);
        let answer: redis::RedisResult<Value> = cmd.query_async(c).await;
        let reply = match answer {
            Ok(v) => v,
            Err(e) => {
                metrics::counter!("gateway_spool_backend_errors_total", "op" => "read")
                    .increment(1);
                if e.code() == Some("NOGROUP") {
                    // The stream was deleted (e.g. FLUSHALL): make the group again.
                    let _ = core.recreate_group().await;
                } else {
                    core.set_health(Err(describe(&e)));
                    conn = None;
                }
                drop(slots);
                if pause(&core, ERROR_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        // [[stream, [[id, fields]…]]] or nil after BLOCK.
        let got = match &reply {
            Value::Array(streams) => streams
                .first()
                .and_then(|s| match s {
                    Value::Array(kv) => kv.get(1).map(entries),
                    _ => None,
                })
                .unwrap_or_default(),
            Value::Map(m) => m.first().map(|(_, v)| entries(v)).unwrap_or_default(),
            _ => Vec::new(),
        };
        if from != ">" && got.is_empty() {
            from = ">".to_owned();
        }
        if from != ">"
            && let Some(last) = got.last()
        {
            from.clone_from(&last.entry);
        }
        let batch: Vec<_> = got.into_iter().zip(slots.drain(..)).collect();
        spawn_batch(&core, &deliverer, batch);
    }
}

/// A consumer idle this much longer than `claim_idle` (and at least [`FORGET_MIN`]) with no
/// token is a stopped replica: it is removed from the group.
const FORGET_FACTOR: u32 = 10;

/// See [`FORGET_FACTOR`].
const FORGET_MIN: Duration = Duration::from_secs(3600);

/// Removes stopped consumers that hold nothing; returns how many.
pub(crate) async fn forget_consumers(
    core: &Core,
    idle: Duration,
) -> Result<u64, redis::RedisError> {
    let mut conn = core.work().await?;
    scripts::FORGET_CONSUMERS
        .arg(&core.prefix)
        .arg(&core.settings.redis.group)
        .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut conn)
        .await
}

async fn claim_loop(core: Arc<Core>, deliverer: Arc<dyn Deliver>) {
    let rc = &core.settings.redis;
    let every = (rc.claim_idle / 2).max(Duration::from_millis(50));
    let forget_idle = (rc.claim_idle * FORGET_FACTOR).max(FORGET_MIN);
    let mut cursor = "0-0".to_owned();
    let mut rounds = 0u64;
    loop {
        if pause(&core, every).await {
            return;
        }
        rounds += 1;
        if rounds.is_multiple_of(120) {
            match forget_consumers(&core, forget_idle).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    n,
                    "spool: removed stopped consumers without tokens from the group"
                ),
                Err(e) => {
                    tracing::debug!(error = %describe(&e), "spool: cleaning up consumers failed")
                }
            }
        }
        // Claims only as many tokens as there are free workers: the rest stay for later. The
        // semaphore is fair: waiting here gets the permits the reader hands back after its
        // blocking read (at most `BLOCK` later).
        loop {
            let Some(mut slots) = permits(&core, 1).await else {
                return;
            };
            while slots.len() < 64 {
                match core.sem.clone().try_acquire_owned() {
                    Ok(p) => slots.push(p),
                    Err(_) => break,
                }
            }
            let answer = async {
                let mut conn = core.work().await?;
                redis::cmd("XAUTOCLAIM")
                    .arg(core.key("q"))
                    .arg(&rc.group)
                    .arg(&core.consumer)
                    .arg(u64::try_from(rc.claim_idle.as_millis()).unwrap_or(u64::MAX))
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(slots.len())
                    .query_async::<Value>(&mut conn)
                    .await
            }
            .await;
            let reply = match answer {
                Ok(Value::Array(parts)) => parts,
                Ok(_) => break,
                Err(e) => {
                    metrics::counter!("gateway_spool_backend_errors_total", "op" => "claim")
                        .increment(1);
                    tracing::debug!(error = %describe(&e), "spool: XAUTOCLAIM failed");
                    break;
                }
            };
            let next = reply.first().and_then(text).unwrap_or_else(|| "0-0".into());
            let got = reply.get(1).map(entries).unwrap_or_default();
            for t in got.iter().take(slots.len()) {
                metrics::counter!("gateway_spool_reclaimed_total").increment(1);
                tracing::warn!(
                    entry = t.entry,
                    token = t.token,
                    consumer = %core.consumer,
                    "spool: took over an event whose consumer stopped (idle past claim_idle)"
                );
            }
            let batch: Vec<_> = got.into_iter().zip(slots.drain(..)).collect();
            spawn_batch(&core, &deliverer, batch);
            cursor = next;
            if cursor == "0-0" {
                break;
            }
        }
    }
}

async fn poll_loop(core: Arc<Core>) {
    loop {
        let answer = async {
            let mut conn = core.work().await?;
            scripts::DUE
                .arg(&core.prefix)
                .arg(now_ms())
                .arg(POLL_BATCH)
                .invoke_async::<(u64, Option<u64>)>(&mut conn)
                .await
        }
        .await;
        let wait = match answer {
            Ok((moved, _)) if moved >= u64::from(POLL_BATCH) => Duration::ZERO,
            Ok((_, Some(next))) => Duration::from_millis(next.saturating_sub(now_ms())),
            Ok((_, None)) => POLL_MAX,
            Err(e) => {
                metrics::counter!("gateway_spool_backend_errors_total", "op" => "poll")
                    .increment(1);
                tracing::debug!(error = %describe(&e), "spool: retry poll failed");
                ERROR_PAUSE
            }
        }
        .min(POLL_MAX);
        let mut stop = core.stop.subscribe();
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = core.due_changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

async fn heartbeat_loop(core: Arc<Core>) {
    let rc = &core.settings.redis;
    let every = (rc.claim_idle / 3).max(Duration::from_millis(30));
    loop {
        if pause(&core, every).await {
            return;
        }
        let owned: Vec<String> = core
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        if owned.is_empty() {
            continue;
        }
        let result = async {
            let mut conn = core.work().await?;
            redis::cmd("XCLAIM")
                .arg(core.key("q"))
                .arg(&rc.group)
                .arg(&core.consumer)
                .arg(0)
                .arg(&owned)
                .arg("JUSTID")
                .query_async::<Value>(&mut conn)
                .await
        }
        .await;
        if let Err(e) = result {
            metrics::counter!("gateway_spool_backend_errors_total", "op" => "claim").increment(1);
            tracing::debug!(error = %describe(&e), "spool: heartbeat XCLAIM failed");
        }
    }
}

async fn health_loop(core: Arc<Core>) {
    loop {
        core.check().await;
        if pause(&core, super::HEALTH_EVERY).await {
            return;
        }
    }
}

/// Starts the attempts of tokens taken together, as one task: one `RESOLVE` for all of them,
/// and one `FINISH` for the attempts that end together (a round trip to Redis each, not one per
/// event).
fn spawn_batch(
    core: &Arc<Core>,
    deliverer: &Arc<dyn Deliver>,
    batch: Vec<(Token, OwnedSemaphorePermit)>,
) {
    if batch.is_empty() {
        return;
    }
    let batch: Vec<(Token, Slot)> = batch
        .into_iter()
        .map(|(t, permit)| {
            core.owned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(t.entry.clone());
            core.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(core.clone(), t.entry.clone());
            (t, (permit, guard))
        })
        .collect();
    tokio::spawn(run_batch(core.clone(), deliverer.clone(), batch));
}

/// Forgets the entry and decrements `in_flight` however the attempt ends.
struct InFlight(Arc<Core>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.1);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token's worker slot, released with its `FINISH` (or when the attempt ends without one).
type Slot = (OwnedSemaphorePermit, InFlight);

/// How an attempt ends, for the `FINISH` script.
enum Outcome {
    Done,
    Dead(Vec<u8>),
    Retry(Vec<u8>, u64),
    Defer(u64),
}

/// A token whose attempt ended: its event id (text) and how.
type Ended = (Token, String, Outcome, Slot);

async fn run_batch(core: Arc<Core>, deliverer: Arc<dyn Deliver>, batch: Vec<(Token, Slot)>) {
    let resolved = async {
        let mut conn = core.work().await?;
        let mut call = scripts::RESOLVE.prepare_invoke();
        call.arg(&core.prefix);
        for (t, _) in &batch {
            call.arg(&t.token);
        }
        call.invoke_async::<Vec<(String, Option<Vec<u8>>)>>(&mut conn)
            .await
    }
    .await;
    let resolved = match resolved {
        Ok(r) if r.len() == batch.len() => r,
        Ok(r) => {
            tracing::warn!(
                tokens = batch.len(),
                answers = r.len(),
                "spool: redis answered RESOLVE with the wrong number of events; they are tried again after claim_idle"
            );
            return;
        }
        Err(e) => {
            // The tokens stay pending with this consumer; they are reclaimed after claim_idle.
            metrics::counter!("gateway_spool_backend_errors_total", "op" => "read").increment(1);
            tracing::warn!(
                error = %describe(&e),
                tokens = batch.len(),
                "spool: reading events from redis failed; they are tried again after claim_idle"
            );
            return;
        }
    };
    let mut ended: Vec<Ended> = Vec::new();
    let mut running = FuturesUnordered::new();
    for ((t, slot), (id_text, raw)) in batch.into_iter().zip(resolved) {
        let Some(raw) = raw else {
            // Delivered, purged or dropped meanwhile: the token moves on.
            ended.push((t, id_text, Outcome::Done, slot));
            continue;
        };
        match Record::decode(raw.as_slice()) {
            Ok(rec) => running.push(attempt(&core, &deliverer, t, id_text, rec, slot)),
            Err(e) => {
                tracing::error!(id = id_text, error = %e, "pending spool record does not decode; moving it to the dead letters");
                metrics::counter!("gateway_spool_dead_total", "command" => "<undecodable>", "reason" => "undecodable")
                    .increment(1);
                ended.push((t, id_text, Outcome::Dead(raw), slot));
            }
        }
    }
    if !ended.is_empty() {
        finish(&core, std::mem::take(&mut ended)).await;
    }
    while let Some(done) = running.next().await {
        ended.push(done);
        // Whatever else has ended meanwhile shares the script run.
        while let Some(Some(done)) = running.next().now_or_never() {
            ended.push(done);
        }
        finish(&core, std::mem::take(&mut ended)).await;
    }
}

async fn attempt(
    core: &Core,
    deliverer: &Arc<dyn Deliver>,
    t: Token,
    id_text: String,
    rec: Record,
    slot: Slot,
) -> Ended {
    let id = id_text.parse::<u64>().unwrap_or(0);
    let number = rec.attempts.saturating_add(1);
    let since_ms = rec.since_ms;
    let ev = core.event_of(id, rec.clone());
    let verdict =
        attempt_and_judge(deliverer, &core.settings, Role::Spool, ev, number, since_ms).await;
    let outcome = match verdict {
        Verdict::Delivered => Outcome::Done,
        Verdict::Defer(wait) => Outcome::Defer(due_in(wait)),
        Verdict::Dead { attempt, reason } => {
            let mut r = rec;
            r.note_attempt(attempt, reason);
            Outcome::Dead(r.encode_to_vec())
        }
        Verdict::Retry {
            attempt,
            error,
            wait,
        } => {
            let mut r = rec;
            r.note_attempt(attempt, error);
            Outcome::Retry(r.encode_to_vec(), due_in(wait))
        }
    };
    (t, id_text, outcome, slot)
}

fn due_in(wait: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// Records the ends of attempts with one `FINISH` script run, then releases their slots. A
/// failure leaves the tokens pending with this consumer: they are taken over after `claim_idle`
/// and their events delivered again.
async fn finish(core: &Core, ended: Vec<Ended>) {
    let mut call = scripts::FINISH.prepare_invoke();
    call.arg(&core.prefix).arg(&core.settings.redis.group);
    let mut retries = false;
    for (t, id, outcome, _) in &ended {
        let (name, rec, due): (&str, &[u8], u64) = match outcome {
            Outcome::Done => ("done", &[], 0),
            Outcome::Dead(r) => ("dead", r, 0),
            Outcome::Retry(r, due) => ("retry", r, *due),
            Outcome::Defer(due) => ("defer", &[], *due),
        };
        retries |= due > 0;
        call.arg(&t.entry)
            .arg(&t.token)
            .arg(id)
            .arg(name)
            .arg(rec)
            .arg(due);
    }
    let result = async {
        let mut conn = core.work().await?;
        call.invoke_async::<Vec<i64>>(&mut conn).await
    }
    .await;
    match result {
        Ok(held) => {
            for ((t, ..), held) in ended.iter().zip(held) {
                if held != 1 {
                    tracing::info!(
                        entry = t.entry,
                        token = t.token,
                        "spool: this replica's token was taken over meanwhile; its result is not recorded (the other replica's is)"
                    );
                }
            }
            if retries {
                core.due_changed.notify_one();
            }
        }
        Err(e) => {
            metrics::counter!("gateway_spool_backend_errors_total", "op" => "finish").increment(1);
            tracing::warn!(
                error = %describe(&e),
                tokens = ended.len(),
                entry = ended.first().map_or("", |(t, ..)| t.entry.as_str()),
                "spool: recording delivery results in redis failed; the events are delivered again after claim_idle"
            );
        }
    }
}

impl Core {
    /// Makes the consumer group again (after the stream was deleted).
    pub(crate) async fn recreate_group(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.work().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key("q"))
            .arg(&self.settings.redis.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }
}
