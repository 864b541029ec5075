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
//! While an upstream has exactly one member (the usual case in a mesh: one service name, one
//! ClusterIP or sidecar), calls go straight to its channel ([`Direct`]): the balancer has nothing
//! to choose, and a lone member is always admitted ([`Health`]), so skipping its buffer hop (a
//! task hand-off per call) changes nothing but the cost. A lone plaintext member goes further:
//! its calls are written into its HTTP/2 connection from the caller's task (`fast.rs`), past
//! tonic's channel and hyper's dispatch as well.

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

/// The way to an upstream's only member while it has exactly one, else `None`; set by the
/// discovery task with every change of the members.
pub(crate) type Direct = Arc<arc_swap::ArcSwapOption<DirectMember>>;

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
    /// The direct member `poll_ready` made ready, for the next `call`.
    ready: Option<DirectMember>,
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
        if self.ready.is_none()
            && let Some(member) = self.direct.load().as_deref()
        {
            self.ready = Some(member.clone());
        }
        match self.ready.as_mut() {
            Some(DirectMember::Channel(channel)) => channel.poll_ready(cx).map_err(Into::into),
            Some(DirectMember::Fast(fast)) => fast.poll_ready(cx),
            None => self.inner.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.ready.take() {
            Some(DirectMember::Channel(mut channel)) => Either::Left(Either::Left(
                channel.call(req).map_err(Into::into as fn(_) -> _),
            )),
            Some(DirectMember::Fast(mut fast)) => Either::Left(Either::Right(fast.call(req))),
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
