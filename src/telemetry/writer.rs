//! Where the gateway's log lines are written: off the request's thread, in order, lossy only
//! when standard output stalls.
//!
//! A callback's task formats its line (in `tracing-subscriber`'s thread-local buffer) and appends
//! it to a queue: a memory copy under a short lock, no system call. One writer thread takes the
//! whole queue at a time and writes it with one `write`. The thread sleeps while the queue is
//! empty; the line that finds the queue empty wakes it, and it waits [`LINGER`] for the lines
//! that follow before it writes, so under load one wake-up and one `write` serve many lines,
//! and a lone line still reaches stdout within a few milliseconds (no waiting for a buffer to
//! fill). The [`LogGuard`] (kept by [`super::Telemetry`]) writes what is queued when the gateway
//! exits.
//!
//! When the queue holds [`QUEUE_BYTES`] (stdout stalled: a blocked pipe, a log collector that
//! stopped reading), a new line is dropped and counted in `gateway_log_lines_dropped_total`
//! rather than waited for: a callback must never wait for the log, or OpenIM's timeout would
//! follow the log collector.
//!
//! Own code rather than `tracing-appender`'s `non_blocking`: that one sends each line through a
//! channel that wakes its thread for every line when the thread is idle between lines, which is
//! how it is between callbacks; at 8 000 lines a second that measured more CPU per callback than
//! writing stdout directly (`bench/ab.sh`, `LOG_FILTER=info`: 99 → 113 µs).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of lines queued for the writer thread before new ones are dropped: with lines of 300
/// to 600 bytes, 15 000 to 30 000 lines, several seconds of a stalled stdout at thousands of
/// callbacks per second.
pub(super) const QUEUE_BYTES: usize = 8 << 20;

/// How long the writer thread, woken by a line, waits for more before it writes.
const LINGER: Duration = Duration::from_millis(5);

/// How long the guard waits, at exit, for the queued lines to be written.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Capacity kept for the queue between writes (more is released after a burst).
const KEPT_CAPACITY: usize = 256 << 10;

struct Shared {
    state: Mutex<State>,
    /// Signalled when a line finds the queue empty, and at exit.
    ready: Condvar,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    queued: Vec<u8>,
    /// The guard was dropped: write what is queued, then end.
    closing: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A writer that panicked holding the lock left whole lines only: keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The log's writer: a [`MakeWriter`] for the fmt layer.
#[derive(Clone)]
pub(super) struct LogWriter {
    shared: Arc<Shared>,
    limit: usize,
}

/// Ends the writer thread when dropped, after it wrote what is queued (waiting at most
/// [`EXIT_WAIT`] for a stalled output).
pub(super) struct LogGuard {
    shared: Arc<Shared>,
    done: std::sync::mpsc::Receiver<()>,
}

impl LogWriter {
    /// A writer thread over `out`, with `limit` bytes at most waiting for it. Keep the guard
    /// until the last line is logged.
    pub(super) fn new<W: Write + Send + 'static>(
        out: W,
        limit: usize,
    ) -> std::io::Result<(Self, LogGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let (tell_done, done) = std::sync::mpsc::sync_channel(1);
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                write_queue(&worker, out);
                let _ = tell_done.send(());
            })?;
        let guard = LogGuard {
            shared: shared.clone(),
            done,
        };
        Ok((Self { shared, limit }, guard))
    }

    /// Standard output.
    pub(super) fn stdout() -> std::io::Result<(Self, LogGuard)> {
        Self::new(std::io::stdout(), QUEUE_BYTES)
    }

    /// Lines dropped so far because the queue was full.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues one line (the fmt layer writes each line with one `write_all`).
    fn queue(&self, line: &[u8]) {
        let mut state = self.shared.state();
        if state.queued.len() + line.len() > self.limit {
            drop(state);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("gateway_log_lines_dropped_total").increment(1);
            return;
        }
        let wake = state.queued.is_empty();
        state.queued.extend_from_slice(line);
        drop(state);
        if wake {
            self.shared.ready.notify_one();
        }
    }
}

/// The writer thread: waits for lines, lingers for more, writes them all; until the guard is
/// dropped and nothing is left.
fn write_queue(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.state();
        while state.queued.is_empty() && !state.closing {
            state = shared
                .ready
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.queued.is_empty() {
            return;
        }
        if !state.closing {
            drop(state);
            std::thread::sleep(LINGER);
            state = shared.state();
        }
        std::mem::swap(&mut state.queued, &mut batch);
        if state.queued.capacity() > KEPT_CAPACITY {
            state.queued = Vec::new();
        }
        drop(state);
        // Nowhere to report a failed write of the log (a closed stdout): the lines are gone.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.state().closing = true;
        self.shared.ready.notify_one();
        let _ = self.done.recv_timeout(EXIT_WAIT);
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("limit", &self.limit)
            .field("dropped", &self.shared.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// One line's writer.
#[derive(Debug)]
pub(super) struct Line<'a>(&'a LogWriter);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.queue(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // The writer thread writes as soon as it has lingered.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An output that records what is written, and blocks every write while the test holds
    /// `stall`: a stalled stdout.
    #[derive(Clone, Default)]
    struct Recorder {
        written: Arc<Mutex<Vec<u8>>>,
        stall: Arc<Mutex<()>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _wait = self.stall.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    /// The fmt layer's way: one writer per line, one `write_all`.
    fn log(writer: &LogWriter, line: &str) {
        writer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_arrives_in_order_and_the_guard_writes_the_last_ones() {
        let out = Recorder::default();
        let (writer, guard) = LogWriter::new(out.clone(), QUEUE_BYTES).unwrap();
        let lines: Vec<String> = (0..10_000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            log(&writer, line);
        }
        drop(guard);
        assert_eq!(out.text(), lines.concat());
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_line_is_written_without_waiting_for_more() {
        let out = Recorder::default();
        let (writer, _guard) = LogWriter::new(out.clone(), QUEUE_BYTES).unwrap();
        log(&writer, "one\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while out.text() != "one\n" {
            assert!(std::time::Instant::now() < deadline, "the line is written");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_stalled_output_drops_new_lines_and_counts_them_without_blocking() {
        let out = Recorder::default();
        let stalled = out.stall.lock().unwrap();
        let (writer, guard) = LogWriter::new(out.clone(), 8 * 200).unwrap();
        // Lines of 200 bytes, the queue holds 8: the writer thread takes one batch and blocks
        // writing it, 8 more wait, the rest are dropped at once (this loop ends although the
        // output takes nothing).
        let n = 2_000;
        for i in 0..n {
            log(&writer, &format!("{i:0>199}\n"));
        }
        let dropped = writer.dropped();
        assert!(dropped > 0 && dropped < n as u64, "{dropped} dropped");
        drop(stalled);
        // Unstalled: what was kept is written; then the queue takes lines again.
        let kept = n - usize::try_from(dropped).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while out.text().lines().count() < kept {
            assert!(
                std::time::Instant::now() < deadline,
                "the kept lines are written"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        log(&writer, "after\n");
        drop(guard);
        let got = out.text();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), kept + 1, "the lines kept, then the next one");
        let numbers: Vec<usize> = lines[..lines.len() - 1]
            .iter()
            .map(|l| l.parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(lines.last(), Some(&"after"));
    }
}
