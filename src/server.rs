//! The HTTP front end: `POST <any prefix>/<command>` → decode → call or spool → envelope.
//!
//! One handler serves every command; the catalogue entry says which message types and RPC it
//! uses. Every path ends in a `200 OK` with a complete envelope (design §3): bad input, unknown
//! commands, dead upstreams and a full spool included.

use crate::catalog::{Catalog, Entry, OrderBy, Phase};
use crate::config::{CommandSettings, Config, Delivery, OnFailure};
use crate::envelope::{
    self, CallFailure, Decision, Envelope, FailurePolicy, Outcome, Policy, Reason,
};
use crate::forward::{self, meta};
use crate::json;
use crate::spool::{self, Spool};
use crate::upstream::Upstreams;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The live gateway: catalogue, settings per command, upstream channels, spool.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    settings: HashMap<&'static str, Settings>,
    upstreams: Upstreams,
    max_body_bytes: usize,
    spool: Option<Spool>,
    seen_unknown: Mutex<HashSet<(String, String)>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// A command's settings in the form the hot path uses.
#[derive(Debug, Clone)]
struct Settings {
    raw: CommandSettings,
    policy: Policy,
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The contract and the catalogue do not match.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The compiled descriptors cannot be read.
    #[error("compiled descriptors: {0}")]
    Descriptors(String),
    /// An upstream cannot be built.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// A command uses an upstream that is not configured.
    #[error("config key `{key}`: upstream `{name}` is not configured")]
    MissingUpstream {
        /// The config key.
        key: String,
        /// The upstream.
        name: String,
    },
}

impl Gateway {
    /// Builds the gateway from a validated config. `spool` is required when any after command
    /// uses `delivery: spool`; without one those commands are delivered synchronously.
    pub fn new(config: &Config, spool: Option<Spool>) -> Result<Self, BuildError> {
        let pool = crate::proto::pool().map_err(|e| BuildError::Descriptors(e.to_string()))?;
        let catalog = Catalog::load(pool, crate::proto::PACKAGE)?;
        let upstreams = Upstreams::build(&config.upstreams)?;
        let mut settings = HashMap::new();
        for entry in catalog.entries() {
            let raw = config.settings(entry.row.command);
            if raw.enabled && upstreams.get(&raw.upstream).is_none() {
                return Err(BuildError::MissingUpstream {
                    key: format!("commands.{}.upstream", entry.row.command),
                    name: raw.upstream,
                });
            }
            let policy = Policy {
                on_failure: match raw.on_failure {
                    OnFailure::Continue => FailurePolicy::Continue,
                    OnFailure::Reject => FailurePolicy::Reject {
                        code: raw.reject_code,
                        message: raw.reject_message.clone(),
                    },
                },
                default_reject_code: raw.reject_code,
                allow_offline_push_info: raw.allow_offline_push_info,
            };
            settings.insert(entry.row.command, Settings { raw, policy });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                catalog,
                settings,
                upstreams,
                max_body_bytes: config.max_body_bytes,
                spool,
                seen_unknown: Mutex::new(HashSet::new()),
                metrics: crate::telemetry::metrics_handle(),
            }),
        })
    }

    /// The catalogue.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The spool, when after-events are spooled.
    pub fn spool(&self) -> Option<&Spool> {
        self.inner.spool.as_ref()
    }

    /// Delivers one spooled event to its upstream (one attempt), for the spool's workers.
    pub async fn deliver_event(&self, ev: &spool::StoredEvent, attempt: u32) -> spool::Outcome {
        let Some(channel) = self.inner.upstreams.get(&ev.event.upstream) else {
            return spool::Outcome::Permanent(format!(
                "upstream `{}` is not configured",
                ev.event.upstream
            ));
        };
        let Ok(path) = ev.event.method.parse::<http::uri::PathAndQuery>() else {
            return spool::Outcome::Permanent(format!("bad method path {}", ev.event.method));
        };
        let attempt_text = attempt.to_string();
        let md = forward::metadata(&[
            (meta::OPERATION_ID, &ev.event.operation_id),
            (meta::COMMAND, &ev.event.command),
            (meta::KEY, ev.event.openim_key.as_deref().unwrap_or("")),
            (meta::DELIVERY_ID, &ev.delivery_id),
            (meta::DELIVERY_ATTEMPT, &attempt_text),
        ]);
        let timeout = std::time::Duration::from_millis(ev.event.timeout_ms.max(1));
        let payload = Bytes::from(ev.event.payload.clone());
        match forward::call(channel, path, payload, md, timeout).await {
            Ok(Ok(_)) => spool::Outcome::Delivered,
            Ok(Err(status)) => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::Internal => {
                    spool::Outcome::Retry(format!("{:?}: {}", status.code(), status.message()))
                }
                // UNIMPLEMENTED: the service does not want this event; nothing to retry.
                tonic::Code::Unimplemented => spool::Outcome::Delivered,
                code => spool::Outcome::Permanent(format!("{code:?}: {}", status.message())),
            },
            Err(failure) => spool::Outcome::Retry(failure.to_string()),
        }
    }

    /// Everything on one port: the callbacks plus [`Gateway::admin_router`]. Used when no
    /// `admin_listen` is configured.
    pub fn router(&self) -> Router {
        self.admin_router().merge(self.callback_router())
    }

    /// The callbacks only: every POST path is `<any prefix>/<command>`.
    pub fn callback_router(&self) -> Router {
        Router::new().fallback(callback).with_state(self.clone())
    }

    /// Health, metrics and the spool admin API, for the operators' port (`admin_listen`).
    pub fn admin_router(&self) -> Router {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(self.clone());
        match &self.inner.spool {
            Some(spool) => router.merge(crate::spool::admin::router(spool.clone())),
            None => router,
        }
    }
}

