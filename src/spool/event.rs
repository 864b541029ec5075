//! The events as the spool's users see them: what is appended ([`NewEvent`]), what is stored
//! and listed ([`StoredEvent`], [`StoredEventRef`], [`Place`]), and what the operator commands
//! choose and report ([`Which`], [`Select`], [`Progress`], [`SpoolStats`]). Shared by both
//! backends.

use serde::{Deserialize, Serialize};

use super::fault::Attempt;

/// An after-callback to store and deliver.
///
/// It keeps what OpenIM sent (the command, the payload, the ids), not where it goes: the
/// [`Deliver`](crate::spool::Deliver) implementation resolves the upstream, method and deadline from the current
/// configuration at each attempt, so moving or renaming an upstream never strands pending events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEvent {
    /// OpenIM callback command, e.g. `callbackAfterQuitGroupCommand`.
    pub command: String,
    /// `Some` => delivered strictly one after another with the other events of the same key, in
    /// append order; `None` => delivered in parallel with everything else.
    pub order_key: Option<String>,
    /// OpenIM's operation id, passed on as `openim-operation-id`.
    pub operation_id: String,
    /// The `key` query parameter, passed on as `openim-key`.
    pub openim_key: Option<String>,
    /// The protobuf-encoded request message.
    pub payload: Vec<u8>,
    /// The W3C trace context of the callback's span: every delivery attempt is its child.
    pub trace: Option<crate::telemetry::TraceContext>,
}

/// An event as stored in the spool, handed to [`Deliver::deliver`](crate::spool::Deliver::deliver) and returned by [`Spool::list`](crate::spool::Spool::list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Spool-local id, increasing in append order.
    pub id: u64,
    /// Stable across retries and restarts, unique across spool files: `openim-delivery-id`.
    pub delivery_id: String,
    /// Attempts made so far (persisted: continues after a restart, reset by a replay).
    pub attempts: u32,
    /// When the gateway first stored the event, in milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    /// The error of the last failed attempt; for a dead letter, why it was given up.
    pub last_error: Option<String>,
    /// The failed attempts, oldest first: the latest [`HISTORY_MAX`](crate::spool::HISTORY_MAX) since the event was stored
    /// or last replayed (empty in records written before the history was kept).
    pub history: Vec<Attempt>,
    /// The event itself.
    pub event: NewEvent,
}

/// What [`Spool::append`](crate::spool::Spool::append) returns once the event is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEventRef {
    /// Spool-local id of the stored event (of the local buffer when `place` says so).
    pub id: u64,
    /// The delivery id the upstream will see.
    pub delivery_id: String,
    /// Where the event is now.
    pub place: Place,
}

/// Where an acknowledged after-event is (see [`StoredEventRef`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the spool (the redb file, or Redis).
    Spool,
    /// In this replica's local buffer, because Redis could not take it; moved into Redis once
    /// it answers.
    Buffer,
    /// Not stored: Redis could not take it and `when_unreachable: sync` delivered it at once.
    Delivered,
}

impl Place {
    /// The callback's log line for an event acknowledged here.
    pub fn message(self) -> &'static str {
        match self {
            Place::Spool => "after-event spooled",
            Place::Buffer => "after-event spooled in the local buffer (redis unreachable)",
            Place::Delivered => "after-event delivered synchronously (redis unreachable)",
        }
    }
}

/// Which part of the spool an operator command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// Events waiting for (or in) delivery.
    Pending,
    /// Dead letters: events given up on, kept for an operator.
    Dead,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Pending => "pending",
            Which::Dead => "dead",
        })
    }
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct SpoolStats {
    /// Events waiting for delivery (including those in flight).
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Approximate bytes of all stored records (pending and dead), compared with `max_bytes`.
    pub bytes: u64,
    /// Delivery attempts running now.
    pub in_flight: u64,
    /// Write transactions committed since the spool was opened (one per group commit).
    pub commits: u64,
    /// Redis backend: after-events in this replica's local buffer, waiting to be moved into
    /// Redis (acknowledged, stored on this replica's disk only). Always 0 with redb.
    #[serde(default)]
    pub buffered: u64,
    /// `true` when the shared counters (`pending`, `dead`, `bytes`) are the last ones read,
    /// because Redis does not answer now; `buffered` is always current.
    #[serde(default)]
    pub stale: bool,
}

/// Which dead letters a replay takes: all, or those of one command, one id, and first stored
/// within a time range (each given bound narrows the choice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Select {
    /// Only dead letters of this callback command.
    pub command: Option<String>,
    /// Only the dead letter with this spool id.
    pub id: Option<u64>,
    /// Only dead letters first stored at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only dead letters first stored before this time (milliseconds since the Unix epoch).
    pub until_ms: Option<u64>,
}

impl Select {
    /// All dead letters, or those of `command`.
    pub fn command(command: Option<&str>) -> Self {
        Self {
            command: command.map(str::to_owned),
            ..Self::default()
        }
    }

    /// How the choice reads in a message: ` of C, id 7, first stored from … until …`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.command {
            parts.push(format!("of {c}"));
        }
        if let Some(id) = self.id {
            parts.push(format!("with id {id}"));
        }
        if let Some(s) = self.since_ms {
            parts.push(format!("first stored from {}", utc(s)));
        }
        if let Some(u) = self.until_ms {
            parts.push(format!("first stored before {}", utc(u)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" {}", parts.join(", "))
        }
    }
}

/// The result of one step of a long replay or purge (see [`Spool::replay_dead_chunk`](crate::spool::Spool::replay_dead_chunk)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Progress {
    /// Events replayed or purged by this step.
    pub count: u64,
    /// `Some(id)`: more to do, continue after this id; `None`: done.
    pub next_after: Option<u64>,
}

/// `2024-05-01T12:34:56Z` from milliseconds since the Unix epoch.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
