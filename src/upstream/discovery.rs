//! The discovery task of one upstream: it feeds the balancer of `transport.rs` with one member per
//! resolved address of each endpoint, and keeps it current.
//!
//! - Every `resolve_interval` it resolves each endpoint's host (IP literals need nothing) and
//!   inserts and removes members, keyed by endpoint and address. A failed or empty resolution
//!   keeps the last known addresses, with a rate-limited warning.
//! - Every second it probes (one TCP connect) the addresses that refused their last connection,
//!   and puts those that accept again back into the rotation.
//! - It re-reads the TLS files every 5 s (or every `resolve_interval`, when shorter); when they
//!   changed and are good, every member is rebuilt with the new settings (re-inserted under its
//!   key), so new connections use them; when they are bad, the old settings stay, with a warning
//!   and `gateway_upstream_tls_reloads_total{result="error"}`.
//!
//! It ends when the balancer is gone: the last clone of the upstream's client was dropped (a
//! reload swapped in a new snapshot, and the old one's calls finished).

use super::fast::FastMember;
use super::member::{Connector, Health, Key, Target};
use super::transport::{Balanced, Direct, DirectMember, Member, Pick};
use super::{UpstreamError, error_chain, resolve::Resolve, tls::TlsFiles};
use crate::config::{UpstreamConfig, UpstreamTlsConfig};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::transport::{Channel, Endpoint};
use tower::Service as _;
use tower::discover::Change;

/// How often addresses that refused a connection are tried again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the TLS files are read, at most.
const TLS_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A resolution that keeps failing is logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// HTTP/2 PING interval, also while idle, so that a dead connection is noticed between calls.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// One configured endpoint.
struct Spec {
    /// As configured, for logs.
    uri: String,
    host: String,
    port: u16,
    /// The host when it is an IP literal.
    ip: Option<IpAddr>,
    /// The tonic endpoint every member of this endpoint is built from: the configured URI (so
    /// `:authority` and the verified TLS name are the configured host), keep-alive, TLS.
    endpoint: Endpoint,
}

struct TlsWatch {
    cfg: UpstreamTlsConfig,
    /// The files the members use.
    applied: TlsFiles,
    /// What the last read gave, so that a bad file is reported once, not at every poll.
    seen: Result<TlsFiles, String>,
}

struct Failing {
    since: Instant,
    logged: Instant,
    count: u64,
}

/// The discovery state of one upstream; [`Discovery::spawn`] runs it.
pub(crate) struct Discovery {
    upstream: String,
    specs: Vec<Spec>,
    resolver: Arc<dyn Resolve>,
    resolve_interval: Duration,
    connect_timeout: Duration,
    tls: Option<TlsWatch>,
    health: Arc<Health>,
    tx: mpsc::Sender<Change<Key, Balanced>>,
    members: BTreeSet<Key>,
    /// The members' channels with their labels, for [`Direct`] and the health checks.
    channels: BTreeMap<Key, (Arc<str>, Channel)>,
    /// Each member's way past the balancer ([`Direct`]).
    directs: BTreeMap<Key, Arc<Pick>>,
    direct: Direct,
    failing: HashMap<usize, Failing>,
}

impl Discovery {
    /// Checks the endpoints and reads the TLS files (so that a bad config is refused before
    /// anything runs), and inserts the members known without resolving. Non-blocking apart from
    /// reading the TLS files.
    pub(crate) fn new(
        upstream: &str,
        cfg: &UpstreamConfig,
        resolver: Arc<dyn Resolve>,
        tx: mpsc::Sender<Change<Key, Balanced>>,
        direct: Direct,
    ) -> Result<Self, UpstreamError> {
        let tls_files = TlsFiles::read(&cfg.tls).map_err(|source| UpstreamError::Tls {
            name: upstream.to_owned(),
            source,
        })?;
        let mut specs = Vec::with_capacity(cfg.endpoints.len());
        for uri in &cfg.endpoints {
            specs.push(spec(upstream, uri, cfg, &tls_files)?);
        }
        let watch = [&cfg.tls.ca_file, &cfg.tls.cert_file, &cfg.tls.key_file]
            .iter()
            .any(|p| p.is_some())
            .then(|| TlsWatch {
                cfg: cfg.tls.clone(),
                applied: tls_files.clone(),
                seen: Ok(tls_files),
            });
        let mut this = Self {
            upstream: upstream.to_owned(),
            specs,
            resolver,
            resolve_interval: cfg.resolve_interval.0,
            connect_timeout: cfg.connect_timeout.0,
            tls: watch,
            health: Arc::new(Health::new(upstream)),
            tx,
            members: BTreeSet::new(),
            channels: BTreeMap::new(),
            directs: BTreeMap::new(),
            direct,
            failing: HashMap::new(),
        };
        let initial: BTreeSet<Key> = (0..this.specs.len())
            .filter_map(|i| this.static_key(i))
            .collect();
        for key in &initial {
            let member = this.member(*key);
            // The channel is sized for every endpoint, so this cannot be full.
            let _ = this.tx.try_send(Change::Insert(*key, member));
        }
        this.members = initial;
        this.publish_members();
        Ok(this)
    }

