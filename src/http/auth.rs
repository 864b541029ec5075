//! Inbound authentication as middleware: the callback port's checks ([`super::inbound`]) and the
//! bearer token of the admin API. A refusal is a short 401/403, one log line with the source
//! address (never the secret), and a count in `gateway_auth_refused_total{reason}`. A refused
//! request never reaches the pipeline, an upstream or the spool.

use super::inbound::matches_any;
use crate::gateway::Gateway;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

fn refuse(status: StatusCode, reason: &'static str, source: Option<IpAddr>, uri: &Uri) -> Response {
    metrics::counter!("gateway_auth_refused_total", "reason" => reason).increment(1);
    // The last path segment only: the first may be a mistyped secret.
    let command: String = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect();
    tracing::warn!(
        source = %source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
        reason,
        %command,
        "callback refused by inbound auth"
    );
    let text = match status {
        StatusCode::FORBIDDEN => "forbidden\n",
        _ => "unauthorized\n",
    };
    (status, text).into_response()
}

/// The callback port's middleware.
pub(super) async fn callback_auth(
    State(gw): State<Gateway>,
    mut req: Request,
    next: Next,
) -> Response {
    let snapshot = gw.snapshot();
    // The callback handler works on this same snapshot.
    req.extensions_mut().insert(snapshot.clone());
    let Some(auth) = snapshot.auth.as_deref() else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let source = auth.source(peer, req.headers());
    if !auth.allow.is_empty()
        && !source.is_some_and(|ip| auth.allow.iter().any(|n| n.contains(&ip)))
    {
        return refuse(StatusCode::FORBIDDEN, "source", source, req.uri());
    }
    if let Some((name, values)) = &auth.header {
        let ok = req
            .headers()
            .get(name)
            .is_some_and(|v| matches_any(v.as_bytes(), values));
        if !ok {
            return refuse(StatusCode::UNAUTHORIZED, "header", source, req.uri());
        }
    }
    if !auth.path_secrets.is_empty() {
        let path = req.uri().path();
        let rest = path.strip_prefix('/').unwrap_or(path);
        let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if !matches_any(first.as_bytes(), &auth.path_secrets) {
            return refuse(StatusCode::UNAUTHORIZED, "path", source, req.uri());
        }
        // Strip the secret before routing: the rest is `<any prefix>/<command>`.
        let mut stripped = format!("/{tail}");
        if let Some(q) = req.uri().query() {
            stripped.push('?');
            stripped.push_str(q);
        }
        match stripped.parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return refuse(StatusCode::UNAUTHORIZED, "path", source, req.uri()),
        }
    }
    next.run(req).await
}

/// The admin API's middleware: `Authorization: Bearer <admin token>` when one is configured.
pub(super) async fn admin_token(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    check_token(&gw, req, next).await
}

/// `/metrics`: the admin token too when `admin_protect_metrics` is set.
pub(super) async fn metrics_token(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    if !gw.snapshot().protect_metrics {
        return next.run(req).await;
    }
    check_token(&gw, req, next).await
}

async fn check_token(gw: &Gateway, req: Request, next: Next) -> Response {
    let snapshot = gw.snapshot();
    let Some(token) = snapshot.admin_token.as_ref() else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| matches_any(p.as_bytes(), std::slice::from_ref(token))) {
        return next.run(req).await;
    }
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    metrics::counter!("gateway_auth_refused_total", "reason" => "admin_token").increment(1);
    tracing::warn!(
        source = %source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
        path = %req.uri().path().chars().take(120).collect::<String>(),
        "admin request refused: missing or wrong bearer token"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "unauthorized: send Authorization: Bearer <admin token>\n",
    )
        .into_response()
}
