//! `Event`: what happens to routines, for logs, metrics and tests.

use std::sync::Arc;

use leasehold_core::FencingToken;
use tokio::time::Instant;

/// Something that happened to a routine, broadcast by [`Runner::subscribe`](crate::Runner::subscribe).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The routine's process-wide number.
    pub number: u64,
    /// The routine's name, if it has one.
    pub name: Option<Arc<str>>,
    /// When it happened (tokio's clock).
    pub at: Instant,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The routine's future is about to start (every restart included).
    Started,
    /// The routine's lease was taken.
    Acquired {
        /// The lease's fencing token.
        token: FencingToken,
    },
    /// The lease is held by someone else; the routine waits. Emitted once per contention
    /// streak, with the holder as the backend describes it (one
    /// [`LockBackend::describe`](crate::LockBackend::describe) per streak, bounded by the
    /// request timeout); `None` where the backend cannot tell.
    Contended {
        /// The holder's identity, if the backend stores one.
        holder: Option<String>,
        /// The holder's fencing token, if the backend tells it.
        token: Option<FencingToken>,
    },
    /// A lease refresh failed without a verdict; it is retried until the local deadline.
    RefreshFailed {
        /// The error, rendered.
        error: String,
    },
    /// The lease was lost (refresh said so, or the local deadline passed): the routine's
    /// context is cancelled.
    LeaseLost {
        /// The fencing token of the lost lease.
        token: FencingToken,
    },
    /// The routine's future was dropped without returning (lease lost, local lease
    /// deadline, or the drain timeout at shutdown). Its context was cancelled first.
    Dropped,
    /// The routine returned.
    Returned,
    /// The routine panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The lease was given back. Not emitted for a lease already reported
    /// [`LeaseLost`](EventKind::LeaseLost): its release is still sent, in case the lease
    /// is live after all, but it was not held until then.
    Released {
        /// The released lease's fencing token.
        token: FencingToken,
    },
    /// Giving the lease back failed; it expires by its TTL.
    ReleaseFailed {
        /// The error, rendered.
        error: String,
    },
    /// A backend request failed; the routine backs off.
    BackendError {
        /// The error, rendered.
        error: String,
    },
    /// The routine will not run again.
    Stopped,
}
