//! The messages between leases and the lock session task: requests ([`Command`]), the
//! lease's identity in the task ([`LeaseId`]), and the link a lease keeps to the task
//! ([`LeaseLink`]). A leaf, so the lease and the session depend on it and not on each
//! other.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{FencingToken, LeaseInfo, LockKey, Result};
use tokio::sync::{mpsc, oneshot, watch};

/// A reply channel.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Identifies a lease within the session task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseId {
    pub(crate) generation: u64,
    /// The id of the session the lease was taken on (`holder_session` in its row).
    pub(crate) session: i64,
    pub(crate) serial: u64,
    pub(crate) hash: i64,
}

/// A request to the session task.
pub(crate) enum Command {
    Acquire {
        key: LockKey,
        hash: i64,
        ttl: Duration,
        /// The holder identity stored in the key's row.
        holder: Arc<str>,
        reply: Reply<Option<Acquired>>,
    },
    Refresh(RefreshRequest),
    /// Without a reply when sent by a dropped lease.
    Release {
        id: LeaseId,
        reply: Option<Reply<()>>,
    },
    /// How long the heartbeat of the session recorded as the holder of `hash` has left.
    ExpiresIn {
        hash: i64,
        timeout: Duration,
        reply: Reply<Option<Duration>>,
    },
    /// The holder of `key` (lock key `hash`), if it is held (see the `held` module).
    Describe {
        key: LockKey,
        hash: i64,
        timeout: Duration,
        reply: Reply<Option<LeaseInfo>>,
    },
    /// Open a lock session if there is none, so that it listens for releases again
    /// (see the `notify` module).
    Listen {
        reply: Reply<()>,
    },
    /// The last waiter of `hash` in this process stopped waiting without being woken:
    /// the session's registration as a waiter for the key goes, so that no release
    /// wakes a process that no longer waits (see the `waiters` module).
    Unwait {
        hash: i64,
    },
}

/// A lock taken for a lease: the key's new fencing token and the lease's link to the task.
pub(crate) struct Acquired {
    pub(crate) token: FencingToken,
    pub(crate) link: LeaseLink,
}

/// A lease's request to be refreshed to `ttl`, answered on `reply` by the next statement
/// the session task sends (refreshes queued together share it).
pub(crate) struct RefreshRequest {
    pub(crate) id: LeaseId,
    pub(crate) key: LockKey,
    pub(crate) ttl: Duration,
    pub(crate) reply: Reply<()>,
}

/// Ties a lease to the session task. Dropped without [`LeaseLink::finish`], it asks the
/// task to unlock the key, so a lease dropped without `release` (or a lease whose
/// `try_acquire` caller gave up) does not keep its lock for as long as the session lives.
pub(crate) struct LeaseLink {
    pub(crate) id: LeaseId,
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    /// Turns `true` when the session the lease lives on is dropped.
    pub(crate) revoked: watch::Receiver<bool>,
    finished: bool,
}

impl LeaseLink {
    pub(crate) fn new(
        id: LeaseId,
        tx: mpsc::UnboundedSender<Command>,
        revoked: watch::Receiver<bool>,
    ) -> Self {
        Self {
            id,
            tx,
            revoked,
            finished: false,
        }
    }

    /// Marks the lock as given back (or being given back), so drop sends nothing.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for LeaseLink {
    fn drop(&mut self) {
        if !self.finished {
            // No await in drop: the task unlocks when it gets to it. If the task is gone,
            // so is the session and the lock with it.
            let _ = self.tx.send(Command::Release {
                id: self.id,
                reply: None,
            });
        }
    }
}
