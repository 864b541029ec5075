//! The resilience controls of one upstream, around its [`UpstreamClient`]: a concurrency limit,
//! a circuit breaker, and retries of before calls on connection-level failures within the
//! deadline. Whatever trips, the caller gets a [`CallError`] in time and the failure policy
//! decides (the one exit); `gateway_resilience_trips_total{control}` says which control tripped.
//!
//! The breaker: closed, it counts failures (consecutive, and the share of failures in a window);
//! open, calls are refused at once for `cool_down`; then one probe call goes through (half-open)
//! and its result closes or reopens it. A successful health check of the upstream closes it at
//! once (`crate::health` checks an upstream with an open breaker every few hundred
//! milliseconds), so callbacks are forwarded again within a second of the upstream's return.
//!
//! A failure is only what says the upstream *as a whole* is unwell: no connection, no answer
//! within the deadline (DEADLINE_EXCEEDED), or UNAVAILABLE. Any other status (INTERNAL,
//! UNKNOWN, DATA_LOSS, RESOURCE_EXHAUSTED, …) is what a live service chose to answer about one
//! request: that request gets its failure policy and nothing more, so no request, however it
//! makes the service fail, can fail other requests open.

use super::{Call, CallError, UpstreamClient};
use crate::config::{BreakerConfig, RetryConfig, UpstreamConfig};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How often an upstream that is down, or whose breaker is not closed, is health-checked
/// (`crate::health`); also how long a spooled delivery refused as NOT_SERVING waits.
pub const FAST_RECHECK: Duration = Duration::from_millis(200);

/// Which control refused a call before it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The breaker is open; it may let a probe through after this long.
    BreakerOpen(Duration),
    /// `max_concurrency` calls are already in flight to this upstream.
    MaxConcurrency,
    /// Every member's last health check answered, and none said SERVING: the service asked
    /// for no traffic.
    NotServing,
}

impl Refusal {
    /// The `control` label of `gateway_resilience_trips_total`.
    pub fn control(self) -> &'static str {
        match self {
            Self::BreakerOpen(_) => "breaker",
            Self::MaxConcurrency => "max_concurrency",
            Self::NotServing => "not_serving",
        }
    }
}

/// Whether a retry may be tried: only before calls (the spool retries after-events itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry connection-level failures while the deadline allows.
    Allowed,
    /// One attempt.
    Never,
}

/// An upstream with its controls; cheap to clone (clones share the limit and the breaker).
#[derive(Debug, Clone)]
pub struct Resilient {
    name: Arc<str>,
    /// `max_concurrency`: the limit's permits in all.
    max_concurrency: usize,
    /// The per-upstream metric handles, looked up once (not per call).
    in_flight: metrics::Gauge,
    retried: metrics::Counter,
    client: UpstreamClient,
    limit: Arc<Semaphore>,
    breaker: Arc<Breaker>,
    retries: RetryConfig,
}

impl Resilient {
    /// `client` under the controls of `cfg`.
    pub fn new(name: &str, client: UpstreamClient, cfg: &UpstreamConfig) -> Self {
        let name: Arc<str> = Arc::from(name);
        Self {
            breaker: Arc::new(Breaker::new(name.clone(), cfg.breaker.clone())),
            in_flight: metrics::gauge!("gateway_upstream_in_flight", "upstream" => name.to_string()),
            retried: metrics::counter!("gateway_upstream_retries_total", "upstream" => name.to_string()),
            name,
            client,
            max_concurrency: cfg.max_concurrency,
            limit: Arc::new(Semaphore::new(cfg.max_concurrency)),
            retries: cfg.retries.clone(),
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client without the controls (health checks use it).
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Calls to this upstream in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrency
            .saturating_sub(self.limit.available_permits())
    }

    /// A health check of the upstream succeeded: an open breaker closes at once.
    pub fn health_ok(&self) {
        self.breaker.close_on_health();
    }

    /// One call of `command` under the controls: refused at once when the breaker is open or the
    /// upstream is at `max_concurrency`; retried (with `retry`) after a connection-level failure
    /// while `call.timeout`, the whole budget, leaves time.
    pub async fn call(
        &self,
        command: &'static str,
        mut call: Call,
        retry: Retry,
    ) -> Result<Bytes, CallError> {
        let upstream = &*self.name;
        let trip = |control: &'static str| {
            metrics::counter!("gateway_resilience_trips_total", "control" => control, "upstream" => self.name.to_string())
                .increment(1);
        };
        if call.timeout.is_zero() {
            trip("deadline");
            return Err(CallError::Timeout(call.timeout));
        }
        if self.client.channel().none_serving() {
            trip(Refusal::NotServing.control());
            return Err(CallError::Refused(Refusal::NotServing));
        }
        let Ok(_slot) = self.limit.clone().try_acquire_owned() else {
            trip(Refusal::MaxConcurrency.control());
            return Err(CallError::Refused(Refusal::MaxConcurrency));
        };
        let permit = match self.breaker.admit() {
            Ok(p) => p,
            Err(wait) => {
                trip("breaker");
                return Err(CallError::Refused(Refusal::BreakerOpen(wait)));
            }
        };
        // Lowered when the call ends, however it ends (a dropped call too).
        let _in_flight = InFlight::enter(&self.in_flight);
        let started = Instant::now();
        let budget = call.timeout;
        let mut retries_left = match retry {
            Retry::Allowed => self.retries.max_retries,
            Retry::Never => 0,
        };
        let result = loop {
            let result = self.client.call(call.clone()).await;
            let retryable = matches!(result, Err(CallError::Unreachable(_)));
            let left = budget.saturating_sub(started.elapsed());
            if !retryable || retries_left == 0 || left <= self.retries.backoff.0 {
                break result;
            }
            retries_left -= 1;
            self.retried.increment(1);
            tracing::debug!(
                upstream,
                command,
                "connection-level failure; retrying within the deadline"
            );
            tokio::time::sleep(self.retries.backoff.0).await;
            call.timeout = budget.saturating_sub(started.elapsed());
            if call.timeout.is_zero() {
                break result;
            }
        };
        metrics::histogram!("gateway_upstream_duration_seconds", "command" => command, "upstream" => upstream.to_owned())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("gateway_upstream_calls_total", "upstream" => upstream.to_owned(), "command" => command, "grpc_status" => grpc_status(&result))
            .increment(1);
        if matches!(result, Err(CallError::Timeout(_))) {
            trip("deadline");
        }
        permit.record(is_failure(&result));
        result
    }
}

