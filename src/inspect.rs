//! The inspector: the last callbacks this gateway answered, in a bounded ring (`inspect.keep`),
//! for `GET /admin/callbacks` (newest first, filtered by command and outcome, or as JSON lines
//! for `replay`), `GET /admin/callbacks/stream` (server-sent events, for `tail`), and the count
//! of every command seen, so that one OpenIM never sends is visible at a glance.
//!
//! A [`Record`] holds what the callback's log line holds (time, command, operationID, route,
//! outcome, latency, upstream, gRPC status) and the envelope sent back. User content follows
//! the logs' redaction (`log.redact`): with it on, the envelope's texts and override values are
//! `<redacted>`. The request body (and OpenIM's `?key=`) are kept only with
//! `inspect.capture_bodies: true`, and then redacted too unless `log.redact: false`; a capture
//! meant for `replay` needs both.

pub(crate) use crate::config::InspectConfig;
use crate::telemetry::{REDACTED, redact};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// One callback as the inspector keeps it; also one line of a capture (`format=jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Counted up per gateway process.
    pub seq: u64,
    /// When it arrived, RFC 3339 with milliseconds.
    pub time: String,
    /// Milliseconds since the previous record's arrival (the recorded pace, for `replay`).
    #[serde(default)]
    pub gap_ms: u64,
    /// The command (the last path segment, up to 120 characters, for unknown ones too).
    pub command: String,
    /// The operationID (header, else body).
    pub operation_id: String,
    /// The way it took: `call <upstream>`, `spool`, `disabled`, `unknown command`, `bad input`.
    pub route: String,
    /// The outcome, as in the metrics and logs (`continue`, `rejected`, `spooled`, …).
    pub outcome: String,
    /// From arrival to the answer, in milliseconds.
    pub latency_ms: f64,
    /// The upstream, when one is routed.
    pub upstream: Option<String>,
    /// The upstream's gRPC status, when a call got one.
    pub grpc_status: Option<String>,
    /// The envelope sent back (texts and overrides redacted with `log.redact`).
    pub envelope: Value,
    /// The request body as OpenIM sent it (`inspect.capture_bodies`), parsed when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    /// OpenIM's `?key=` (`inspect.capture_bodies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a callback left, for [`Inspector::record`].
#[derive(Debug)]
pub(crate) struct Seen<'a> {
    /// The command as OpenIM named it.
    pub(crate) command: &'a str,
    /// Whether the gateway knows the command.
    pub(crate) known: bool,
    /// The operationID.
    pub(crate) operation_id: &'a str,
    /// The route taken.
    pub(crate) route: String,
    /// The outcome.
    pub(crate) outcome: &'static str,
    /// When it arrived.
    pub(crate) received: std::time::Instant,
    /// The upstream, when routed to one.
    pub(crate) upstream: Option<&'a str>,
    /// The gRPC status name, when a call got one.
    pub(crate) grpc_status: Option<&'static str>,
    /// The envelope's bytes.
    pub(crate) envelope: &'a [u8],
    /// The body, when it was read.
    pub(crate) body: Option<bytes::Bytes>,
    /// OpenIM's `?key=`.
    pub(crate) key: Option<&'a str>,
}

/// A callback as the ring keeps it: the envelope and body as bytes, turned into a [`Record`]
/// (parsed, redacted) only when someone looks.
#[derive(Debug)]
pub(crate) struct Kept {
    record: Record,
    envelope: Box<[u8]>,
    body: Option<bytes::Bytes>,
    key: Option<String>,
}

impl Kept {
    /// The record as shown, with the envelope and body redacted as the logs are.
    pub(crate) fn view(&self) -> Record {
        let mut r = self.record.clone();
        r.envelope = envelope_view(&self.envelope);
        r.request = self.body.as_deref().map(body_view);
        r.key = self.key.as_ref().map(|k| {
            if redact() {
                REDACTED.to_owned()
            } else {
                k.clone()
            }
        });
        r
    }
}

