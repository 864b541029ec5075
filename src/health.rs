//! Readiness: what `/readyz` and the gateway's own `grpc.health.v1` service (on the admin port)
//! say. Ready = the config is loaded, the listeners are bound, the spool is open (a gateway with
//! a spool is only built once it is) and its backend answers (Redis reachable), the gateway is
//! not draining, and every upstream that serves an enabled before command passes its health check.
//!
//! One background task ([`run_checks`]) checks those upstreams every `health_check_interval` with
//! the standard `grpc.health.v1.Health/Check` (`upstreams.<name>.health_service`, `""` = the
//! server as a whole). SERVING is up; NOT_SERVING (or any other status) is down; a server that
//! answers UNIMPLEMENTED has no health service but is reachable, and counts as up. A config
//! reload wakes the task at once; results of an older snapshot never count.

use crate::gateway::Gateway;
use crate::upstream::UpstreamClient;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_health::server::{HealthReporter, HealthService};

/// An upstream the readiness depends on.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream's name.
    pub name: String,
    /// Its client.
    pub client: UpstreamClient,
    /// The `grpc.health.v1` service name to ask about.
    pub service: String,
}

/// The readiness state of the process.
pub struct Health {
    draining: AtomicBool,
    listening: AtomicBool,
    board: Mutex<Board>,
    wake: Notify,
    reporter: HealthReporter,
    service: HealthServer<HealthService>,
}

#[derive(Default)]
struct Board {
    generation: u64,
    results: BTreeMap<String, Result<(), String>>,
}

impl Default for Health {
    fn default() -> Self {
        let reporter = HealthReporter::new();
        let service = HealthService::from_health_reporter(reporter.clone());
        Self {
            draining: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            board: Mutex::new(Board::default()),
            wake: Notify::new(),
            reporter,
            service: HealthServer::new(service),
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("draining", &self.draining)
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// The gateway's `grpc.health.v1` service, for the admin router.
    pub fn grpc_service(&self) -> HealthServer<HealthService> {
        self.service.clone()
    }

    /// The listeners are bound and serving.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// SIGTERM: from now on not ready, so the mesh stops sending callbacks.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether draining began.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Run the checks again now (a new snapshot was swapped in).
    pub fn recheck(&self) {
        self.wake.notify_one();
    }

    fn store(&self, generation: u64, results: BTreeMap<String, Result<(), String>>) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        board.generation = generation;
        board.results = results;
    }

    /// Ready, or the reasons it is not (one line each).
    pub fn readiness(&self, gw: &Gateway) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.draining() {
            problems.push("shutting down".to_owned());
        }
        if !self.listening.load(Ordering::SeqCst) {
            problems.push("listeners not bound yet".to_owned());
        }
        if let Some(Err(e)) = gw.spool().map(crate::spool::Spool::health) {
            problems.push(format!("spool: {e}"));
        }
        let snapshot = gw.snapshot();
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        for target in &snapshot.health_targets {
            match board.results.get(&target.name) {
                _ if board.generation != snapshot.generation => {
                    problems.push(format!("upstream `{}`: not checked yet", target.name))
                }
                None => problems.push(format!("upstream `{}`: not checked yet", target.name)),
                Some(Ok(())) => {}
                Some(Err(e)) => problems.push(format!("upstream `{}`: {e}", target.name)),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    async fn publish(&self, gw: &Gateway) {
        let ready = self.readiness(gw).is_ok();
        metrics::gauge!("gateway_ready").set(if ready { 1.0 } else { 0.0 });
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

/// Checks the upstreams of the current snapshot every `interval`, and publishes the readiness,
/// until the process ends (the caller aborts the task).
pub async fn run_checks(gw: Gateway, interval: Duration) {
    let health = gw.health();
    loop {
        let snapshot = gw.snapshot();
        let timeout = interval.min(Duration::from_secs(2));
        let mut set = tokio::task::JoinSet::new();
        for target in snapshot.health_targets.clone() {
            set.spawn(async move {
                let result = check(&target, timeout).await;
                (target.name, result)
            });
        }
        let mut results = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            if let Ok((name, result)) = joined {
                metrics::gauge!("gateway_upstream_up", "upstream" => name.clone())
                    .set(if result.is_ok() { 1.0 } else { 0.0 });
                results.insert(name, result);
            }
        }
        let before = health.readiness(&gw).is_ok();
        health.store(snapshot.generation, results);
        health.publish(&gw).await;
        let after = health.readiness(&gw);
        match (&after, before) {
            (Ok(()), false) => tracing::info!("ready"),
            (Err(problems), true) if !health.draining() => {
                tracing::warn!(problems = %problems.join("; "), "not ready")
            }
            _ => {}
        }
        drop(snapshot);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = health.wake.notified() => {}
        }
    }
}

/// One `grpc.health.v1.Health/Check` of an upstream.
async fn check(target: &Target, timeout: Duration) -> Result<(), String> {
    let mut client = HealthClient::new(target.client.channel().clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: target.service.clone(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(request)).await;
    let service = if target.service.is_empty() {
        "the server".to_owned()
    } else {
        format!("service `{}`", target.service)
    };
    match answer {
        Err(_) => Err(format!(
            "health check of {service} timed out after {}",
            crate::telemetry::human_duration(timeout)
        )),
        Ok(Ok(response)) => match response.into_inner().status() {
            Wire::Serving => Ok(()),
            other => Err(format!("reports {} for {service}", other.as_str_name())),
        },
        // Reachable, without the health service: counts as up.
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented && is_remote(&status) => {
            Ok(())
        }
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
            Err(format!("does not know {service} (NOT_FOUND)"))
        }
        Ok(Err(status)) => Err(format!(
            "health check failed: {:?}: {}",
            status.code(),
            crate::upstream::error_chain(&status)
        )),
    }
}

/// A status the peer sent (tonic reports transport errors as statuses with a source).
fn is_remote(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_none()
}
