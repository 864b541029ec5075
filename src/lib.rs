//! openim-callback-gateway: OpenIM webhook callbacks in, typed gRPC calls out, OpenIM envelopes back.
//!
//! # Layout
//!
//! A module in links is public: the binary, the benches, `fuzz/` and the integration tests use it.
//! One in plain code (`health`) is private to the crate.
//!
//! - [`config`]: all plain data and its complete validation (what `check-config` checks); the
//!   warnings as values; the security settings and secrets (`config/security.rs`); the spool's
//!   settings (`config/spool.rs`, importing nothing of the runtime); errors that
//!   name the file line or environment variable of the key at fault (`config/diagnose.rs`).
//! - [`proto`]: the compiled contract's descriptor pool (from the `openim-callback-contract`
//!   crate in `crates/contract`).
//! - [`catalog`]: the command table, one row per OpenIM command, resolved against the descriptors.
//! - [`json`]: OpenIM JSON <-> protobuf by descriptor (the input leniencies of docs/commands.md, "OpenIM traps").
//! - [`decision`]: "what does OpenIM get": the [`decision::Decision`] every path ends in, and the
//!   two gRPC-status tables (synchronous, spool) side by side.
//! - [`envelope`]: the envelope and the reply safety rules (docs/commands.md), rendered once per request.
//! - [`gateway`]: the fixed part (catalogue, spool, metrics) and the swappable snapshot of the live
//!   part (per-command routes and policies, upstream clients, limits).
//! - `pipeline`: one callback, one path in named stages (decode → gate → route → decide), every
//!   exit a decision.
//! - [`gate`]: the request-side rules (`only`, `skip`) that answer a callback without the
//!   service; [`fields`]: the request fields they read, straight from the protobuf bytes, and
//!   the conversation ID; `shadow`: shadow mode.
//! - `health`: readiness (`/readyz`, the gateway's `grpc.health.v1`: can this gateway answer);
//!   [`checks`]: the upstreams' member health checks behind `/admin/upstreams`.
//! - `inspect`: the recent callbacks; [`doctor`]: OpenIM's webhook configuration checked
//!   against the gateway's; [`cli`]: the binary's subcommands (`check`, `routes`, `proto`,
//!   `doctor`, `spool`, `tail`, `replay`): each one's work and output, and their error type.
//! - `delivery`: a spooled event's delivery attempt, routed by the current snapshot.
//! - [`upstream`]: upstream clients by name; `upstream::Call` is the one typed call, a
//!   `tower::Service`.
//! - [`http`]: the callback and admin routers with their one layer stack (inbound auth, the
//!   admin token), the limits applied while reading, inbound TLS, and the accept loop.
//! - [`reload`]: SIGHUP and file-change reloads, refusing start-up-only changes by name.
//! - [`spool`]: durable after-callback delivery: the `Spool` facade over a wing per backend
//!   (`spool/redb/`, `spool/redis/`), the shared record, rules and attempt history, the admin API.
//! - [`telemetry`]: logs (one line per callback, redacted), traces (W3C trace context, the
//!   `callback` and `delivery` spans, the OTLP exporter) and the metrics recorder; [`stats`]:
//!   every metric with its help text.
//!
//! The Rust example hook service the embedded default serves is the `openim-callback-example`
//! crate in `examples/rust`, built on the contract crate alone. The binary (`main.rs`) only parses
//! flags, loads the config, sets up logging, logs the config warnings, and calls [`run`] or
//! dispatches to a subcommand of [`cli`].

pub mod catalog;
pub mod checks;
pub mod cli;
pub mod config;
pub mod decision;
mod delivery;
pub mod doctor;
pub mod envelope;
pub mod fields;
pub mod gate;
pub mod gateway;
mod health;
pub mod http;
mod inspect;
pub mod json;
mod pipeline;
pub mod proto;
pub mod reload;
mod shadow;
pub mod spool;
pub mod stats;
pub mod telemetry;
pub mod upstream;
pub mod worker;

use crate::config::{Config, UpstreamConfig};
use crate::gateway::Gateway;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gateway could not be built from the config.
    #[error(transparent)]
    Build(#[from] gateway::BuildError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The inbound TLS material cannot be used.
    #[error(transparent)]
    Tls(#[from] http::tls::TlsError),
    /// The built-in example upstream could not start.
    #[error("built-in example upstream: {0}")]
    Example(std::io::Error),
    /// A port could not be bound, or the HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains.
///
/// With `demo` on and no `upstreams.default`, the built-in example hook service starts
/// in-process on a loopback port and becomes the `default` upstream (the embedded default of
/// `cargo run --release` without a config file, or `demo: true`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_reloadable(config, listener, shutdown, None).await
}

/// [`run`], reloading the configuration from `source` on SIGHUP and when its file changes
/// (`crate::reload`).
pub async fn run_reloadable(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    source: Option<reload::ConfigSource>,
) -> Result<(), RunError> {
    let (_example, example_upstream) = if config.serves_demo() {
        let (addr, task) = openim_callback_example::spawn((*config.example).clone())
            .await
            .map_err(RunError::Example)?;
        tracing::info!(%addr, "demo: {}", crate::config::DEMO_NOTICE);
        let upstream = UpstreamConfig::single(format!("http://{addr}"));
        config.attach_demo(&upstream);
        (Some(AbortOnDrop(task)), Some(upstream))
    } else {
        (None, None)
    };
    let tls = match &*config.tls {
        Some(cfg) => Some(http::tls::acceptor(cfg)?),
        None => None,
    };
    let spool = if config.uses_spool() {
        let spool = spool::Spool::open(&config.spool)?;
        spool.log_opened();
        Some(spool)
    } else {
        None
    };
    let gateway = Gateway::new(&config, spool.clone())?;
    let _delivery = spool
        .as_ref()
        .map(|s| AbortOnDrop(s.start(Arc::new(gateway.clone()))));
    let admin = match *config.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(RunError::Serve)?),
        None => None,
    };
    let ports = http::Ports {
        callback: listener,
        admin,
    };
    let options = http::ServeOptions {
        limits: config.limits.clone(),
        tls,
        shutdown_grace: config.shutdown_grace.0,
        shutdown_delay: config.shutdown_delay.0,
        workers: config.workers.count(),
    };
    let _health = AbortOnDrop(tokio::spawn(checks::run_checks(
        gateway.clone(),
        config.health_check_interval.0,
    )));
    // A reloaded config that asks for the demo gets the example service the start runs; one
    // that asks for it when the start did not run it is refused (`demo` is restart-only).
    let prepare: Arc<dyn Fn(&mut Config) + Send + Sync> = Arc::new(move |c: &mut Config| {
        if let Some(up) = &example_upstream {
            c.attach_demo(up);
        }
    });
    let _reload = source.map(|source| {
        let reloader = Arc::new(reload::Reloader::new(source, config.clone(), prepare));
        // `POST /admin/reload` runs the same reload.
        gateway.set_reloader(reloader.clone());
        AbortOnDrop(tokio::spawn(reload::watch(gateway.clone(), reloader)))
    });
    http::serve(&gateway, ports, options, shutdown)
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
