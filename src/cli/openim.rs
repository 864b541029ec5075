//! An HTTP client that posts callbacks as OpenIM's Go client does (HTTP/1.1, `Go-http-client`
//! user agent, `operationID` header, compact JSON with a trailing newline), over http or https:
//! for `doctor --probe` and `replay`.

use http_body_util::{BodyExt as _, Full};

/// The answer to one post.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: bytes::Bytes,
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct OpenImClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<bytes::Bytes>,
    >,
}

impl std::fmt::Debug for OpenImClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenImClient").finish_non_exhaustive()
    }
}

impl Default for OpenImClient {
    fn default() -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(connector),
        }
    }
}

impl OpenImClient {
    /// POSTs `body` (a newline is added) to `url` with `operation_id`, within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        body: &[u8],
        operation_id: &str,
        timeout: std::time::Duration,
    ) -> Result<Answer, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let mut bytes = body.to_vec();
        bytes.push(b'\n');
        let request = http::Request::post(uri)
            .header("user-agent", "Go-http-client/1.1")
            .header("content-type", "application/json; charset=utf-8")
            .header("operationID", operation_id)
            .header("accept-encoding", "gzip")
            .body(Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| {
                    format!("cannot reach it: {}", crate::upstream::error_chain(&e))
                })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
    }
}
