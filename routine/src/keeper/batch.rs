//! `Batch`: the leases of one backend and one TTL that the keeper refreshes with one
//! `refresh_many` call, and what comes back.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, Lease, LockBackend, Result};
use tokio::time::{Instant, timeout};

use crate::metrics::{self, Operation};

/// Leases of one backend and one TTL, taken out of their entries for one `refresh_many`
/// call.
pub(super) struct Batch {
    backend: Arc<dyn LockBackend>,
    ttl: Duration,
    /// The shortest request timeout of the leases' routines: the call must answer in
    /// time for each of them.
    limit: Duration,
    /// The keeper's entry of each lease, in the order of `leases`.
    ids: Vec<u64>,
    leases: Vec<Box<dyn Lease>>,
}

/// A batch that came back from the backend.
pub(super) struct Refreshed {
    /// When the `refresh_many` call was made: the leases it confirmed are certainly ours
    /// for a TTL from then, whatever the reply's delay.
    pub(super) sent: Instant,
    ids: Vec<u64>,
    leases: Vec<Box<dyn Lease>>,
    results: Vec<Result<()>>,
}

impl Batch {
    /// A batch of one lease, of entry `id`, on `backend`, refreshed for `ttl` within
    /// `limit`.
    pub(super) fn new(
        backend: &Arc<dyn LockBackend>,
        ttl: Duration,
        limit: Duration,
        id: u64,
        lease: Box<dyn Lease>,
    ) -> Self {
        Self {
            backend: Arc::clone(backend),
            ttl,
            limit,
            ids: vec![id],
            leases: vec![lease],
        }
    }

    /// Whether leases of `backend` refreshed for `ttl` go into this batch.
    pub(super) fn is_for(&self, backend: &Arc<dyn LockBackend>, ttl: Duration) -> bool {
        Arc::ptr_eq(&self.backend, backend) && self.ttl == ttl
    }

    /// Adds the lease of entry `id`, whose request timeout is `limit`.
    pub(super) fn push(&mut self, id: u64, lease: Box<dyn Lease>, limit: Duration) {
        self.limit = self.limit.min(limit);
        self.ids.push(id);
        self.leases.push(lease);
    }

    /// Refreshes the batch for its TTL, bounded by its limit. Every lease gets a result:
    /// a timeout, or a backend that answers for the wrong number of leases, fails them
    /// all.
    pub(super) async fn refresh(mut self) -> Refreshed {
        let (ttl, limit) = (self.ttl, self.limit);
        let sent = Instant::now();
        let backend = &self.backend;
        let count = self.leases.len();
        let results = match timeout(limit, backend.refresh_many(&mut self.leases, ttl)).await {
            Ok(results) if results.len() == count => results,
            Ok(results) => {
                let message = format!(
                    "refresh_many returned {} results for {count} leases",
                    results.len()
                );
                (0..count)
                    .map(|_| {
                        Err(Error::unavailable(
                            backend.name(),
                            "refresh",
                            message.clone(),
                        ))
                    })
                    .collect()
            }
            Err(_) => (0..count)
                .map(|_| Err(Error::timeout(backend.name(), "refresh", limit)))
                .collect(),
        };
        metrics::refresh_duration(backend.name(), sent.elapsed());
        // One failed call, however many leases it failed for.
        if results
            .iter()
            .any(|result| result.as_ref().is_err_and(|error| !error.is_lost()))
        {
            metrics::backend_error(backend.name(), Operation::Refresh);
        }
        Refreshed {
            sent,
            ids: self.ids,
            leases: self.leases,
            results,
        }
    }
}

/// One lease of a [`Refreshed`] batch.
pub(super) struct RefreshedLease {
    /// The keeper's entry of the lease.
    pub(super) id: u64,
    pub(super) lease: Box<dyn Lease>,
    pub(super) result: Result<()>,
}

impl Refreshed {
    /// The batch's leases, each with its entry and its result.
    pub(super) fn into_leases(self) -> impl Iterator<Item = RefreshedLease> {
        self.ids
            .into_iter()
            .zip(self.leases)
            .zip(self.results)
            .map(|((id, lease), result)| RefreshedLease { id, lease, result })
    }
}
