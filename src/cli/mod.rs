//! The operator commands of the binary: this module owns each subcommand's work and output
//! (`check`, `routes`, `proto`, `spool`, `doctor`, `tail`, `replay`), their shared output rules
//! and their error type ([`CliError`]), so that `main.rs` only parses flags and dispatches.
//!
//! - `admin.rs`: the admin API client (`spool --admin`, `routes --admin`, `tail`).
//! - `check.rs`, `routes.rs`, `proto.rs`, `doctor.rs`: the commands of those names.
//! - `spool.rs`: `spool count|list|replay|purge`, on the spool or through a running gateway.
//! - `tail.rs`: the live callbacks; `replay.rs`: a capture sent again; `openim.rs`: posting as
//!   OpenIM does (also `doctor --probe`'s).
//! - `output.rs`: stdout and a closed pipe, the admin token file; `error.rs`: [`CliError`].

pub mod admin;
pub mod check;
pub mod doctor;
mod error;
pub mod openim;
pub mod output;
pub mod proto;
pub mod replay;
pub mod routes;
pub mod spool;
pub mod tail;

pub use self::error::CliError;
