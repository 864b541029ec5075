//! Upstreams: named gRPC hook services, built from the config into cheaply cloned clients.
//!
//! `Config` stays plain data; this is the live handle built from it (linkerd's split). Members
//! connect lazily and reconnect by themselves, so a dead upstream at start-up is not an error:
//! calls fail by the command's failure policy until it comes up. Building opens no socket and
//! resolves no name.
//!
//! - `mod.rs` (this file): [`Upstreams`], the clients by name.
//! - `call.rs`: [`Call`], [`CallError`] and [`UpstreamClient`], the one typed call.
//! - `resilience.rs`: [`Resilient`], the concurrency limit, circuit breaker and retries around it.
//! - `member.rs`: a member's identity, the connector that dials it, and the per-member health
//!   that takes a refusing or NOT_SERVING member out of the rotation.
//! - `transport.rs`: [`Transport`]: each call straight to a member it picks (power of two
//!   choices), or the balancer over one tonic channel per resolved address while there is none.
//! - `fast.rs`: the fast path of a plaintext member, its calls written into its HTTP/2
//!   connection from the caller's task (no buffer task, no hyper dispatch per call).
//! - `discovery.rs`: the task per upstream that re-resolves the endpoints, probes refusing
//!   addresses and re-reads the TLS files.
//! - `resolve.rs`: the [`resolve::Resolve`] trait, the system resolver and the DNS one.
//! - `tls.rs`: the TLS files and the client TLS settings made from them.

mod call;
mod discovery;
mod fast;
mod member;
pub mod resilience;
pub mod resolve;
mod tls;
mod transport;

pub use call::{Call, CallError, RawCodec, UpstreamClient, error_chain, metadata};
pub use member::{CheckResult, ConnectError, MemberChannel, MemberCheck, MemberView};
pub use resilience::{BreakerState, FAST_RECHECK, Refusal, Resilient, Retry};
pub use tls::TlsError;
pub use transport::Transport;

use crate::config::{DnsConfig, UpstreamConfig};
use resolve::Resolve;
use std::collections::HashMap;
use std::sync::Arc;

/// A config value that does not make a usable upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// An endpoint URI cannot be used.
    #[error("upstreams.{name}.endpoints: `{uri}` is not a valid endpoint URI: {reason}")]
    Endpoint {
        /// The upstream's name.
        name: String,
        /// The bad URI.
        uri: String,
        /// Why.
        reason: String,
    },
    /// The TLS files cannot be read or used.
    #[error("upstreams.{name}.tls.{source}")]
    Tls {
        /// The upstream's name.
        name: String,
        /// What is wrong (it names the key).
        source: TlsError,
    },
    /// `dns:` does not make a resolver.
    #[error(transparent)]
    Resolver(#[from] resolve::ResolverSetupError),
}

/// The upstreams by name.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    clients: HashMap<String, UpstreamClient>,
}

impl Upstreams {
    /// Builds the client of every upstream, resolving host names as `dns` says. Must run inside
    /// a tokio runtime; opens no socket and does not wait for a resolution (only the TLS files
    /// are read).
    pub fn build(
        configs: &HashMap<String, UpstreamConfig>,
        dns: &DnsConfig,
    ) -> Result<Self, UpstreamError> {
        Self::build_with_resolver(configs, resolve::from_config(dns)?)
    }

    /// [`Upstreams::build`] with a given resolver. Each upstream's discovery task holds a
    /// reference to it until the upstream's last client is dropped.
    pub fn build_with_resolver(
        configs: &HashMap<String, UpstreamConfig>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, UpstreamError> {
        let mut discoveries = Vec::with_capacity(configs.len());
        let mut clients = HashMap::with_capacity(configs.len());
        for (name, cfg) in configs {
            let capacity = transport::BUFFER.max(cfg.endpoints.len());
            let (tx, rx) = tokio::sync::mpsc::channel(capacity);
            let direct = transport::Direct::default();
            let discovery =
                discovery::Discovery::new(name, cfg, resolver.clone(), tx, direct.clone())?;
            let members = discovery.health();
            discoveries.push(discovery);
            clients.insert(
                name.clone(),
                UpstreamClient::new(Transport::new(rx, direct, members)),
            );
        }
        // Only once every upstream built: a refused config starts nothing.
        for d in discoveries {
            d.spawn();
        }
        Ok(Self { clients })
    }

    /// The client of an upstream.
    pub fn get(&self, name: &str) -> Option<&UpstreamClient> {
        self.clients.get(name)
    }
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
