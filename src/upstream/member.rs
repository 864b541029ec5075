//! One member of an upstream, below its transport: its identity ([`Key`]), the connector that
//! dials it ([`Connector`], reporting each outcome), and the health record of an upstream's
//! members ([`Health`]: who is down or not serving, each one's last check, and the wake-ups of
//! the balancer's members waiting for a change). Both ways of calling a member, the balanced
//! tonic channels (`transport.rs`) and the fast path (`fast.rs`), build on it.

use super::resolve::Resolve;
use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;

/// The HTTP request a member serves.
pub(crate) type Request = http::Request<Body>;
/// The HTTP response a member answers.
pub(crate) type Response = http::Response<Body>;

/// One member of an upstream's balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    /// The endpoint's index in `upstreams.<name>.endpoints`.
    pub(crate) endpoint: usize,
    /// The resolved address; `None` for an endpoint whose connector resolves per connection.
    pub(crate) addr: Option<SocketAddr>,
}

/// The members of one upstream and what is known of each: whether its address refused the last
/// connection (`down`), and what its last `grpc.health.v1` check said (the checks run in
/// `crate::health`). A member that is down or reported NOT_SERVING is out of the rotation (not
/// ready) while some other member is in it; when every member is out, all are ready again, so
/// that calls fail at once (or reach a member that answers after all) instead of waiting for
/// their deadline.
#[derive(Debug)]
pub(crate) struct Health {
    upstream: String,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// The members the discovery task has inserted (and not removed).
    members: HashSet<Key>,
    /// Those of them whose last connection attempt failed; always a subset of `members`.
    down: HashSet<Key>,
    /// Those whose last health check answered, but not SERVING; a subset of `members`.
    not_serving: HashSet<Key>,
    /// Each member's channel and label, for the health checks and the admin view.
    channels: BTreeMap<Key, (Arc<str>, Channel)>,
    /// Each member's last health check.
    checks: HashMap<Key, MemberCheck>,
    /// Members waiting for a change.
    wakers: Vec<Waker>,
}

impl HealthState {
    fn out(&self, key: &Key) -> bool {
        self.down.contains(key) || self.not_serving.contains(key)
    }

    fn all_out(&self) -> bool {
        self.members.iter().all(|k| self.out(k))
    }
}

/// The result of one member's `grpc.health.v1` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// SERVING, or a reachable server without the health service (UNIMPLEMENTED).
    Serving,
    /// The server answered with another status (`NOT_SERVING`, `SERVICE_UNKNOWN`, `NOT_FOUND`):
    /// the member leaves the rotation until it says SERVING again.
    NotServing(String),
    /// No answer (no connection, a timeout, a transport error): the connection state decides.
    NoAnswer(String),
}

impl CheckResult {
    /// Whether the member answers its health check as serving.
    pub fn is_serving(&self) -> bool {
        matches!(self, Self::Serving)
    }

    /// The status as the admin view and the logs show it.
    pub fn text(&self) -> &str {
        match self {
            Self::Serving => "SERVING",
            Self::NotServing(s) | Self::NoAnswer(s) => s,
        }
    }
}

/// A member's last health check and when it ran.
#[derive(Debug, Clone)]
pub struct MemberCheck {
    /// What it said.
    pub result: CheckResult,
    /// When.
    pub at: std::time::SystemTime,
}

/// One member as the admin view shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// The endpoint as configured, with the resolved address.
    pub address: String,
    /// Whether its address accepted the last connection.
    pub connected: bool,
    /// Whether calls are sent to it now.
    pub in_rotation: bool,
    /// The last health check, if one ran.
    pub check: Option<MemberCheck>,
}

/// A member's channel, for one health check.
#[derive(Debug, Clone)]
pub struct MemberChannel {
    pub(crate) key: Key,
    /// The endpoint and address, for logs.
    pub label: Arc<str>,
    /// The member's own channel (not through the balancer).
    pub channel: Channel,
}

impl Health {
    /// No members yet.
    pub(crate) fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.to_owned(),
            state: Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn admit(&self, key: &Key, waker: &Waker) -> bool {
        let mut s = self.lock();
        if !s.out(key) || s.all_out() {
            return true;
        }
        if !s.wakers.iter().any(|w| w.will_wake(waker)) {
            s.wakers.push(waker.clone());
        }
        false
    }

    fn wake(s: &mut HealthState) {
        for w in s.wakers.drain(..) {
            w.wake();
        }
    }

