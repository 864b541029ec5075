//! The fast path of a plaintext member: its calls written straight into one HTTP/2
//! connection ([`h2`]) from the caller's own task.
//!
//! A tonic `Channel` is a `tower::buffer::Buffer` in front of hyper's client: every call is handed
//! to the buffer's task, which hands it to hyper's connection task, which spawns a task per
//! request for the answer, which a oneshot hands back to the caller: four wake-ups for one unary
//! call, often across the runtime's threads. Here the caller opens its stream on the shared
//! connection itself (`h2::client::SendRequest` is a handle on the connection's state), so the
//! only other task is the connection's, which writes the frames and wakes the caller with the
//! answer. The gRPC side is still tonic's: [`FastMember`] is the `tower::Service` under
//! `tonic::client::Grpc`, which encodes the request, sends `grpc-timeout` and reads the status.
//!
//! What tonic's channel did for such a member and this does too: the configured URI's scheme and
//! authority on every request, HTTP/2 keep-alive pings every 30 s while idle (a ping unanswered
//! within 20 s drops the connection), a lazy connection made at the first call through the
//! member's [`Connector`] (so `connect_timeout`, name resolution and the member's health are the
//! same), and a new connection after the old one ended. Its errors reach tonic as `h2::Error`s,
//! which tonic maps to gRPC codes as it maps hyper's (a reset stream is `CANCELLED`, …).
//! `https://` members keep tonic's channel (TLS).
//!
//! One connection per serving worker (`crate::worker`): each worker's single-threaded runtime
//! drives its own connection to the member, so a callback's HTTP task and its upstream call's
//! connection task run on one thread and wake each other without crossing threads (Envoy's
//! workers own their upstream connections the same way). Other threads (spool delivery, health
//! checks) share the connection of worker 0.

use super::member::{Connector, Request, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Service};

