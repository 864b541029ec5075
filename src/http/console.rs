//! The operator console (issue #23): one page on the admin router that shows the gateway live
//! and lets an operator act on the spool and reload the configuration. This module owns the
//! page and its assets (`console/*`, embedded with `include_str!`), the JSON it reads
//! (`/admin/console/session`, `/summary`, `/dead`) and the actions it posts
//! (`/admin/console/replay`, `/purge`, `/drop`, and `POST /admin/reload`).
//!
//! Safe by construction: only the page shell and its two static files load without the admin
//! token (they hold no data); everything else is behind the token. Actions are POSTs that also
//! need the per-process anti-CSRF value the page reads from `/admin/console/session` and sends
//! back in `X-Console-CSRF` (403 without it). No CORS headers are ever sent; a cross-origin
//! `Origin` is refused. Every answer carries a Content-Security-Policy allowing only the page's
//! own script and style, and the script renders data with `textContent` only. Every action is
//! logged with its source address and counted in `gateway_console_actions_total`.

use crate::gateway::Gateway;
use crate::spool::{Select, Spool, SpoolError, Which};
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The Content-Security-Policy of every console answer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// The header the page echoes the anti-CSRF value in.
const CSRF_HEADER: &str = "x-console-csrf";

/// Dead letters the console lists, at most.
const MAX_DEAD: usize = 200;
/// Pending events looked at for the retrying count and the oldest age.
const PENDING_SCAN: usize = 500;

#[derive(Clone)]
struct Console {
    gw: Gateway,
    /// The anti-CSRF value (hex); empty when no random value could be had (then every action
    /// is refused).
    csrf: Arc<str>,
    /// Samples of `gateway_spool_delivered_total` over the last minute, for the delivery rate.
    delivered: Arc<std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, f64)>>>,
}

/// The console's routes, to merge into the admin router.
pub(super) fn router(gw: &Gateway) -> Router {
    let state = Console {
        gw: gw.clone(),
        csrf: new_csrf().into(),
        delivered: Arc::default(),
    };
    let token = || axum::middleware::from_fn_with_state(gw.clone(), super::auth::admin_token);
    let shell = Router::new()
        .route("/admin/console", get(page))
        .route("/admin/console/console.js", get(script))
        .route("/admin/console/console.css", get(style));
    let reads = Router::new()
        .route("/admin/console/session", get(session))
        .route("/admin/console/summary", get(summary))
        .route("/admin/console/dead", get(dead))
        .layer(token())
        .with_state(state.clone());
    // The token is checked first (401), then the anti-CSRF value (403).
    let actions = Router::new()
        .route("/admin/console/replay", post(replay))
        .route("/admin/console/purge", post(purge))
        .route("/admin/console/drop", post(drop_pending))
        .route("/admin/reload", post(reload))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_csrf,
        ))
        .layer(token())
        .with_state(state);
    shell
        .merge(reads)
        .merge(actions)
        .layer(axum::middleware::map_response(secure_headers))
}

fn new_csrf() -> String {
    let mut bytes = [0u8; 32];
    match getrandom::fill(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(e) => {
            tracing::error!(error = %e, "console: no random anti-CSRF value; its actions are refused");
            String::new()
        }
    }
}

async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

