//! Durable after-callback delivery: this module owns storing after-events (redb or Redis),
//! delivering them with retries, and the dead letters.
//!
//! OpenIM drops "after" callbacks when its receiver is slow (two webhook workers, a bounded
//! queue), so the gateway writes each after-event to this spool, answers OpenIM once the write is
//! durable, and delivers from the spool with retries.
//!
//! # Layout
//!
//! What both backends share sits here, a wing per backend beside it:
//!
//! - `mod.rs` (this file): declarations, these docs and the re-exports; nothing is defined here.
//! - `facade.rs`: [`Spool`], the handle the gateway holds, over the configured backend.
//! - `backend.rs`: the backend trait (appending, delivery, counters, the operator operations,
//!   what an operator is told about the backend).
//! - `event.rs`: the events as the spool's users see them ([`NewEvent`], [`StoredEvent`],
//!   [`Select`], [`SpoolStats`], …); `error.rs`: [`AppendError`], [`SpoolError`].
//! - `deliver.rs`: [`Deliver`] and [`DeliveryResult`]; `fault.rs`: why an attempt failed
//!   ([`Fault`], a code and a message) and the attempt history ([`Attempt`]).
//! - `record.rs`: the stored form of an event (the protobuf record both backends keep).
//! - `rules.rs`: what an attempt's result means (retry with backoff, dead letter), the same for
//!   both backends.
//! - `redb/`: the redb backend (a local file: store, group-commit writer, scheduler and workers).
//! - `redis/`: the Redis Streams backend, with its local buffer for Redis outages (a redb spool
//!   of `redb/` in the role of a buffer, whose "delivery" is the move into Redis).
//! - `admin.rs`: the admin HTTP API of a running gateway (what `spool --admin` talks to).
//!
//! The settings are plain data in `crate::config` (`config/spool.rs`: [`SpoolConfig`],
//! [`RedisConfig`]), re-exported here.
//!
//! # Life of an event
//!
//! [`Spool::append`] stores the event durably (redb: one group commit synced to disk; Redis: as
//! `spool.redis.durability` says) before it returns, so an acknowledged event survives
//! `kill -9`. Delivery workers ([`Spool::start`]) read the event, call the [`Deliver`]
//! implementation with a deadline, and act on its [`DeliveryResult`] by the shared rules:
//! success deletes the event, a retryable failure records the attempt (count, [`Attempt`]
//! history) and schedules a retry with exponential backoff and full jitter, a permanent failure
//! or exhausted attempts or age move it to the dead letters, which an operator can list, replay
//! and purge (the `spool` CLI, `crate::cli::spool`, and [`admin`]).

mod backend;
mod deliver;
mod error;
mod event;
mod facade;
mod fault;
mod record;
mod redb;
mod rules;

pub mod admin;
pub mod redis;

pub use self::deliver::{DEFAULT_TIMEOUT_MS, Deliver, DeliveryResult};
pub use self::error::{AppendError, SpoolError};
pub(crate) use self::event::utc;
pub use self::event::{
    NewEvent, Place, Progress, Select, SpoolStats, StoredEvent, StoredEventRef, Which,
};
pub use self::facade::Spool;
pub use self::fault::{Attempt, Fault, HISTORY_MAX};
pub use self::redb::FLUSH_EVERY;
pub use self::rules::SHUTDOWN_GRACE;
pub use crate::config::{
    BUFFER_DIR, BackendKind, Durability, FILE_NAME, FullPolicy, RedisConfig, SpoolConfig,
    SpoolConfigError, Unreachable,
};

#[cfg(test)]
mod tests;
