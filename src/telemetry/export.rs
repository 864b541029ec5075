//! The tracer provider behind the spans when `tracing.otlp` is set, and its OTLP exporter.
//!
//! Ended spans are batched and sent by the SDK's batch thread; each export runs on the gateway's
//! tokio runtime (both transports need one), so the provider must be built inside it. Without
//! `tracing.otlp` there is no provider: the context the upstreams receive is made by
//! `telemetry/trace.rs`.

use super::TelemetryError;
use crate::config::{OtlpConfig, OtlpProtocol, TracingConfig};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use std::sync::Arc;
use std::time::Duration;

/// Deadline of one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The provider for `tracing` exporting to `otlp`. New traces are sampled at `sample_ratio`; an
/// incoming parent's decision wins.
pub(super) fn provider(
    tracing: &TracingConfig,
    otlp: &OtlpConfig,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(tracing.service_name.clone())
        .build();
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        TelemetryError::Exporter("the exporter needs a tokio runtime to run in".into())
    })?;
    let exporter = exporter(&otlp.endpoint, otlp.protocol)?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sample_ratio,
        ))))
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            runtime,
        })
        .build())
}

fn exporter(
    endpoint: &str,
    protocol: OtlpProtocol,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let https = endpoint.starts_with("https://");
    let built = match protocol {
        OtlpProtocol::Http => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .build();
            let client =
                opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .with_timeout(EXPORT_TIMEOUT)
                .with_http_client(client)
                .build()
        }
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_owned())
                .with_timeout(EXPORT_TIMEOUT);
            if https {
                b = b.with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
            }
            b.build()
        }
    };
    built.map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// Runs each export of `inner` as a task of the gateway's runtime: the SDK's batch thread has no
/// runtime of its own, and the HTTP and gRPC clients need one.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .map_err(|e| OTelSdkError::InternalFailure(format!("export task failed: {e}")))?
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called while the provider is built, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
