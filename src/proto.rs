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

/// Writes the contract compiled into this binary: the `.proto` files under `out` (as
/// `out/openim/callback/v1/*.proto`) and/or the encoded `FileDescriptorSet` to `descriptor_set`.
/// Returns the paths written.
pub fn write_contract(
    out: Option<&std::path::Path>,
    descriptor_set: Option<&std::path::Path>,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    if let Some(dir) = out {
        for (rel, text) in PROTO_FILES {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)?;
            written.push(path);
        }
    }
    if let Some(path) = descriptor_set {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, DESCRIPTOR_SET)?;
        written.push(path.to_owned());
    }
    Ok(written)
}
