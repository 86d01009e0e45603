//! Refreshing many leases at once: [`BatchRefresh`], the hooks a backend supplies, and
//! [`BatchRefreshExt::refresh_batched`], the skeleton every batching backend shares.
//!
//! A backend that can refresh many leases in one request (one script over many keys, one
//! keep-alive, one statement) implements [`BatchRefresh`]: its lease type, how to queue one
//! lease's refresh, the one batched call, and what an answer means for a lease. The
//! extension then does the rest, the same way for every backend: it picks the backend's own
//! leases out of the runner's `&mut [Box<dyn Lease>]`, keeps track of which answer belongs to
//! which lease, bounds the batched call with one timeout (every lease waiting on it gets an
//! [`Error::Timeout`] if it runs out), and refreshes every other lease with its own
//! [`Lease::refresh`] through [`refresh_rest`].

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use crate::{Error, Lease, Result};

/// How one lease's part in a batched refresh starts: [`BatchRefresh::start_refresh`].
#[derive(Debug)]
pub enum RefreshStart<P> {
    /// Queued for the batched call; `P` is what that call needs for this lease.
    Queued(P),
    /// Answered without asking the server (the lease was released or is known lost, the
    /// TTL is refused, the request could not even be queued).
    Done(Result<()>),
    /// This lease cannot be part of the batch: it is refreshed on its own, with its
    /// [`Lease::refresh`].
    Alone,
}

