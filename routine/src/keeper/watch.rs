//! `Watch`: what the keeper and the runner's deadline watchdog tell one hold: the
//! lease's local deadline, news of its refreshes, and that the deadline is near or has
//! passed.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use crate::guard::{Deadline, HasDeadline};

/// Bad news about a kept lease, from the keeper or the watchdog, by [`KeptLease::next_news`](super::KeptLease::next_news).
pub(crate) enum RefreshNews {
    /// A refresh said the lease is no longer ours.
    Lost,
    /// A refresh failed without a verdict; it is retried until the deadline.
    Failed(String),
    /// The grace period before the local deadline has begun (told once): the routine's
    /// context is to be cancelled.
    DeadlineNear,
    /// The local deadline has passed: the routine is to be dropped.
    DeadlinePassed,
}

/// Shared by a hold's [`KeptLease`](super::KeptLease), the lease's entry in the keeper
/// and the runner's [`Watchdog`](super::watchdog::Watchdog).
pub(super) struct Watch {
    /// Read by the hold's guard before every poll of the routine, so not under `news`.
    /// Inline: the guard holds the whole watch (as [`HasDeadline`]) rather than a
    /// deadline allocated apart.
    deadline: Deadline,
    /// How long before the deadline the routine's context is cancelled.
    grace_period: Duration,
    news: Mutex<Pending>,
    /// Woken when there is news for the hold: lost, a failure to report, or the lease
    /// came back from a batch to a hold waiting to take it back.
    woken: Notify,
}

/// News not yet taken by the hold.
struct Pending {
    lost: bool,
    failure: Option<String>,
    /// Set by the watchdog; `near` is taken once, `passed` stays.
    near: bool,
    passed: bool,
}

impl HasDeadline for Watch {
    fn local_deadline(&self) -> &Deadline {
        &self.deadline
    }
}

fn lock(mutex: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // The critical sections only set and take fields: a panic cannot leave them
    // half-updated, so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watch {
    /// A watch for a lease that is certainly ours until `deadline`, whose routine's
    /// context is cancelled `grace_period` before its deadline.
    pub(super) fn new(deadline: Instant, grace_period: Duration) -> Self {
        Self {
            deadline: Deadline::new(deadline),
            grace_period,
            news: Mutex::new(Pending {
                lost: false,
                failure: None,
                near: false,
                passed: false,
            }),
            woken: Notify::new(),
        }
    }

    /// The local deadline: the lease is certainly ours until then.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline.get()
    }

    /// How long before the deadline the routine's context is cancelled.
    pub(super) fn grace_period(&self) -> Duration {
        self.grace_period
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

    /// The watchdog found the grace period before the deadline begun: tells the hold.
    pub(super) fn near(&self) {
        lock(&self.news).near = true;
        self.wake();
    }

    /// The watchdog found the deadline passed: tells the hold.
    pub(super) fn passed(&self) {
        lock(&self.news).passed = true;
        self.wake();
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

    /// Waits for news: the loss first, then a passed deadline, then a failure not
    /// reported yet, then a deadline near.
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
                if news.passed {
                    return RefreshNews::DeadlinePassed;
                }
                if let Some(error) = news.failure.take() {
                    return RefreshNews::Failed(error);
                }
                if std::mem::take(&mut news.near) {
                    return RefreshNews::DeadlineNear;
                }
            }
            woken.await;
        }
    }
}
