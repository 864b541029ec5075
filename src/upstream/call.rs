//! The one typed upstream call: a [`Call`] in, the encoded reply or a [`CallError`] out, as a
//! `tower::Service` ([`UpstreamClient`]), so that limits, a breaker, retries and tracing can be
//! layered on it. The synchronous callback path and the spool's delivery build the same `Call`.
//!
//! tonic's generated client methods are only a path, a codec and `Grpc::unary`; this is that,
//! once, with a codec that passes protobuf bytes through.

use bytes::{Buf, BufMut, Bytes};
use futures_util::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use super::Transport;

/// One unary call of the contract, as encoded bytes.
#[derive(Debug, Clone)]
pub struct Call {
    /// The gRPC path, `/openim.callback.v1.GroupCallbackService/AfterQuitGroup`.
    pub path: http::uri::PathAndQuery,
    /// The protobuf-encoded request message.
    pub payload: Bytes,
    /// The `openim-*` metadata (see [`metadata`]).
    pub metadata: MetadataMap,
    /// The deadline, enforced here and sent to the upstream as `grpc-timeout`.
    pub timeout: Duration,
}

/// Why a call produced no reply bytes. The source error is kept.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The upstream answered with a non-OK gRPC status (a rejection, UNIMPLEMENTED, or an error
    /// of its own: `crate::decision` says which).
    #[error("upstream status {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// No answer within the deadline.
    #[error("upstream did not answer within {}", crate::telemetry::human_duration(*.0))]
    Timeout(Duration),
    /// The upstream could not be reached or the connection failed before a status arrived.
    #[error("upstream unreachable: {}", error_chain(.0.as_ref()))]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The upstream (or a proxy in between) reset the call's stream or closed its connection
    /// before answering: tonic reports that as a locally raised `CANCELLED`, which is not a
    /// timeout (it happens at once, whatever the deadline).
    #[error("upstream reset the stream before answering: {}", error_chain(.0.as_ref()))]
    Reset(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Not sent: a resilience control of the upstream refused it (`upstream::resilience`).
    #[error("not sent: {}", match .0 {
        super::Refusal::BreakerOpen(_) => "the upstream's circuit breaker is open",
        super::Refusal::MaxConcurrency => "the upstream has max_concurrency calls in flight",
        super::Refusal::NotServing => "every member of the upstream reports NOT_SERVING",
    })]
    Refused(super::Refusal),
}

impl CallError {
    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Reset(_) => "reset",
            Self::Refused(super::Refusal::BreakerOpen(_)) => "breaker_open",
            Self::Refused(super::Refusal::MaxConcurrency) => "max_concurrency",
            Self::Refused(super::Refusal::NotServing) => "not_serving",
        }
    }
}

/// The client of one upstream: a `tower::Service<Call>` over its balanced, lazily connecting
/// [`Transport`]. Cheap to clone; every clone shares the connections.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    channel: Transport,
}

impl UpstreamClient {
    /// A client over `channel`.
    pub fn new(channel: Transport) -> Self {
        Self { channel }
    }

    /// The transport (for the health checks, which speak another service).
    pub fn channel(&self) -> &Transport {
        &self.channel
    }

    /// Makes one call (the service is always ready: the channel queues internally).
    pub async fn call(&self, call: Call) -> Result<Bytes, CallError> {
        unary(self.channel.clone(), call).await
    }
}

impl tower::Service<Call> for UpstreamClient {
    type Response = Bytes;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Bytes, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // Readiness of the channel is awaited inside the call, under the call's deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        Box::pin(unary(self.channel.clone(), call))
    }
}

async fn unary(channel: Transport, call: Call) -> Result<Bytes, CallError> {
    let Call {
        path,
        payload,
        metadata,
        timeout,
    } = call;
    let mut grpc = tonic::client::Grpc::new(channel);
    let exchange = async move {
        grpc.ready().await.map_err(CallError::Unreachable)?;
        let mut req = tonic::Request::from_parts(metadata, tonic::Extensions::default(), payload);
        req.set_timeout(timeout);
        grpc.unary(req, path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| classify(status, timeout))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(CallError::Timeout(timeout)),
        Ok(result) => result,
    }
}

