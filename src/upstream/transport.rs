//! The transport of one upstream: a power-of-two-choices balancer ([`tower::balance::p2c`]) over
//! one lazily connecting tonic channel per member (a resolved address of an endpoint, or an
//! endpoint whose connector resolves per connection), behind a buffer so that it is cheap to
//! clone. The discovery task (`discovery.rs`) inserts and removes members.
//!
//! Why not tonic's own `Channel::balance_channel`: its members are lazy connections that report
//! ready even when their address refuses connections (the error comes back from the call), so a
//! dead pod keeps getting its share of the calls until the next resolution. Here each member's
//! connector records whether its address accepted the last connection ([`Health`]), and a member
//! whose address refused is not ready while another member is up: it leaves the rotation at its
//! first failed connect, and comes back when the discovery task's probe reaches it again.
//! Each member is still a tonic [`Channel`], so TLS, `:authority`, HTTP/2 keep-alive and
//! reconnects are tonic's.
//!
//! While an upstream has members, calls go straight to one of them ([`Direct`]), past the
//! balancer's buffer (a task hand-off per call, to the shared runtime: a serving worker's call
//! would cross threads twice). A lone member (the usual case in a mesh: one service name, one
//! ClusterIP or sidecar) is always admitted ([`Health`]), so it is simply called. Of several, the
//! caller picks as the balancer would: two at random among those [`Health`] admits, the one with
//! fewer calls in flight (power of two choices), and waits for a change when none is admitted. A
//! plaintext member's calls are written into the caller's worker's own HTTP/2 connection
//! (`fast.rs`), past tonic's channel and hyper's dispatch as well. The balancer itself serves the
//! calls made while an upstream has no member yet (they wait for the first).

use super::member::{CheckResult, Health, Key, MemberChannel, MemberView, Request, Response};
use futures_util::TryFutureExt as _;
use futures_util::future::{BoxFuture, Either, MapErr};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::util::BoxService;
use tower::{BoxError, Service};

/// Requests queued in front of the balancer (and in front of each member's connection).
pub(crate) const BUFFER: usize = 1024;

/// A member as the balancer holds it.
pub(crate) type Balanced = PendingRequests<Member, CompleteOnResponse>;

/// The ways to an upstream's members past the balancer (empty while it has none); set by the
/// discovery task with every change of the members.
pub(crate) type Direct = Arc<arc_swap::ArcSwap<Vec<Arc<Pick>>>>;

/// One member as a direct call picks it: its key (for [`Health`]), the way to call it, and its
/// calls in flight (the balancer's load, kept while the member stays).
pub(crate) struct Pick {
    pub(crate) key: Key,
    pub(crate) member: DirectMember,
    load: std::sync::atomic::AtomicUsize,
}

