//! The accept loop for both ports: the callback port OpenIM reaches (optionally TLS) and, when
//! `admin_listen` is set, the operators' port.
//!
//! The callback port is served by `workers` serving workers: a thread each, with a
//! single-threaded runtime that runs its connections' callbacks and drives its own upstream
//! connections (`crate::worker`, `upstream/fast.rs`), so that a callback never waits for a
//! wake-up from another thread. The accept loop hands each new connection to the worker with the
//! fewest open ones (a hand-off per connection, not per callback: OpenIM keeps its connections
//! alive). The admin port, the spool and the health checks stay on the shared runtime. Per
//! connection: the `max_connections` cap, the
//! idle / header-read timeouts and lingering close of `conn.rs`, hyper's header count and size
//! limits, and the peer address for the auth layer. One shutdown signal stops both ports:
//! readiness goes first (`/readyz` 503 for `shutdown_delay`, so the mesh stops sending), then the
//! listeners close and in-flight requests finish within `shutdown_grace`.

use super::conn::{ConnClock, Guarded, Timeouts};
use super::{admin_router, app, callback_router};
use crate::config::LimitsConfig;
use crate::gateway::Gateway;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

/// The bound listeners: the callback port, and the admin port when it is separate.
#[derive(Debug)]
pub struct Ports {
    /// The port OpenIM's `url` points at.
    pub callback: TcpListener,
    /// The operators' port (`admin_listen`); `None` serves the admin routes on `callback`.
    pub admin: Option<TcpListener>,
}

/// How connections are served: the limits, and TLS for the callback port.
#[derive(Clone)]
pub struct ServeOptions {
    /// The limits (`limits:`).
    pub limits: LimitsConfig,
    /// TLS on the callback port.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long in-flight requests may take to finish once the listeners closed.
    pub shutdown_grace: Duration,
    /// How long readiness is 503 before the listeners close.
    pub shutdown_delay: Duration,
    /// Serving workers of the callback port (`workers`, at least 1).
    pub workers: usize,
}

/// Serves until `shutdown` completes, then lets in-flight requests finish on both ports.
pub async fn serve(
    gw: &Gateway,
    ports: Ports,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let drain = gw.clone();
    let delay = options.shutdown_delay;
    let grace = options.shutdown_grace;
    let signal = tokio::spawn(async move {
        shutdown.await;
        drain.health().begin_drain();
        tracing::info!(
            shutdown_delay = %crate::telemetry::human_duration(delay),
            shutdown_grace = %crate::telemetry::human_duration(grace),
            "shutting down: /readyz answers 503 now; the listeners close after shutdown_delay, then in-flight callbacks get shutdown_grace"
        );
        tokio::time::sleep(delay).await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = Vec::new();
    let callback = match ports.admin {
        Some(admin) => {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(%addr, "admin port: /healthz /readyz /metrics /admin/upstreams /admin/spool /admin/console");
            }
            let plain = ServeOptions {
                tls: None,
                ..options.clone()
            };
            let stop = stop_rx.clone();
            let router = admin_router(gw);
            tasks.push(tokio::spawn(async move {
                let server = ConnServer::new(router, &plain);
                let accepted = accept_loop(admin, &plain.limits, stop, |c| server.spawn(c)).await;
                server.finish(plain.shutdown_grace).await;
                accepted
            }));
            callback_router(gw)
        }
        None => app(gw),
    };
    if let Ok(addr) = ports.callback.local_addr() {
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%addr, workers = options.workers.max(1), "openim-callback-gateway listening; point OpenIM's webhooks.yml url at {scheme}://{addr}/callbackExample");
    }
    gw.health().set_listening();
    let served = serve_workers(ports.callback, callback, options, stop_rx).await;
    signal.abort();
    for task in tasks {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "admin port stopped"),
            Err(e) => tracing::error!(error = %e, "admin port task failed"),
            Ok(Ok(())) => {}
        }
    }
    served
}

/// Runs the callback port until `stop`: the accept loop here, each connection handed to the
/// serving worker with the fewest open connections; then waits for every worker to finish its
/// connections (within `shutdown_grace`) and stop.
async fn serve_workers(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for index in 1..=options.workers.max(1) {
        let (conns_tx, conns) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
        let open = Arc::new(AtomicUsize::new(0));
        let (router, options, done) = (router.clone(), options.clone(), done_tx.clone());
        // The worker's log lines and spans go to the subscriber of the thread that starts it
        // (tests install one per test).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let worker_open = open.clone();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                crate::worker::enter(index);
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| {
                        runtime.block_on(run_worker(conns, worker_open, router, options));
                    });
                // Sent once the runtime is gone, with every task it still held.
                let _ = done.send(served);
            })?;
        workers.push(Worker {
            conns: conns_tx,
            open,
        });
    }
    drop(done_tx);
    let accepted = accept_loop(listener, &options.limits, stop, |conn| {
        // The least loaded worker; the first of equals, so that they fill in turn.
        if let Some(w) = workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        {
            w.open.fetch_add(1, Ordering::Relaxed);
            if let Err(lost) = w.conns.send(conn) {
                // Its runtime ended (it could not start): the connection closes unserved, and
                // the count that stays up keeps the next ones away from it.
                tracing::error!(peer = %lost.0.peer, "a serving worker is gone; connection closed");
            }
        }
    })
    .await;
    // Closing the hand-off channels tells the workers to finish their connections and stop.
    drop(workers);
    let mut served = accepted;
    while let Some(result) = done_rx.recv().await {
        if let Err(e) = result {
            tracing::error!(error = %e, "a serving worker could not start");
            served = Err(e);
        }
    }
    served
}