    /// The member of endpoint `i` when it needs no resolution: an IP literal, or any host with
    /// `resolve_interval: 0s` (its connector resolves per connection).
    fn static_key(&self, i: usize) -> Option<Key> {
        let spec = &self.specs[i];
        if let Some(ip) = spec.ip {
            Some(Key {
                endpoint: i,
                addr: Some(SocketAddr::new(ip, spec.port)),
            })
        } else if self.resolve_interval.is_zero() {
            Some(Key {
                endpoint: i,
                addr: None,
            })
        } else {
            None
        }
    }

    fn connector(&self, key: Key) -> Connector {
        let spec = &self.specs[key.endpoint];
        let (target, label) = match key.addr {
            // A literal address is not repeated beside itself in every log line.
            Some(addr) if spec.ip == Some(addr.ip()) && spec.port == addr.port() => {
                (Target::Addr(addr), spec.uri.clone())
            }
            Some(addr) => (Target::Addr(addr), format!("{} ({addr})", spec.uri)),
            None => (
                Target::Host {
                    host: spec.host.clone(),
                    port: spec.port,
                    resolver: self.resolver.clone(),
                },
                spec.uri.clone(),
            ),
        };
        Connector {
            target,
            key,
            label: label.into(),
            timeout: self.connect_timeout,
            health: self.health.clone(),
        }
    }

    /// A new member (replacing one of the same key), its channel recorded for [`Direct`].
    fn member(&mut self, key: Key) -> Balanced {
        let connector = self.connector(key);
        let label = connector.label.clone();
        let endpoint = &self.specs[key.endpoint].endpoint;
        let fast = FastMember::new(endpoint.uri(), connector.clone());
        let channel = endpoint.connect_with_connector_lazy(connector);
        let direct = match fast {
            Some(fast) => DirectMember::Fast(fast),
            None => DirectMember::Channel(channel.clone()),
        };
        self.directs.insert(key, Arc::new(Pick::new(key, direct)));
        self.channels.insert(key, (label, channel.clone()));
        Member::balanced(key, channel, self.health.clone())
    }

    /// Tells the health state the members, then lets calls skip the balancer to them.
    fn publish_members(&self) {
        self.health.set_members(self.channels.clone());
        self.direct
            .store(Arc::new(self.directs.values().cloned().collect()));
    }