/// How often an idle or busy connection is pinged (tonic's endpoint setting for members).
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a ping may stay unanswered (hyper's default).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// hyper's client defaults, which tonic's channel used.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Connections a member keeps at most: one per serving worker; workers beyond this many share
/// them (a connection serves any thread; only the wake-ups cross threads then).
const SLOTS: usize = 16;

/// One plaintext member's connection, shared by every call; cheap to clone.
#[derive(Clone)]
pub(crate) struct FastMember {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// A connection per serving worker, by [`crate::worker::current`].
    slots: [Slot; SLOTS],
}

/// One worker's connection to the member.
#[derive(Default)]
struct Slot {
    /// The open connection, if any.
    conn: arc_swap::ArcSwapOption<Conn>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

struct Conn {
    send: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
}

impl FastMember {
    /// The member of `uri` (its scheme and authority go on every request), connecting through
    /// `connector`; `None` unless `uri` is a plaintext `http://` URI with an authority.
    pub(crate) fn new(uri: &http::Uri, connector: Connector) -> Option<Self> {
        if uri.scheme_str() != Some("http") {
            return None;
        }
        Some(Self {
            inner: Arc::new(Inner {
                connector,
                scheme: http::uri::Scheme::HTTP,
                authority: uri.authority()?.clone(),
                slots: std::array::from_fn(|_| Slot::default()),
            }),
        })
    }
}

impl Inner {
    /// The current worker's open connection, connecting when there is none (or it ended).
    async fn connection(&self) -> Result<Arc<Conn>, BoxError> {
        let slot = &self.slots[crate::worker::current() % SLOTS];
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        let _one = slot.connecting.lock().await;
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        let io = self
            .connector
            .clone()
            .call(http::Uri::default())
            .await?
            .into_inner();
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        // On this worker's runtime: the connection's task runs beside its callers.
        tokio::spawn(drive(connection, ClosedOnDrop(closed.clone())));
        let conn = Arc::new(Conn { send, closed });
        slot.conn.store(Some(conn.clone()));
        Ok(conn)
    }
}

impl Slot {
    fn open(&self) -> Option<Arc<Conn>> {
        let conn = self.conn.load_full()?;
        (!conn.closed.load(Ordering::Acquire)).then_some(conn)
    }
}

impl Inner {
    async fn call(self: Arc<Self>, req: Request) -> Result<Response, BoxError> {
        let (mut parts, body) = req.into_parts();
        let data = unary_frame(body).await?;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        parts.uri = http::Uri::from_parts(uri)?;
        // A connection that ended (or is going away) since it was last used refuses the stream
        // before anything is sent: then once more on a new one.
        let mut send = match self.connection().await?.ready().await {
            Ok(send) => send,
            Err(_) => self.connection().await?.ready().await?,
        };
        let (response, mut stream) =
            send.send_request(http::Request::from_parts(parts, ()), data.is_empty())?;
        if !data.is_empty() {
            stream.send_data(data, true)?;
        }
        let (parts, recv) = response.await?.into_parts();
        Ok(http::Response::from_parts(
            parts,
            tonic::body::Body::new(H2Body { recv, data: true }),
        ))
    }
}

impl Conn {
    /// A handle ready to open a stream; on failure the connection is marked closed, so that
    /// the next [`Inner::connection`] makes a new one.
    async fn ready(&self) -> Result<h2::client::SendRequest<Bytes>, h2::Error> {
        self.send.clone().ready().await.inspect_err(|_| {
            self.closed.store(true, Ordering::Release);
        })
    }
}

/// tonic's encoded unary request: its one gRPC frame (the encoder is in memory, so it is there
/// at once), without copying when it comes as one piece.
async fn unary_frame(mut body: tonic::body::Body) -> Result<Bytes, BoxError> {
    let mut first = None;
    let mut more = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match first.take() {
            None if more.is_empty() => first = Some(data),
            previous => {
                if let Some(p) = previous {
                    more.extend_from_slice(&p);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| more.freeze()))
}

/// Marks a connection closed when its task ends: when the connection ended, and when the task
/// was dropped with its runtime (a serving worker that stopped).
struct ClosedOnDrop(Arc<AtomicBool>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs the connection until it ends or a keep-alive ping goes unanswered; `closed` marks it
/// closed then.
async fn drive(
    mut connection: h2::client::Connection<tokio::net::TcpStream, Bytes>,
    closed: ClosedOnDrop,
) {
    let ping = connection.ping_pong();
    tokio::select! {
        result = &mut connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        }
        () = keep_alive(ping) => {
            tracing::debug!("upstream connection did not answer a keep-alive ping: closed");
        }
    }
    drop(closed);
}

/// Pings every [`KEEP_ALIVE`]; returns when a ping is not answered in time.
async fn keep_alive(ping: Option<h2::PingPong>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection failed: its own future ends with the error.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// The answer's body: its data, then its trailers (where gRPC puts the status).
struct H2Body {
    recv: h2::RecvStream,
    /// Still reading data frames.
    data: bool,
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        if self.data {
            match self.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // Read: the peer may send as much again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.data = false,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(trailers))) => {
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl Service<Request> for FastMember {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Connecting and waiting for a stream happen in the call, under its deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(self.inner.clone().call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::member::{Health, Key, Target};
    use std::sync::atomic::AtomicUsize;

    /// A real HTTP/2 server on 127.0.0.1:0 that counts its connections and answers every
    /// request with an empty gRPC OK.
    async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(io).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let head = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("head");
                        if let Ok(mut stream) = respond.send_response(head, false) {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = stream.send_trailers(trailers);
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    fn member(addr: std::net::SocketAddr) -> FastMember {
        let connector = Connector {
            target: Target::Addr(addr),
            key: Key {
                endpoint: 0,
                addr: Some(addr),
            },
            label: "test".into(),
            timeout: Duration::from_secs(2),
            health: Arc::new(Health::new("test")),
        };
        let uri: http::Uri = format!("http://{addr}").parse().expect("uri");
        FastMember::new(&uri, connector).expect("plaintext member")
    }

    /// `calls` unary calls through `member` from serving worker `index`, on a runtime of its own
    /// thread (as `http/serve.rs` runs a worker); the runtime is gone when this returns.
    fn calls_from_worker(member: &FastMember, index: usize, calls: usize) {
        let member = member.clone();
        std::thread::spawn(move || {
            crate::worker::enter(index);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                for _ in 0..calls {
                    let req = http::Request::post("/pkg.Service/Method")
                        .body(tonic::body::Body::new(http_body_util::Full::new(
                            Bytes::from_static(&[0, 0, 0, 0, 0]),
                        )))
                        .expect("request");
                    let answer = member.clone().call(req).await.expect("answered");
                    assert_eq!(answer.status(), http::StatusCode::OK);
                }
            });
        })
        .join()
        .expect("worker thread");
    }

    #[tokio::test]
    async fn each_worker_calls_through_its_own_connection_and_a_stopped_one_reconnects() {
        let (addr, connections) = counting_server().await;
        let member = member(addr);
        let m = member.clone();
        tokio::task::spawn_blocking(move || {
            calls_from_worker(&m, 1, 3);
            calls_from_worker(&m, 2, 3);
        })
        .await
        .expect("workers");
        // Worker 1's runtime is gone with its connection's task: worker 1 again connects anew
        // instead of using the connection nobody drives.
        let m = member.clone();
        tokio::task::spawn_blocking(move || calls_from_worker(&m, 1, 2))
            .await
            .expect("worker 1 again");
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        // Threads that are not serving workers share worker 0's connection.
        for _ in 0..2 {
            let req = http::Request::post("/pkg.Service/Method")
                .body(tonic::body::Body::empty())
                .expect("request");
            member.clone().call(req).await.expect("answered");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 4);
    }
}
