//! openim-callback-gateway: OpenIM webhook callbacks in, typed gRPC calls out, OpenIM envelopes back.
//!
//! # Layout
//!
//! - [`proto`]: the compiled contract (`proto/openim/callback/v1`): descriptors and generated types.
//! - [`catalog`]: the command table, one row per OpenIM command, resolved against the descriptors.
//! - [`json`]: OpenIM JSON <-> protobuf by descriptor (the input leniencies of design §4).
//! - [`envelope`]: the decision "what does OpenIM get" and the envelope rules of design §3.
//! - [`forward`]: the one generic unary call path over tonic.
//! - [`upstream`]: named upstreams as cheaply cloned tonic channels.
//! - [`server`]: the axum front end and the handler every command goes through.
//! - [`spool`]: durable after-callback delivery (store, group commit, workers, operator commands).
//! - [`config`]: plain serde configuration and its validation.
//! - [`example`]: the built-in example upstream the embedded default runs.
//! - [`telemetry`]: logs and metrics.
//!
//! The binary only parses flags, loads the config, and calls [`run`].

pub mod catalog;
pub mod config;
pub mod envelope;
pub mod example;
pub mod forward;
pub mod json;
pub mod proto;
pub mod server;
pub mod spool;
pub mod telemetry;
pub mod upstream;

use crate::config::{Config, DEFAULT_UPSTREAM, Delivery, UpstreamConfig};
use crate::server::Gateway;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gateway could not be built from the config.
    #[error(transparent)]
    Build(#[from] server::BuildError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The built-in example upstream could not start.
    #[error("built-in example upstream: {0}")]
    Example(std::io::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

impl spool::Deliver for Gateway {
    fn deliver<'a>(
        &'a self,
        ev: &'a spool::StoredEvent,
        attempt: u32,
    ) -> BoxFuture<'a, spool::Outcome> {
        Box::pin(Gateway::deliver_event(self, ev, attempt))
    }
}

/// Whether any after command of `config` uses the durable spool.
pub fn uses_spool(config: &Config) -> bool {
    catalog::ROWS.iter().any(|row| {
        let s = config.settings(row.command);
        row.phase() == catalog::Phase::After && s.enabled && s.delivery == Delivery::Spool
    })
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains.
///
/// With no upstream configured, the built-in example upstream starts in-process on a loopback
/// port and becomes the `default` upstream (the embedded default of design §6).
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let _example = if config.upstreams.is_empty() {
        let (addr, task) = example::spawn(config.example.clone())
            .await
            .map_err(RunError::Example)?;
        tracing::info!(%addr, "no upstream configured: serving the built-in example upstream in-process");
        config.upstreams.insert(
            DEFAULT_UPSTREAM.into(),
            UpstreamConfig::single(format!("http://{addr}")),
        );
        Some(AbortOnDrop(task))
    } else {
        None
    };
    let spool = if uses_spool(&config) {
        let spool = spool::Spool::open(&config.spool)?;
        tracing::info!(dir = %config.spool.dir.display(), "after-event spool open");
        Some(spool)
    } else {
        None
    };
    let gateway = Gateway::new(&config, spool.clone())?;
    let _delivery = spool
        .as_ref()
        .map(|s| AbortOnDrop(s.start(Arc::new(gateway.clone()))));
    // One shutdown signal for both ports.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let _signal = AbortOnDrop(signal);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let main_router = match config.admin_listen {
        Some(addr) => {
            let admin = TcpListener::bind(addr).await.map_err(RunError::Serve)?;
            tracing::info!(addr = %admin.local_addr().unwrap_or(addr), "admin port: /healthz /readyz /metrics /admin/spool");
            let router = gateway.admin_router();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "admin port stopped");
                }
            });
            gateway.callback_router()
        }
        None => gateway.router(),
    };
    // Announced only once every port is bound.
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "openim-callback-gateway listening; point OpenIM's webhooks.yml url at http://{addr}/callbackExample");
    }
    axum::serve(listener, main_router)
        .with_graceful_shutdown(stopped(stop_rx))
        .await
        .map_err(RunError::Serve)?;
    if let Some(spool) = spool {
        spool.shutdown().await;
    }
    Ok(())
}

/// Aborts a background task when dropped, so nothing outlives [`run`].
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
