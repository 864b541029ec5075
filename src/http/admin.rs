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
    let router = health.merge(metrics);
    match gw.spool() {
        Some(spool) => router.merge(crate::spool::admin::router(spool.clone()).layer(token())),
        None => router,
    }
}

/// 200 `ready`, or 503 with one line per reason (which upstream reports what).
async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.health().readiness(&gw) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
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
