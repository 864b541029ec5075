//! The operators' routes: `/healthz` (the process serves), `/readyz` (this gateway can answer),
//! `/metrics`, `/admin/upstreams` (each upstream's members, health, breaker and calls in flight),
//! `/admin/callbacks` and `/admin/callbacks/stream` (the inspector's recent callbacks, and new
//! ones live as server-sent events), the operator console (`super::console`, with
//! `POST /admin/reload`), and the spool admin API (`crate::spool::admin`) when a spool is open.

use crate::gateway::Gateway;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The admin routes of `gw`: health open for probes; `/admin/*` behind the admin token (when one
/// is configured), and `/metrics` too with `admin_protect_metrics`.
pub(super) fn router(gw: &Gateway) -> Router {
    let token = || axum::middleware::from_fn_with_state(gw.clone(), super::auth::admin_token);
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(gw.clone())
        // The gateway's own grpc.health.v1 (h2c), for meshes that probe gRPC: SERVING when ready.
        .route_service(
            "/grpc.health.v1.Health/{*method}",
            gw.health().grpc_service(),
        );
    let metrics = Router::new()
        .route("/metrics", get(render_metrics))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            super::auth::metrics_token,
        ))
        .with_state(gw.clone());
    let upstreams = Router::new()
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/callbacks", get(callbacks))
        .route("/admin/config", get(config))
        .route("/admin/callbacks/stream", get(callback_stream))
        .layer(token())
        .with_state(gw.clone());
    let router = health.merge(metrics).merge(upstreams);
    match gw.spool() {
        Some(spool) => router.merge(crate::spool::admin::router(spool.clone()).layer(token())),
        None => router,
    }
}

/// 200 `ready` (with a line per degraded part that does not stop the gateway answering: an
/// upstream down, an unreachable Redis spool), or 503 with one line per reason (not listening
/// yet, shutting down).
async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.health().readiness() {
        Ok(()) => {
            let mut body = String::from("ready\n");
            let mut notes: Vec<String> = gw
                .spool()
                .and_then(|s| s.health().err())
                .map(|e| format!("spool: {e}"))
                .into_iter()
                .collect();
            notes.extend(gw.health().upstream_notes(gw.snapshot().generation));
            for note in notes {
                body.push_str("degraded, still answering: ");
                body.push_str(&note);
                body.push('\n');
            }
            (StatusCode::OK, body).into_response()
        }
        Err(problems) => {
            let mut body = String::from("not ready\n");
            for p in problems {
                body.push_str(&p);
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

async fn render_metrics(State(gw): State<Gateway>) -> Response {
    match gw.metrics() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// `GET /admin/upstreams`: per upstream of the current snapshot, whether its last checks found
/// it up, its breaker, its calls in flight, and each member's connection and last health check.
async fn upstreams(State(gw): State<Gateway>) -> Response {
    axum::Json(serde_json::json!({ "upstreams": upstream_views(&gw) })).into_response()
}

/// Each upstream of the current snapshot as `/admin/upstreams` shows it, by name.
pub(super) fn upstream_views(gw: &Gateway) -> Vec<serde_json::Value> {
    let snapshot = gw.snapshot();
    let health = gw.health();
    let mut names: Vec<&String> = snapshot.upstreams.keys().collect();
    names.sort();
    let now = std::time::SystemTime::now();
    let list: Vec<serde_json::Value> = names
        .into_iter()
        .filter_map(|name| {
            let upstream = snapshot.upstreams.get(name)?;
            let members: Vec<serde_json::Value> = upstream
                .client()
                .channel()
                .members()
                .into_iter()
                .map(|m| {
                    let check = m.check.as_ref();
                    serde_json::json!({
                        "address": m.address,
                        "connected": m.connected,
                        "in_rotation": m.in_rotation,
                        "health": check.map(|c| c.result.text().to_owned()),
                        "checked_at": check.map(|c| humantime::format_rfc3339_millis(c.at).to_string()),
                        "checked_ago_ms": check.map(|c| {
                            now.duration_since(c.at).unwrap_or_default().as_millis() as u64
                        }),
                    })
                })
                .collect();
            Some(serde_json::json!({
                "name": name,
                "checked": snapshot.health_targets.iter().any(|t| &t.name == name),
                "up": health.upstream_up(snapshot.generation, name),
                "breaker": upstream.breaker_state().name(),
                "in_flight": upstream.in_flight(),
                "members": members,
            }))
        })
        .collect();
    list
}

/// The query of `GET /admin/callbacks`: the filter, and `format=jsonl` for a capture.
#[derive(Debug, Default, serde::Deserialize)]
struct CallbacksQuery {
    command: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

/// `GET /admin/callbacks`: the recent callbacks, newest first, with the count of every command
/// seen and the commands never seen; `format=jsonl`: one record per line, oldest first (a
/// capture for `replay`).
async fn callbacks(
    State(gw): State<Gateway>,
    axum::extract::Query(q): axum::extract::Query<CallbacksQuery>,
) -> Response {
    let inspector = gw.inspector();
    let mut recent = inspector.recent(&crate::inspect::Filter {
        command: q.command,
        outcome: q.outcome,
        limit: q.limit,
    });
    if q.format.as_deref() == Some("jsonl") {
        recent.reverse();
        let mut body = String::new();
        for r in &recent {
            if let Ok(line) = serde_json::to_string(r) {
                body.push_str(&line);
                body.push('\n');
            }
        }
        return ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    }
    let seen = inspector.seen();
    let never_seen: Vec<&str> = gw
        .catalog()
        .entries()
        .map(|e| e.row.command)
        .filter(|c| !seen.contains_key(*c))
        .collect();
    axum::Json(serde_json::json!({
        "keep": gw.snapshot().inspect.keep,
        "capture_bodies": gw.snapshot().inspect.capture_bodies,
        "callbacks": recent,
        "seen": seen,
        "never_seen": never_seen,
    }))
    .into_response()
}

/// `GET /admin/callbacks/stream`: every new callback (matching `command`/`outcome`) as one
/// server-sent event of JSON, as it is answered; a comment every 15 s keeps proxies open.
async fn callback_stream(
    State(gw): State<Gateway>,
    axum::extract::Query(filter): axum::extract::Query<crate::inspect::Filter>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let rx = gw.inspector().subscribe();
    let stream = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(kept) => {
                    let record = kept.view();
                    if !filter.matches(&record) {
                        continue;
                    }
                    let event = Event::default()
                        .event("callback")
                        .json_data(&record)
                        .unwrap_or_else(|_| Event::default().comment("unserialisable"));
                    return Some((Ok::<_, std::convert::Infallible>(event), (rx, filter)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let event = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(event), (rx, filter)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// `GET /admin/config`: the configuration the running snapshot uses (secrets `<redacted>`), when
/// it was loaded, by what (`start`, `file change`, `SIGHUP`), and the keys the last reload changed.
async fn config(State(gw): State<Gateway>) -> Response {
    let loaded = gw.loaded();
    axum::Json(serde_json::json!({
        "loaded_at": humantime::format_rfc3339_millis(loaded.at).to_string(),
        "trigger": loaded.trigger,
        "changed": loaded.changed,
        "config": &*gw.snapshot().config,
    }))
    .into_response()
}
