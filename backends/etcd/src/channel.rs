//! `Failover`: the channel every request of a backend goes through, which sends to one
//! cluster member at a time and moves to the next when that member fails.
//!
//! # Why not `etcd-client`'s balanced channel
//!
//! `etcd-client` spreads requests over all endpoints with tonic's power-of-two-choices
//! balancer, which sees every endpoint as equally loaded and ready, even one that is
//! down: with one member of three dead, a third of all requests failed at once (the
//! connection is refused), and with one member paused or cut off, a third of them hung
//! until their timeout, and the session's keep-alives with them until the session was
//! lost, while two healthy members could have served every request.
//!
//! # What this channel does instead
//!
//! Requests go to one member, the *current* one (the first endpoint at first), as long as
//! it serves them. It stops being the current one, and the next endpoint (in the order
//! given) becomes it, when a request to it
//!
//! - cannot connect (refused, unreachable, timed out or TLS failed): such a request was
//!   never sent, so it is sent again at once to the next member, and the caller does not
//!   see the failure unless every member refuses (streams, the watch and the keep-alive,
//!   are not sent again: their bodies are not buffered);
//! - fails in transport (the connection broke);
//! - is answered `Unavailable` without a body (etcd's "no leader", which members that lost
//!   their leader answer to requests carrying `hasleader`, see the backend's connect
//!   options);
//! - is given up by the caller before any answer: the backend bounds every request by a
//!   deadline, and a request dropped by it went to a member that did not answer in time
//!   (paused, cut off, or waiting for a leader).
//!
//! A member is never marked down for good: when the others fail in turn, requests come
//! back to it. Only the first failure of the current member moves the current one, so
//! that many requests failing together move it by one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use etcd_client::{BalancedChannelBuilder, Channel};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt as _};

/// The gRPC methods whose requests are streams: their bodies cannot be buffered to be
/// sent again.
const STREAMING: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];

/// The session's keep-alive stream, whose answers are watched (see [`Awaited`]).
const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

/// gRPC's `Unavailable` status code.
const UNAVAILABLE: &str = "14";

/// Builds the [`Failover`] channel for `etcd_client::Client::connect_with_balanced_channel`.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailoverBuilder {
    members: Option<Arc<Members>>,
}

impl FailoverBuilder {
    /// A builder whose channel shares `members`, so that tests can see which member is
    /// current.
    #[cfg(test)]
    fn sharing(members: Arc<Members>) -> Self {
        Self {
            members: Some(members),
        }
    }
}

impl BalancedChannelBuilder for FailoverBuilder {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (changes, receiver) = mpsc::channel(buffer_size.max(1));
        let members = self.members.unwrap_or_default();
        *lock(&members.changes) = Some(receiver);
        let channel = Failover { members };
        Ok((Channel::Custom(BoxCloneSyncService::new(channel)), changes))
    }
}

/// The members and which one is current, shared by every clone of the channel.
#[derive(Debug, Default)]
pub(crate) struct Members {
    /// Endpoints added or removed by `etcd-client` (at connect time, and by
    /// `add_endpoint`/`remove_endpoint`), applied before each request.
    changes: Mutex<Option<mpsc::Receiver<Change<Uri, Endpoint>>>>,
    /// One lazily connected channel per endpoint, in the order given.
    channels: Mutex<Vec<(Uri, tonic::transport::Channel)>>,
    /// The index of the current member.
    current: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data whole; poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Members {
    /// Applies pending endpoint changes; every member's channel, and the current index.
    fn snapshot(&self) -> (Vec<tonic::transport::Channel>, usize) {
        let mut channels = lock(&self.channels);
        if let Some(changes) = lock(&self.changes).as_mut() {
            while let Ok(change) = changes.try_recv() {
                match change {
                    Change::Insert(uri, endpoint) => {
                        let channel = endpoint.connect_lazy();
                        match channels.iter_mut().find(|(known, _)| *known == uri) {
                            Some(slot) => slot.1 = channel,
                            None => channels.push((uri, channel)),
                        }
                    }
                    Change::Remove(uri) => channels.retain(|(known, _)| *known != uri),
                }
            }
        }
        let all: Vec<_> = channels
            .iter()
            .map(|(_, channel)| channel.clone())
            .collect();
        let current = self.current.load(Ordering::Acquire) % all.len().max(1);
        (all, current)
    }

    /// Moves away from member `index` (of `count`) if it is still the current one.
    fn failed(&self, index: usize, count: usize) {
        let next = (index + 1) % count.max(1);
        let current = self.current.load(Ordering::Acquire) % count.max(1);
        if current == index
            && self
                .current
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::debug!(
                failed = index,
                now = next,
                "etcd: moving to the next member"
            );
        }
    }

