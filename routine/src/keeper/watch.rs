//! `Watch`: what the keeper tells one hold: the lease's local deadline, and news of its
//! refreshes.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use crate::guard::Deadline;

/// Bad news about a kept lease, from [`KeptLease::next_news`](super::KeptLease::next_news).
pub(crate) enum RefreshNews {
    /// A refresh said the lease is no longer ours.
    Lost,
    /// A refresh failed without a verdict; it is retried until the deadline.
    Failed(String),
}

/// Shared by a hold's [`KeptLease`](super::KeptLease) and the lease's entry in the keeper.
pub(super) struct Watch {
    /// Read by the hold's guard before every poll of the routine, so not under `news`.
    deadline: Arc<Deadline>,
    news: Mutex<Pending>,
    /// Woken when there is news for the hold: lost, a failure to report, or the lease
    /// came back from a batch to a hold waiting to take it back.
    woken: Notify,
}

/// News not yet taken by the hold.
struct Pending {
    lost: bool,
    failure: Option<String>,
}

fn lock(mutex: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // The critical sections only set and take fields: a panic cannot leave them
    // half-updated, so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watch {
    /// A watch for a lease that is certainly ours until `deadline`.
    pub(super) fn new(deadline: Instant) -> Self {
        Self {
            deadline: Arc::new(Deadline::new(deadline)),
            news: Mutex::new(Pending {
                lost: false,
                failure: None,
            }),
            woken: Notify::new(),
        }
    }

    /// The local deadline: the lease is certainly ours until then.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline.get()
    }

    /// The local deadline as the keeper moves it on, for the hold's guard.
    pub(super) fn shared_deadline(&self) -> Arc<Deadline> {
        Arc::clone(&self.deadline)
    }

    /// A refresh confirmed the lease until `deadline`.
    pub(super) fn confirmed(&self, deadline: Instant) {
        self.deadline.set(deadline);
    }

    /// A refresh said the lease is no longer ours.
    pub(super) fn lost(&self) {
        lock(&self.news).lost = true;
    }

    /// A refresh failed without a verdict.
    pub(super) fn failed(&self, error: String) {
        lock(&self.news).failure = Some(error);
    }

    /// Whether the hold has news it has not taken yet.
    pub(super) fn has_news(&self) -> bool {
        let news = lock(&self.news);
        news.lost || news.failure.is_some()
    }

    /// Wakes the hold (a waiter of [`Watch::woken`], or the next one).
    pub(super) fn wake(&self) {
        self.woken.notify_one();
    }

    /// Resolves at the next [`Watch::wake`] (or at once, for one made before). Create it
    /// before looking at the state it waits on, so a wake in between is not lost.
    pub(super) fn woken(&self) -> Notified<'_> {
        self.woken.notified()
    }

    /// Waits for news: the loss first, then a failure not reported yet.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: news is taken only when it is returned.
    pub(super) async fn next_news(&self) -> RefreshNews {
        loop {
            let woken = self.woken();
            {
                let mut news = lock(&self.news);
                if news.lost {
                    return RefreshNews::Lost;
                }
                if let Some(error) = news.failure.take() {
                    return RefreshNews::Failed(error);
                }
            }
            woken.await;
        }
    }
}