fn source(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// POSTs need the anti-CSRF value, and a same-origin `Origin` when the browser sends one.
async fn check_csrf(State(console): State<Console>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let expected = console.csrf.as_bytes();
    let value_ok = !expected.is_empty()
        && presented.len() == expected.len()
        && bool::from(subtle::ConstantTimeEq::ct_eq(presented, expected));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin_ok = match req.headers().get(header::ORIGIN) {
        None => true,
        Some(o) => o.to_str().ok().is_some_and(|o| {
            let bare = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"));
            bare.is_some() && bare == host
        }),
    };
    if value_ok && origin_ok {
        return next.run(req).await;
    }
    let reason = if value_ok { "origin" } else { "csrf" };
    metrics::counter!("gateway_console_actions_total", "action" => "refused", "result" => reason)
        .increment(1);
    tracing::warn!(
        source = %source(&req),
        path = %req.uri().path().chars().take(120).collect::<String>(),
        reason,
        "console action refused: missing or wrong X-Console-CSRF, or another origin"
    );
    (
        StatusCode::FORBIDDEN,
        "forbidden: console actions need the page's X-Console-CSRF value and its origin\n",
    )
        .into_response()
}

impl Console {
    /// Spool deliveries per second over the last minute of this page's (and any other
    /// console's) refreshes, from `gateway_spool_delivered_total`; `None` before two samples or
    /// without the metrics recorder.
    fn delivery_rate(&self) -> Option<f64> {
        let total = delivered_total(&self.gw.metrics()?.render());
        let now = std::time::Instant::now();
        // Samples stay valid after any panic of a holder.
        let mut samples = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, total));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > crate::inspect::WINDOW)
        {
            samples.pop_front();
        }
        let (first_at, first) = *samples.front()?;
        let span = now.duration_since(first_at).as_secs_f64();
        (span >= 1.0).then(|| ((total - first) / span).max(0.0))
    }
}

