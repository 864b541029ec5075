//! The operator commands of the binary that talk to a running gateway or read captures:
//! `tail` (the live callbacks) and `replay` (a capture sent again), over one admin API client
//! and one client that posts as OpenIM does (also `doctor --probe`'s).

pub mod admin;
pub mod openim;
pub mod replay;
pub mod tail;
