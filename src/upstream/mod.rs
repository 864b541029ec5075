//! Upstreams: named gRPC hook services, built from the config into cheaply cloned clients.
//!
//! `Config` stays plain data; this is the live handle built from it (linkerd's split). A channel
//! connects lazily and reconnects by itself, so a dead upstream at start-up is not an error: calls
//! fail by the command's failure policy until it comes up. Several endpoints are balanced.
//!
//! - `mod.rs` (this file): [`Upstreams`], the channels by name.
//! - `call.rs`: [`Call`], [`CallError`] and [`UpstreamClient`], the one typed call.
//! - `resilience.rs`: [`Resilient`], the concurrency limit, circuit breaker and retries around it.

mod call;
pub mod resilience;

pub use call::{Call, CallError, RawCodec, UpstreamClient, error_chain, metadata};
pub use resilience::{Refusal, Resilient, Retry};

use crate::config::UpstreamConfig;
use std::collections::HashMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A config value that does not make a usable upstream.
#[derive(Debug, thiserror::Error)]
#[error("upstreams.{name}.endpoints: `{uri}` is not a valid endpoint URI: {reason}")]
pub struct UpstreamError {
    /// The upstream's name.
    pub name: String,
    /// The bad URI.
    pub uri: String,
    /// Why.
    pub reason: String,
}

/// The upstreams by name.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    clients: HashMap<String, UpstreamClient>,
}

impl Upstreams {
    /// Builds a lazily connecting channel per upstream. Must run inside a tokio runtime.
    pub fn build(configs: &HashMap<String, UpstreamConfig>) -> Result<Self, UpstreamError> {
        let mut clients = HashMap::with_capacity(configs.len());
        for (name, cfg) in configs {
            let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
            for uri in &cfg.endpoints {
                let fail = |reason: String| UpstreamError {
                    name: name.clone(),
                    uri: uri.clone(),
                    reason,
                };
                let mut ep = Endpoint::from_shared(uri.clone()).map_err(|e| fail(e.to_string()))?;
                if ep.uri().scheme_str() == Some("https") {
                    // Never plaintext to an address marked TLS: rustls with the webpki roots.
                    // (Custom CAs, client certificates and SNI overrides are the mesh issue's.)
                    ep = ep
                        .tls_config(ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| fail(e.to_string()))?;
                }
                let ep = ep
                    .connect_timeout(cfg.connect_timeout.0)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(std::time::Duration::from_secs(30))
                    .keep_alive_while_idle(true);
                endpoints.push(ep);
            }
            let channel = match endpoints.len() {
                1 => endpoints.remove(0).connect_lazy(),
                _ => Channel::balance_list(endpoints.into_iter()),
            };
            clients.insert(name.clone(), UpstreamClient::new(channel));
        }
        Ok(Self { clients })
    }

    /// The client of an upstream.
    pub fn get(&self, name: &str) -> Option<&UpstreamClient> {
        self.clients.get(name)
    }
}
