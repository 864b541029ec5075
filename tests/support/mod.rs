//! What the integration tests (`tests/it`) share: the in-process harness ([`harness`]: a real
//! tonic upstream that records its calls, the gateway as a router, the real payloads), the
//! gateway binary as a process and an OpenIM-like HTTP client ([`process`]), a real
//! `redis-server` ([`redis_server`]), test certificates ([`pki`]), and [`eventually`].
//!
//! The benches, `bench/spool_load.rs` and the Redis spool's unit tests include single files of
//! this folder with `#[path]`.

mod harness;
pub(crate) mod pki;
pub(crate) mod process;
pub(crate) mod redis_server;

pub(crate) use harness::*;

use std::path::Path;
use std::time::{Duration, Instant};

/// How long a test waits for what should happen soon (a delivery, a reload, a log line).
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Writes `text` to the file `name` in `dir`; its path as text (for a flag or a config value).
pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// Polls `cond` every 20 ms until it holds; fails the test with `what` after `within`.
pub(crate) async fn eventually(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a blocking probe (a socket read, a child process), off any runtime.
pub(crate) fn eventually_blocking(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
