//! Which serving worker the current thread is: the callback port is served by one
//! single-threaded runtime per worker (`http/serve.rs`), and what a worker owns (its HTTP/2
//! connection to each plaintext upstream member, `upstream/fast.rs`) is found by this index.
//!
//! A leaf: the accept loop sets the index on its thread, the fast path reads it; every other
//! thread (the shared runtime's: spool delivery, health checks, the admin port) is worker 0.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as serving worker `index` (1-based; 0 is "not a serving worker").
pub(crate) fn enter(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// The current thread's serving worker: 1.. on a serving worker's thread, 0 elsewhere.
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many serving workers `workers: auto` means here: the CPUs this process may use (cgroup
/// quotas included), at least 1.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