/// The ring of recent callbacks, the live stream, and the per-command counts.
#[derive(Debug)]
pub(crate) struct Inspector {
    ring: Mutex<Ring>,
    seq: AtomicU64,
    live: broadcast::Sender<std::sync::Arc<Kept>>,
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<std::sync::Arc<Kept>>,
    /// Callbacks per command since start (unknown commands under their name, bounded).
    seen: BTreeMap<String, u64>,
    last_arrival: Option<std::time::SystemTime>,
    /// The callbacks of the last minute, for [`Inspector::last_minute`] (bounded).
    minute: VecDeque<Tick>,
}

/// One callback of the last minute, as the console's rates and percentiles need it.
#[derive(Debug)]
struct Tick {
    at: std::time::Instant,
    command: String,
    outcome: &'static str,
    latency_ms: f64,
    /// The upstream, when the callback called it (not when it was only spooled).
    upstream: Option<String>,
    /// The upstream call failed (a gRPC status other than OK, or no answer).
    error: bool,
}

/// Callbacks kept for the last-minute figures, at most (older ones drop first).
const MAX_MINUTE: usize = 50_000;
/// The window of [`Inspector::last_minute`].
pub(crate) const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One command's last minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct CommandMinute {
    /// Callbacks in the window.
    pub(crate) count: u64,
    /// Callbacks per second over the window (or over the time since the first one, if shorter).
    pub(crate) per_second: f64,
    /// Callbacks by outcome.
    pub(crate) outcomes: BTreeMap<String, u64>,
    /// Median latency, milliseconds.
    pub(crate) p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub(crate) p99_ms: f64,
}

/// One upstream's last minute, from the callbacks that called it (spool deliveries are not
/// callbacks: their failures show as the spool's retrying and dead letters).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct UpstreamMinute {
    /// Callbacks that called it in the window.
    pub(crate) calls: u64,
    /// Those whose call failed.
    pub(crate) errors: u64,
}

/// The last minute, per command and per upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Minute {
    /// By command.
    pub(crate) commands: BTreeMap<String, CommandMinute>,
    /// By upstream.
    pub(crate) upstreams: BTreeMap<String, UpstreamMinute>,
}

/// Distinct unknown command names counted, at most (a hostile sender cannot grow the map).
const MAX_UNKNOWN: usize = 100;

impl Default for Inspector {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            seq: AtomicU64::new(0),
            live: broadcast::channel(1024).0,
        }
    }
}

