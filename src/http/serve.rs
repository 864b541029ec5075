//! The accept loop for both ports: the callback port OpenIM reaches (optionally TLS) and, when
//! `admin_listen` is set, the operators' port.
//!
//! The callback port is served by `workers` serving workers: a thread each, with a
//! single-threaded runtime that accepts from the shared listening socket, runs its connections'
//! callbacks and drives its own upstream connections (`crate::worker`, `upstream/fast.rs`), so
//! that a callback never waits for a wake-up from another thread. The admin port, the spool and
//! the health checks stay on the shared runtime. Per connection: the `max_connections` cap, the
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
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
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
            let slots = Arc::new(Semaphore::new(*plain.limits.max_connections));
            tasks.push(tokio::spawn(accept_loop(
                admin,
                admin_router(gw),
                plain,
                slots,
                stop_rx.clone(),
            )));
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

/// Runs the callback port's serving workers until `stop` and their connections finished. Each
/// accepts from its own handle on the one listening socket (whichever worker is free takes the
/// next connection); `max_connections` is one cap over all of them.
async fn serve_workers(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let slots = Arc::new(Semaphore::new(*options.limits.max_connections));
    let workers = options.workers.max(1);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for index in 1..=workers {
        let listener = listener.try_clone()?;
        let (router, options, slots, stop) =
            (router.clone(), options.clone(), slots.clone(), stop.clone());
        let done = done_tx.clone();
        // The worker's log lines and spans belong to the subscriber of the thread that starts it
        // (tests install one per test).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                crate::worker::enter(index);
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let listener = TcpListener::from_std(listener)?;
                            accept_loop(listener, router, options, slots, stop).await
                        })
                    });
                // Sent once the runtime is gone, with every task it still held.
                let _ = done.send(served);
            })?;
    }
    drop(done_tx);
    drop(listener);
    let mut served = Ok(());
    while let Some(result) = done_rx.recv().await {
        if let Err(e) = result {
            tracing::error!(error = %e, "a serving worker stopped");
            served = Err(e);
        }
    }
    served
}

/// Accepts connections on one port until `stop`, then waits for its connections to finish.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = &options.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_headers(*limits.max_headers)
        .max_buf_size(*limits.max_header_bytes);
    let builder = Arc::new(builder);
    let timeouts = Timeouts {
        idle: limits.idle_timeout.0,
        header: limits.header_read_timeout.0,
    };
    let graceful = GracefulShutdown::new();
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
        let clock = ConnClock::new();
        let service = ConnService {
            router: router.clone(),
            peer,
            clock: clock.clone(),
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = options.tls.clone();
        let handshake_timeout = limits.header_read_timeout.0;
        tokio::spawn(async move {
            let _permit = permit;
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
        });
    }
    drop(listener);
    let grace = options.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            shutdown_grace = %crate::telemetry::human_duration(grace),
            "connections still open after shutdown_grace; closing them"
        );
    }
    Ok(())
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