async fn readyz() -> &'static str {
    "ready"
}

async fn render_metrics(State(gw): State<Gateway>) -> Response {
    match &gw.inner.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
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

fn reply(env: &Envelope) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        env.to_bytes(),
    )
        .into_response()
}

async fn callback(
    State(gw): State<Gateway>,
    method: http::Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let command = command_of(&uri).to_owned();
    let header_op = headers
        .get("operationID")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if method != http::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "OpenIM callbacks are POST requests\n",
        )
            .into_response();
    }
    // Read the body on every path, also when the answer does not need it: an unread body makes
    // hyper close the keep-alive connection, and OpenIM would reconnect for every callback.
    let body = axum::body::to_bytes(body, gw.inner.max_body_bytes).await;
    let Some(entry) = gw.inner.catalog.get(&command) else {
        metrics::counter!("gateway_unknown_commands_total").increment(1);
        tracing::warn!(
            command = %command.chars().take(120).collect::<String>(),
            path = %uri.path().chars().take(200).collect::<String>(),
            operation_id = %header_op,
            "unknown callback command: answering continue; check OpenIM's webhooks.yml url (the command must be the last path segment)"
        );
        return reply(&Envelope::allow());
    };
    let Some(settings) = gw.inner.settings.get(entry.row.command) else {
        return reply(&Envelope::allow());
    };
    let (env, label) = handle(&gw, entry, settings, query.as_deref(), &header_op, body).await;
    metrics::counter!("gateway_callbacks_total", "command" => entry.row.command, "outcome" => label)
        .increment(1);
    metrics::histogram!("gateway_callback_seconds", "command" => entry.row.command)
        .record(started.elapsed().as_secs_f64());
    reply(&env)
}

/// The generic path for one known command. Returns the envelope and an outcome label.
async fn handle(
    gw: &Gateway,
    entry: &Entry,
    settings: &Settings,
    query: Option<&str>,
    header_op: &str,
    body: Result<Bytes, axum::Error>,
) -> (Envelope, &'static str) {
    let command = entry.row.command;
    let policy = &settings.policy;
    let bad_input = |problem: String, request: Option<&DynamicMessage>, op: &str| {
        metrics::counter!("gateway_bad_requests_total", "command" => command).increment(1);
        tracing::warn!(command, operation_id = %op, %problem, "bad callback body: answering by the failure policy");
        let decision = envelope::fail(CallFailure::BadInput(problem), policy);
        let label = decision.label();
        (envelope::respond(entry, &decision, request, policy), label)
    };

    let bytes = match body {
        Ok(b) => b,
        Err(e) => {
            let problem = format!(
                "body could not be read or is larger than max_body_bytes ({}): {}",
                gw.inner.max_body_bytes,
                forward::error_chain(&e)
            );
            return bad_input(problem, None, header_op);
        }
    };
    let decoded = match json::decode(&entry.request(), &bytes) {
        Ok(d) => d,
        Err(e) => return bad_input(e.to_string(), None, header_op),
    };
    let request = decoded.message;
    let body_op = request
        .get_field_by_name("operation_id")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let operation_id = if header_op.is_empty() {
        body_op.as_str()
    } else {
        header_op
    };
    note_unknown_keys(gw, command, &decoded.unknown_keys, operation_id);
    if let Some(first) = decoded.errors.first() {
        let problem = if decoded.errors.len() > 1 {
            format!("{first} (and {} more)", decoded.errors.len() - 1)
        } else {
            first.to_string()
        };
        return bad_input(problem, Some(&request), operation_id);
    }

    let key = key_of(query);
    if !settings.raw.enabled {
        let d = Decision::Continue {
            reply: None,
            reason: Reason::Disabled,
        };
        return (
            envelope::respond(entry, &d, Some(&request), policy),
            d.label(),
        );
    }
    let payload = request.encode_to_vec();

    if entry.phase == Phase::After && settings.raw.delivery == Delivery::Spool {
        if let Some(spool) = &gw.inner.spool {
            return spool_event(spool, entry, settings, &request, payload, operation_id, key).await;
        }
    }

    let Some(channel) = gw.inner.upstreams.get(&settings.raw.upstream) else {
        let d = envelope::fail(
            CallFailure::Unreachable("no upstream configured".into()),
            policy,
        );
        return (
            envelope::respond(entry, &d, Some(&request), policy),
            d.label(),
        );
    };
    let md = forward::metadata(&[
        (meta::OPERATION_ID, operation_id),
        (meta::COMMAND, command),
        (meta::KEY, key.as_deref().unwrap_or("")),
    ]);
    let timeout = settings.raw.timeout.0;
    let started = Instant::now();
    let outcome =
        match forward::call(channel, entry.path.clone(), payload.into(), md, timeout).await {
            Ok(Ok(bytes)) => match DynamicMessage::decode(entry.response(), bytes) {
                Ok(reply) => Outcome::Reply(reply),
                Err(e) => Outcome::Failed(CallFailure::BadReply {
                    message: entry.response().full_name().to_owned(),
                    error: e.to_string(),
                }),
            },
            Ok(Err(status)) => Outcome::Status(status),
            Err(failure) => Outcome::Failed(failure),
        };
    metrics::histogram!("gateway_upstream_seconds", "command" => command)
        .record(started.elapsed().as_secs_f64());
    let decision = envelope::decide(entry, outcome, policy);
    match &decision {
        Decision::Continue {
            reason: Reason::FailOpen(f),
            ..
        } => {
            tracing::warn!(command, operation_id, failure = %f, "upstream failed: continuing (on_failure: continue)")
        }
        Decision::Reject {
            failure: Some(f),
            code,
            ..
        } => {
            tracing::warn!(command, operation_id, failure = %f, code, "upstream failed: rejecting (on_failure: reject)")
        }
        Decision::Reject { code, message, .. } => {
            tracing::info!(command, operation_id, code, err_msg = %message, "service rejected the operation")
        }
        Decision::Continue { .. } => tracing::debug!(command, operation_id, "service answered"),
    }
    let env = envelope::respond(entry, &decision, Some(&request), policy);
    for fix in &env.fixes {
        if fix.dropped {
            tracing::warn!(command, operation_id, field = %fix.field, "reply field {}", fix.what);
        } else {
            tracing::debug!(command, operation_id, field = %fix.field, "reply field {}", fix.what);
        }
    }
    (env, decision.label())
}