/// Separates statuses the upstream sent from transport failures tonic reports as statuses (those
/// carry a source error and no metadata from the peer).
fn classify(status: tonic::Status, timeout: Duration) -> CallError {
    use std::error::Error as _;
    let local = status.source().is_some() && status.metadata().is_empty();
    // The deadline itself is enforced by `unary`'s own timer; a locally raised CANCELLED is the
    // stream being reset under the call (RST_STREAM, a closed connection).
    if status.code() == tonic::Code::Cancelled && local {
        return CallError::Reset(Box::new(status));
    }
    if status.code() == tonic::Code::DeadlineExceeded && local {
        return CallError::Timeout(timeout);
    }
    if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown
    ) && local
    {
        return CallError::Unreachable(Box::new(status));
    }
    CallError::Status(status)
}

/// A codec that sends and receives already encoded protobuf messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// Decoder half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// The buffer tonic allocates per call to encode the request and another to decode the reply
/// (then grown as a message needs). tonic's default is 8 KiB, which glibc serves from its bins and
/// consolidates its fast bins for on every call; an OpenIM callback's message and its reply are
/// usually a few hundred bytes, and 1 KiB stays in the thread's cache (issue #24: it was 5 to 6 %
/// of the spool delivery threads' samples).
const CALL_BUFFER: usize = 1024;

/// [`CALL_BUFFER`], with tonic's default yield threshold (for streams; these calls are unary).
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER, 32 * 1024)
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Metadata for one call: the `openim-*` keys. Empty values are left out; values that are not
/// valid header text are left out with a warning rather than failing the call.
pub fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (key, value) in pairs {
        if value.is_empty() {
            continue;
        }
        match AsciiMetadataValue::try_from(*value) {
            Ok(v) => {
                md.insert(*key, v);
            }
            Err(_) => tracing::warn!(key, "metadata value is not valid header text; not sent"),
        }
    }
    md
}

/// An error and its sources as one statement: each text once. A `tonic::Status` made from a
/// transport error already says what its sources say in its message (its `Display` would add
/// the code, the metadata and the sources' debug form), so its message ends the chain.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let (text, last) = match err.downcast_ref::<tonic::Status>() {
            Some(status) if !status.message().is_empty() => (status.message().to_owned(), true),
            _ => (err.to_string(), false),
        };
        if !s.contains(&text) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&text);
        }
        if last {
            break;
        }
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// What tonic hands back for a refused connection: a status whose message is the connect
    /// error, with the transport error and the connect error as its sources.
    #[test]
    fn an_unreachable_upstream_is_one_statement() {
        let connect = super::super::ConnectError::Failed {
            target: "127.0.0.1:1".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        let status = tonic::Status::from_error(Box::new(connect));
        let text = CallError::Unreachable(Box::new(status)).to_string();
        assert_eq!(
            text,
            "upstream unreachable: connect to 127.0.0.1:1: Connection refused (os error 111)"
        );
        assert_eq!(
            CallError::Timeout(Duration::from_nanos(58_463_162)).to_string(),
            "upstream did not answer within 58ms"
        );
    }

    fn local(code: tonic::Code) -> tonic::Status {
        let mut status = tonic::Status::new(code, "h2 protocol error: stream reset");
        status.set_source(Arc::new(std::io::Error::other("stream reset by peer")));
        status
    }

    #[test]
    fn a_locally_raised_cancelled_is_a_reset_not_a_timeout() {
        let e = classify(local(tonic::Code::Cancelled), Duration::from_secs(3));
        assert_eq!(e.label(), "reset", "{e}");
        assert!(
            e.to_string().starts_with("upstream reset the stream"),
            "{e}"
        );
        let e = classify(local(tonic::Code::DeadlineExceeded), Duration::from_secs(3));
        assert!(matches!(e, CallError::Timeout(_)), "{e}");
        // A CANCELLED the service sent itself is its status.
        let e = classify(
            tonic::Status::new(tonic::Code::Cancelled, "by the service"),
            Duration::from_secs(3),
        );
        assert!(matches!(e, CallError::Status(_)), "{e}");
    }
}