    /// The members now in the balancer, with their channels.
    pub(crate) fn set_members(&self, members: BTreeMap<Key, (Arc<str>, Channel)>) {
        let mut s = self.lock();
        s.members = members.keys().copied().collect();
        s.channels = members;
        let HealthState {
            members,
            down,
            not_serving,
            checks,
            ..
        } = &mut *s;
        down.retain(|k| members.contains(k));
        not_serving.retain(|k| members.contains(k));
        checks.retain(|k, _| members.contains(k));
        Self::wake(&mut s);
    }

    /// A connection to `key` failed.
    pub(crate) fn mark_down(&self, key: Key, label: &str, error: &ConnectError) {
        let mut s = self.lock();
        if s.members.contains(&key) && s.down.insert(key) {
            let up = s.members.iter().filter(|k| !s.out(k)).count();
            tracing::warn!(upstream = %self.upstream, endpoint = %label, error = %error, members_up = up,
                "upstream address refused a connection: out of the rotation until it accepts again");
            Self::wake(&mut s);
        }
    }

    /// A connection to `key` was established.
    pub(crate) fn mark_up(&self, key: Key, label: &str) {
        let mut s = self.lock();
        if s.down.remove(&key) {
            tracing::info!(upstream = %self.upstream, endpoint = %label, "upstream address accepts connections again: back in the rotation");
            Self::wake(&mut s);
        }
    }

    /// The members that are down.
    pub(crate) fn down(&self) -> Vec<Key> {
        self.lock().down.iter().copied().collect()
    }

    /// Whether every member is out of the rotation and at least one because it reported
    /// NOT_SERVING (all refusing connections alone still admits calls, which then fail fast).
    pub(crate) fn none_serving(&self) -> bool {
        let s = self.lock();
        !s.not_serving.is_empty() && s.all_out()
    }

    /// Every member's channel, for the health checks.
    pub(crate) fn channels(&self) -> Vec<MemberChannel> {
        self.lock()
            .channels
            .iter()
            .map(|(key, (label, channel))| MemberChannel {
                key: *key,
                label: label.clone(),
                channel: channel.clone(),
            })
            .collect()
    }

    /// Records a member's health check: NOT_SERVING takes it out of the rotation, SERVING puts
    /// it back; no answer leaves that to the connection state.
    pub(crate) fn record_check(&self, key: Key, label: &str, result: CheckResult) {
        let mut s = self.lock();
        if !s.members.contains(&key) {
            return;
        }
        let changed = match &result {
            CheckResult::Serving => s.not_serving.remove(&key),
            CheckResult::NotServing(_) => s.not_serving.insert(key),
            CheckResult::NoAnswer(_) => false,
        };
        if changed {
            match &result {
                CheckResult::Serving => {
                    tracing::info!(upstream = %self.upstream, endpoint = %label,
                    "upstream member reports SERVING again: back in the rotation")
                }
                _ => {
                    tracing::warn!(upstream = %self.upstream, endpoint = %label, status = %result.text(),
                    "upstream member reports not serving: out of the rotation until it reports SERVING")
                }
            }
            Self::wake(&mut s);
        }
        s.checks.insert(
            key,
            MemberCheck {
                result,
                at: std::time::SystemTime::now(),
            },
        );
    }

    /// Every member as the admin view shows it.
    pub(crate) fn view(&self) -> Vec<MemberView> {
        let s = self.lock();
        let all_out = s.all_out();
        s.channels
            .iter()
            .map(|(key, (label, _))| MemberView {
                address: label.to_string(),
                connected: !s.down.contains(key),
                in_rotation: all_out || !s.out(key),
                check: s.checks.get(key).cloned(),
            })
            .collect()
    }
}

/// Where a member connects.
#[derive(Clone)]
pub(crate) enum Target {
    /// One resolved address.
    Addr(SocketAddr),
    /// A host name resolved at each connection (`resolve_interval: 0s`); its addresses are
    /// tried in turn.
    Host {
        /// The name.
        host: String,
        /// The port.
        port: u16,
        /// Who resolves it.
        resolver: Arc<dyn Resolve>,
    },
}

