//! The operators' routes: `/healthz` (the process serves), `/readyz`, `/metrics`, and the spool
//! admin API (`crate::spool::admin`) when a spool is open.

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
        .route("/readyz", get(readyz));
    let metrics = Router::new()
        .route("/metrics", get(render_metrics))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            super::auth::metrics_token,
        ))
        .with_state(gw.clone());
    let router = health.merge(metrics);
    match gw.spool() {
        Some(spool) => router.merge(crate::spool::admin::router(spool.clone()).layer(token())),
        None => router,
    }
}

async fn readyz() -> &'static str {
    "ready"
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