async fn spool_event(
    spool: &Spool,
    entry: &Entry,
    settings: &Settings,
    request: &DynamicMessage,
    payload: Vec<u8>,
    operation_id: &str,
    key: Option<String>,
) -> (Envelope, &'static str) {
    let order_key = settings.raw.ordered.then(|| order_key(entry, request));
    let event = spool::NewEvent {
        command: entry.row.command.to_owned(),
        method: entry.path.to_string(),
        upstream: settings.raw.upstream.clone(),
        order_key,
        operation_id: operation_id.to_owned(),
        openim_key: key,
        payload,
        timeout_ms: u64::try_from(settings.raw.timeout.0.as_millis()).unwrap_or(u64::MAX),
    };
    match spool.append(event).await {
        Ok(_) => (Envelope::allow(), "spooled"),
        Err(e) => {
            tracing::error!(command = entry.row.command, operation_id, error = %e, "after-event NOT accepted by the spool");
            let message = match e {
                spool::AppendError::Full { .. } => "gateway spool is full: event not accepted",
                spool::AppendError::Closed => "gateway is shutting down: event not accepted",
                spool::AppendError::Storage(_) => "gateway spool cannot write: event not accepted",
            };
            // OpenIM ignores after replies; the rejection envelope tells a person reading traffic.
            let env = Envelope::reject(settings.raw.reject_code, message, &e.to_string());
            (env, "spool_rejected")
        }
    }
}

/// The ordering key of an after-event (catalogue row's `order_by`).
pub fn order_key(entry: &Entry, request: &DynamicMessage) -> String {
    let get = |key: &str| {
        request
            .descriptor()
            .get_field_by_json_name(key)
            .map(|f| {
                request
                    .get_field(&f)
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    match entry.row.order_by {
        OrderBy::Key(k) => format!("{k}:{}", get(k)),
        OrderBy::Conversation => {
            let group = get("groupID");
            if group.is_empty() {
                let (a, b) = (get("sendID"), get("recvID"));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                format!("single:{lo}:{hi}")
            } else {
                format!("group:{group}")
            }
        }
    }
}

/// Counts unknown keys per command and key, and logs each pair once. The first 1000 distinct
/// pairs get their own metric label; later ones share `_other` so a hostile sender cannot grow the
/// metric set without bound.
fn note_unknown_keys(gw: &Gateway, command: &'static str, keys: &[String], operation_id: &str) {
    const MAX_DISTINCT: usize = 1000;
    for key in keys {
        let pair = (command.to_owned(), key.clone());
        let (first_time, labelled) = match gw.inner.seen_unknown.lock() {
            Ok(seen) if seen.contains(&pair) => (false, true),
            Ok(mut seen) if seen.len() < MAX_DISTINCT => (seen.insert(pair), true),
            _ => (false, false),
        };
        let label = if labelled {
            key.clone()
        } else {
            "_other".to_owned()
        };
        metrics::counter!("gateway_unknown_keys_total", "command" => command, "key" => label)
            .increment(1);
        if first_time {
            tracing::warn!(command, key = %key, operation_id, "unknown key in callback body: ignored (logged once per command and key)");
        }
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
