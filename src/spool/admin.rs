//! The spool's admin HTTP API on a running gateway (which holds the file lock): what
//! `spool … --admin URL` talks to. Bind it to a private address; it has no authentication.
//!
//! - `GET /admin/spool`: [`SpoolStats`]
//! - `GET /admin/spool/events?which=pending|dead&limit=N`: `[EventView]`, oldest first
//! - `GET /admin/spool/count?which=pending|dead&command=C`: `{"count": n}`
//! - `POST /admin/spool/replay?command=C[&id=ID&since=MS&until=MS&after=POS&max=N]`: [`Progress`];
//!   without `max` all at once; `id`, `since`/`until` (first stored, ms since the Unix epoch)
//!   narrow the choice ([`Select`])
//! - `POST /admin/spool/purge?which=dead|pending&command=C[&after=ID&max=N]`: [`Progress`]
//!
//! Errors answer `{"error": "…"}` with status 500 (503 once the spool is shut down); a bad query
//! answers 400.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::SpoolError;
use super::event::{Progress, Select, SpoolStats, StoredEvent, Which};
use super::facade::Spool;
use super::fault::Attempt;

/// Most events one `GET /admin/spool/events` returns.
pub const MAX_LIST: usize = 10_000;

/// An event as the admin API and `spool list --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Spool-local id.
    pub id: u64,
    /// The `openim-delivery-id` the upstream sees.
    pub delivery_id: String,
    /// OpenIM callback command.
    pub command: String,
    /// Ordering key, if any.
    pub order_key: Option<String>,
    /// OpenIM operation id.
    pub operation_id: String,
    /// OpenIM's `key` query parameter, if any.
    pub openim_key: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// First stored, milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    /// Last error, or why the event is a dead letter.
    pub last_error: Option<String>,
    /// The failed attempts, oldest first (the latest [`super::fault::HISTORY_MAX`]), each with its
    /// time, gRPC status code name or local failure kind, and whole message.
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// Size of the protobuf request.
    pub payload_bytes: usize,
    /// The protobuf request, hex-encoded.
    pub payload_hex: String,
}

impl From<&StoredEvent> for EventView {
    fn from(e: &StoredEvent) -> Self {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(e.event.payload.len() * 2);
        for b in &e.event.payload {
            let _ = write!(hex, "{b:02x}");
        }
        EventView {
            id: e.id,
            delivery_id: e.delivery_id.clone(),
            command: e.event.command.clone(),
            order_key: e.event.order_key.clone(),
            operation_id: e.event.operation_id.clone(),
            openim_key: e.event.openim_key.clone(),
            attempts: e.attempts,
            first_seen_ms: e.first_seen_ms,
            last_error: e.last_error.clone(),
            history: e.history.clone(),
            payload_bytes: e.event.payload.len(),
            payload_hex: hex,
        }
    }
}

/// The answer of `GET /admin/spool/count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountView {
    /// Matching events.
    pub count: u64,
}

/// The admin routes, to merge into the gateway's admin router.
pub fn router(spool: Spool) -> Router {
    Router::new()
        .route("/admin/spool", get(stats))
        .route("/admin/spool/events", get(events))
        .route("/admin/spool/count", get(count))
        .route("/admin/spool/replay", post(replay))
        .route("/admin/spool/purge", post(purge))
        .with_state(spool)
}

#[derive(Deserialize)]
struct EventsQuery {
    which: Option<Which>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct CountQuery {
    which: Which,
    command: Option<String>,
}

#[derive(Deserialize)]
struct ReplayQuery {
    command: Option<String>,
    id: Option<u64>,
    since: Option<u64>,
    until: Option<u64>,
    after: Option<u64>,
    max: Option<usize>,
}

#[derive(Deserialize)]
struct PurgeQuery {
    which: Which,
    command: Option<String>,
    after: Option<u64>,
    max: Option<usize>,
}

struct ApiError(SpoolError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            SpoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response()
    }
}

/// Runs a blocking spool operation off the async workers.
async fn blocking<T: Send + 'static>(
    spool: Spool,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&spool))
        .await
        .map_err(|e| {
            ApiError(SpoolError::Storage {
                path: std::path::PathBuf::new(),
                detail: format!("admin task failed: {e}"),
            })
        })?
        .map_err(ApiError)
}

async fn stats(State(spool): State<Spool>) -> Result<Json<SpoolStats>, ApiError> {
    Ok(Json(blocking(spool, Spool::stats_now).await?))
}

async fn events(
    State(spool): State<Spool>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let which = q.which.unwrap_or(Which::Pending);
    let limit = q.limit.unwrap_or(20).min(MAX_LIST);
    let list = blocking(spool, move |s| s.list(which, limit)).await?;
    Ok(Json(list.iter().map(EventView::from).collect()))
}

async fn count(
    State(spool): State<Spool>,
    Query(q): Query<CountQuery>,
) -> Result<Json<CountView>, ApiError> {
    let count = blocking(spool, move |s| s.count(q.which, q.command.as_deref())).await?;
    Ok(Json(CountView { count }))
}

async fn replay(
    State(spool): State<Spool>,
    Query(q): Query<ReplayQuery>,
) -> Result<Json<Progress>, ApiError> {
    let select = Select {
        command: q.command,
        id: q.id,
        since_ms: q.since,
        until_ms: q.until,
    };
    let chunk = blocking(spool, move |s| match q.max {
        Some(max) => s.replay_dead_chunk(&select, q.after, max),
        None => s.replay_selected(&select).map(|count| Progress {
            count,
            next_after: None,
        }),
    })
    .await?;
    Ok(Json(chunk))
}

async fn purge(
    State(spool): State<Spool>,
    Query(q): Query<PurgeQuery>,
) -> Result<Json<Progress>, ApiError> {
    let chunk = blocking(spool, move |s| match q.max {
        Some(max) => s.purge_chunk(q.which, q.command.as_deref(), q.after, max),
        None => s
            .purge(q.which, q.command.as_deref())
            .map(|count| Progress {
                count,
                next_after: None,
            }),
    })
    .await?;
    Ok(Json(chunk))
}
