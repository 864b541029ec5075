//! A client of a running gateway's admin API, for the operator commands (`spool --admin`,
//! `tail`, `routes --admin`): plain HTTP/1.1 (hyper-util), an optional bearer token, answers as
//! JSON or as a stream (server-sent events).

use serde::de::DeserializeOwned;
use std::time::Duration;

/// Longest wait for one admin API request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest admin API answer read.
const ADMIN_MAX_RESPONSE: usize = 256 << 20;

/// An admin API request that failed.
#[derive(Debug, thiserror::Error)]
#[error("admin API {url}: {detail}")]
pub struct AdminError {
    /// The URL called.
    pub url: String,
    /// What went wrong.
    pub detail: String,
}

/// The admin API's client (hyper-util's HTTP/1.1 client): plain HTTP, an optional bearer token.
pub struct AdminClient {
    /// The base URL, without a trailing slash.
    url: String,
    token: Option<String>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

impl AdminClient {
    /// A client of the admin API at `url` (`http://host:port`, the scheme may be left out).
    pub fn parse(url: &str, token: Option<String>) -> Result<AdminClient, AdminError> {
        let bad = |detail: &str| AdminError {
            url: url.to_owned(),
            detail: detail.to_owned(),
        };
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: http::Uri = with_scheme
            .parse()
            .map_err(|_| bad("not a URL; expected e.g. http://127.0.0.1:10006"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(scheme) => {
                return Err(bad(&format!(
                    "scheme {scheme:?} is not supported; give the admin listener's plain http:// URL"
                )));
            }
            None => return Err(bad("no scheme; expected e.g. http://127.0.0.1:10006")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host; expected e.g. http://127.0.0.1:10006"));
        }
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(AdminClient {
            url: with_scheme.trim_end_matches('/').to_owned(),
            token,
            client,
        })
    }

    /// The request `method path?query` with the token.
    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> Result<http::Request<http_body_util::Empty<bytes::Bytes>>, AdminError> {
        let mut target = format!("{}{path}", self.url);
        let mut sep = '?';
        for (k, v) in query {
            if let Some(v) = v {
                target.push(sep);
                target.push_str(k);
                target.push('=');
                target.push_str(&percent_encode(v));
                sep = '&';
            }
        }
        let mut request = http::Request::builder()
            .method(method)
            .uri(&target)
            .header(http::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request
            .body(http_body_util::Empty::new())
            .map_err(|e| self.error(path, format!("bad request: {e}")))
    }

    fn error(&self, path: &str, detail: String) -> AdminError {
        AdminError {
            url: format!("{}{path}", self.url),
            detail,
        }
    }

    async fn send(
        &self,
        path: &str,
        request: http::Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, AdminError> {
        self.client.request(request).await.map_err(|e| {
            self.error(
                path,
                format!(
                    "cannot connect: {}; is the gateway running, and is this its admin address?",
                    crate::upstream::error_chain(&e)
                ),
            )
        })
    }

    /// A refusal (`status` not 2xx) in words, with the token hint on 401.
    fn refused(&self, path: &str, status: http::StatusCode, body: &[u8]) -> AdminError {
        let detail = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
        let hint = if status == http::StatusCode::UNAUTHORIZED {
            " (the admin API needs a token: pass --token-file FILE)"
        } else {
            ""
        };
        self.error(
            path,
            format!("HTTP {}: {}{hint}", status.as_u16(), detail.trim()),
        )
    }

    /// `method path?query`, the answer as JSON (within 120 s).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> Result<T, AdminError> {
        let body = self.bytes(method, path, query).await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.error(path, format!("unexpected answer: {e}")))
    }

    /// `method path?query`, the answer's bytes (within 120 s).
    pub async fn bytes(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> Result<bytes::Bytes, AdminError> {
        use http_body_util::BodyExt as _;
        let request = self.request(method, path, query)?;
        let exchange = async {
            let response = self.send(path, request).await?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), ADMIN_MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.error(path, format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, AdminError>((status, body))
        };
        let (status, body) = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .map_err(|_| self.error(path, format!("no answer within {ADMIN_TIMEOUT:?}")))??;
        if !status.is_success() {
            return Err(self.refused(path, status, &body));
        }
        Ok(body)
    }

    /// `GET path?query` as a stream: the answer's body as it arrives, for as long as it lasts.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> Result<hyper::body::Incoming, AdminError> {
        use http_body_util::BodyExt as _;
        let request = self.request("GET", path, query)?;
        let response = tokio::time::timeout(ADMIN_TIMEOUT, self.send(path, request))
            .await
            .map_err(|_| self.error(path, format!("no answer within {ADMIN_TIMEOUT:?}")))??;
        let status = response.status();
        if !status.is_success() {
            let body = http_body_util::Limited::new(response.into_body(), 64 << 10)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(self.refused(path, status, &body));
        }
        Ok(response.into_body())
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
