//! The spool's errors: [`AppendError`] (an event not stored) and [`SpoolError`] (opening a
//! backend, the operator operations).

use std::path::PathBuf;

/// Why [`Spool::append`](crate::spool::Spool::append) did not store an event.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The spool is full and `when_full` is `reject` (or dead letters alone fill the disk budget).
    #[error(
        "the spool is full ({pending} pending events, {bytes} bytes stored); the event was not stored"
    )]
    Full {
        /// Pending events at the time of the refusal.
        pending: u64,
        /// Stored bytes at the time of the refusal.
        bytes: u64,
    },
    /// The spool was shut down.
    #[error("the spool is shut down; the event was not stored")]
    Closed,
    /// The write transaction failed (disk full, I/O error).
    #[error("writing to the spool failed, the event was not stored: {0}")]
    Storage(String),
    /// The backend cannot take the event now (Redis unreachable or too slow) and
    /// `spool.redis.when_unreachable: reject` says to refuse it. (The event may still have
    /// reached Redis, a write that timed out: then it is delivered although refused.)
    #[error("the spool backend is unavailable ({0}); the event was not stored")]
    Unavailable(String),
}

/// Errors of opening the spool and of its operator operations; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The settings are invalid.
    #[error("invalid spool settings: {0}")]
    Config(String),
    /// The spool directory cannot be created.
    #[error(
        "cannot create the spool directory {}: {source}; create it or set spool.dir to a writable directory",
        path.display()
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool file cannot be opened for reading and writing.
    #[error(
        "cannot open the spool file {}: {source}; the gateway needs read and write access to it (check owner and permissions)",
        path.display()
    )]
    Io {
        /// The spool file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a spool, or is corrupted.
    #[error(
        "the spool file {} cannot be used: {detail}. Move it aside (e.g. `mv {0} {0}.bad`) to start with an empty spool and keep it for inspection; nothing was deleted",
        path.display()
    )]
    Corrupt {
        /// The spool file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process (or another [`Spool`](crate::spool::Spool) in this one) has the file open.
    #[error(
        "the spool file {} is already open, probably by the running gateway; stop it, or run this command against the running gateway with `--admin http://<its admin address>`",
        path.display()
    )]
    AlreadyOpen {
        /// The spool file.
        path: PathBuf,
    },
    /// The spool file does not exist (operator commands do not create one).
    #[error(
        "there is no spool file at {}; check --config / spool.dir (nothing has been spooled there yet)",
        path.display()
    )]
    NotFound {
        /// The path that was looked at.
        path: PathBuf,
    },
    /// A storage error while the spool was open.
    #[error("spool file {}: {detail}", path.display())]
    Storage {
        /// The spool file.
        path: PathBuf,
        /// The storage engine's error.
        detail: String,
    },
    /// The spool was shut down.
    #[error("the spool is shut down")]
    Closed,
}
