//! libFuzzer targets for openim-callback-gateway (see README.md). The harness and the invariants
//! live in `check.rs`, which `tests/it/fuzz_regressions.rs` includes too.

#[path = "check.rs"]
mod check;

pub use check::*;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// `tests/data/payloads` of the gateway.
pub fn payloads_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/payloads")
}

/// The harness, loaded once per process.
pub fn harness() -> &'static Harness {
    static HARNESS: LazyLock<Harness> = LazyLock::new(|| Harness::new(&payloads_dir()));
    &HARNESS
}
