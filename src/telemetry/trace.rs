//! W3C trace context: what a callback brings (`traceparent` / `tracestate` headers), the
//! `callback` and `delivery` spans, and the context an upstream call carries as gRPC metadata.
//!
//! The spans are `tracing` spans, seen whatever the log filter says: their ids are what the
//! upstreams receive. With an exporter (`tracing.otlp`) the OpenTelemetry layer ([`layer`]) makes
//! them real OpenTelemetry spans, exported when sampled. Without one nothing would ever read an
//! OpenTelemetry span, so none is made: [`propagation_layer`] keeps the spans and each gets its
//! context here, by the rules the SDK's `ParentBased(AlwaysOn)` sampler follows (the caller's
//! trace and sampled flag, else a new sampled trace; a new span id; the caller's `tracestate`).
//! The upstreams see the same headers either way.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, TraceContextExt as _, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use std::sync::atomic::{AtomicU8, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// What makes the spans' trace context, set once by `telemetry::init` when its subscriber is
/// installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Mode {
    /// `telemetry::init`'s subscriber is not installed: the spans are whatever the installed
    /// subscriber makes of them (an embedding program's own OpenTelemetry layer, or nothing).
    Other = 0,
    /// No exporter: the context made here, kept with the span ([`propagation_layer`]).
    Propagate = 1,
    /// An exporter: OpenTelemetry spans ([`layer`]).
    Export = 2,
}

static MODE: AtomicU8 = AtomicU8::new(Mode::Other as u8);

pub(super) fn set_mode(mode: Mode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub(super) fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::Propagate,
        2 => Mode::Export,
        _ => Mode::Other,
    }
}

/// A span's context without an exporter, in its extensions.
struct Propagated(TraceContext);

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

    /// The context of `span` as the W3C headers carry it; `None` when the span has none (no
    /// subscriber that gives it one).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        match mode() {
            Mode::Propagate => with_propagated(span, Clone::clone),
            Mode::Export | Mode::Other => Self::of_otel(span),
        }
    }

    /// The context of `span`'s OpenTelemetry span; `None` without an OpenTelemetry layer.
    fn of_otel(span: &tracing::Span) -> Option<Self> {
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

    /// A new span's context: a child of `parent` when it is valid (its trace, its sampled flag,
    /// its `tracestate`), else the root of a new sampled trace; a new span id. What the SDK's
    /// tracer makes under `ParentBased(AlwaysOn)`, the sampler without an exporter.
    fn child_of(parent: Option<&Self>) -> Self {
        let ids = RandomIdGenerator::default();
        let parent = parent.map(Self::parent);
        let parent = parent
            .as_ref()
            .map(|cx| cx.span().span_context().clone())
            .filter(SpanContext::is_valid);
        let sc = match parent {
            Some(p) => SpanContext::new(
                p.trace_id(),
                ids.new_span_id(),
                if p.is_sampled() {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                false,
                p.trace_state().clone(),
            ),
            None => SpanContext::new(
                ids.new_trace_id(),
                ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
        };
        let mut out = Self::default();
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        out
    }
}

/// Keeps `cx` with `span` (in the registry's extensions of the span).
fn keep(span: &tracing::Span, cx: TraceContext) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(data) = registry.span(id)
        {
            data.extensions_mut().insert(Propagated(cx));
        }
    });
}

/// `f` of the context kept with `span`.
fn with_propagated<T>(span: &tracing::Span, f: impl FnOnce(&TraceContext) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let data = registry.span(id)?;
        let ext = data.extensions();
        ext.get::<Propagated>().map(|p| f(&p.0))
    })
    .flatten()
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
    if mode() == Mode::Propagate {
        keep(&span, TraceContext::child_of(parent));
        return span;
    }
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
    if mode() == Mode::Propagate {
        keep(&span, TraceContext::child_of(stored));
        return span;
    }
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
    if mode() == Mode::Propagate {
        return with_propagated(span, |cx| cx.trace_id().map(str::to_owned)).flatten();
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The spans of the gateway itself (`callback`, `delivery`), whatever the log filter says.
fn own_spans(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with(env!("CARGO_CRATE_NAME"))
}

/// Without an exporter: a layer that does nothing but keep the gateway's own spans in the
/// registry (the log filter does not apply to it), where each one's context is kept.
pub(super) fn propagation_layer<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_subscriber::layer::Identity::new()
        .with_filter(tracing_subscriber::filter::filter_fn(own_spans))
}

/// With an exporter: the OpenTelemetry layer over `provider`, seeing only the gateway's own
/// spans (the log filter does not apply to it, so propagation does not depend on `log.filter`).
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
        .with_filter(tracing_subscriber::filter::filter_fn(own_spans))
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

    /// What the SDK's tracer makes under `ParentBased(AlwaysOn)` for a child of `parent`.
    fn sdk_child(parent: Option<&TraceContext>) -> TraceContext {
        use opentelemetry::trace::Tracer as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::AlwaysOn,
            )))
            .build();
        let tracer = provider.tracer("test");
        let parent = parent.map_or_else(opentelemetry::Context::new, TraceContext::parent);
        let span = tracer.start_with_context("callback", &parent);
        let cx = opentelemetry::Context::new().with_span(span);
        let mut out = TraceContext::default();
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        out
    }

    #[test]
    fn the_context_made_without_an_exporter_follows_the_sdks_rules() {
        let incoming = |traceparent: &str, tracestate: &str| TraceContext {
            traceparent: traceparent.into(),
            tracestate: tracestate.into(),
        };
        let parents = [
            None,
            Some(incoming(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "congo=t61rcWkgMzE",
            )),
            Some(incoming(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                "",
            )),
            Some(incoming(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
                "",
            )),
            Some(incoming("00-zz-00f067aa0ba902b7-01", "congo=t61rcWkgMzE")),
            Some(incoming(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "",
            )),
        ];
        for parent in &parents {
            let ours = TraceContext::child_of(parent.as_ref());
            let sdk = sdk_child(parent.as_ref());
            let shape = |t: &TraceContext| {
                let p: Vec<String> = t.traceparent.split('-').map(str::to_owned).collect();
                (p.len(), p[0].clone(), p[1].len(), p[2].len(), p[3].clone())
            };
            assert_eq!(shape(&ours), shape(&sdk), "{parent:?}");
            assert_eq!(ours.tracestate, sdk.tracestate, "{parent:?}");
            let joined = parent
                .as_ref()
                .is_some_and(|p| p.parent().has_active_span());
            assert_eq!(
                ours.trace_id() == parent.as_ref().and_then(TraceContext::trace_id),
                joined,
                "{parent:?} -> {ours:?}"
            );
            assert_eq!(
                ours.trace_id() == sdk.trace_id(),
                joined,
                "the same trace only when joining the caller's: {parent:?}"
            );
            let parent_span = parent
                .as_ref()
                .and_then(|p| p.traceparent.split('-').nth(2));
            assert_ne!(
                ours.traceparent.split('-').nth(2),
                parent_span,
                "a new span id"
            );
        }
        // New ids every time.
        let (a, b) = (TraceContext::child_of(None), TraceContext::child_of(None));
        assert_ne!(a.trace_id(), b.trace_id());
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
