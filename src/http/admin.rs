//! The operators' routes: `/healthz` (the process serves), `/readyz` (this gateway can answer),
//! `/metrics`, `/admin/upstreams` (each upstream's members, health, breaker and calls in flight)
//! and the spool admin API (`crate::spool::admin`) when a spool is open.

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
            for note in gw.health().notes(&gw) {
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
                "up": health.upstream_up(&gw, name),
                "breaker": upstream.breaker_state().name(),
                "in_flight": upstream.in_flight(),
                "members": members,
            }))
        })
        .collect();
    axum::Json(serde_json::json!({ "upstreams": list })).into_response()
}
