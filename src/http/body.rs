//! Reading a callback body under the limits: at most `max_body_bytes` kept, the rest of an
//! oversized body read and discarded (streaming, nothing buffered) up to `limits.max_drain_bytes`
//! so that a client writing its whole body (OpenIM's Go client) reads the answer on the same
//! keep-alive connection, and the whole read within `limits.request_timeout`. Past the drain
//! limit, or on a timeout, the answer asks for the connection to be closed.

use crate::config::LimitsConfig;
use crate::pipeline::BodyError;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;

/// What reading produced.
pub(super) struct Read {
    /// The body, or why it is not available.
    pub(super) outcome: Result<Bytes, BodyError>,
    /// Whether the body was left unread: the connection must close after the answer.
    pub(super) close: bool,
}

/// Reads `body`: keeps up to `keep` bytes when `store`, discards otherwise (a shed request).
pub(super) async fn read(body: Body, keep: usize, store: bool, limits: &LimitsConfig) -> Read {
    let timeout = limits.request_timeout.0;
    match tokio::time::timeout(timeout, drain(body, keep, store, limits.max_drain_bytes)).await {
        Ok(read) => read,
        Err(_) => {
            metrics::counter!("gateway_limit_total", "limit" => "request_timeout").increment(1);
            Read {
                outcome: Err(BodyError::Timeout(timeout)),
                close: true,
            }
        }
    }
}

async fn drain(mut body: Body, keep: usize, store: bool, max_drain: u64) -> Read {
    let mut kept = BytesMut::new();
    let mut seen: u64 = 0;
    let over = |seen: u64| seen > keep as u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return Read {
                    outcome: Err(BodyError::Unreadable(crate::upstream::error_chain(&e))),
                    close: true,
                };
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len() as u64);
        if seen > max_drain {
            metrics::counter!("gateway_limit_total", "limit" => "max_drain_bytes").increment(1);
            return Read {
                outcome: Err(BodyError::TooLarge {
                    limit: keep,
                    seen,
                    drained: false,
                }),
                close: true,
            };
        }
        if store && !over(seen) {
            kept.extend_from_slice(&data);
        }
    }
    if store && over(seen) {
        metrics::counter!("gateway_limit_total", "limit" => "max_body_bytes").increment(1);
        return Read {
            outcome: Err(BodyError::TooLarge {
                limit: keep,
                seen,
                drained: true,
            }),
            close: false,
        };
    }
    Read {
        outcome: Ok(kept.freeze()),
        close: false,
    }
}
