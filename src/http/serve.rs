//! The accept loop for both ports: the callback port OpenIM reaches and, when `admin_listen` is
//! set, the operators' port; one shutdown signal stops both, and in-flight requests finish.

use super::{admin_router, app, callback_router};
use crate::gateway::Gateway;
use std::future::Future;
use tokio::net::TcpListener;

/// The bound listeners: the callback port, and the admin port when it is separate.
#[derive(Debug)]
pub struct Ports {
    /// The port OpenIM's `url` points at.
    pub callback: TcpListener,
    /// The operators' port (`admin_listen`); `None` serves the admin routes on `callback`.
    pub admin: Option<TcpListener>,
}

/// Serves until `shutdown` completes, then lets in-flight requests finish on both ports.
pub async fn serve(
    gw: &Gateway,
    ports: Ports,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let callback = match ports.admin {
        Some(admin) => {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(%addr, "admin port: /healthz /readyz /metrics /admin/spool");
            }
            let router = admin_router(gw);
            let stop = stopped(stop_rx.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(admin, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "admin port stopped");
                }
            });
            (callback_router(gw), Some(task))
        }
        None => (app(gw), None),
    };
    let (router, admin_task) = callback;
    if let Ok(addr) = ports.callback.local_addr() {
        tracing::info!(%addr, "openim-callback-gateway listening; point OpenIM's webhooks.yml url at http://{addr}/callbackExample");
    }
    let served = axum::serve(ports.callback, router)
        .with_graceful_shutdown(stopped(stop_rx))
        .await;
    signal.abort();
    if let Some(task) = admin_task {
        if served.is_err() {
            task.abort();
        }
        // Otherwise the admin port got the same signal: wait for its in-flight requests too.
        let _ = task.await;
    }
    served
}
