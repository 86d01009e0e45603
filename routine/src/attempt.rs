//! One bounded, interruptible acquire, as every leased routine makes it: wait for a turn
//! among the runner's acquires in flight, send `try_acquire_as` under the request
//! timeout, give up if the routine is stopped meanwhile, and count it in the metrics
//! under the routine's name.

use std::time::Duration;

use leasehold_core::{Error, Lease, LockBackend, LockKey, Result};
use tokio::time::Instant;

use crate::metrics::{self, Operation};
use crate::task::Task;

/// One try at a key.
pub(crate) struct Attempt {
    /// The lease, `None` if someone else holds it, or the error.
    pub(crate) result: Result<Option<Box<dyn Lease>>>,
    /// When the request was sent: the lease's local deadline counts from then.
    pub(crate) sent: Instant,
}

/// Waits for a turn among the runner's acquires in flight, then tries `key` once for
/// `ttl`. `None` if the routine was stopped while it waited or while the request was in
/// flight (the backend gives back a key an abandoned acquire may have taken, or it
/// expires by its TTL).
pub(crate) async fn attempt(
    task: &Task,
    backend: &dyn LockBackend,
    key: &LockKey,
    ttl: Duration,
) -> Option<Attempt> {
    let shared = task.shared();
    let config = task.config();
    let cancel = task.cancel();
    let turn = tokio::select! {
        biased;
        _ = shared.aborted() => return None,
        _ = cancel.cancelled() => return None,
        turn = shared.acquire_turn() => turn,
    };
    let sent = Instant::now();
    let request = tokio::time::timeout(
        config.request_timeout,
        backend.try_acquire_as(key, ttl, shared.holder_identity()),
    );
    let result = tokio::select! {
        biased;
        _ = shared.aborted() => return None,
        _ = cancel.cancelled() => return None,
        answer = request => answer.unwrap_or_else(|_| {
            Err(Error::timeout(backend.name(), "acquire", config.request_timeout))
        }),
    };
    drop(turn);
    // The routine's name labels the metrics, also for a scheduled routine's slots.
    let name = task.name().map_or(key.as_str(), |name| &**name);
    metrics::acquire_duration(name, backend.name(), sent.elapsed());
    if result.is_err() {
        metrics::backend_error(backend.name(), Operation::Acquire);
    }
    Some(Attempt { result, sent })
}
