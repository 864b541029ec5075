//! The HTTP front end: the callback and admin routers, built here with one layer stack, and the
//! accept loop for both ports (`serve.rs`).
//!
//! - `mod.rs` (this file): [`callback_router`], [`admin_router`], [`app`] (both on one port), the
//!   shared `layers` stack, and the callback handler (`POST <any prefix>/<command>`).
//! - `admin.rs`: `/healthz`, `/readyz`, `/metrics`, `/admin/upstreams` (and the spool admin API,
//!   from `crate::spool`).
//! - `console.rs`: the operator console (`/admin/console`, its JSON and actions, `/admin/reload`).
//! - `serve.rs`: the accept loop of the callback port and the optional admin port, with one
//!   graceful shutdown for both.

mod admin;
pub mod auth;
mod body;
mod conn;
mod console;
pub mod inbound;
mod serve;
pub mod tls;

pub use serve::{Ports, ServeOptions, serve};

use crate::gateway::{Gateway, Snapshot};
use crate::pipeline::{self, Callback};
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

/// The one layer stack every router gets; where inbound auth, trace extraction and limits go.
/// Today it holds tower-http's `TraceLayer` (a request span at debug level). Its failure event
/// stays at debug too: the only 5xx answers are the probes' (`/readyz` 503 while not ready or
/// draining), which are answers, not errors; each callback logs its own line.
fn layers(router: Router) -> Router {
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG));
    router.layer(tower::ServiceBuilder::new().layer(trace))
}

/// The callbacks only: every POST path is `<any prefix>/<command>`, behind the inbound checks.
pub fn callback_router(gw: &Gateway) -> Router {
    layers(callbacks(gw))
}

/// Health, metrics and the spool admin API, for the operators' port (`admin_listen`).
pub fn admin_router(gw: &Gateway) -> Router {
    layers(admin::router(gw).merge(console::router(gw)))
}

/// Everything on one port: the callbacks plus the admin routes (which keep their own token
/// check; health and metrics stay open for probes). Used when no `admin_listen` is configured.
pub fn app(gw: &Gateway) -> Router {
    layers(
        admin::router(gw)
            .merge(console::router(gw))
            .merge(callbacks(gw)),
    )
}

fn callbacks(gw: &Gateway) -> Router {
    Router::new()
        .fallback(callback)
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            auth::callback_auth,
        ))
        .with_state(gw.clone())
}

/// The command is the last path segment: `<any prefix>/<command>`.
fn command_of(uri: &Uri) -> &str {
    uri.path().rsplit('/').next().unwrap_or("")
}

/// The URL-decoded `key` query parameter. `contenttype` and anything else are ignored.
fn key_of(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
}

async fn callback(
    State(gw): State<Gateway>,
    method: http::Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    snapshot: Option<axum::Extension<Arc<Snapshot>>>,
    body: Body,
) -> Response {
    let started = Instant::now();
    if method != http::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "OpenIM callbacks are POST requests\n",
        )
            .into_response();
    }
    if command_of(&uri) == crate::doctor::PROBE_COMMAND {
        // `doctor --probe`: it came through OpenIM's url and the inbound checks; no service.
        tracing::info!(path = %uri.path().chars().take(200).collect::<String>(),
            "doctor probe reached the gateway (answered here, no service called)");
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json; charset=utf-8"),
                (
                    http::HeaderName::from_static(crate::doctor::PROBE_HEADER),
                    "probe",
                ),
            ],
            crate::envelope::Envelope::allow().to_bytes(),
        )
            .into_response();
    }
    // The snapshot the inbound checks used (one per request, first layer to last).
    let snapshot = snapshot.map_or_else(|| gw.snapshot(), |s| s.0);
    let _in_flight = InFlight::enter();
    // A slot before any work: past max_in_flight the body is drained (not kept) and the gate's
    // `Shed` rule answers with the command's failure policy.
    let permit = snapshot.in_flight.clone().try_acquire_owned().ok();
    // Read the body on every path, also when the answer does not need it: an unread body makes
    // hyper close the keep-alive connection, and OpenIM's client would see a broken pipe.
    let read = body::read(
        body,
        snapshot.max_body_bytes,
        permit.is_some(),
        &snapshot.limits,
    )
    .await;
    let close = read.close;
    let body = read.outcome;
    let inspect = &snapshot.inspect;
    let captured = if inspect.capture_bodies && inspect.keep > 0 {
        body.as_ref().ok().cloned()
    } else {
        None
    };
    let key = key_of(query.as_deref());
    let captured_key = captured.as_ref().and(key.clone());
    let cb = Callback {
        command: command_of(&uri).to_owned(),
        path: uri.path().to_owned(),
        key,
        header_operation_id: headers
            .get("operationID")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        trace: crate::telemetry::TraceContext::from_headers(&headers),
        received: started,
        admitted: permit.is_some(),
        body,
    };
    let inspect = snapshot.inspect.clone();
    let exit = pipeline::run(&gw, snapshot, cb).await;
    drop(permit);
    let env_bytes = exit.render().bytes;
    gw.inspector().record(
        &inspect,
        crate::inspect::Seen {
            command: exit.command().unwrap_or_else(|| command_of(&uri)),
            known: exit.command().is_some(),
            operation_id: &exit.operation_id,
            route: exit.route(),
            outcome: exit.decision.outcome(),
            received: started,
            upstream: exit.upstream(),
            grpc_status: exit.grpc_status.map(crate::telemetry::grpc_code_name),
            envelope: &env_bytes,
            body: captured,
            key: captured_key.as_deref(),
        },
    );
    if let Some(command) = exit.command() {
        metrics::counter!("gateway_callbacks_total", "command" => command, "outcome" => exit.decision.outcome())
            .increment(1);
        metrics::histogram!("gateway_callback_duration_seconds", "command" => command)
            .record(started.elapsed().as_secs_f64());
    }
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        env_bytes,
    )
        .into_response();
    if close {
        // The rest of the body was not read: close after the answer (with a lingering close).
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}

/// Counts a callback in `gateway_in_flight` while it is handled.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("gateway_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("gateway_in_flight").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_the_last_path_segment() {
        let u: Uri = "/callbackExample/callbackAfterQuitGroupCommand?contenttype=json"
            .parse()
            .unwrap();
        assert_eq!(command_of(&u), "callbackAfterQuitGroupCommand");
        let u: Uri = "//callbackX".parse().unwrap();
        assert_eq!(command_of(&u), "callbackX");
    }

    #[test]
    fn key_is_url_decoded_and_contenttype_ignored() {
        let q = "contenttype=json&key=eyJzZW5kSUQiOiIifQ%3D%3D";
        assert_eq!(key_of(Some(q)).as_deref(), Some("eyJzZW5kSUQiOiIifQ=="));
        assert_eq!(key_of(Some("contenttype=json")), None);
        assert_eq!(key_of(None), None);
    }
}
