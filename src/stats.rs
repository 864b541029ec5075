//! The metrics the gateway exports (Prometheus text at `/metrics`): every name with its `# HELP`
//! line, in one table, and the histogram buckets. Histograms, not summaries, so that replicas
//! can be aggregated (`histogram_quantile(0.99, sum by (le) (rate(…_bucket[5m])))`).
//! `dashboards/grafana/openim-callback-gateway.json` uses these names; `tests/it/metrics.rs` checks
//! that every name it queries is exported.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Bucket bounds of every latency histogram, in seconds: 100 µs to 10 s.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Latency distribution, in seconds.
    Histogram,
}

/// Every metric: name, kind, help. The labels are in the help text.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "gateway_build_info",
        Kind::Gauge,
        "Always 1; the version label says which build runs.",
    ),
    (
        "gateway_ready",
        Kind::Gauge,
        "1 when /readyz answers 200 (listeners bound, spool open, not draining); never follows the upstreams.",
    ),
    (
        "gateway_callbacks_total",
        Kind::Counter,
        "Callbacks answered, by command and outcome (continue, rejected, failed-open, failed-closed, spooled, spool-full, held-back, shadowed).",
    ),
    (
        "gateway_held_back_total",
        Kind::Counter,
        "Callbacks a rule of the gate (only, skip) answered without calling the service, by command and rule.",
    ),
    (
        "gateway_shadow_verdicts_total",
        Kind::Counter,
        "Shadow-mode verdicts of the service (continue, rejected, modified, failed; dropped when too many were in flight), by command.",
    ),
    (
        "gateway_callback_duration_seconds",
        Kind::Histogram,
        "Time from a callback's arrival to its answer, by command.",
    ),
    (
        "gateway_in_flight",
        Kind::Gauge,
        "Callbacks being handled now.",
    ),
    (
        "gateway_upstream_duration_seconds",
        Kind::Histogram,
        "Time of an upstream call (all its attempts), by command and upstream.",
    ),
    (
        "gateway_upstream_calls_total",
        Kind::Counter,
        "Upstream calls by upstream, command and grpc_status (the code name; NOT_SENT when a control refused it).",
    ),
    (
        "gateway_upstream_in_flight",
        Kind::Gauge,
        "Calls in flight to an upstream.",
    ),
    (
        "gateway_upstream_retries_total",
        Kind::Counter,
        "Retries of before calls after a connection-level failure, by upstream.",
    ),
    (
        "gateway_upstream_up",
        Kind::Gauge,
        "1 when the upstream's grpc.health.v1 check passes (or it is reachable without a health service), by upstream.",
    ),
    (
        "gateway_breaker_state",
        Kind::Gauge,
        "Circuit breaker of an upstream: 0 closed, 1 half-open, 2 open.",
    ),
    (
        "gateway_resilience_trips_total",
        Kind::Counter,
        "Calls a control refused or cut short, by control (max_in_flight, max_concurrency, breaker, deadline) and upstream.",
    ),
    (
        "gateway_unknown_commands_total",
        Kind::Counter,
        "Callbacks whose command is not in the contract (answered continue).",
    ),
    (
        "gateway_unknown_keys_total",
        Kind::Counter,
        "Body keys the contract does not know, by command and key (ignored).",
    ),
    (
        "gateway_bad_requests_total",
        Kind::Counter,
        "Callbacks whose body could not be read as the command's request, by command.",
    ),
    (
        "gateway_limit_total",
        Kind::Counter,
        "Requests or connections a limit refused, by limit.",
    ),
    (
        "gateway_auth_refused_total",
        Kind::Counter,
        "Callbacks refused by inbound authentication, by reason.",
    ),
    (
        "gateway_connections_open",
        Kind::Gauge,
        "Open connections, by port.",
    ),
    (
        "gateway_tls_handshake_failures_total",
        Kind::Counter,
        "Failed inbound TLS handshakes.",
    ),
    (
        "gateway_tls_reloads_total",
        Kind::Counter,
        "Reloads of the callback port's certificate, by result.",
    ),
    (
        "gateway_upstream_tls_reloads_total",
        Kind::Counter,
        "Reloads of an upstream's TLS files, by upstream and result.",
    ),
    (
        "gateway_upstream_resolve_failures_total",
        Kind::Counter,
        "Failed or empty re-resolutions of an upstream's host names (the last known addresses stay), by upstream.",
    ),
    (
        "gateway_console_actions_total",
        Kind::Counter,
        "Operator console actions (replay, purge, drop, reload; refused: a POST without the page's anti-CSRF value or from another origin), by action and result (ok, error, csrf, origin).",
    ),
    (
        "gateway_config_reloads_total",
        Kind::Counter,
        "Config reloads (SIGHUP or file change), by result (ok, error).",
    ),
    (
        "gateway_spool_pending",
        Kind::Gauge,
        "After-events waiting in the spool.",
    ),
    (
        "gateway_spool_dead",
        Kind::Gauge,
        "Dead letters in the spool.",
    ),
    (
        "gateway_spool_bytes",
        Kind::Gauge,
        "Bytes of the pending after-events.",
    ),
    (
        "gateway_spool_appended_total",
        Kind::Counter,
        "After-events written to the spool, by command.",
    ),
    (
        "gateway_spool_unavailable_total",
        Kind::Counter,
        "After-events the spool backend could not take (Redis unreachable or slow), by command and policy (local: stored in the local buffer; sync: delivered at once, else buffered; reject: refused).",
    ),
    (
        "gateway_spool_buffered",
        Kind::Gauge,
        "After-events in this replica's local buffer, waiting for Redis (redis backend).",
    ),
    (
        "gateway_spool_buffered_bytes",
        Kind::Gauge,
        "Bytes of the after-events in this replica's local buffer (redis backend).",
    ),
    (
        "gateway_spool_buffered_total",
        Kind::Counter,
        "After-events written to this replica's local buffer while Redis could not take them, by command.",
    ),
    (
        "gateway_spool_buffer_moved_total",
        Kind::Counter,
        "After-events moved from this replica's local buffer into Redis.",
    ),
    (
        "gateway_spool_backend_up",
        Kind::Gauge,
        "1 while the spool backend takes events (always 1 for redb; Redis reachable and answering for redis).",
    ),
    (
        "gateway_spool_backend_errors_total",
        Kind::Counter,
        "Failed Redis commands of the spool backend, by operation (append, read, finish, claim, poll, health).",
    ),
    (
        "gateway_spool_reclaimed_total",
        Kind::Counter,
        "Events in delivery by a consumer that stopped (XAUTOCLAIM after spool.redis.claim_idle) taken over by this replica.",
    ),
    (
        "gateway_spool_rejected_total",
        Kind::Counter,
        "After-events the spool did not take (full, closed, write error).",
    ),
    (
        "gateway_spool_dropped_total",
        Kind::Counter,
        "Pending after-events dropped by when_full: drop_oldest.",
    ),
    (
        "gateway_spool_commits_total",
        Kind::Counter,
        "Spool group commits.",
    ),
    (
        "gateway_spool_write_errors_total",
        Kind::Counter,
        "Spool writes that failed.",
    ),
    (
        "gateway_spool_delivered_total",
        Kind::Counter,
        "Spooled after-events delivered, by command.",
    ),
    (
        "gateway_spool_retries_total",
        Kind::Counter,
        "Failed deliveries that will be retried, by command.",
    ),
    (
        "gateway_spool_dead_total",
        Kind::Counter,
        "After-events moved to the dead letters, by command and reason.",
    ),
    (
        "gateway_delivery_attempts_total",
        Kind::Counter,
        "Delivery attempts of spooled after-events, by command and result (delivered, retry, dead, deferred).",
    ),
    (
        "gateway_delivery_duration_seconds",
        Kind::Histogram,
        "Time of one delivery attempt, by command.",
    ),
    (
        "gateway_log_lines_dropped_total",
        Kind::Counter,
        "Log lines dropped because stdout did not take them fast enough (the log's queue was full): never waited for, so a stalled log cannot slow the callbacks.",
    ),
];

/// The recorder with the buckets set.
pub fn builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    match builder.set_buckets(BUCKETS) {
        Ok(b) => b,
        // Only an empty bucket list is refused.
        Err(_) => PrometheusBuilder::new(),
    }
}

/// Registers the help text of every metric with the installed recorder, and the build info.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, Unit::Seconds, help),
        }
    }
    metrics::gauge!("gateway_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Shown at 0 from the start, so that an alert on it has a series to watch.
    metrics::counter!("gateway_log_lines_dropped_total").increment(0);
}