impl Inspector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A ring of records stays valid after any panic of a holder.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps one callback (bounded by `cfg.keep`) and sends it to the live stream.
    pub(crate) fn record(&self, cfg: &InspectConfig, seen: Seen<'_>) {
        let now = std::time::SystemTime::now();
        let arrived = now.checked_sub(seen.received.elapsed()).unwrap_or(now);
        let command: String = seen.command.chars().take(120).collect();
        let capture = cfg.capture_bodies;
        let mut ring = self.lock();
        let count = ring.seen.len();
        if seen.known || ring.seen.contains_key(&command) || count < MAX_UNKNOWN {
            *ring.seen.entry(command.clone()).or_default() += 1;
            let error = seen.grpc_status.is_some_and(|s| s != "OK")
                || matches!(seen.outcome, "failed-open" | "failed-closed");
            let called = seen.grpc_status.is_some() || error;
            let tick = Tick {
                at: seen.received,
                command: command.clone(),
                outcome: seen.outcome,
                latency_ms: seen.received.elapsed().as_micros() as f64 / 1000.0,
                upstream: seen.upstream.filter(|_| called).map(str::to_owned),
                error,
            };
            if ring.minute.len() >= MAX_MINUTE {
                ring.minute.pop_front();
            }
            ring.minute.push_back(tick);
        }
        if cfg.keep == 0 && self.live.receiver_count() == 0 {
            ring.records.clear();
            return;
        }
        let gap_ms = ring
            .last_arrival
            .and_then(|last| arrived.duration_since(last).ok())
            .map_or(0, |d| d.as_millis() as u64);
        ring.last_arrival = Some(arrived);
        let record = std::sync::Arc::new(Kept {
            record: Record {
                seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
                time: humantime::format_rfc3339_millis(arrived).to_string(),
                gap_ms,
                command,
                operation_id: seen.operation_id.to_owned(),
                route: seen.route,
                outcome: seen.outcome.to_owned(),
                latency_ms: seen.received.elapsed().as_micros() as f64 / 1000.0,
                upstream: seen.upstream.map(str::to_owned),
                grpc_status: seen.grpc_status.map(str::to_owned),
                envelope: Value::Null,
                request: None,
                key: None,
            },
            envelope: seen.envelope.into(),
            body: seen.body.filter(|_| capture),
            key: seen.key.filter(|_| capture).map(str::to_owned),
        });
        while ring.records.len() >= cfg.keep.max(1) {
            ring.records.pop_front();
        }
        if cfg.keep > 0 {
            ring.records.push_back(record.clone());
        }
        drop(ring);
        // Nobody listening is fine.
        let _ = self.live.send(record);
    }

    /// The kept callbacks, newest first, that match `filter`.
    pub(crate) fn recent(&self, filter: &Filter) -> Vec<Record> {
        let matching: Vec<std::sync::Arc<Kept>> = {
            let ring = self.lock();
            ring.records
                .iter()
                .rev()
                .filter(|r| filter.matches(&r.record))
                .take(filter.limit.unwrap_or(usize::MAX))
                .cloned()
                .collect()
        };
        matching.iter().map(|k| k.view()).collect()
    }

    /// Callbacks per second, outcomes and latency percentiles per command, and calls and errors
    /// per upstream, over the last minute ([`WINDOW`]).
    pub(crate) fn last_minute(&self) -> Minute {
        let now = std::time::Instant::now();
        let mut latencies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut out = Minute::default();
        let mut oldest = now;
        {
            let mut ring = self.lock();
            while ring
                .minute
                .front()
                .is_some_and(|t| now.duration_since(t.at) > WINDOW)
            {
                ring.minute.pop_front();
            }
            for t in &ring.minute {
                oldest = oldest.min(t.at);
                let c = out.commands.entry(t.command.clone()).or_default();
                c.count += 1;
                *c.outcomes.entry(t.outcome.to_owned()).or_default() += 1;
                latencies
                    .entry(t.command.clone())
                    .or_default()
                    .push(t.latency_ms);
                if let Some(u) = &t.upstream {
                    let u = out.upstreams.entry(u.clone()).or_default();
                    u.calls += 1;
                    u.errors += u64::from(t.error);
                }
            }
        }
        // A rate over less than a second would jump: at least one second.
        let span = now.duration_since(oldest).as_secs_f64().clamp(1.0, 60.0);
        for (command, c) in &mut out.commands {
            c.per_second = c.count as f64 / span;
            if let Some(list) = latencies.get_mut(command) {
                list.sort_by(f64::total_cmp);
                c.p50_ms = percentile(list, 0.50);
                c.p99_ms = percentile(list, 0.99);
            }
        }
        out
    }

    /// Callbacks per command since start.
    pub(crate) fn seen(&self) -> BTreeMap<String, u64> {
        self.lock().seen.clone()
    }

    /// New callbacks as they are recorded.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Kept>> {
        self.live.subscribe()
    }
}

/// Which records to show (`GET /admin/callbacks?command=…&outcome=…&limit=…`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Filter {
    /// Only this command.
    pub(crate) command: Option<String>,
    /// Only this outcome.
    pub(crate) outcome: Option<String>,
    /// At most this many.
    pub(crate) limit: Option<usize>,
}

impl Filter {
    /// Whether `record` passes.
    pub(crate) fn matches(&self, record: &Record) -> bool {
        self.command.as_ref().is_none_or(|c| *c == record.command)
            && self.outcome.as_ref().is_none_or(|o| *o == record.outcome)
    }
}

/// The envelope as JSON, its texts and override values redacted with `log.redact`.
/// The `q` quantile of sorted `values` (nearest rank); 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn envelope_view(bytes: &[u8]) -> Value {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return Value::Null;
    };
    if !redact() {
        return Value::Object(map);
    }
    let mut out = Map::new();
    for (k, v) in map {
        let keep = matches!(k.as_str(), "actionCode" | "errCode" | "nextCode")
            || v.as_str().is_some_and(str::is_empty);
        out.insert(k, if keep { v } else { Value::from(REDACTED) });
    }
    Value::Object(out)
}

