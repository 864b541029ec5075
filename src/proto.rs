//! The compiled contract as the gateway reads it: the descriptor pool of the contract crate's
//! descriptor set (the generic path works on descriptors, never on generated types).

use prost_reflect::DescriptorPool;
use std::sync::LazyLock;

pub use openim_callback_contract::{DESCRIPTOR_SET, PACKAGE, PROTO_FILES, v1};

static POOL: LazyLock<Result<DescriptorPool, prost_reflect::DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTOR_SET));

/// The descriptor pool of the contract.
pub fn pool() -> Result<&'static DescriptorPool, &'static prost_reflect::DescriptorError> {
    POOL.as_ref()
}
