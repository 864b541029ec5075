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
//! The checking itself is `crate::checks`: one background task checks every member of every upstream that serves an
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

use crate::upstream::Resilient;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

pub(crate) use crate::upstream::FAST_RECHECK;

/// An upstream whose members are checked.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The upstream's name.
    pub(crate) name: String,
    /// The upstream, with its breaker.
    pub(crate) upstream: Resilient,
    /// The `grpc.health.v1` service name to ask about.
    pub(crate) service: String,
}

/// The readiness state of the process, and the last result of each upstream's checks.
pub(crate) struct Health {
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
    pub(crate) fn grpc_service(&self) -> HealthServer<HealthService> {
        self.service.clone()
    }

    /// The listeners are bound and serving.
    pub(crate) fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// SIGTERM: from now on not ready, so the mesh stops sending callbacks.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether draining began.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Completes when the checks should run again at once (a snapshot swap, listening, drain).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Run the checks again now (a new snapshot was swapped in).
    pub(crate) fn recheck(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn store(&self, generation: u64, results: BTreeMap<String, Result<(), String>>) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        board.generation = generation;
        board.results = results;
    }

    /// Ready, or the reasons it is not (one line each): listeners not bound yet, or draining.
    pub(crate) fn readiness(&self) -> Result<(), Vec<String>> {
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

    /// The upstreams the last checks of snapshot `generation` found down (one line each), which
    /// `/readyz` shows under its 200 as degraded.
    pub(crate) fn upstream_notes(&self, generation: u64) -> Vec<String> {
        let mut notes = Vec::new();
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if board.generation == generation {
            for (name, result) in &board.results {
                if let Err(e) = result {
                    notes.push(format!("upstream `{name}`: {e}"));
                }
            }
        }
        notes
    }

    /// Whether the last checks of snapshot `generation` found `upstream` up (`None`: not
    /// checked yet).
    pub(crate) fn upstream_up(&self, generation: u64, upstream: &str) -> Option<bool> {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if board.generation != generation {
            return None;
        }
        board.results.get(upstream).map(Result::is_ok)
    }

    pub(crate) async fn publish(&self) {
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
