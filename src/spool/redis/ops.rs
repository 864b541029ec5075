//! The operator commands on Redis (list, count, replay, purge), on the blocking connection:
//! they work from any replica (the admin API) and from the CLI directly, with no running
//! gateway, since Redis has no file lock.
//!
//! Positions for chunks: pending events are walked by event id (`P:idx`); dead letters by
//! their stream entry id `ms-seq`, packed as `ms << 20 | seq` into the `u64` of
//! [`Progress::next_after`].

use redis::Value;

use super::super::error::SpoolError;
use super::super::event::{Progress, Select, StoredEvent, Which};
use super::super::record::{Record, matches, now_ms};
use super::{Core, describe, scripts};

/// Records read per round trip.
const PAGE: usize = 1_000;

/// How many records one step may look at per event it may act on (as the redb spool).
const SCAN_PER_MATCH: usize = 8;

fn pack(entry: &str) -> u64 {
    let (ms, seq) = entry.split_once('-').unwrap_or((entry, "0"));
    let ms = ms.parse::<u64>().unwrap_or(0);
    let seq = seq.parse::<u64>().unwrap_or(0).min((1 << 20) - 1);
    (ms << 20) | seq
}

fn unpack(pos: u64) -> String {
    format!("{}-{}", pos >> 20, pos & ((1 << 20) - 1))
}

/// Pending ids after `after` (exclusive), at most `n`, in order.
fn pending_ids(
    core: &Core,
    conn: &mut redis::Connection,
    after: Option<u64>,
    n: usize,
) -> Result<Vec<u64>, SpoolError> {
    let min = after.map_or_else(|| "-inf".to_owned(), |a| format!("({a}"));
    redis::cmd("ZRANGEBYSCORE")
        .arg(core.key("idx"))
        .arg(min)
        .arg("+inf")
        .arg("LIMIT")
        .arg(0)
        .arg(n)
        .query(conn)
        .map_err(|e| core.storage(describe(&e)))
}

/// Event ids with their records (`None`: gone meanwhile).
type Records = Vec<(u64, Option<Vec<u8>>)>;

fn records(core: &Core, conn: &mut redis::Connection, ids: &[u64]) -> Result<Records, SpoolError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let raws: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(core.key("ev"))
        .arg(ids)
        .query(conn)
        .map_err(|e| core.storage(describe(&e)))?;
    Ok(ids.iter().copied().zip(raws).collect())
}

/// A dead letter: its stream entry id, event id and record.
struct Dead {
    entry: String,
    id: u64,
    raw: Vec<u8>,
}

fn dead_page(
    core: &Core,
    conn: &mut redis::Connection,
    after: Option<&str>,
    n: usize,
) -> Result<Vec<Dead>, SpoolError> {
    let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
    let v: Value = redis::cmd("XRANGE")
        .arg(core.key("dead"))
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(n)
        .query(conn)
        .map_err(|e| core.storage(describe(&e)))?;
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Array(pair) = item else { continue };
        let Some(entry) = pair.first().and_then(bytes) else {
            continue;
        };
        let mut d = Dead {
            entry: String::from_utf8_lossy(&entry).into_owned(),
            id: 0,
            raw: Vec::new(),
        };
        if let Some(Value::Array(fields)) = pair.get(1) {
            for kv in fields.chunks(2) {
                if let [k, v] = kv {
                    match bytes(k).as_deref() {
                        Some(b"i") => {
                            d.id = bytes(v)
                                .and_then(|b| String::from_utf8_lossy(&b).parse().ok())
                                .unwrap_or(0);
                        }
                        Some(b"r") => d.raw = bytes(v).unwrap_or_default(),
                        _ => {}
                    }
                }
            }
        }
        out.push(d);
    }
    Ok(out)
}

pub(super) fn list(
    core: &Core,
    which: Which,
    limit: usize,
) -> Result<Vec<StoredEvent>, SpoolError> {
    core.with_sync(|conn| {
        let mut out = Vec::new();
        match which {
            Which::Pending => {
                let mut after = None;
                while out.len() < limit {
                    let ids = pending_ids(core, conn, after, PAGE.min(limit - out.len()))?;
                    let Some(last) = ids.last().copied() else {
                        break;
                    };
                    after = Some(last);
                    for (id, raw) in records(core, conn, &ids)? {
                        if let Some(raw) = raw {
                            out.push(core.stored(id, &raw));
                        }
                    }
                }
            }
            Which::Dead => {
                let mut after: Option<String> = None;
                while out.len() < limit {
                    let page =
                        dead_page(core, conn, after.as_deref(), PAGE.min(limit - out.len()))?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.entry.clone());
                    out.extend(page.iter().map(|d| core.stored(d.id, &d.raw)));
                }
            }
        }
        Ok(out)
    })
}

