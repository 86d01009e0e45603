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
pub enum Started<P> {
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
    fn start_refresh(&self, lease: &mut Self::Lease, ttl: Duration) -> Started<Self::Pending>;

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
    /// instance's, or one [`BatchRefresh::start_refresh`] left [`Started::Alone`]) with its
    /// own [`Lease::refresh`].
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
                    Started::Queued(one) => {
                        queued.push(index);
                        pending.push(one);
                    }
                    Started::Done(result) => results[index] = Some(result),
                    Started::Alone => {}
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
