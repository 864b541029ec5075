//! The one generic call path: any unary RPC of the contract, as encoded bytes over a tonic channel.
//!
//! tonic's generated client methods are only a path, a codec and `Grpc::unary`; this module is
//! that, once, with a codec that passes protobuf bytes through. The request is encoded from the
//! descriptor-driven message, the reply decoded with the reply descriptor by the caller.

use crate::envelope::CallFailure;
use bytes::{Buf, BufMut, Bytes};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;

/// Metadata keys set on every upstream call (design §2).
pub mod meta {
    /// The `operationID` of the OpenIM request.
    pub const OPERATION_ID: &str = "openim-operation-id";
    /// The OpenIM callback command.
    pub const COMMAND: &str = "openim-callback-command";
    /// The `key` query parameter, URL-decoded.
    pub const KEY: &str = "openim-key";
    /// Stable id of an async delivery, for idempotency.
    pub const DELIVERY_ID: &str = "openim-delivery-id";
    /// Attempt number of an async delivery, from 1.
    pub const DELIVERY_ATTEMPT: &str = "openim-delivery-attempt";
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

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Metadata for one call: the `openim-*` keys. Values that are not valid header text are left out
/// with a warning rather than failing the call.
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

/// Calls one unary RPC with an encoded request, under a deadline that is also sent to the
/// upstream as `grpc-timeout`. Returns the encoded reply, or the status the upstream answered.
pub async fn call(
    channel: Channel,
    path: http::uri::PathAndQuery,
    request: Bytes,
    metadata: MetadataMap,
    timeout: Duration,
) -> Result<Result<Bytes, tonic::Status>, CallFailure> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async move {
        grpc.ready()
            .await
            .map_err(|e| CallFailure::Unreachable(error_chain(&e)))?;
        let mut req = tonic::Request::from_parts(metadata, tonic::Extensions::default(), request);
        req.set_timeout(timeout);
        Ok::<_, CallFailure>(
            grpc.unary(req, path, RawCodec)
                .await
                .map(|r| r.into_inner()),
        )
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(CallFailure::Timeout(timeout)),
        Ok(Err(failure)) => Err(failure),
        Ok(Ok(Err(status))) => Ok(Err(classify(status, timeout)?)),
        Ok(Ok(Ok(reply))) => Ok(Ok(reply)),
    }
}

/// Separates statuses the upstream sent from transport failures tonic reports as statuses.
fn classify(status: tonic::Status, timeout: Duration) -> Result<tonic::Status, CallFailure> {
    use std::error::Error as _;
    let local = status.source().is_some();
    if matches!(
        status.code(),
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    ) && status.metadata().is_empty()
        && local
    {
        return Err(CallFailure::Timeout(timeout));
    }
    if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown
    ) && local
    {
        return Err(CallFailure::Unreachable(error_chain(&status)));
    }
    Ok(status)
}

/// An error and its sources on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