/// The request body as JSON (string values redacted with `log.redact`), or as text.
fn body_view(bytes: &[u8]) -> Value {
    let parsed = serde_json::from_slice::<Value>(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()));
    if redact() { redacted(parsed) } else { parsed }
}

/// Every string and number below the top-level keys replaced by `<redacted>`, except the
/// command itself, so that the shape stays visible.
pub(crate) fn redacted(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "callbackCommand" {
                        v
                    } else {
                        redacted(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redacted).collect()),
        Value::Null | Value::Bool(_) => value,
        Value::String(_) | Value::Number(_) => Value::from(REDACTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(command: &'a str, envelope: &'a [u8]) -> Seen<'a> {
        Seen {
            command,
            known: true,
            operation_id: "op",
            route: "call default".into(),
            outcome: "continue",
            received: std::time::Instant::now(),
            upstream: Some("default"),
            grpc_status: Some("OK"),
            envelope,
            body: Some(bytes::Bytes::from_static(
                br#"{"callbackCommand":"c","groupID":"g1","n":3}"#,
            )),
            key: Some("k"),
        }
    }

    #[test]
    fn the_last_minute_counts_outcomes_percentiles_and_upstream_errors() {
        let inspector = Inspector::default();
        let cfg = InspectConfig {
            keep: 0,
            capture_bodies: false,
        };
        for _ in 0..3 {
            inspector.record(&cfg, seen("a", b"{}"));
        }
        let mut failed = seen("a", b"{}");
        failed.outcome = "failed-open";
        failed.grpc_status = Some("UNAVAILABLE");
        inspector.record(&cfg, failed);
        let mut spooled = seen("b", b"{}");
        spooled.outcome = "spooled";
        spooled.grpc_status = None;
        inspector.record(&cfg, spooled);
        let m = inspector.last_minute();
        let a = &m.commands["a"];
        assert_eq!(a.count, 4);
        assert_eq!(a.outcomes["continue"], 3);
        assert_eq!(a.outcomes["failed-open"], 1);
        assert!(a.p50_ms <= a.p99_ms);
        assert_eq!(m.commands["b"].outcomes["spooled"], 1);
        let up = &m.upstreams["default"];
        assert_eq!(
            (up.calls, up.errors),
            (4, 1),
            "a spooled callback calls nothing"
        );
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_counts_every_command() {
        let inspector = Inspector::default();
        let cfg = InspectConfig {
            keep: 3,
            capture_bodies: false,
        };
        let env = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;
        for i in 0..5 {
            inspector.record(&cfg, seen(if i % 2 == 0 { "a" } else { "b" }, env));
        }
        let all = inspector.recent(&Filter::default());
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 4, 3]);
        assert_eq!(inspector.seen()["a"], 3);
        assert!(all.iter().all(|r| r.request.is_none() && r.key.is_none()));
        let only_b = inspector.recent(&Filter {
            command: Some("b".into()),
            ..Filter::default()
        });
        assert_eq!(only_b.len(), 1);
    }

    #[test]
    fn bodies_and_texts_are_redacted_as_the_logs_are() {
        assert!(redact(), "on by default");
        let inspector = Inspector::default();
        let cfg = InspectConfig {
            keep: 10,
            capture_bodies: true,
        };
        let env = br#"{"actionCode":0,"errCode":20001,"errMsg":"bad word","errDlt":"","nextCode":1,"groupName":"x"}"#;
        inspector.record(&cfg, seen("c", env));
        let r = &inspector.recent(&Filter::default())[0];
        assert_eq!(r.envelope["errCode"], 20001);
        assert_eq!(r.envelope["errMsg"], REDACTED);
        assert_eq!(r.envelope["groupName"], REDACTED);
        assert_eq!(r.envelope["errDlt"], "");
        let request = r.request.as_ref().expect("captured");
        assert_eq!(request["callbackCommand"], "c");
        assert_eq!(request["groupID"], REDACTED);
        assert_eq!(r.key.as_deref(), Some(REDACTED));
    }
}