/// A TCP connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No address answered (or the name did not resolve).
    #[error("connect to {target}: {reason}")]
    Failed {
        /// The address or name.
        target: String,
        /// Why.
        reason: String,
    },
    /// No connection within `connect_timeout`.
    #[error("connect to {target}: no connection within {}", crate::telemetry::human_duration(*timeout))]
    Timeout {
        /// The address or name.
        target: String,
        /// `connect_timeout`.
        timeout: Duration,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Self::Addr(addr) => addr.to_string(),
            Self::Host { host, port, .. } => format!("{host}:{port}"),
        }
    }

    async fn connect_once(&self) -> Result<TcpStream, ConnectError> {
        let failed = |reason: String| ConnectError::Failed {
            target: self.describe(),
            reason,
        };
        let addrs = match self {
            Self::Addr(addr) => vec![*addr],
            Self::Host {
                host,
                port,
                resolver,
            } => resolver
                .resolve(host, *port)
                .await
                .map_err(|e| failed(e.to_string()))?,
        };
        let mut last = failed("the name has no address".into());
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small unary messages: do not wait to fill a segment.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                // The target already names a single address; a name's addresses are told apart.
                Err(e) => {
                    last = failed(match self {
                        Self::Addr(_) => e.to_string(),
                        Self::Host { .. } => format!("{addr}: {e}"),
                    });
                }
            }
        }
        Err(last)
    }

    /// One TCP connection within `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(timeout, self.connect_once()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout {
                target: self.describe(),
                timeout,
            }),
        }
    }
}

/// The connector of one member's channel: dials its [`Target`] whatever the URI says (the URI
/// stays the configured one, for `:authority` and the TLS name), within `connect_timeout`, and
/// reports the outcome to [`Health`]. tonic layers TLS over it for `https://` endpoints.
#[derive(Clone)]
pub(crate) struct Connector {
    /// Where to connect.
    pub(crate) target: Target,
    /// The member.
    pub(crate) key: Key,
    /// The endpoint and address, for logs.
    pub(crate) label: Arc<str>,
    /// `connect_timeout`.
    pub(crate) timeout: Duration,
    /// Where outcomes go.
    pub(crate) health: Arc<Health>,
}

impl Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = BoxFuture<'static, Result<Self::Response, ConnectError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match this.target.connect(this.timeout).await {
                Ok(stream) => {
                    this.health.mark_up(this.key, &this.label);
                    Ok(TokioIo::new(stream))
                }
                Err(e) => {
                    this.health.mark_down(this.key, &this.label, &e);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn key(n: u16) -> Key {
        Key {
            endpoint: 0,
            addr: Some(SocketAddr::from(([127, 0, 0, 1], n))),
        }
    }

    fn members(ports: &[u16]) -> BTreeMap<Key, (Arc<str>, Channel)> {
        ports
            .iter()
            .map(|&n| {
                let channel =
                    tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
                (key(n), (Arc::from(format!("m{n}")), channel))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_down_member_waits_while_another_is_up_and_all_down_admits_all() {
        let health = Health::new("u");
        health.set_members(members(&[1, 2]));
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let err = ConnectError::Failed {
            target: "x".into(),
            reason: "refused".into(),
        };
        assert!(health.admit(&key(1), &waker));
        health.mark_down(key(1), "a", &err);
        assert!(!health.admit(&key(1), &waker), "down while another is up");
        assert!(health.admit(&key(2), &waker));
        health.mark_down(key(2), "b", &err);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(health.admit(&key(1), &waker), "all down: fail fast");
        health.mark_up(key(2), "b");
        assert!(!health.admit(&key(1), &waker));
        health.set_members(members(&[1]));
        assert!(health.admit(&key(1), &waker), "the only member");
        // A key that is not a member is never marked down.
        health.mark_down(key(3), "c", &err);
        assert_eq!(health.down(), vec![key(1)]);
    }

    #[tokio::test]
    async fn a_not_serving_member_leaves_the_rotation_until_it_serves_again() {
        let health = Health::new("u");
        health.set_members(members(&[1, 2]));
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let not_serving = || CheckResult::NotServing("NOT_SERVING".into());
        health.record_check(key(1), "m1", not_serving());
        assert!(!health.admit(&key(1), &waker), "out while another serves");
        assert!(health.admit(&key(2), &waker));
        let view = health.view();
        assert_eq!(view.len(), 2);
        assert!(!view[0].in_rotation && view[0].connected);
        assert_eq!(
            view[0].check.as_ref().map(|c| c.result.text()),
            Some("NOT_SERVING")
        );
        // No answer changes nothing; every member out admits all again.
        health.record_check(key(1), "m1", CheckResult::NoAnswer("timeout".into()));
        assert!(!health.admit(&key(1), &waker));
        assert!(!health.none_serving());
        health.record_check(key(2), "m2", not_serving());
        assert!(health.none_serving(), "the upstream refuses calls at once");
        assert!(health.admit(&key(1), &waker), "all out: fail fast");
        health.record_check(key(1), "m1", CheckResult::Serving);
        assert!(!health.none_serving());
        assert!(health.admit(&key(1), &waker));
        assert!(!health.admit(&key(2), &waker));
        // A member that leaves forgets its state.
        health.set_members(members(&[1]));
        assert_eq!(health.view().len(), 1);
        assert!(health.view()[0].in_rotation);
    }
}
