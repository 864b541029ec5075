//! The integration tests, one crate (one link, one process): each module is one behaviour of the
//! gateway, through the library in-process or through the built binary over real sockets, and
//! [`support`] holds what they share.
//!
//! The modules share one process, so what is process-wide is shared too: the `metrics` recorder
//! (installed once, by whichever gateway is built first: assert on a series of your own, e.g. an
//! upstream named after the test, or on the binary's `/metrics`), the global `tracing` subscriber
//! (`tracing` installs it, silent), `log.redact` (set by `telemetry::init`, on), environment
//! variables and the current directory (no test changes them: give a child process its own with
//! `Command::env` and `current_dir`).
//!
//! `cargo test --test it` runs them all; `cargo test --test it spool::` one module. The
//! `#[ignore]`d ones need toolchains and registries and run in CI against the release binary:
//! `cargo test --release --test it -- --ignored --test-threads=1 examples:: bad_input:: docs::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod binary;
mod catalogue;
mod console;
mod decisions;
mod docs;
mod doctor;
mod examples;
mod fuzz_regressions;
mod gate;
mod input;
mod inspect;
mod lifecycle;
mod metrics;
mod resilience;
mod safety;
mod security;
mod seeds;
mod spool;
mod spool_redis;
mod tracing;
mod upstream_transport;