/// What a backend supplies so that [`BatchRefreshExt::refresh_batched`] can refresh many of
/// its leases in one request.
///
/// A backend implements it on a private view of itself, such as `struct Batched<'a>(&'a
/// MyBackend)`, so that its lease type can stay private, and overrides
/// [`LockBackend::refresh_many`](crate::LockBackend::refresh_many) with
/// `Batched(self).refresh_batched(leases, ttl).await`.
///
/// The skeleton calls [`start_refresh`](Self::start_refresh) for each of the backend's own
/// leases, in order, then [`send_refreshes`](Self::send_refreshes) once with everything
/// queued, under [`refresh_timeout`](Self::refresh_timeout), then
/// [`finish_refresh`](Self::finish_refresh) for each answer. The lease contract is the
/// backend's to keep: the batched request must be sent after `refresh_batched` was called.
///
/// # Examples
///
/// A backend whose server extends many keys in one request:
///
/// ```
/// use std::any::Any;
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use leasehold_core::{
///     BatchRefresh, BatchRefreshExt, Capabilities, Error, FencingToken, Lease, LockBackend,
///     LockKey, RefreshStart, Result,
/// };
///
/// #[derive(Debug)]
/// pub struct KvBackend;
///
/// #[derive(Debug)]
/// struct KvLease {
///     key: LockKey,
/// }
///
/// /// The backend as the skeleton sees it; private, like `KvLease`.
/// struct Batched<'a>(&'a KvBackend);
///
/// impl BatchRefresh for Batched<'_> {
///     const BACKEND: &'static str = "kv";
///     type Lease = KvLease;
///     type Pending = String;
///     type Answer = bool;
///
///     fn owns(&self, _lease: &KvLease) -> bool {
///         true // compare connections here
///     }
///
///     fn refresh_timeout(&self, ttl: Duration) -> Duration {
///         ttl / 2
///     }
///
///     fn start_refresh(&self, lease: &mut KvLease, _ttl: Duration) -> RefreshStart<String> {
///         RefreshStart::Queued(lease.key.to_string())
///     }
///
///     async fn send_refreshes(&self, keys: Vec<String>, _ttl: Duration) -> Vec<bool> {
///         // One request that extends every key still ours, one answer per key.
///         keys.iter().map(|_| true).collect()
///     }
///
///     fn finish_refresh(&self, lease: &mut KvLease, extended: bool, _: Duration) -> Result<()> {
///         if extended { Ok(()) } else { Err(Error::lost(&lease.key)) }
///     }
/// }
///
/// #[async_trait]
/// impl LockBackend for KvBackend {
///     fn name(&self) -> &'static str {
///         "kv"
///     }
///     fn capabilities(&self) -> Capabilities {
///         Capabilities::new()
///     }
///     async fn try_acquire_as(
///         &self,
///         key: &LockKey,
///         _: Duration,
///         _holder: &str,
///     ) -> Result<Option<Box<dyn Lease>>> {
///         Ok(Some(Box::new(KvLease { key: key.clone() })))
///     }
///     async fn released(&self, _key: &LockKey) -> Result<()> {
///         std::future::pending().await
///     }
///     async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration)
///         -> Vec<Result<()>> {
///         Batched(self).refresh_batched(leases, ttl).await
///     }
/// }
///
/// #[async_trait]
/// impl Lease for KvLease {
///     fn key(&self) -> &LockKey {
///         &self.key
///     }
///     fn fencing_token(&self) -> FencingToken {
///         FencingToken::new(1)
///     }
///     fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
///         Some(self) // lets `refresh_batched` recognise the lease
///     }
///     async fn refresh(&mut self, _ttl: Duration) -> Result<()> {
///         Ok(())
///     }
///     async fn release(&mut self) -> Result<()> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let backend = KvBackend;
/// let ttl = Duration::from_secs(10);
/// let mut leases = Vec::new();
/// for name in ["a", "b"] {
///     leases.push(backend.try_acquire(&LockKey::new(name)?, ttl).await?.expect("free"));
/// }
/// let results = backend.refresh_many(&mut leases, ttl).await;
/// assert!(results.iter().all(Result::is_ok));
/// # Ok(()) }
/// ```
pub trait BatchRefresh: Send + Sync {
    /// The backend's name, as [`LockBackend::name`](crate::LockBackend::name) gives it: the
    /// `backend` of the [`Error::Timeout`] a batch that runs out of time reports.
    const BACKEND: &'static str;

    /// The lease type this backend hands out. Its [`Lease::as_any_mut`] must return
    /// `Some(self)`, or none of its leases is ever batched.
    type Lease: Lease + 'static;

    /// What the batched call needs for one lease (a key and its owner, a reply channel).
    type Pending: Send;

    /// What the batched call answers for one lease.
    type Answer: Send;

    /// Whether `lease` came from this backend: from this instance and its connections, not
    /// merely of the same type. Leases it does not own are refreshed on their own.
    fn owns(&self, lease: &Self::Lease) -> bool;

    /// The one bound on the batched call for leases of `ttl`. If it runs out, every lease
    /// queued in the batch gets [`Error::Timeout`] with this duration.
    fn refresh_timeout(&self, ttl: Duration) -> Duration;

    /// Starts the refresh of one of this backend's leases to `ttl` without waiting.
    fn start_refresh(&self, lease: &mut Self::Lease, ttl: Duration) -> RefreshStart<Self::Pending>;

    /// The batched call: answers every queued lease, one answer per element of `pending`,
    /// in the same order. A lease left without an answer (a shorter result) is refreshed on
    /// its own afterwards.
    fn send_refreshes(
        &self,
        pending: Vec<Self::Pending>,
        ttl: Duration,
    ) -> impl Future<Output = Vec<Self::Answer>> + Send;

    /// What `answer` means for `lease`: `Ok` if it is extended to `ttl`,
    /// [`Error::Lost`] if it is no longer ours, a transient error if that is unknown. It
    /// may update the lease's own state (a lease found lost stays lost).
    fn finish_refresh(
        &self,
        lease: &mut Self::Lease,
        answer: Self::Answer,
        ttl: Duration,
    ) -> Result<()>;
}

/// The common work of a batched
/// [`LockBackend::refresh_many`](crate::LockBackend::refresh_many), for every
/// [`BatchRefresh`] backend.
pub trait BatchRefreshExt: BatchRefresh {
    /// Refreshes every lease in `leases` to `ttl` and returns one result per lease, in
    /// order, as [`LockBackend::refresh_many`](crate::LockBackend::refresh_many) must:
    /// this backend's own leases in one [`BatchRefresh::send_refreshes`] call under one
    /// [`BatchRefresh::refresh_timeout`], every other lease (another backend's, another
    /// instance's, or one [`BatchRefresh::start_refresh`] left [`RefreshStart::Alone`])
    /// with its own [`Lease::refresh`].
    ///
    /// # Errors
    ///
    /// Per lease, as for [`Lease::refresh`]; every lease the batched call was still
    /// answering when its timeout ran out gets [`Error::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// As for [`LockBackend::refresh_many`](crate::LockBackend::refresh_many): if
    /// dropped, each lease may or may not have been extended, and its previous deadline
    /// still bounds it.
    fn refresh_batched(
        &self,
        leases: &mut [Box<dyn Lease>],
        ttl: Duration,
    ) -> impl Future<Output = Vec<Result<()>>> + Send {
        async move {
            let mut results: Vec<Option<Result<()>>> = leases.iter().map(|_| None).collect();
            let mut queued = Vec::with_capacity(leases.len());
            let mut pending = Vec::with_capacity(leases.len());
            for (index, lease) in leases.iter_mut().enumerate() {
                let Some(lease) = own_lease(self, lease) else {
                    continue;
                };
                match self.start_refresh(lease, ttl) {
                    RefreshStart::Queued(one) => {
                        queued.push(index);
                        pending.push(one);
                    }
                    RefreshStart::Done(result) => results[index] = Some(result),
                    RefreshStart::Alone => {}
                }
            }
            if !pending.is_empty() {
                let timeout = self.refresh_timeout(ttl);
                match tokio::time::timeout(timeout, self.send_refreshes(pending, ttl)).await {
                    Ok(answers) => {
                        for (&index, answer) in queued.iter().zip(answers) {
                            if let Some(lease) = own_lease(self, &mut leases[index]) {
                                results[index] = Some(self.finish_refresh(lease, answer, ttl));
                            }
                        }
                    }
                    Err(_elapsed) => {
                        for index in queued {
                            results[index] =
                                Some(Err(Error::timeout(Self::BACKEND, "refresh", timeout)));
                        }
                    }
                }
            }
            refresh_rest(leases, results, ttl).await
        }
    }
}

impl<B: BatchRefresh + ?Sized> BatchRefreshExt for B {}

/// `lease` as `backend`'s own lease type, if it is one and `backend` owns it.
fn own_lease<'a, B: BatchRefresh + ?Sized>(
    backend: &B,
    lease: &'a mut Box<dyn Lease>,
) -> Option<&'a mut B::Lease> {
    lease
        .as_any_mut()
        .and_then(<dyn Any>::downcast_mut::<B::Lease>)
        .filter(|lease| backend.owns(lease))
}

/// For [`LockBackend::refresh_many`](crate::LockBackend::refresh_many) overrides:
/// refreshes with their own [`Lease::refresh`], concurrently, every lease whose slot in
/// `results` is still `None` (the leases the backend did not batch: another backend's, or
/// ones it must refresh alone), and returns all results in order.
///
/// `results` should have one slot per lease; missing slots count as `None`, extra ones
/// are ignored.
pub async fn refresh_rest(
    leases: &mut [Box<dyn Lease>],
    mut results: Vec<Option<Result<()>>>,
    ttl: Duration,
) -> Vec<Result<()>> {
    results.resize_with(leases.len(), || None);
    let rest = futures::future::join_all(
        leases
            .iter_mut()
            .zip(&results)
            .filter(|(_, result)| result.is_none())
            .map(|(lease, _)| lease.refresh(ttl)),
    )
    .await;
    // One refresh per empty slot, in order.
    let mut rest = rest.into_iter();
    results
        .into_iter()
        .filter_map(|result| result.or_else(|| rest.next()))
        .collect()
}

#[cfg(test)]
mod tests;