    /// The members' health state, shared with the upstream's client.
    pub(crate) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs the task until the balancer is dropped.
    pub(crate) fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let resolving =
            !self.resolve_interval.is_zero() && self.specs.iter().any(|s| s.ip.is_none());
        let mut resolve = resolving.then(|| every(self.resolve_interval));
        let mut tls = self.tls.is_some().then(|| {
            every(match self.resolve_interval {
                d if d.is_zero() => TLS_POLL_INTERVAL,
                d => d.min(TLS_POLL_INTERVAL),
            })
        });
        let mut probe = every(PROBE_INTERVAL);
        let closed = self.tx.clone();
        loop {
            tokio::select! {
                _ = closed.closed() => break,
                _ = tick(&mut resolve) => self.resolve().await,
                _ = tick(&mut tls) => self.reload_tls().await,
                _ = probe.tick() => self.probe().await,
            }
        }
        tracing::debug!(upstream = %self.upstream, "upstream discovery stopped: its clients are gone");
    }

    async fn resolve(&mut self) {
        let mut wanted = BTreeSet::new();
        for i in 0..self.specs.len() {
            if let Some(key) = self.static_key(i) {
                wanted.insert(key);
                continue;
            }
            let (host, port) = (self.specs[i].host.clone(), self.specs[i].port);
            let outcome =
                tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.resolve(&host, port)).await;
            let reason = match outcome {
                Ok(Ok(addrs)) if !addrs.is_empty() => {
                    self.resolved(i);
                    wanted.extend(prefer_ipv4(addrs).into_iter().map(|addr| Key {
                        endpoint: i,
                        addr: Some(addr),
                    }));
                    continue;
                }
                Ok(Ok(_)) => format!("`{host}` has no address"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!(
                    "resolving `{host}` took longer than {}",
                    crate::telemetry::human_duration(RESOLVE_TIMEOUT)
                ),
            };
            self.resolve_failed(i, &reason);
            wanted.extend(self.members.iter().filter(|k| k.endpoint == i).copied());
        }
        self.apply(wanted).await;
    }

    fn resolved(&mut self, i: usize) {
        if let Some(f) = self.failing.remove(&i) {
            tracing::info!(upstream = %self.upstream, endpoint = %self.specs[i].uri,
                failures = f.count, failing_for = %crate::telemetry::human_duration(f.since.elapsed()), "upstream host resolves again");
        }
    }

    fn resolve_failed(&mut self, i: usize, reason: &str) {
        metrics::counter!("gateway_upstream_resolve_failures_total", "upstream" => self.upstream.clone())
            .increment(1);
        let now = Instant::now();
        let known = self.members.iter().filter(|k| k.endpoint == i).count();
        let f = self.failing.entry(i).or_insert(Failing {
            since: now,
            logged: now,
            count: 0,
        });
        f.count += 1;
        if f.count == 1 || now.duration_since(f.logged) >= FAILURE_LOG_INTERVAL {
            f.logged = now;
            tracing::warn!(upstream = %self.upstream, endpoint = %self.specs[i].uri, error = %reason,
                failures = f.count, known_addresses = known,
                "cannot resolve an upstream host: keeping its last known addresses (logged at most once a minute)");
        }
    }

    /// Makes the members `wanted`: new ones in first, then the gone ones out, so that a change
    /// of every address never leaves the balancer empty.
    async fn apply(&mut self, wanted: BTreeSet<Key>) {
        if wanted == self.members {
            return;
        }
        let added: Vec<Key> = wanted.difference(&self.members).copied().collect();
        let removed: Vec<Key> = self.members.difference(&wanted).copied().collect();
        for key in &added {
            let member = self.member(*key);
            if self.tx.send(Change::Insert(*key, member)).await.is_err() {
                return;
            }
        }
        for key in &removed {
            self.channels.remove(key);
            self.directs.remove(key);
            if self.tx.send(Change::Remove(*key)).await.is_err() {
                return;
            }
        }
        let show = |keys: &[Key]| {
            keys.iter()
                .filter_map(|k| k.addr.map(|a| a.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!(upstream = %self.upstream, added = %show(&added), removed = %show(&removed),
            members = wanted.len(), "upstream addresses changed");
        self.members = wanted;
        self.publish_members();
    }

    async fn probe(&mut self) {
        let down = self.health.down();
        if down.is_empty() {
            return;
        }
        let mut probes = tokio::task::JoinSet::new();
        for key in down {
            let mut connector = self.connector(key);
            let uri = self.specs[key.endpoint].endpoint.uri().clone();
            // The connector reports the outcome to the health state itself.
            probes.spawn(async move { drop(connector.call(uri).await) });
        }
        while probes.join_next().await.is_some() {}
    }

    async fn reload_tls(&mut self) {
        let Some(mut watch) = self.tls.take() else {
            return;
        };
        self.reread_tls(&mut watch).await;
        self.tls = Some(watch);
    }

    async fn reread_tls(&mut self, watch: &mut TlsWatch) {
        let read = TlsFiles::reread(&watch.cfg).await;
        let seen = read.clone().map_err(|e| e.to_string());
        if seen == watch.seen {
            return;
        }
        watch.seen = seen;
        let rebuilt = read.and_then(|files| {
            if files == watch.applied {
                return Ok(None);
            }
            let endpoints = self
                .specs
                .iter()
                .map(|s| {
                    tls_endpoint(&s.uri, &watch.cfg, &files, self.connect_timeout).map_err(|e| {
                        match e {
                            EndpointError::Tls(e) => e,
                            // The URIs were checked when the upstream was built.
                            EndpointError::Uri(reason) => super::tls::TlsError::Config(reason),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((files, endpoints)))
        });
        let upstream = self.upstream.clone();
        match rebuilt {
            Ok(None) => {}
            Ok(Some((files, endpoints))) => {
                watch.applied = files;
                for (spec, endpoint) in self.specs.iter_mut().zip(endpoints) {
                    spec.endpoint = endpoint;
                }
                for key in self.members.clone() {
                    let member = self.member(key);
                    if self.tx.send(Change::Insert(key, member)).await.is_err() {
                        return;
                    }
                }
                self.publish_members();
                metrics::counter!("gateway_upstream_tls_reloads_total", "upstream" => upstream.clone(), "result" => "ok")
                    .increment(1);
                tracing::info!(upstream = %upstream, "upstream TLS files changed: new connections use them");
            }
            Err(e) => {
                metrics::counter!("gateway_upstream_tls_reloads_total", "upstream" => upstream.clone(), "result" => "error")
                    .increment(1);
                tracing::warn!(upstream = %upstream, error = %e,
                    "upstream TLS files changed but cannot be used: keeping the previous TLS settings");
            }
        }
    }
}

fn every(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One family per name: IPv4 when the name has any IPv4 address (as a dual-stack Service
/// answers both for each pod), sorted and without duplicates.
fn prefer_ipv4(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    if addrs.iter().any(SocketAddr::is_ipv4) {
        addrs.retain(SocketAddr::is_ipv4);
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

fn spec(
    upstream: &str,
    uri: &str,
    cfg: &UpstreamConfig,
    tls_files: &TlsFiles,
) -> Result<Spec, UpstreamError> {
    let fail = |reason: String| UpstreamError::Endpoint {
        name: upstream.to_owned(),
        uri: uri.to_owned(),
        reason,
    };
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(fail("the scheme must be http:// or https://".into())),
    };
    let host = parsed
        .host()
        .ok_or_else(|| fail("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let endpoint =
        tls_endpoint(uri, &cfg.tls, tls_files, cfg.connect_timeout.0).map_err(|e| match e {
            EndpointError::Uri(reason) => fail(reason),
            EndpointError::Tls(source) => UpstreamError::Tls {
                name: upstream.to_owned(),
                source,
            },
        })?;
    Ok(Spec {
        uri: uri.to_owned(),
        ip: host.parse().ok(),
        host,
        port,
        endpoint,
    })
}

enum EndpointError {
    Uri(String),
    Tls(super::tls::TlsError),
}

/// The tonic endpoint of `uri`: keep-alive, and for `https://` TLS from `files` (never
/// plaintext: tonic refuses an `https://` URI without TLS settings).
fn tls_endpoint(
    uri: &str,
    cfg: &UpstreamTlsConfig,
    files: &TlsFiles,
    connect_timeout: Duration,
) -> Result<Endpoint, EndpointError> {
    let mut endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| EndpointError::Uri(e.to_string()))?
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_while_idle(true);
    if endpoint.uri().scheme_str() == Some("https") {
        let tls = files
            .client_config(cfg, connect_timeout)
            .map_err(EndpointError::Tls)?;
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| EndpointError::Tls(super::tls::TlsError::Config(error_chain(&e))))?;
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_sorted_without_duplicates() {
        let a: SocketAddr = "10.0.0.2:1".parse().expect("addr");
        let b: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let v6: SocketAddr = "[fd00::1]:1".parse().expect("addr");
        assert_eq!(prefer_ipv4(vec![a, v6, b, a]), vec![b, a]);
        assert_eq!(prefer_ipv4(vec![v6]), vec![v6]);
    }
}
