//! Logs, traces and metrics: the tracing subscriber (text or JSON lines, plus the OpenTelemetry
//! layer), the redaction rule of the logs, and the Prometheus recorder behind `/metrics`.
//!
//! - `telemetry.rs` (this file): [`init`] and its [`Telemetry`] guard (flushes spans on
//!   shutdown), [`redact`] and the redacted texts, [`metrics_handle`].
//! - `telemetry/trace.rs`: W3C trace context ([`TraceContext`]), the `callback` and `delivery`
//!   spans.
//! - `telemetry/export.rs`: the tracer provider and the OTLP exporter (`tracing.otlp`).

mod export;
mod trace;

pub use trace::{TRACEPARENT, TRACESTATE, TraceContext, callback_span, delivery_span, trace_id};

use crate::config::{LogConfig, LogFormat, TracingConfig};
use crate::decision::Failure;
use crate::upstream::CallError;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What [`init`] set up; [`Telemetry::shutdown`] (or dropping it) exports the spans still
/// batched. Keep it until the gateway has stopped.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is batched and stops the exporter. Blocks until done (bounded by the
    /// exporter's timeout); with an OTLP exporter, call it while the tokio runtime is still
    /// running (its export runs there) and not from a task of a current-thread runtime.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("openim-callback-gateway: exporting the last spans failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber once (later calls leave it as it is and return an inert
/// guard): log lines in `log.format` filtered by `log.filter` (`RUST_LOG` wins), and the
/// OpenTelemetry layer that turns the `callback` and `delivery` spans into real spans, exported
/// when `tracing.otlp` is set. The spans exist whatever the log filter says, so trace context is
/// propagated to the upstreams with or without an exporter.
///
/// With `tracing.otlp` set it must run inside a tokio runtime, which then carries the exports.
pub fn init(log: &LogConfig, tracing: &TracingConfig) -> Result<Telemetry, TelemetryError> {
    init_to(log, tracing, LogOutput::Stdout)
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard output: the gateway's log.
    Stdout,
    /// Standard error: for the subcommands whose stdout is their result (`check`, `routes`),
    /// so that a line logged meanwhile cannot mix with it.
    Stderr,
}

