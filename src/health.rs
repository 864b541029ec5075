//! Readiness, and the upstreams' health as the operator sees it.
//!
//! **Readiness says whether this gateway can answer, nothing else**: `/readyz` and the gateway's
//! own `grpc.health.v1` (on the admin port) are SERVING once the config is loaded (the process
//! only runs once it is), the listeners are bound, and the spool is open, and until draining
//! begins (SIGTERM). The upstreams' health never makes the gateway unready: every replica shares
//! the same upstreams, so a probe that followed them would take all replicas out of the Service
//! at once, and OpenIM's webhook POSTs would fail with connection errors (it ignores
//! `failedContinue`), where the gateway would have answered each one by its failure policy and
//! spooled the after-events. A Redis spool that is unreachable does not make it unready either:
//! its `when_unreachable` policy still answers. Both are named in the 200 body, as notes.
//!
//! One background task ([`run_checks`]) checks every member of every upstream that serves an
//! enabled command, every `health_check_interval`, with the standard
//! `grpc.health.v1.Health/Check` (`upstreams.<name>.health_service`, `""` = the server as a
//! whole). SERVING is up; a server that answers UNIMPLEMENTED has no health service but is
//! reachable, and counts as up; any other status takes that member out of the balancer's
//! rotation until it reports SERVING again. An upstream is up when one of its members is. The
//! results are at `GET /admin/upstreams` (with the breaker state and the calls in flight) and in
//! `gateway_upstream_up{upstream}`. While an upstream is down or its breaker is not closed, it
//! is checked every [`FAST_RECHECK`], and a check that passes closes its breaker, so callbacks
//! are forwarded again within a second of its return. A config reload wakes the task at once;
//! results of an older snapshot never count.

use crate::gateway::Gateway;
use crate::upstream::{BreakerState, CheckResult, MemberChannel, Resilient};
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

pub use crate::upstream::FAST_RECHECK;

/// An upstream whose members are checked.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream's name.
    pub name: String,
    /// The upstream, with its breaker.
    pub upstream: Resilient,
    /// The `grpc.health.v1` service name to ask about.
    pub service: String,
}

/// The readiness state of the process, and the last result of each upstream's checks.
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
    /// Per upstream: `Ok` when a member answers as serving, else why none does.
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

    /// Ready, or the reasons it is not (one line each): listeners not bound yet, or draining.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.draining() {
            problems.push("shutting down".to_owned());
        }
        if !self.listening.load(Ordering::SeqCst) {
            problems.push("listeners not bound yet".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// What is degraded without making the gateway unready (one line each): an unreachable
    /// Redis spool, upstreams that are down. `/readyz` shows them under its 200.
    pub fn notes(&self, gw: &Gateway) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(Err(e)) = gw.spool().map(crate::spool::Spool::health) {
            notes.push(format!("spool: {e}"));
        }
        let snapshot = gw.snapshot();
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if board.generation == snapshot.generation {
            for (name, result) in &board.results {
                if let Err(e) = result {
                    notes.push(format!("upstream `{name}`: {e}"));
                }
            }
        }
        notes
    }

    /// Whether the last checks of the current snapshot found `upstream` up (`None`: not
    /// checked yet).
    pub fn upstream_up(&self, gw: &Gateway, upstream: &str) -> Option<bool> {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if board.generation != gw.snapshot().generation {
            return None;
        }
        board.results.get(upstream).map(Result::is_ok)
    }

    async fn publish(&self) {
        let ready = self.readiness().is_ok();
        metrics::gauge!("gateway_ready").set(if ready { 1.0 } else { 0.0 });
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

/// Checks the upstreams of the current snapshot every `interval` (every [`FAST_RECHECK`] while
/// one is down or its breaker is not closed), and publishes the readiness, until the process
/// ends (the caller aborts the task).
pub async fn run_checks(gw: Gateway, interval: Duration) {
    let health = gw.health();
    let mut was_ready = false;
    let mut was_up: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let snapshot = gw.snapshot();
        let timeout = interval.min(Duration::from_secs(2));
        let mut set = tokio::task::JoinSet::new();
        for target in snapshot.health_targets.clone() {
            set.spawn(async move {
                let result = check_upstream(&target, timeout).await;
                if result.is_ok() {
                    target.upstream.health_ok();
                }
                (target, result)
            });
        }
        let mut results = BTreeMap::new();
        let mut hurry = false;
        while let Some(joined) = set.join_next().await {
            let Ok((target, result)) = joined else {
                continue;
            };
            let up = result.is_ok();
            metrics::gauge!("gateway_upstream_up", "upstream" => target.name.clone()).set(if up {
                1.0
            } else {
                0.0
            });
            match (&result, was_up.insert(target.name.clone(), up)) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(upstream = %target.name, problem = %e,
                        "upstream down: its commands get their failure policy, after-events stay spooled")
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(upstream = %target.name, "upstream up again")
                }
                _ => {}
            }
            hurry |= !up || target.upstream.breaker_state() != BreakerState::Closed;
            results.insert(target.name, result);
        }
        health.store(snapshot.generation, results);
        health.publish().await;
        let ready = health.readiness().is_ok();
        if ready && !was_ready {
            tracing::info!("ready");
        }
        was_ready = ready;
        drop(snapshot);
        let pause = if hurry {
            interval.min(FAST_RECHECK)
        } else {
            interval
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = health.wake.notified() => {}
        }
    }
}

/// Checks every member of one upstream: up when one answers as serving, else the members'
/// answers, one per member.
async fn check_upstream(target: &Target, timeout: Duration) -> Result<(), String> {
    let transport = target.upstream.client().channel();
    let members = transport.member_channels();
    if members.is_empty() {
        return Err("no member (its host names did not resolve yet)".to_owned());
    }
    let checks = members.into_iter().map(|member| async move {
        let result = check(&member, &target.service, timeout).await;
        transport.record_check(&member, result.clone());
        (member.label, result)
    });
    let results = futures_util::future::join_all(checks).await;
    if results.iter().any(|(_, r)| r.is_serving()) {
        return Ok(());
    }
    Err(results
        .iter()
        .map(|(label, r)| format!("{label}: {}", r.text()))
        .collect::<Vec<_>>()
        .join("; "))
}

/// One `grpc.health.v1.Health/Check` of one member.
async fn check(member: &MemberChannel, service: &str, timeout: Duration) -> CheckResult {
    let mut client = HealthClient::new(member.channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(request)).await;
    let of = if service.is_empty() {
        "the server".to_owned()
    } else {
        format!("service `{service}`")
    };
    match answer {
        Err(_) => CheckResult::NoAnswer(format!(
            "no answer to the health check of {of} within {}",
            crate::telemetry::human_duration(timeout)
        )),
        Ok(Ok(response)) => match response.into_inner().status() {
            Wire::Serving => CheckResult::Serving,
            other => CheckResult::NotServing(format!("{} for {of}", other.as_str_name())),
        },
        // Reachable, without the health service: counts as up.
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented && is_remote(&status) => {
            CheckResult::Serving
        }
        Ok(Err(status)) if status.code() == tonic::Code::NotFound && is_remote(&status) => {
            CheckResult::NotServing(format!("NOT_FOUND: the server does not know {of}"))
        }
        Ok(Err(status)) => CheckResult::NoAnswer(format!(
            "health check failed: {}",
            crate::upstream::error_chain(&status)
        )),
    }
}

/// A status the peer sent (tonic reports transport errors as statuses with a source).
fn is_remote(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_none()
}
