//! Named upstreams, built from the config into cheaply cloned tonic channels.
//!
//! `Config` stays plain data; this is the live handle built from it (linkerd's split). A channel
//! connects lazily and reconnects by itself, so a dead upstream at start-up is not an error: calls
//! fail by the command's failure policy until it comes up. Several endpoints are balanced.

use crate::config::UpstreamConfig;
use std::collections::HashMap;
use tonic::transport::{Channel, Endpoint};

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
    channels: HashMap<String, Channel>,
}

impl Upstreams {
    /// Builds a lazily connecting channel per upstream. Must run inside a tokio runtime.
    pub fn build(configs: &HashMap<String, UpstreamConfig>) -> Result<Self, UpstreamError> {
        let mut channels = HashMap::with_capacity(configs.len());
        for (name, cfg) in configs {
            let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
            for uri in &cfg.endpoints {
                let fail = |reason: String| UpstreamError {
                    name: name.clone(),
                    uri: uri.clone(),
                    reason,
                };
                let ep = Endpoint::from_shared(uri.clone())
                    .map_err(|e| fail(e.to_string()))?
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
            channels.insert(name.clone(), channel);
        }
        Ok(Self { channels })
    }

    /// The channel of an upstream.
    pub fn get(&self, name: &str) -> Option<Channel> {
        self.channels.get(name).cloned()
    }
}
