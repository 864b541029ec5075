//! The stored form of an event, shared by both backends: [`Record`], the protobuf message a redb
//! table or a Redis hash holds (with its attempt history), [`RecordHead`] (its scheduling and
//! filtering fields), and the clock both stamp records with ([`now_ms`]).

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::event::{NewEvent, Select, StoredEvent};
use super::fault::{self, Attempt};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One stored event. Field numbers are the file format: never renumber or reuse one.
///
/// Tags 3 (`method`), 4 (`upstream`) and 9 (`timeout_ms`) were written by 0.1.0, which fixed an
/// event's route when it was received; the route is now resolved at each delivery, so they are no
/// longer written, and when a 0.1.0 record is read they are skipped like any unknown field
/// (`tests/data/spool-v0.1.0` is such a file).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Record {
    #[prost(string, tag = "1")]
    pub(crate) delivery_id: String,
    #[prost(string, tag = "2")]
    pub(crate) command: String,
    #[prost(string, optional, tag = "5")]
    pub(crate) order_key: Option<String>,
    #[prost(string, tag = "6")]
    pub(crate) operation_id: String,
    #[prost(string, optional, tag = "7")]
    pub(crate) openim_key: Option<String>,
    #[prost(bytes = "vec", tag = "8")]
    pub(crate) payload: Vec<u8>,
    #[prost(uint32, tag = "10")]
    pub(crate) attempts: u32,
    #[prost(uint64, tag = "11")]
    pub(crate) first_seen_ms: u64,
    #[prost(string, optional, tag = "12")]
    pub(crate) last_error: Option<String>,
    /// Start of the age that `max_age` limits: `first_seen_ms`, or the time of the last replay.
    #[prost(uint64, tag = "13")]
    pub(crate) since_ms: u64,
    /// The callback's W3C `traceparent` (absent in records of 0.1.0 and of untraced callbacks).
    #[prost(string, optional, tag = "14")]
    pub(crate) traceparent: Option<String>,
    /// The callback's W3C `tracestate`.
    #[prost(string, optional, tag = "15")]
    pub(crate) tracestate: Option<String>,
    /// The latest failed attempts, oldest first (at most [`fault::HISTORY_MAX`]; absent in
    /// records written before the history was kept, which decode with an empty one).
    #[prost(message, repeated, tag = "16")]
    pub(crate) history: Vec<Attempt>,
}

/// The fields of [`Record`] needed to schedule and filter, decoded without copying the payload.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RecordHead {
    #[prost(string, tag = "2")]
    pub(crate) command: String,
    #[prost(string, optional, tag = "5")]
    pub(crate) order_key: Option<String>,
    #[prost(uint64, tag = "11")]
    pub(crate) first_seen_ms: u64,
}

impl Record {
    pub(crate) fn new(ev: NewEvent, now_ms: u64) -> Record {
        let (traceparent, tracestate) = match ev.trace {
            Some(t) => (
                Some(t.traceparent),
                Some(t.tracestate).filter(|s| !s.is_empty()),
            ),
            None => (None, None),
        };
        Record {
            delivery_id: String::new(),
            command: ev.command,
            order_key: ev.order_key,
            operation_id: ev.operation_id,
            openim_key: ev.openim_key,
            payload: ev.payload,
            attempts: 0,
            first_seen_ms: now_ms,
            last_error: None,
            since_ms: now_ms,
            traceparent,
            tracestate,
            history: Vec::new(),
        }
    }

    /// Records a failed attempt: its count, the text of `last_error`, and the history entry.
    pub(crate) fn note_attempt(&mut self, attempt: Attempt, last_error: String) {
        self.attempts = attempt.number;
        self.last_error = Some(last_error);
        fault::push(&mut self.history, attempt);
    }

    /// Back to a fresh start for a replay: no attempts, no error, no history, aged from `now_ms`.
    pub(crate) fn reset_for_replay(&mut self, now_ms: u64) {
        self.attempts = 0;
        self.last_error = None;
        self.history.clear();
        self.since_ms = now_ms;
    }

    pub(crate) fn into_stored(self, id: u64) -> StoredEvent {
        StoredEvent {
            id,
            delivery_id: self.delivery_id,
            attempts: self.attempts,
            first_seen_ms: self.first_seen_ms,
            last_error: self.last_error,
            history: self.history,
            event: NewEvent {
                command: self.command,
                order_key: self.order_key,
                operation_id: self.operation_id,
                openim_key: self.openim_key,
                payload: self.payload,
                trace: self
                    .traceparent
                    .map(|traceparent| crate::telemetry::TraceContext {
                        traceparent,
                        tracestate: self.tracestate.unwrap_or_default(),
                    }),
            },
        }
    }
}

/// How a stored record that does not decode is shown to operators.
pub(crate) fn undecodable(id: u64, len: usize, err: &prost::DecodeError) -> StoredEvent {
    StoredEvent {
        id,
        delivery_id: String::new(),
        attempts: 0,
        first_seen_ms: 0,
        last_error: Some(format!("record of {len} bytes does not decode: {err}")),
        history: Vec::new(),
        event: NewEvent {
            command: "<undecodable>".to_owned(),
            ..NewEvent::default()
        },
    }
}

/// Whether a record belongs to `command` (`None` matches everything, also undecodable records).
pub(crate) fn matches(command: Option<&str>, raw: &[u8]) -> bool {
    match command {
        None => true,
        Some(c) => RecordHead::decode(raw).is_ok_and(|h| h.command == c),
    }
}

/// Choosing stored records by their head (the replay of dead letters).
impl Select {
    /// Whether the stored record `raw` with spool id `id` is chosen. Without a command or time
    /// bound, undecodable records are chosen too (as a plain replay always did).
    pub(crate) fn matches(&self, id: u64, raw: &[u8]) -> bool {
        if self.id.is_some_and(|want| want != id) {
            return false;
        }
        if self.command.is_none() && self.since_ms.is_none() && self.until_ms.is_none() {
            return true;
        }
        let Ok(head) = RecordHead::decode(raw) else {
            return false;
        };
        self.command.as_deref().is_none_or(|c| head.command == c)
            && self.since_ms.is_none_or(|s| head.first_seen_ms >= s)
            && self.until_ms.is_none_or(|u| head.first_seen_ms < u)
    }
}
