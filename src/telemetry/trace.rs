//! W3C trace context: what a callback brings (`traceparent` / `tracestate` headers), the
//! `callback` and `delivery` spans, and the context an upstream call carries as gRPC metadata.
//!
//! The spans are `tracing` spans made real by the OpenTelemetry layer ([`layer`]), which sees them
//! whatever the log filter says: their ids are what the upstreams receive, and what the exporter
//! sends.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The metadata key (and HTTP header) of the trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key (and HTTP header) of the vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context as it travels: the `traceparent` and `tracestate` values. Received from
/// a mesh, stored with a spooled event, sent to the upstreams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
    pub traceparent: String,
    /// Vendor entries (`congo=t61rcWkgMzE`), often empty.
    pub tracestate: String,
}

impl TraceContext {
    /// The context of an incoming request, when it has a `traceparent` header. Malformed values
    /// are kept here and ignored when the span is made (a new trace starts).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        let traceparent = text(TRACEPARENT).filter(|v| !v.is_empty())?;
        Some(Self {
            traceparent,
            tracestate: text(TRACESTATE).unwrap_or_default(),
        })
    }

    /// The context of `span` as the W3C headers carry it; `None` when the span has no valid
    /// OpenTelemetry context (no OpenTelemetry layer installed).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut out = Self::default();
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        (!out.traceparent.is_empty()).then_some(out)
    }

    /// The trace id (32 hex digits) of the `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.split('-').nth(1)
    }

    fn parent(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE => self.tracestate = value,
            _ => {}
        }
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent.as_str()),
            TRACESTATE if !self.tracestate.is_empty() => Some(self.tracestate.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The span of one callback: a child of the request's trace context when it brought one, else
/// the root of a new trace. Carries the `command` attribute (`operation_id` and the outcome are
/// added when known).
pub fn callback_span(command: &str, parent: Option<&TraceContext>) -> tracing::Span {
    let span = tracing::info_span!("callback");
    if let Some(parent) = parent {
        // Fails only without the OpenTelemetry layer, where there is nothing to join.
        let _ = span.set_parent(parent.parent());
    }
    let command: String = command.chars().take(120).collect();
    span.set_attribute("command", command);
    span
}

/// The span of one delivery attempt of a spooled event: a child of the callback's span (the
/// stored context), so every attempt shows in the callback's trace.
pub fn delivery_span(
    command: &str,
    delivery_id: &str,
    attempt: u32,
    stored: Option<&TraceContext>,
) -> tracing::Span {
    let span = tracing::info_span!("delivery");
    if let Some(parent) = stored {
        let _ = span.set_parent(parent.parent());
    }
    span.set_attribute("command", command.to_owned());
    span.set_attribute("delivery_id", delivery_id.to_owned());
    span.set_attribute("attempt", i64::from(attempt));
    span
}

/// The trace id of `span` (32 hex digits), for the log line; `None` without a valid context.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The OpenTelemetry layer over `provider`, seeing only the gateway's own spans (the log filter
/// does not apply to it, so propagation does not depend on `log.filter`).
pub(super) fn layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let tracer = provider.tracer("openim-callback-gateway");
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with(env!("CARGO_CRATE_NAME"))
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_give_the_context_and_its_trace_id() {
        let mut h = http::HeaderMap::new();
        assert_eq!(TraceContext::from_headers(&h), None);
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        h.insert(
            "tracestate",
            http::HeaderValue::from_static("congo=t61rcWkgMzE"),
        );
        let t = TraceContext::from_headers(&h).expect("context");
        assert_eq!(t.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(t.tracestate, "congo=t61rcWkgMzE");
        let cx = t.parent();
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn a_malformed_traceparent_gives_no_parent() {
        let t = TraceContext {
            traceparent: "00-zz-00f067aa0ba902b7-01".into(),
            tracestate: String::new(),
        };
        assert!(!t.parent().span().span_context().is_valid());
    }
}
