//! Inbound authentication: who may call the callback port (source CIDRs, a shared-secret header,
//! a secret path prefix, in any combination) and the bearer token of the admin API. Secrets are
//! compared in constant time; a refusal is a short 401/403, one log line with the source
//! address (never the secret), and a count in `gateway_auth_refused_total{reason}`. A refused
//! request never reaches the pipeline, an upstream or the spool.

use crate::config::{AuthConfig, ConfigError, Secret, parse_net};
use crate::gateway::Gateway;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use subtle::{Choice, ConstantTimeEq};

/// The callback port's checks, built from `auth:`.
#[derive(Debug)]
pub struct InboundAuth {
    path_secrets: Vec<Secret>,
    header: Option<(http::HeaderName, Vec<Secret>)>,
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl InboundAuth {
    /// The checks of `cfg`, reading its secret files; `None` when none is configured.
    pub fn build(cfg: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        cfg.validate()?;
        let nets = |list: &[String]| list.iter().filter_map(|n| parse_net(n)).collect();
        let auth = Self {
            path_secrets: cfg.all_path_secrets()?,
            header: match &cfg.header {
                Some(h) => Some((
                    http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| {
                        crate::config::ConfigError::Invalid {
                            key: "auth.header.name".into(),
                            problem: e.to_string(),
                            at: None,
                        }
                    })?,
                    cfg.all_header_values()?,
                )),
                None => None,
            },
            allow: nets(&cfg.allow_cidrs),
            trusted_proxies: nets(&cfg.trusted_proxies),
        };
        let any = !auth.path_secrets.is_empty() || auth.header.is_some() || !auth.allow.is_empty();
        Ok(any.then_some(auth))
    }

    /// The address a request comes from: the TCP peer, or, from a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    fn source(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !trusted(ip))
                .unwrap_or(peer),
        )
    }
}

/// Whether `candidate` equals one of `secrets`, in time that depends only on the secrets.
pub(super) fn matches_any(candidate: &[u8], secrets: &[Secret]) -> bool {
    let mut found = Choice::from(0);
    for secret in secrets {
        let secret = secret.expose().as_bytes();
        found |= if candidate.len() == secret.len() {
            candidate.ct_eq(secret)
        } else {
            // Same work as a comparison, result false.
            secret.ct_eq(secret) & Choice::from(0)
        };
    }
    found.into()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_exactly_and_any_of_several() {
        let secrets = [Secret::new("old-secret"), Secret::new("new")];
        assert!(matches_any(b"old-secret", &secrets));
        assert!(matches_any(b"new", &secrets));
        assert!(!matches_any(b"new ", &secrets));
        assert!(!matches_any(b"", &secrets));
        assert!(!matches_any(b"old-secreT", &secrets));
        assert!(!matches_any(b"x", &[]));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let auth = InboundAuth {
            path_secrets: Vec::new(),
            header: None,
            allow: Vec::new(),
            trusted_proxies: vec!["10.0.0.0/24".parse().unwrap()],
        };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.7".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            auth.source(Some(ip("10.0.0.5")), &h),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            auth.source(Some(ip("192.0.2.1")), &h),
            Some(ip("192.0.2.1")),
            "an untrusted peer cannot claim another address"
        );
        assert_eq!(
            auth.source(Some(ip("10.0.0.5")), &HeaderMap::new()),
            Some(ip("10.0.0.5"))
        );
    }
}
