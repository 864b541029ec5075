//! Logs, traces and metrics: the tracing subscriber (text or JSON lines, plus the OpenTelemetry
//! layer), the redaction rule of the logs, and the Prometheus recorder behind `/metrics`.
//!
//! - `telemetry.rs` (this file): [`init`] and its [`Telemetry`] guard (flushes spans on
//!   shutdown), [`metrics_handle`], the span attributes of an outcome.
//! - `telemetry/redact.rs` (a leaf): [`redact()`] and the redacted texts.
//! - `telemetry/words.rs` (a leaf): durations and gRPC code names as logs show them.
//! - `telemetry/trace.rs`: W3C trace context ([`TraceContext`]), the `callback` and `delivery`
//!   spans.
//! - `telemetry/export.rs`: the tracer provider and the OTLP exporter (`tracing.otlp`), only
//!   when exporting.
//! - `telemetry/writer.rs` (a leaf): the log's writer thread (lines written off the request's
//!   thread, in order; dropped and counted when stdout stalls).

mod export;
pub mod redact;
mod trace;
pub mod words;
mod writer;

pub use redact::{REDACTED, delivery_error, redact, user_text};
pub use trace::{TRACEPARENT, TRACESTATE, TraceContext, callback_span, delivery_span, trace_id};
pub use words::{grpc_code_name, human_duration};

use crate::config::{LogConfig, LogFormat, TracingConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter of `tracing.otlp` cannot be built.
    #[error("tracing.otlp: {0}")]
    Exporter(String),
}

/// What [`init`] set up: the exporter of the spans and the log's writer thread. Keep it until
/// the gateway has stopped; [`Telemetry::shutdown_traces`] exports the spans still batched, and
/// dropping it does that too and then writes the log lines still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Dropped last: its drop writes the queued lines (the exporter's last errors included).
    log: Option<writer::LogGuard>,
}

impl Telemetry {
    /// Exports what is batched and stops the exporter; the log stays. Blocks until done (bounded
    /// by the exporter's timeout); with an OTLP exporter, call it while the tokio runtime is
    /// still running (its export runs there) and not from a task of a current-thread runtime.
    pub fn shutdown_traces(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("openim-callback-gateway: exporting the last spans failed: {e}");
        }
    }

    /// [`Telemetry::shutdown_traces`], then the log lines still queued are written (waiting at
    /// most about a second for a stalled stdout). A line logged after this is lost.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown_traces();
        drop(self.log.take());
    }
}

/// Installs the global subscriber once (later calls leave it as it is and return an inert
/// guard): log lines in `log.format` filtered by `log.filter` (`RUST_LOG` wins), written to
/// stdout by a thread of their own ([`LogOutput::Stdout`]; keep the guard), and with
/// `tracing.otlp` set the OpenTelemetry layer that turns the `callback` and `delivery` spans
/// into real spans and exports them. The spans exist whatever the log filter says, so trace
/// context is propagated to the upstreams with or without an exporter (without one, the
/// context is made without OpenTelemetry spans: nothing would read them).
///
/// With `tracing.otlp` set it must run inside a tokio runtime, which then carries the exports.
pub fn init(log: &LogConfig, tracing: &TracingConfig) -> Result<Telemetry, TelemetryError> {
    init_to(log, tracing, LogOutput::Stdout)
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard output, written by a thread of its own (`telemetry/writer.rs`): the gateway's
    /// log. A callback's task only formats its line and queues it; when stdout stalls and the
    /// queue is full, lines are dropped and counted (`gateway_log_lines_dropped_total`), never
    /// waited for. Keep the [`Telemetry`] guard: its drop writes the lines still queued.
    Stdout,
    /// Standard output, each line written by the task that logs it: no thread, nothing queued,
    /// nothing to flush ([`init_logging`]).
    StdoutDirect,
    /// Standard error, each line written by the task that logs it: for the subcommands whose
    /// stdout is their result (`check`, `routes`), so that a line logged meanwhile cannot mix
    /// with it, and whose own messages on stderr stay in order with their log lines.
    Stderr,
}