/// The `grpc_status` label of a call's result: the code's name (`OK`, `UNAVAILABLE`, …), with
/// calls that got no status labelled by what happened to them.
pub fn grpc_status(result: &Result<Bytes, CallError>) -> &'static str {
    match result {
        Ok(_) => "OK",
        Err(CallError::Status(s)) => crate::telemetry::grpc_code_name(s.code()),
        Err(CallError::Timeout(_)) => "DEADLINE_EXCEEDED",
        Err(CallError::Unreachable(_)) => "UNAVAILABLE",
        Err(CallError::Reset(_)) => "CANCELLED",
        Err(CallError::Refused(_)) => "NOT_SENT",
    }
}

/// `gateway_upstream_in_flight` raised for as long as it lives.
struct InFlight<'a>(&'a metrics::Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Whether a result says the upstream as a whole is unwell (counted by the breaker): no
/// connection, no answer within the deadline, or UNAVAILABLE. Every other status is an answer
/// of a live service about one request.
fn is_failure(result: &Result<Bytes, CallError>) -> bool {
    use tonic::Code;
    match result {
        Ok(_) | Err(CallError::Refused(_)) => false,
        Err(CallError::Timeout(_) | CallError::Unreachable(_)) => true,
        // A stream reset is about one call (the service may have crashed on this request).
        Err(CallError::Reset(_)) => false,
        Err(CallError::Status(s)) => matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded),
    }
}

/// The breaker's state, as `gateway_breaker_state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe call is allowed through.
    HalfOpen,
    /// Calls are refused.
    Open,
}

impl BreakerState {
    /// The state's name, as the admin view shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half-open",
            Self::Open => "open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct Breaker {
    name: Arc<str>,
    cfg: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Closed {
        consecutive: u32,
        window_start: Instant,
        calls: u32,
        failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen,
}

impl State {
    fn closed() -> Self {
        Self::Closed {
            consecutive: 0,
            window_start: Instant::now(),
            calls: 0,
            failures: 0,
        }
    }