/// [`init`], with the log lines going to `output`.
pub fn init_to(
    log: &LogConfig,
    tracing: &TracingConfig,
    output: LogOutput,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    REDACT.store(log.redact, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (terminal, writer) = match output {
        LogOutput::Stdout => (
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
            BoxMakeWriter::new(std::io::stdout),
        ),
        LogOutput::Stderr => (
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            BoxMakeWriter::new(std::io::stderr),
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
    let provider = export::provider(tracing)?;
    let otel = trace::layer(&provider);
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    Ok(Telemetry {
        provider: installed.then_some(provider),
    })
}

/// [`init`] with logs only (no exporter), for programs that embed the gateway and tests.
pub fn init_logging(cfg: &LogConfig) {
    if let Ok(t) = init(cfg, &TracingConfig::default()) {
        // Nothing to flush without an exporter; the subscriber stays installed.
        std::mem::forget(t);
    }
}

static REDACT: AtomicBool = AtomicBool::new(true);

/// Whether user data is kept out of the logs (`log.redact`, on unless [`init`] was told
/// otherwise).
pub fn redact() -> bool {
    REDACT.load(Ordering::Relaxed)
}

/// What a redacted value is logged as.
pub const REDACTED: &str = "<redacted>";

/// A text that can hold user content (a service's rejection message): itself, or [`REDACTED`].
pub fn user_text(text: &str) -> &str {
    if redact() { REDACTED } else { text }
}

/// A failure as the logs show it: a gRPC status message from the service (which can echo user
/// content) and the problem of a bad body (which can quote values) are redacted.
pub fn failure_text(f: &Failure) -> String {
    if !redact() {
        return f.to_string();
    }
    match f {
        Failure::Call(CallError::Status(s)) => {
            format!("upstream status {}: {REDACTED}", grpc_code_name(s.code()))
        }
        // A bad body's problem was built redacted already ([`field_problem`]).
        other => other.to_string(),
    }
}

/// A field problem of a bad body as the logs show it: the field's path (key names, from the
/// contract) stays, what it held goes unless `log.redact: false`.
pub fn field_problem(e: &crate::json::FieldError) -> String {
    if redact() {
        format!("field `{}`: {REDACTED}", e.path)
    } else {
        e.to_string()
    }
}

/// A spool delivery's failure text (or dead-letter reason) as the logs show it. The text stays
/// whole in the spool (`last_error`, for operators, beside the payload); in a log line the gRPC
/// status message the service sent (`… Unavailable: <message>`, as `crate::decision` words it)
/// is redacted, since it can echo user content.
pub fn delivery_error(text: &str) -> std::borrow::Cow<'_, str> {
    if !redact() {
        return text.into();
    }
    let mut from = 0;
    while let Some(at) = text[from..].find(": ").map(|i| from + i) {
        let word_start = text[..at].rfind(' ').map_or(0, |i| i + 1);
        let word = &text[word_start..at];
        if (0..=16).any(|n| format!("{:?}", tonic::Code::from_i32(n)) == word) {
            return format!("{}: {REDACTED}", &text[..at]).into();
        }
        from = at + 2;
    }
    text.into()
}

/// A duration as a log line or an error shows it: to the millisecond, in the largest unit that
/// reads well (`58ms`, `2.5s`, `1m 30s`), never `58ms 463us 162ns`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros().max(1));
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let text = format!("{:.3}", d.as_secs_f64());
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// The gRPC status of an upstream call's result: `OK` for a reply, the status the upstream sent,
/// or `None` when no status came (timeout, unreachable).
pub fn call_status(result: &Result<bytes::Bytes, CallError>) -> Option<tonic::Code> {
    match result {
        Ok(_) => Some(tonic::Code::Ok),
        Err(CallError::Status(s)) => Some(s.code()),
        Err(_) => None,
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
    if let Some(code) = status {
        span.set_attribute("grpc_status", grpc_code_name(code));
    }
    span.set_attribute("outcome", outcome);
    if outcome != "delivered" {
        span.set_status(opentelemetry::trace::Status::error(outcome));
    }
}

/// The canonical name of a gRPC status code (`UNAVAILABLE`), as logs and traces show it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision;

    #[test]
    fn a_delivery_error_loses_the_status_message_only() {
        assert!(redact(), "on by default");
        let text = decision::delivery_result(&Err(CallError::Status(tonic::Status::new(
            tonic::Code::Unavailable,
            "cannot store: hello bob",
        ))));
        let crate::spool::DeliveryResult::Retry(fault) = text else {
            panic!("{text:?}");
        };
        let text = fault.text();
        assert_eq!(delivery_error(&text), "Unavailable: <redacted>");
        let reason = format!("gave up after 3 attempts: {text}");
        assert_eq!(
            delivery_error(&reason),
            "gave up after 3 attempts: Unavailable: <redacted>"
        );
        let plain = "gave up after 3 attempts: upstream did not answer within 1s";
        assert_eq!(delivery_error(plain), plain);
    }

    #[test]
    fn durations_read_well() {
        let d = |ns: u64| human_duration(std::time::Duration::from_nanos(ns));
        assert_eq!(d(58_463_162), "58ms");
        assert_eq!(d(0), "0ms");
        assert_eq!(d(12_345), "12us");
        assert_eq!(d(2_500_000_000), "2.5s");
        assert_eq!(d(3_000_000_000), "3s");
        assert_eq!(d(3_041_700_000), "3.042s");
        assert_eq!(d(90_400_000_000), "1m 30s");
    }

    #[test]
    fn every_grpc_code_has_its_canonical_name() {
        let names: Vec<&str> = (0..=16)
            .map(|n| grpc_code_name(tonic::Code::from_i32(n)))
            .collect();
        assert_eq!(names[0], "OK");
        assert_eq!(names[3], "INVALID_ARGUMENT");
        assert_eq!(names[14], "UNAVAILABLE");
        assert_eq!(names[16], "UNAUTHENTICATED");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 17);
    }
}