    /// The index of the current member, for tests.
    #[cfg(test)]
    fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

/// The channel; see the module docs.
#[derive(Debug, Clone)]
struct Failover {
    members: Arc<Members>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each member's channel has its own buffer, waited for in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let members = Arc::clone(&self.members);
        Box::pin(async move {
            let (channels, current) = members.snapshot();
            if channels.is_empty() {
                return Err("no etcd endpoint".into());
            }
            let count = channels.len();
            let path = request.uri().path();
            if STREAMING.contains(&path) {
                let keep_alive = path == KEEP_ALIVE;
                let response = Attempt::new(&members, current, count)
                    .send(channels[current].clone(), request)
                    .await
                    .map_err(|(err, _)| err)?;
                if !keep_alive {
                    return Ok(response);
                }
                return Ok(response.map(|body| {
                    Body::new(Awaited {
                        body,
                        members: Arc::clone(&members),
                        index: current,
                        count,
                        waiting: false,
                    })
                }));
            }
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let mut last = None;
            for step in 0..count {
                let index = (current + step) % count;
                let request = Request::from_parts(parts.clone(), full(&body));
                match Attempt::new(&members, index, count)
                    .send(channels[index].clone(), request)
                    .await
                {
                    Err((err, true)) => last = Some(err),
                    result => return result.map_err(|(err, _)| err),
                }
            }
            Err(last.unwrap_or_else(|| "no etcd endpoint".into()))
        })
    }
}

fn full(body: &Bytes) -> Body {
    Body::new(Full::new(body.clone()))
}

/// One request to one member: moves away from it on failure, and if dropped before the
/// answer came.
struct Attempt<'a> {
    members: &'a Members,
    index: usize,
    count: usize,
    done: bool,
}

impl<'a> Attempt<'a> {
    fn new(members: &'a Members, index: usize, count: usize) -> Self {
        Self {
            members,
            index,
            count,
            done: false,
        }
    }

    /// Sends `request`; an error says whether the request was never sent (the
    /// connection could not be made).
    async fn send(
        mut self,
        channel: tonic::transport::Channel,
        request: Request<Body>,
    ) -> Result<Response<Body>, (BoxError, bool)> {
        let result = channel.oneshot(request).await;
        self.done = true;
        match result {
            Ok(response) => {
                if is_unavailable(&response) {
                    self.members.failed(self.index, self.count);
                }
                Ok(response)
            }
            Err(err) => {
                self.members.failed(self.index, self.count);
                let unsent = never_sent(&err);
                Err((err.into(), unsent))
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            // The caller gave up waiting for this member.
            self.members.failed(self.index, self.count);
        }
    }
}

/// The body of a keep-alive stream's answers. A keep-alive stream is dropped while its
/// reader waits for an answer only when the session gave up on that answer (its deadline
/// passed); the member the stream went to did not answer in time, as for a request
/// given up, and the stream opened next goes to the next member. Without this, a member
/// that serves requests but not keep-alives (cut off from the leader, to which it
/// forwards them) would be given the reopened stream again.
struct Awaited {
    body: Body,
    members: Arc<Members>,
    index: usize,
    count: usize,
    /// Whether the last poll found no answer yet.
    waiting: bool,
}

impl http_body::Body for Awaited {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.waiting = polled.is_pending();
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.members.failed(self.index, self.count);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Awaited {
    fn drop(&mut self) {
        if self.waiting {
            self.members.failed(self.index, self.count);
        }
    }
}

/// Whether the answer is a gRPC `Unavailable` status without a body ("trailers only"), as
/// etcd answers when it has no leader.
fn is_unavailable(response: &Response<Body>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == UNAVAILABLE.as_bytes())
}

/// Whether the client's `err` says that no connection could be made, so the request
/// never left (and the channel moved on to the next member).
pub(crate) fn client_error_never_sent(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => never_sent(status),
        etcd_client::Error::TransportError(err) => never_sent(err),
        _ => false,
    }
}

/// Whether `err` says that no connection could be made, so the request never left.
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests;
