//! The resolver of upstream host names, behind the small [`Resolve`] trait: the system resolver
//! (`getaddrinfo`: `/etc/hosts`, `/etc/resolv.conf`) when `dns.nameservers` is empty, or
//! hickory-resolver asking exactly the configured servers (UDP, then TCP).

use crate::config::DnsConfig;
use futures_util::future::BoxFuture;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::net::SocketAddr;
use std::sync::Arc;

/// A host name could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve `{host}`: {reason}")]
pub struct ResolveError {
    /// The name asked for.
    pub host: String,
    /// Why.
    pub reason: String,
}

/// Turns a host name into socket addresses. Implementations must answer every call afresh or
/// within the record's TTL: the discovery task asks once per `resolve_interval`.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, each with `port`. An empty list is an answer, not an error.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, ResolveError>>;
}

/// The resolver `dns:` describes: [`SystemResolver`] without name servers, [`DnsResolver`] with.
pub fn from_config(dns: &DnsConfig) -> Result<Arc<dyn Resolve>, ResolverSetupError> {
    Ok(if dns.nameservers.is_empty() {
        Arc::new(SystemResolver)
    } else {
        Arc::new(DnsResolver::new(&dns.nameservers)?)
    })
}

/// `dns.nameservers` does not make a resolver.
#[derive(Debug, thiserror::Error)]
#[error("dns.nameservers: {0}")]
pub struct ResolverSetupError(String);

/// The operating system's resolver (`tokio::net::lookup_host`, i.e. `getaddrinfo` on a blocking
/// thread), as every other program on the host resolves.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, ResolveError>> {
        let host = host.to_owned();
        Box::pin(async move {
            let result = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(|addrs| addrs.collect::<Vec<_>>());
            match result {
                Ok(addrs) => Ok(addrs),
                Err(e) => Err(ResolveError {
                    host,
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// A DNS stub resolver that asks the given name servers only (UDP, with TCP for truncated
/// answers), without `/etc/hosts`, search domains or a cache: every lookup reaches a server, so
/// a changed record is seen at the next `resolve_interval`.
#[derive(Clone)]
pub struct DnsResolver {
    inner: hickory_resolver::TokioResolver,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A resolver asking `servers`, in order.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, ResolverSetupError> {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let connection = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let inner = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverSetupError(e.to_string()))?;
        Ok(Self { inner })
    }
}

impl Resolve for DnsResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, ResolveError>> {
        let resolver = self.inner.clone();
        let host = host.to_owned();
        Box::pin(async move {
            let result = resolver.lookup_ip(host.as_str()).await;
            match result {
                Ok(lookup) => Ok(lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
                // "No records" is an answer: the name exists with no address (or not at all).
                Err(e) if e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(ResolveError {
                    host,
                    reason: e.to_string(),
                }),
            }
        })
    }
}
