//! One accepted connection's guard: the keep-alive idle timeout, the header read timeout against
//! slow clients, and a lingering close, enforced on the socket itself.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection is idle, so it would
//! close pooled connections after 10 s and OpenIM's Go client (idle timeout 90 s) would write its
//! next callback onto a closing connection. So the two are kept apart here: while no request is
//! in progress, the connection may stay silent for `idle_timeout`; once the first byte of a
//! request arrives, its head must follow within `header_read_timeout`. The request's body is
//! bounded by `request_timeout` in the handler.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface: an h2c connection has no per-request head to time.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Longest time a closing connection keeps reading (and discarding) what the client still sends,
/// so that the client reads the answer before the socket is closed.
const LINGER: Duration = Duration::from_secs(2);

/// What the connection is doing, shared by the socket guard and the per-request service.
#[derive(Debug)]
pub(super) struct ConnClock {
    opened: Instant,
    /// Requests in progress.
    active: AtomicUsize,
    /// Milliseconds since `opened` of the last moment the connection became idle, or of the first
    /// byte of the request head being read.
    mark_ms: AtomicU64,
    phase: AtomicU8,
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const H2: u8 = 3;

impl ConnClock {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            mark_ms: AtomicU64::new(0),
            phase: AtomicU8::new(IDLE),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request's head was read: its handler runs now.
    pub(super) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        let _ = self
            .phase
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire);
        let _ = self
            .phase
            .compare_exchange(HEAD, BUSY, Ordering::AcqRel, Ordering::Acquire);
        RequestGuard(self.clone())
    }
}

/// Marks the end of one request (its handler returned).
pub(super) struct RequestGuard(Arc<ConnClock>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let clock = &self.0;
        if clock.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            clock.mark_ms.store(clock.now_ms(), Ordering::Release);
            let _ = clock
                .phase
                .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// The timeouts a guard enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) idle: Duration,
    pub(super) header: Duration,
}

/// A socket (plain or TLS) under a [`ConnClock`].
pub(super) struct Guarded<IO> {
    io: IO,
    clock: Arc<ConnClock>,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    first_bytes: Vec<u8>,
    lingering: Option<Instant>,
}

impl<IO> Guarded<IO> {
    pub(super) fn new(io: IO, clock: Arc<ConnClock>, timeouts: Timeouts) -> Self {
        Self {
            io,
            clock,
            timeouts,
            timer: Box::pin(tokio::time::sleep(timeouts.idle)),
            first_bytes: Vec::new(),
            lingering: None,
        }
    }

    /// The deadline for the next byte, by phase; `None` while a request is being handled.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let mark =
            self.clock.opened + Duration::from_millis(self.clock.mark_ms.load(Ordering::Acquire));
        match self.clock.phase.load(Ordering::Acquire) {
            IDLE | H2 if self.clock.active.load(Ordering::Acquire) == 0 => {
                Some((mark + self.timeouts.idle, "idle_timeout"))
            }
            HEAD => Some((mark + self.timeouts.header, "header_read_timeout")),
            _ => None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    let this = &mut *self;
                    if this.first_bytes.len() < H2_PREFACE.len() {
                        let take = (H2_PREFACE.len() - this.first_bytes.len()).min(got.len());
                        this.first_bytes.extend_from_slice(&got[..take]);
                        if this.first_bytes.len() == H2_PREFACE.len()
                            && this.first_bytes == H2_PREFACE
                        {
                            this.clock.phase.store(H2, Ordering::Release);
                        }
                    }
                    let clock = &this.clock;
                    match clock.phase.load(Ordering::Acquire) {
                        IDLE => {
                            clock.mark_ms.store(clock.now_ms(), Ordering::Release);
                            clock.phase.store(HEAD, Ordering::Release);
                        }
                        // h2: any frame is activity; its streams are timed by the handler.
                        H2 => clock.mark_ms.store(clock.now_ms(), Ordering::Release),
                        _ => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                // While a request is handled there is no deadline, but the timer stays armed as
                // a re-check: nothing else wakes this read when the request ends and the
                // connection turns idle.
                let (target, limit) = match self.deadline() {
                    Some((deadline, which)) => (deadline, Some(which)),
                    None => (
                        Instant::now() + self.timeouts.idle.min(self.timeouts.header),
                        None,
                    ),
                };
                let target = tokio::time::Instant::from_std(target);
                if self.timer.deadline() != target {
                    self.timer.as_mut().reset(target);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        if let Some(which) = limit {
                            metrics::counter!("gateway_limit_total", "limit" => which).increment(1);
                            tracing::debug!(limit = which, "closing a connection that went silent");
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                which,
                            )));
                        }
                        // A re-check came due: compute the deadline again.
                    }
                }
            },
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// Lingering close: send FIN, then read and discard what the client still sends (for at
    /// most [`LINGER`]), so that a client still writing its body reads the answer instead of a
    /// reset.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.lingering.is_none() {
            ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
            let until = Instant::now() + LINGER;
            self.lingering = Some(until);
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(until));
        }
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match self.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