/// [`init`], with the log lines going to `output`.
pub fn init_to(
    log: &LogConfig,
    tracing: &TracingConfig,
    output: LogOutput,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    redact::set_redact(log.redact);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (terminal, writer, guard) = match output {
        LogOutput::Stdout => match writer::LogWriter::stdout() {
            Ok((writer, guard)) => (
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
                BoxMakeWriter::new(writer),
                Some(guard),
            ),
            // No thread for it: each line written by the task that logs it.
            Err(_) => (
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
                BoxMakeWriter::new(std::io::stdout),
                None,
            ),
        },
        LogOutput::StdoutDirect => (
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
            BoxMakeWriter::new(std::io::stdout),
            None,
        ),
        LogOutput::Stderr => (
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            BoxMakeWriter::new(std::io::stderr),
            None,
        ),
    };
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let fmt = match log.format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        // One flat object per line: the per-callback line carries its own ids, so the span
        // objects would only repeat them.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    // Without an exporter no OpenTelemetry span would ever be read: the gateway makes the
    // context it propagates itself (`telemetry/trace.rs`), at a fraction of the cost.
    let provider = match &tracing.otlp {
        Some(otlp) => Some(export::provider(tracing, otlp)?),
        None => None,
    };
    let exporting = provider.is_some();
    // One or the other, boxed rather than two `Option` layers: a `None` layer counts as
    // enabling every span and event of every crate, which the registry would then record.
    let traces = match &provider {
        Some(provider) => trace::layer(provider).boxed(),
        None => trace::propagation_layer().boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(traces)
        .try_init()
        .is_ok();
    if installed {
        trace::set_mode(if exporting {
            trace::Mode::Export
        } else {
            trace::Mode::Propagate
        });
    }
    // Not installed (a subscriber was there first): the writer thread ends with its guard.
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
        log: guard.filter(|_| installed),
    })
}

/// [`init`] with logs only (no exporter) and each line written to stdout by the task that logs
/// it ([`LogOutput::StdoutDirect`]: nothing to keep, nothing to flush), for programs that embed
/// the gateway and tests.
pub fn init_logging(cfg: &LogConfig) {
    if let Ok(t) = init_to(cfg, &TracingConfig::default(), LogOutput::StdoutDirect) {
        // Nothing to flush without an exporter or a writer thread; the subscriber stays.
        std::mem::forget(t);
    }
}

/// Puts a callback's outcome on its span: the `operation_id`, `outcome` and `grpc_status`
/// attributes, and an error status when something failed.
pub fn record_outcome(
    span: &tracing::Span,
    operation_id: &str,
    outcome: &'static str,
    grpc_status: Option<tonic::Code>,
    failed: bool,
) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if trace::mode() == trace::Mode::Propagate {
        // No OpenTelemetry span to put them on.
        return;
    }
    if !operation_id.is_empty() {
        span.set_attribute("operation_id", operation_id.to_owned());
    }
    span.set_attribute("outcome", outcome);
    if let Some(code) = grpc_status {
        span.set_attribute("grpc_status", grpc_code_name(code));
    }
    if failed {
        span.set_status(opentelemetry::trace::Status::error(outcome));
    }
}

/// Puts a delivery attempt's result on its span: the `grpc_status` and `outcome` attributes, and
/// an error status unless delivered.
pub fn record_delivery(span: &tracing::Span, status: Option<tonic::Code>, outcome: &'static str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if trace::mode() == trace::Mode::Propagate {
        return;
    }
    if let Some(code) = status {
        span.set_attribute("grpc_status", grpc_code_name(code));
    }
    span.set_attribute("outcome", outcome);
    if outcome != "delivered" {
        span.set_status(opentelemetry::trace::Status::error(outcome));
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The Prometheus recorder, installed as the global `metrics` recorder on first use. `None` when
/// another recorder was installed first (then `/metrics` says so).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = crate::stats::builder().build_recorder();
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|()| handle);
            if installed.is_some() {
                crate::stats::describe();
            }
            installed
        })
        .clone()
}