    fn public(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// A call the breaker let through; reports its result once (a dropped, unreported probe counts
/// as a failure, so a cancelled probe cannot leave the breaker half-open for ever).
struct Admitted<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Admitted<'_> {
    fn record(mut self, failure: bool) {
        self.reported = true;
        self.breaker.record(self.probe, failure);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.record(true, true);
        }
    }
}

impl Breaker {
    fn new(name: Arc<str>, cfg: BreakerConfig) -> Self {
        metrics::gauge!("gateway_breaker_state", "upstream" => name.to_string()).set(0.0);
        Self {
            name,
            cfg,
            state: Mutex::new(State::closed()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few counters, valid after any panic of a holder.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> BreakerState {
        self.lock().public()
    }

    fn set(&self, state: &mut State, next: State) {
        let before = state.public();
        *state = next;
        let after = state.public();
        if before != after {
            metrics::gauge!("gateway_breaker_state", "upstream" => self.name.to_string())
                .set(after.gauge());
            let upstream = &*self.name;
            match after {
                BreakerState::Open => tracing::warn!(
                    upstream,
                    cool_down = %crate::telemetry::human_duration(self.cfg.cool_down.0),
                    "circuit breaker open: calls to this upstream get their failure policy at once"
                ),
                BreakerState::HalfOpen => {
                    tracing::info!(
                        upstream,
                        "circuit breaker half-open: sending one probe call"
                    )
                }
                BreakerState::Closed => {
                    tracing::info!(upstream, "circuit breaker closed: upstream answers again")
                }
            }
        }
    }

    /// Lets a call through, or says how long the breaker stays open.
    fn admit(&self) -> Result<Admitted<'_>, Duration> {
        let admitted = |probe| Admitted {
            breaker: self,
            probe,
            reported: false,
        };
        if !self.cfg.enabled {
            return Ok(admitted(false));
        }
        let mut state = self.lock();
        match &*state {
            State::Closed { .. } => Ok(admitted(false)),
            State::Open { until } => {
                let now = Instant::now();
                if now >= *until {
                    self.set(&mut state, State::HalfOpen);
                    Ok(admitted(true))
                } else {
                    Err(*until - now)
                }
            }
            // A probe is out; others wait for its result.
            State::HalfOpen => Err(self.cfg.cool_down.0),
        }
    }

    /// The upstream passed a health check: open or half-open, the breaker closes (a probe still
    /// out reports into the closed state like any call).
    fn close_on_health(&self) {
        if !self.cfg.enabled {
            return;
        }
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            self.set(&mut state, State::closed());
        }
    }

    fn record(&self, probe: bool, failure: bool) {
        if !self.cfg.enabled {
            return;
        }
        let mut state = self.lock();
        let now = Instant::now();
        if probe && matches!(*state, State::HalfOpen) {
            let next = if failure {
                State::Open {
                    until: now + self.cfg.cool_down.0,
                }
            } else {
                State::closed()
            };
            self.set(&mut state, next);
            return;
        }
        let State::Closed {
            consecutive,
            window_start,
            calls,
            failures,
        } = &mut *state
        else {
            // A call admitted before the breaker opened: its result is stale.
            return;
        };
        if now.duration_since(*window_start) > self.cfg.window.0 {
            *window_start = now;
            *calls = 0;
            *failures = 0;
        }
        *calls += 1;
        if failure {
            *consecutive += 1;
            *failures += 1;
        } else {
            *consecutive = 0;
        }
        let ratio_tripped = *calls >= self.cfg.min_calls.max(1)
            && f64::from(*failures) / f64::from(*calls) >= self.cfg.failure_ratio
            && *failures > 0;
        if *consecutive >= self.cfg.consecutive_failures || ratio_tripped {
            self.set(
                &mut state,
                State::Open {
                    until: now + self.cfg.cool_down.0,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn breaker(consecutive: u32, ratio: f64, min_calls: u32) -> Breaker {
        Breaker::new(
            Arc::from("t"),
            BreakerConfig {
                enabled: true,
                consecutive_failures: consecutive,
                failure_ratio: ratio,
                min_calls,
                window: Dur(Duration::from_secs(60)),
                cool_down: Dur(Duration::from_millis(50)),
            },
        )
    }

    #[test]
    fn opens_on_consecutive_failures_and_a_probe_closes_it() {
        let b = breaker(3, 1.0, 1000);
        for _ in 0..2 {
            b.admit().unwrap().record(true);
        }
        b.admit().unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Closed, "a success resets the run");
        for _ in 0..3 {
            b.admit().unwrap().record(true);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err(), "open: refused");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "one probe at a time");
        probe.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_or_dropped_probe_reopens_it() {
        let b = breaker(1, 1.0, 1000);
        b.admit().unwrap().record(true);
        std::thread::sleep(Duration::from_millis(60));
        b.admit().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(60));
        drop(b.admit().unwrap());
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a cancelled probe counts as failed"
        );
    }

    #[test]
    fn opens_on_the_failure_ratio_once_the_window_has_enough_calls() {
        let b = breaker(100, 0.5, 10);
        for i in 0..9 {
            b.admit().unwrap().record(i % 2 == 0);
        }
        assert_eq!(b.state(), BreakerState::Closed, "9 calls < min_calls");
        b.admit().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open, "6 of 10 failed");
    }

    #[test]
    fn only_what_says_the_upstream_is_unwell_is_a_failure() {
        use tonic::{Code, Status};
        for code in [
            Code::PermissionDenied,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::NotFound,
            Code::Aborted,
            Code::Unimplemented,
        ] {
            let status = Status::new(code, "about one request");
            assert!(!is_failure(&Err(CallError::Status(status))), "{code:?}");
        }
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            assert!(is_failure(&Err(CallError::Status(Status::new(code, "x")))));
        }
        assert!(is_failure(&Err(CallError::Timeout(Duration::from_secs(1)))));
    }

    #[test]
    fn a_health_check_closes_an_open_breaker_at_once() {
        let b = breaker(1, 1.0, 1000);
        b.admit().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open);
        b.close_on_health();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
        // A probe out when the health check closed it: its late failure counts as one call.
        b.admit().unwrap().record(true);
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        b.close_on_health();
        probe.record(true);
        assert_eq!(b.state(), BreakerState::Open, "consecutive_failures 1");
    }
}