impl Pick {
    pub(crate) fn new(key: Key, member: DirectMember) -> Self {
        Self {
            key,
            member,
            load: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn load(&self) -> usize {
        self.load.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts a call in flight on its member until the response (or the error) arrives, as
/// [`CompleteOnResponse`] does for the balancer.
struct InFlight(Arc<Pick>);

impl InFlight {
    fn start(pick: Arc<Pick>) -> Self {
        pick.load.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(pick)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .load
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Of several members, the one to call: the less loaded of two random ones [`Health`] admits,
/// else any it admits; `None` (with `waker` registered for a change) when it admits none.
fn pick(members: &[Arc<Pick>], health: &Health, waker: &std::task::Waker) -> Option<Arc<Pick>> {
    let n = members.len();
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let (pa, pb) = (&members[a], &members[b]);
    let chosen = match (health.admit(&pa.key, waker), health.admit(&pb.key, waker)) {
        (true, true) if pb.load() < pa.load() => pb,
        (true, _) => pa,
        (false, true) => pb,
        (false, false) => members.iter().find(|m| health.admit(&m.key, waker))?,
    };
    Some(chosen.clone())
}

/// An upstream's only member, called past the balancer.
#[derive(Clone)]
pub(crate) enum DirectMember {
    /// Through its tonic channel (`https://`: TLS is tonic's).
    Channel(Channel),
    /// Plaintext: straight into its HTTP/2 connection from the caller's task (`fast.rs`).
    Fast(super::fast::FastMember),
}

/// The balanced, buffered client side of one upstream. Cheap to clone; every clone shares the
/// members and their connections. When the last clone is dropped the balancer goes, and with it
/// the receiving end the discovery task watches, so the task ends too.
pub struct Transport {
    inner: Buffer<Request, BoxFuture<'static, Result<Response, BoxError>>>,
    direct: Direct,
    /// The members and their health, shared with the discovery task.
    members: Arc<Health>,
    /// The direct member `poll_ready` made ready, for the next `call`; with its in-flight count
    /// when it was picked among several.
    ready: Option<(DirectMember, Option<Arc<Pick>>)>,
}

impl Clone for Transport {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            direct: self.direct.clone(),
            members: self.members.clone(),
            ready: None,
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport fed by `changes`. Must run inside a tokio runtime (the buffer's worker).
    pub(crate) fn new(
        changes: mpsc::Receiver<Change<Key, Balanced>>,
        direct: Direct,
        members: Arc<Health>,
    ) -> Self {
        let balance = Balance::new(Changes(changes));
        let inner = Buffer::new(BoxService::new(balance), BUFFER);
        Self {
            inner,
            direct,
            members,
            ready: None,
        }
    }

    /// Every member's own channel, for the health checks.
    pub fn member_channels(&self) -> Vec<MemberChannel> {
        self.members.channels()
    }

    /// Records a member's health check (NOT_SERVING takes it out of the rotation).
    pub fn record_check(&self, member: &MemberChannel, result: CheckResult) {
        self.members.record_check(member.key, &member.label, result);
    }

    /// Every member as the admin view shows it.
    pub fn members(&self) -> Vec<MemberView> {
        self.members.view()
    }

    /// Whether no member can take a call because each reported NOT_SERVING (or refused its
    /// last connection, with at least one NOT_SERVING).
    pub fn none_serving(&self) -> bool {
        self.members.none_serving()
    }
}

type DirectFuture =
    MapErr<tonic::transport::channel::ResponseFuture, fn(tonic::transport::Error) -> BoxError>;
type FastFuture = BoxFuture<'static, Result<Response, BoxError>>;

impl Service<Request> for Transport {
    type Response = Response;
    type Error = BoxError;
    type Future = Either<
        Either<DirectFuture, FastFuture>,
        tower::buffer::future::ResponseFuture<BoxFuture<'static, Result<Response, BoxError>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.ready.is_none() {
            let members = self.direct.load();
            match members.as_slice() {
                [] => {}
                [only] => self.ready = Some((only.member.clone(), None)),
                many => match pick(many, &self.members, cx.waker()) {
                    Some(p) => self.ready = Some((p.member.clone(), Some(p))),
                    None => return Poll::Pending,
                },
            }
        }
        match self.ready.as_mut() {
            Some((DirectMember::Channel(channel), _)) => channel.poll_ready(cx).map_err(Into::into),
            Some((DirectMember::Fast(fast), _)) => fast.poll_ready(cx),
            None => self.inner.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.ready.take() {
            Some((DirectMember::Channel(mut channel), None)) => Either::Left(Either::Left(
                channel.call(req).map_err(Into::into as fn(_) -> _),
            )),
            Some((DirectMember::Fast(mut fast), None)) => {
                Either::Left(Either::Right(fast.call(req)))
            }
            Some((member, Some(pick))) => {
                let in_flight = InFlight::start(pick);
                let call: FastFuture = match member {
                    DirectMember::Channel(mut channel) => {
                        Box::pin(channel.call(req).map_err(Into::into))
                    }
                    DirectMember::Fast(mut fast) => fast.call(req),
                };
                Either::Left(Either::Right(Box::pin(async move {
                    let response = call.await;
                    drop(in_flight);
                    response
                })))
            }
            None => Either::Right(self.inner.call(req)),
        }
    }
}

/// The discovery task's changes as the stream `tower::discover` expects. A closed sender leaves
/// the members as they are.
struct Changes(mpsc::Receiver<Change<Key, Balanced>>);

impl futures_util::Stream for Changes {
    type Item = Result<Change<Key, Balanced>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(change)) => Poll::Ready(Some(Ok(change))),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// One member: a tonic channel whose readiness also says whether its address is up.
pub(crate) struct Member {
    key: Key,
    channel: Channel,
    health: Arc<Health>,
}

impl Member {
    /// A member over `channel`, whose connector reports to `health`.
    pub(crate) fn balanced(key: Key, channel: Channel, health: Arc<Health>) -> Balanced {
        PendingRequests::new(
            Self {
                key,
                channel,
                health,
            },
            CompleteOnResponse::default(),
        )
    }
}

impl Service<Request> for Member {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.health.admit(&self.key, cx.waker()) {
            return Poll::Pending;
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let call = self.channel.call(req);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}