/// The sum of every `gateway_spool_delivered_total` series in a Prometheus text.
fn delivered_total(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("gateway_spool_delivered_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET /admin/console/session`: the anti-CSRF value for the page's actions.
async fn session(State(console): State<Console>) -> Response {
    axum::Json(json!({
        "csrf": &*console.csrf,
        "token_required": console.gw.snapshot().admin_token.is_some(),
    }))
    .into_response()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /admin/console/summary`: everything the page's tables show but the dead letters and
/// the recent callbacks (those come from `/admin/console/dead` and `/admin/callbacks`).
async fn summary(State(console): State<Console>) -> Response {
    let gw = &console.gw;
    let minute = gw.inspector().last_minute();
    let seen = gw.inspector().seen();
    let snapshot = gw.snapshot();
    let mut commands: Vec<Value> = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    let mut entries: Vec<_> = gw.catalog().entries().collect();
    entries.sort_by_key(|e| e.row.command);
    for e in entries {
        let command = e.row.command;
        known.insert(command);
        let m = minute.commands.get(command).cloned().unwrap_or_default();
        let route = snapshot.route(command);
        commands.push(json!({
            "command": command,
            "phase": format!("{:?}", e.phase).to_lowercase(),
            "enabled": route.is_some(),
            "total": seen.get(command).copied().unwrap_or(0),
            "never_seen": !seen.contains_key(command),
            "per_second": m.per_second,
            "last_minute": m.count,
            "outcomes": m.outcomes,
            "p50_ms": m.p50_ms,
            "p99_ms": m.p99_ms,
        }));
    }
    for (command, total) in &seen {
        if known.contains(command.as_str()) {
            continue;
        }
        let m = minute.commands.get(command).cloned().unwrap_or_default();
        commands.push(json!({
            "command": command,
            "phase": "unknown",
            "enabled": false,
            "total": total,
            "never_seen": false,
            "per_second": m.per_second,
            "last_minute": m.count,
            "outcomes": m.outcomes,
            "p50_ms": m.p50_ms,
            "p99_ms": m.p99_ms,
        }));
    }
    let upstreams: Vec<Value> = super::admin::upstream_views(gw)
        .into_iter()
        .map(|mut u| {
            let name = u.get("name").and_then(Value::as_str).unwrap_or("");
            let m = minute.upstreams.get(name).cloned().unwrap_or_default();
            let rate = if m.calls == 0 {
                Value::Null
            } else {
                json!(m.errors as f64 / m.calls as f64)
            };
            if let Some(obj) = u.as_object_mut() {
                obj.insert("calls_last_minute".into(), json!(m.calls));
                obj.insert("errors_last_minute".into(), json!(m.errors));
                obj.insert("error_rate".into(), rate);
            }
            u
        })
        .collect();
    let spool = match gw.spool() {
        Some(spool) => {
            let mut view = spool_view(spool.clone()).await;
            if let Some(obj) = view.as_object_mut() {
                obj.insert(
                    "delivered_per_second".into(),
                    json!(console.delivery_rate()),
                );
            }
            view
        }
        None => Value::Null,
    };
    let loaded = gw.loaded();
    axum::Json(json!({
        "now_ms": now_ms(),
        "window_s": crate::inspect::WINDOW.as_secs(),
        "redact": crate::telemetry::redact(),
        "reload": gw.reloader().is_some(),
        "loaded": {
            "at": humantime::format_rfc3339_millis(loaded.at).to_string(),
            "trigger": loaded.trigger,
        },
        "commands": commands,
        "upstreams": upstreams,
        "spool": spool,
    }))
    .into_response()
}

async fn spool_view(spool: Spool) -> Value {
    let backend = format!("{:?}", spool.backend()).to_lowercase();
    let read = tokio::task::spawn_blocking(move || {
        let stats = spool.stats_now()?;
        let pending = spool.list(Which::Pending, PENDING_SCAN)?;
        Ok::<_, SpoolError>((stats, pending))
    })
    .await;
    match read {
        Ok(Ok((stats, pending))) => {
            let now = now_ms();
            let retrying = pending.iter().filter(|e| e.attempts > 0).count();
            json!({
                "backend": backend,
                "pending": stats.pending,
                "in_flight": stats.in_flight,
                "retrying": retrying,
                "retrying_counted_in_first": PENDING_SCAN,
                "dead": stats.dead,
                "bytes": stats.bytes,
                "oldest_pending_age_ms": pending
                    .iter()
                    .map(|e| now.saturating_sub(e.first_seen_ms))
                    .max(),
            })
        }
        Ok(Err(e)) => json!({ "backend": backend, "error": e.to_string() }),
        Err(e) => json!({ "backend": backend, "error": e.to_string() }),
    }
}

/// A dead letter's last error as the logs show it, and the gRPC status of its last attempt.
fn last_failure(e: &crate::spool::StoredEvent) -> (Option<String>, Option<String>) {
    // The last attempt's fault, when it is the one `last_error` words: its status and its text
    // as the logs show it come from the data, not from reading the text.
    let last = e
        .history
        .last()
        .map(crate::spool::Attempt::fault)
        .filter(|f| {
            e.last_error
                .as_deref()
                .is_some_and(|t| t.contains(&f.text()))
        });
    let error = e.last_error.as_deref().map(|t| match &last {
        Some(f) => t.replace(&f.text(), &f.log_text()),
        // Records written before the attempt history was kept.
        None => crate::telemetry::delivery_error(t).into_owned(),
    });
    let grpc_status = match &last {
        Some(f) => f.is_status().then(|| f.code.clone()),
        None => e
            .last_error
            .as_deref()
            .and_then(status_in)
            .map(str::to_owned),
    };
    (error, grpc_status)
}

/// The gRPC status name a delivery error names (`… InvalidArgument: …`), if any: for dead
/// letters written before the attempt history was kept.
fn status_in(text: &str) -> Option<&'static str> {
    (0..=16).map(tonic::Code::from_i32).find_map(|code| {
        let word = format!("{code:?}");
        text.contains(&format!("{word}:"))
            .then(|| crate::telemetry::grpc_code_name(code))
    })
}

#[derive(Debug, serde::Deserialize)]
struct DeadQuery {
    limit: Option<usize>,
}

/// `GET /admin/console/dead`: the dead letters, oldest first, each with its payload decoded as
/// JSON by its request message type, redacted as the logs are (`log.redact`).
async fn dead(State(console): State<Console>, Query(q): Query<DeadQuery>) -> Response {
    let Some(spool) = console.gw.spool().cloned() else {
        return axum::Json(json!({ "spool": false, "total": 0, "letters": [] })).into_response();
    };
    let limit = q.limit.unwrap_or(50).min(MAX_DEAD);
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, SpoolError>((spool.stats_now()?.dead, spool.list(Which::Dead, limit)?))
    })
    .await;
    let (total, list) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let catalog = console.gw.catalog();
    let now = now_ms();
    let letters: Vec<Value> = list
        .iter()
        .map(|e| {
            let (payload, payload_error) =
                decode_payload(catalog, &e.event.command, &e.event.payload);
            let (error, grpc_status) = last_failure(e);
            json!({
                "id": e.id,
                "delivery_id": e.delivery_id,
                "command": e.event.command,
                "operation_id": e.event.operation_id,
                "order_key": e.event.order_key,
                "attempts": e.attempts,
                "first_seen_ms": e.first_seen_ms,
                "age_ms": now.saturating_sub(e.first_seen_ms),
                "grpc_status": grpc_status,
                "last_error": error,
                "history": e.history.iter().map(|a| json!({
                    "number": a.number,
                    "at_ms": a.at_ms,
                    "code": a.code,
                    "message": a.log_message(),
                })).collect::<Vec<_>>(),
                "payload": payload,
                "payload_error": payload_error,
                "payload_bytes": e.event.payload.len(),
            })
        })
        .collect();
    axum::Json(json!({ "spool": true, "total": total, "letters": letters })).into_response()
}

/// A spooled payload as JSON, by the command's request message type, redacted with `log.redact`.
fn decode_payload(
    catalog: &crate::catalog::Catalog,
    command: &str,
    payload: &[u8],
) -> (Value, Option<String>) {
    let Some(entry) = catalog.get(command) else {
        return (
            Value::Null,
            Some(format!("{command} is not in the catalogue")),
        );
    };
    match prost_reflect::DynamicMessage::decode(entry.request(), payload) {
        Ok(msg) => {
            let json = Value::Object(crate::json::encode(&msg, &[]));
            let json = if crate::telemetry::redact() {
                crate::inspect::redacted(json)
            } else {
                json
            };
            (json, None)
        }
        Err(e) => (Value::Null, Some(format!("payload does not decode: {e}"))),
    }
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({ "error": text }))).into_response()
}

/// Logs and counts one action, and answers its result.
fn done(action: &'static str, source: &str, result: Result<String, String>) -> Response {
    match result {
        Ok(message) => {
            metrics::counter!("gateway_console_actions_total", "action" => action, "result" => "ok")
                .increment(1);
            tracing::warn!(%source, action, result = %message, "console action");
            axum::Json(json!({ "ok": true, "message": message })).into_response()
        }
        Err(message) => {
            metrics::counter!("gateway_console_actions_total", "action" => action, "result" => "error")
                .increment(1);
            tracing::error!(%source, action, error = %message, "console action failed");
            (
                StatusCode::CONFLICT,
                axum::Json(json!({ "ok": false, "message": message })),
            )
                .into_response()
        }
    }
}

async fn on_spool<T: Send + 'static>(
    gw: &Gateway,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, String> {
    let spool = gw
        .spool()
        .cloned()
        .ok_or_else(|| "this gateway has no spool".to_owned())?;
    tokio::task::spawn_blocking(move || f(&spool))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[derive(Debug, serde::Deserialize)]
struct ReplayQuery {
    id: Option<u64>,
    since: Option<u64>,
    until: Option<u64>,
    command: Option<String>,
    all: Option<bool>,
}

/// `POST /admin/console/replay?id=N | since=MS&until=MS | all=true`: dead letters back to pending.
async fn replay(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    let source = peer.ip().to_string();
    if q.id.is_none() && q.since.is_none() && q.until.is_none() && q.all != Some(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "say which dead letters: id, since/until, or all=true",
        );
    }
    let select = Select {
        command: q.command,
        id: q.id,
        since_ms: q.since,
        until_ms: q.until,
    };
    let what = select.describe();
    let result = on_spool(&console.gw, move |s| s.replay_selected(&select))
        .await
        .map(|n| format!("replayed {n} dead letters{what} to pending"));
    done("replay", &source, result)
}

#[derive(Debug, serde::Deserialize)]
struct CommandQuery {
    command: Option<String>,
}

/// `POST /admin/console/purge[?command=C]`: deletes dead letters for good.
async fn purge(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<CommandQuery>,
) -> Response {
    let source = peer.ip().to_string();
    let what = q
        .command
        .as_ref()
        .map(|c| format!(" of {c}"))
        .unwrap_or_default();
    let result = on_spool(&console.gw, move |s| {
        s.purge(Which::Dead, q.command.as_deref())
    })
    .await
    .map(|n| format!("purged {n} dead letters{what}"));
    done("purge", &source, result)
}

/// `POST /admin/console/drop?command=C`: deletes the pending events of one command.
async fn drop_pending(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<CommandQuery>,
) -> Response {
    let source = peer.ip().to_string();
    let Some(command) = q.command.filter(|c| !c.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "say which command: command=…");
    };
    let what = command.clone();
    let result = on_spool(&console.gw, move |s| {
        s.purge(Which::Pending, Some(&command))
    })
    .await
    .map(|n| format!("dropped {n} pending events of {what}"));
    done("drop", &source, result)
}

/// `POST /admin/reload`: the reload SIGHUP runs; the result, a refusal's reason included.
async fn reload(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let source = peer.ip().to_string();
    let Some(reloader) = console.gw.reloader().cloned() else {
        return done(
            "reload",
            &source,
            Err("this gateway was started without a configuration source to reload".to_owned()),
        );
    };
    let gw = console.gw.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload(&gw, "admin"))
        .await
        .map_err(|e| e.to_string());
    let result = match outcome {
        Ok(crate::reload::Outcome::Applied) => {
            let changed = console.gw.loaded().changed;
            Ok(if changed.is_empty() {
                "configuration reloaded; nothing changed".to_owned()
            } else {
                format!("configuration reloaded; changed: {}", changed.join(", "))
            })
        }
        Ok(crate::reload::Outcome::Refused(why)) => Err(format!("reload refused: {why}")),
        Err(e) => Err(e),
    };
    done("reload", &source, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_last_failure_comes_from_its_attempt_history() {
        use crate::spool::{Attempt, Fault, StoredEvent};
        let fault = Fault::status("INVALID_ARGUMENT", "no such group bob");
        let mut e = StoredEvent {
            id: 1,
            delivery_id: String::new(),
            attempts: 1,
            first_seen_ms: 0,
            last_error: Some(format!("permanent error on attempt 1: {fault}")),
            history: vec![Attempt::new(1, 5, &fault)],
            event: crate::spool::NewEvent::default(),
        };
        assert_eq!(
            last_failure(&e),
            (
                Some("permanent error on attempt 1: InvalidArgument: <redacted>".to_owned()),
                Some("INVALID_ARGUMENT".to_owned())
            )
        );
        e.history = vec![Attempt::new(1, 5, &Fault::local("timeout", "no answer"))];
        e.last_error = Some("gave up after 1 attempts: no answer".to_owned());
        assert_eq!(
            last_failure(&e),
            (Some("gave up after 1 attempts: no answer".to_owned()), None)
        );
        // Written before the history was kept: read from the text.
        e.history.clear();
        e.last_error = Some("permanent error on attempt 1: NotFound: gone".to_owned());
        assert_eq!(
            last_failure(&e),
            (
                Some("permanent error on attempt 1: NotFound: <redacted>".to_owned()),
                Some("NOT_FOUND".to_owned())
            )
        );
    }

    #[test]
    fn a_delivery_error_names_its_grpc_status() {
        assert_eq!(
            status_in("upstream answered InvalidArgument: bad"),
            Some("INVALID_ARGUMENT")
        );
        assert_eq!(status_in("connection refused"), None);
    }

    #[test]
    fn the_delivered_total_sums_every_command() {
        let text = "# HELP gateway_spool_delivered_total x\n\
                    gateway_spool_delivered_total{command=\"a\"} 3\n\
                    gateway_spool_delivered_total{command=\"b\"} 4\n\
                    gateway_spool_dead_total{command=\"a\"} 9\n";
        assert_eq!(delivered_total(text), 7.0);
    }

    #[test]
    fn the_csrf_value_is_random_hex() {
        let (a, b) = (new_csrf(), new_csrf());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
