//! The compiled contract: the descriptor pool the generic path reads, and the generated types the
//! built-in example upstream and the tests use.

use prost_reflect::DescriptorPool;
use std::sync::LazyLock;

/// The protobuf package of the contract.
pub const PACKAGE: &str = "openim.callback.v1";

/// The encoded `FileDescriptorSet` of `proto/`, compiled by `build.rs`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

static POOL: LazyLock<Result<DescriptorPool, prost_reflect::DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTOR_SET));

/// The descriptor pool of the contract.
pub fn pool() -> Result<&'static DescriptorPool, &'static prost_reflect::DescriptorError> {
    POOL.as_ref()
}

/// Generated prost messages and tonic clients/servers of `openim.callback.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("openim.callback.v1");
}