pub(super) fn count(core: &Core, which: Which, command: Option<&str>) -> Result<u64, SpoolError> {
    core.with_sync(|conn| {
        let Some(command) = command else {
            let key = match which {
                Which::Pending => ("ZCARD", core.key("idx")),
                Which::Dead => ("XLEN", core.key("dead")),
            };
            return redis::cmd(key.0)
                .arg(key.1)
                .query(conn)
                .map_err(|e| core.storage(describe(&e)));
        };
        let mut n = 0;
        match which {
            Which::Pending => {
                let mut after = None;
                loop {
                    let ids = pending_ids(core, conn, after, PAGE)?;
                    let Some(last) = ids.last().copied() else {
                        break;
                    };
                    after = Some(last);
                    for (_, raw) in records(core, conn, &ids)? {
                        if raw.is_some_and(|r| matches(Some(command), &r)) {
                            n += 1;
                        }
                    }
                }
            }
            Which::Dead => {
                let mut after: Option<String> = None;
                loop {
                    let page = dead_page(core, conn, after.as_deref(), PAGE)?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.entry.clone());
                    n += page
                        .iter()
                        .filter(|d| matches(Some(command), &d.raw))
                        .count() as u64;
                }
            }
        }
        Ok(n)
    })
}

pub(super) fn replay_chunk(
    core: &Core,
    select: &Select,
    after: Option<u64>,
    max: usize,
) -> Result<Progress, SpoolError> {
    core.with_sync(|conn| {
        let scan = max.saturating_mul(SCAN_PER_MATCH);
        let after = after.map(unpack);
        let page = dead_page(core, conn, after.as_deref(), scan)?;
        let exhausted = page.len() < scan;
        let now = now_ms();
        let mut count = 0u64;
        let mut last = None;
        let mut all_seen = true;
        for d in &page {
            if count >= max as u64 {
                all_seen = false;
                break;
            }
            last = Some(pack(&d.entry));
            if !select.matches(d.id, &d.raw) {
                continue;
            }
            let (rec, key) = match <Record as prost::Message>::decode(d.raw.as_slice()) {
                Ok(mut rec) => {
                    rec.reset_for_replay(now);
                    let key = rec.order_key.clone();
                    (prost::Message::encode_to_vec(&rec), key)
                }
                // Replayed as it is: the worker moves it back with the decode error.
                Err(_) => (d.raw.clone(), None),
            };
            let done: i64 = scripts::REPLAY
                .arg(&core.prefix)
                .arg(&d.entry)
                .arg(d.id)
                .arg(rec.as_slice())
                .arg(if key.is_some() { "1" } else { "0" })
                .arg(key.as_deref().unwrap_or(""))
                .invoke(conn)
                .map_err(|e| core.storage(describe(&e)))?;
            count += u64::try_from(done).unwrap_or(0);
        }
        let finished = exhausted && all_seen;
        note(
            core,
            select.command.as_deref(),
            count,
            "replayed",
            Which::Dead,
        );
        refresh(core, conn);
        Ok(Progress {
            count,
            next_after: if finished { None } else { last },
        })
    })
}

pub(super) fn purge_chunk(
    core: &Core,
    which: Which,
    command: Option<&str>,
    after: Option<u64>,
    max: usize,
) -> Result<Progress, SpoolError> {
    core.with_sync(|conn| {
        let scan = max.saturating_mul(SCAN_PER_MATCH);
        let mut count = 0u64;
        let mut last = None;
        let exhausted;
        let mut all_seen = true;
        match which {
            Which::Pending => {
                let ids = pending_ids(core, conn, after, scan)?;
                exhausted = ids.len() < scan;
                for (id, raw) in records(core, conn, &ids)? {
                    if count >= max as u64 {
                        all_seen = false;
                        break;
                    }
                    last = Some(id);
                    if !raw.is_some_and(|r| matches(command, &r)) {
                        continue;
                    }
                    let done: i64 = scripts::PURGE_PENDING
                        .arg(&core.prefix)
                        .arg(id)
                        .invoke(conn)
                        .map_err(|e| core.storage(describe(&e)))?;
                    count += u64::try_from(done).unwrap_or(0);
                }
            }
            Which::Dead => {
                let after = after.map(unpack);
                let page = dead_page(core, conn, after.as_deref(), scan)?;
                exhausted = page.len() < scan;
                for d in &page {
                    if count >= max as u64 {
                        all_seen = false;
                        break;
                    }
                    last = Some(pack(&d.entry));
                    if !matches(command, &d.raw) {
                        continue;
                    }
                    let done: i64 = scripts::PURGE_DEAD
                        .arg(&core.prefix)
                        .arg(&d.entry)
                        .invoke(conn)
                        .map_err(|e| core.storage(describe(&e)))?;
                    count += u64::try_from(done).unwrap_or(0);
                }
            }
        }
        note(core, command, count, "purged", which);
        refresh(core, conn);
        Ok(Progress {
            count,
            next_after: if exhausted && all_seen { None } else { last },
        })
    })
}

fn note(core: &Core, command: Option<&str>, count: u64, action: &str, which: Which) {
    if count > 0 {
        tracing::warn!(
            redis = %core.location,
            which = %which,
            command = command.unwrap_or("*"),
            count,
            "spool: operator {action} events"
        );
    }
}

fn refresh(core: &Core, conn: &mut redis::Connection) {
    if let Err(e) = core.refresh_sync(conn) {
        tracing::debug!(error = %e, "spool: refreshing the counters failed");
    }
}