/// A serving worker, as the accept loop sees it.
struct Worker {
    /// Where its new connections go.
    conns: tokio::sync::mpsc::UnboundedSender<Accepted>,
    /// Its open connections.
    open: Arc<AtomicUsize>,
}

/// One serving worker's runtime: serves the connections handed to it until the accept loop
/// stops, then lets them finish within `shutdown_grace`.
async fn run_worker(
    mut conns: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    open: Arc<AtomicUsize>,
    router: Router,
    options: ServeOptions,
) {
    let server = ConnServer::new(router, &options);
    while let Some(conn) = conns.recv().await {
        let open = open.clone();
        server.spawn_then(conn, move || {
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    server.finish(options.shutdown_grace).await;
}

/// An accepted connection with its slot under `max_connections`.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// Accepts connections on one port until `stop`, each within the `max_connections` cap, and
/// gives each to `serve`.
async fn accept_loop(
    listener: TcpListener,
    limits: &LimitsConfig,
    mut stop: watch::Receiver<bool>,
    mut serve: impl FnMut(Accepted),
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(*limits.max_connections));
    loop {
        // A free connection slot first: at the cap, new connections wait in the accept queue.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        if slots.available_permits() == 0 {
            metrics::counter!("gateway_limit_total", "limit" => "max_connections").increment(1);
        }
        let _ = stream.set_nodelay(true);
        match stream.into_std() {
            Ok(stream) => serve(Accepted {
                stream,
                peer,
                permit,
            }),
            Err(e) => tracing::warn!(%peer, error = %e, "accepted connection unusable"),
        }
    }
    Ok(())
}

/// Serves connections on the runtime it runs on: hyper's HTTP/1 and HTTP/2 with the limits,
/// the timeouts of `conn.rs`, TLS when set, and a graceful end.
struct ConnServer {
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    graceful: GracefulShutdown,
}

impl ConnServer {
    fn new(router: Router, options: &ServeOptions) -> Self {
        let limits = &options.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .max_headers(*limits.max_headers)
            .max_buf_size(*limits.max_header_bytes);
        Self {
            router,
            builder: Arc::new(builder),
            timeouts: Timeouts {
                idle: limits.idle_timeout.0,
                header: limits.header_read_timeout.0,
            },
            tls: options.tls.clone(),
            handshake_timeout: limits.header_read_timeout.0,
            graceful: GracefulShutdown::new(),
        }
    }

    fn spawn(&self, conn: Accepted) {
        self.spawn_then(conn, || {});
    }

    /// Serves `conn` in a task of its own, then runs `ended`.
    fn spawn_then(&self, conn: Accepted, ended: impl FnOnce() + Send + 'static) {
        let Accepted {
            stream,
            peer,
            permit,
        } = conn;
        let clock = ConnClock::new();
        let service = ConnService {
            router: self.router.clone(),
            peer,
            clock: clock.clone(),
        };
        let builder = self.builder.clone();
        let watcher = self.graceful.watcher();
        let tls = self.tls.clone();
        let (timeouts, handshake_timeout) = (self.timeouts, self.handshake_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "accepted connection unusable");
                    ended();
                    return;
                }
            };
            metrics::gauge!("gateway_connections_open").increment(1.0);
            match tls {
                None => {
                    let io = Guarded::new(stream, clock, timeouts);
                    serve_conn(&builder, io, service, watcher).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let io = Guarded::new(tls, clock, timeouts);
                            serve_conn(&builder, io, service, watcher).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("gateway_tls_handshake_failures_total").increment(1);
                            tracing::warn!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("gateway_tls_handshake_failures_total").increment(1);
                            tracing::warn!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            metrics::gauge!("gateway_connections_open").decrement(1.0);
            ended();
        });
    }

    /// Waits for the connections to finish, at most `grace`.
    async fn finish(self, grace: Duration) {
        if tokio::time::timeout(grace, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                shutdown_grace = %crate::telemetry::human_duration(grace),
                "connections still open after shutdown_grace; closing them"
            );
        }
    }
}

/// Resolves once the shutdown signal was given (the guard of `wait_for` is not held across).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_conn<IO>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    service: ConnService,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The router for one connection: adds the peer address and marks the request in the clock.
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    clock: Arc<ConnClock>,
}

impl hyper::service::Service<http::Request<Incoming>> for ConnService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let guard = self.clock.request_started();
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(req).await;
            drop(guard);
            response
        })
    }
}
