//! `Guard`: the hard limits of one instance of a routine, checked before every poll.
//!
//! The deadline watchdog's timer (`keeper::watchdog`) is not enough on its own: tokio
//! fires timers only when a worker parks or every few dozen polls, so on a busy worker a
//! routine that other tasks keep waking (channels, `Notify`) would be polled well after
//! its deadline, after its lease may have passed to someone else. So every poll of the
//! routine's future, and of work it spawned through its context, first reads the
//! monotonic clock and the current deadline, and does not poll at or after it. The
//! deadline is one atomic that the keeper moves on, so the check costs a clock read and
//! a load.
//!
//! The guard also owns the cancellation of the instance's context (with the reason the
//! runner cancelled it, if it did) and the tasks spawned with [`Context::spawn`]: when
//! the instance ends they are aborted, and the runner waits for them to be dropped before
//! it gives the lease back.
//!
//! [`Context::spawn`]: crate::Context::spawn

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A local lease deadline that the keeper moves on and guards read on every poll,
/// without a lock.
pub(crate) struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    after_base: AtomicU64,
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Self {
        let deadline = Self {
            base: Instant::now(),
            after_base: AtomicU64::new(0),
        };
        deadline.set(at);
        deadline
    }

    pub(crate) fn get(&self) -> Instant {
        self.base + std::time::Duration::from_nanos(self.after_base.load(Ordering::Acquire))
    }

    /// Moves the deadline to `at`. A time before the deadline was created is stored as
    /// its creation time, which has passed as well: the error is on the safe side.
    pub(crate) fn set(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        self.after_base
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn has_passed(&self) -> bool {
        Instant::now() >= self.get()
    }
}

/// What a guard reads its deadline from: the keeper's watch of the lease, which holds the
/// deadline inline, so that a held routine's deadline takes no allocation of its own.
pub(crate) trait HasDeadline: Send + Sync {
    fn local_deadline(&self) -> &Deadline;
}

impl HasDeadline for Deadline {
    fn local_deadline(&self) -> &Deadline {
        self
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// The instance may no longer run: its local deadline has passed, or it has ended.
#[derive(Debug)]
pub(crate) struct Expired;

// Why the runner cancelled an instance's context, when it was the first to.
const NOT_BY_RUNNER: u8 = 0;
const FOR_THE_LEASE: u8 = 1;
const ENDED: u8 = 2;

/// One instance's limits, shared by its hold, its context and the work it spawned.
#[derive(Clone)]
pub(crate) struct Guard {
    shared: Arc<Shared>,
}

/// Whose instance a guard guards, for its [`Context`](crate::Context): kept here, once
/// per instance, so that a context (held by the routine's future and by the runner's
/// for as long as the instance runs, and cloned freely) is two words, not nine.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The routine's process-wide number.
    pub(crate) number: u64,
    pub(crate) name: Option<Arc<str>>,
    /// The routine's handle's cancellation.
    pub(crate) handle_cancel: CancellationToken,
    /// Cancelled when the runner's shutdown begins.
    pub(crate) shutdown: CancellationToken,
}

struct Shared {
    origin: Origin,
    /// `None` for a routine without a lease.
    deadline: Option<Arc<dyn HasDeadline>>,
    /// The cancellation of the instance's context.
    cancel: CancellationToken,
    /// Why the runner cancelled `cancel`, if it did so first.
    why: AtomicU8,
    /// Set, under the `spawned` lock, when the instance has ended.
    ended: AtomicBool,
    spawned: Mutex<Spawned>,
    /// Woken when the last spawned task has been dropped.
    gone: Notify,
}

#[derive(Default)]
struct Spawned {
    next_key: u64,
    /// One entry per spawned future not yet dropped; the handle is `None` while the
    /// task is being spawned and once `end` has aborted it.
    tasks: HashMap<u64, Option<AbortHandle>>,
}

fn lock(mutex: &Mutex<Spawned>) -> MutexGuard<'_, Spawned> {
    // The critical sections only insert and remove map entries: poisoning is harmless.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Guard {
    /// A guard for an instance of `origin` whose context is cancelled by `cancel`,
    /// bounded by `deadline` if it runs under a lease.
    pub(crate) fn new(
        origin: Origin,
        cancel: CancellationToken,
        deadline: Option<Arc<dyn HasDeadline>>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                origin,
                deadline,
                cancel,
                why: AtomicU8::new(NOT_BY_RUNNER),
                ended: AtomicBool::new(false),
                spawned: Mutex::new(Spawned::default()),
                gone: Notify::new(),
            }),
        }
    }

    /// Whose instance this is.
    pub(crate) fn origin(&self) -> &Origin {
        &self.shared.origin
    }

    /// The cancellation of the instance's context.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.shared.cancel
    }

    /// Whether the instance may no longer be polled.
    fn has_expired(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
            || self
                .shared
                .deadline
                .as_ref()
                .is_some_and(|deadline| deadline.local_deadline().has_passed())
    }

    /// Cheaper than [`Guard::has_expired`] for the routine's own future, which is never
    /// polled after its instance ended.
    fn deadline_passed(&self) -> bool {
        self.shared
            .deadline
            .as_ref()
            .is_some_and(|deadline| deadline.local_deadline().has_passed())
    }

    /// Polls `future` to completion, unless the deadline passes first: then the context
    /// is cancelled (reason `LeaseLost`) and `future` is dropped without another poll.
    pub(crate) async fn run<F: Future>(&self, future: F) -> Result<F::Output, Expired> {
        self.run_until(future, Self::deadline_passed).await
    }

    async fn run_until<F: Future>(
        &self,
        future: F,
        expired: fn(&Self) -> bool,
    ) -> Result<F::Output, Expired> {
        let mut future = pin!(future);
        poll_fn(|cx| {
            if expired(self) {
                // Before `future` is dropped, so that what it drops can see why.
                self.cancel_for_lease();
                return Poll::Ready(Err(Expired));
            }
            future.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Cancels the context because the lease is going or gone.
    pub(crate) fn cancel_for_lease(&self) {
        self.cancel_for(FOR_THE_LEASE);
    }

    fn cancel_for(&self, why: u8) {
        if !self.shared.cancel.is_cancelled() {
            // Only the first cause counts; a parent cancelled concurrently may
            // still win, which is as true.
            let _ = self.shared.why.compare_exchange(
                NOT_BY_RUNNER,
                why,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.shared.cancel.cancel();
        }
    }

    /// Whether the runner cancelled the context for the lease before anyone else did.
    pub(crate) fn cancelled_for_lease(&self) -> bool {
        self.shared.why.load(Ordering::Acquire) == FOR_THE_LEASE
    }

    /// Whether the runner cancelled the context because the instance ended, before
    /// anyone else did.
    pub(crate) fn cancelled_as_ended(&self) -> bool {
        self.shared.why.load(Ordering::Acquire) == ENDED
    }

    /// Ends the instance: cancels its context and aborts the tasks it spawned. Their
    /// futures are dropped at their next yield; see [`Guard::spawned_gone`].
    pub(crate) fn end(&self) {
        self.cancel_for(ENDED);
        let tasks: Vec<AbortHandle> = {
            let mut spawned = lock(&self.shared.spawned);
            self.shared.ended.store(true, Ordering::Release);
            // The entries stay until the futures are dropped, for `spawned_gone`.
            spawned
                .tasks
                .values_mut()
                .filter_map(Option::take)
                .collect()
        };
        // Outside the lock, which a task's `Leave` takes when its future is dropped.
        for task in tasks {
            task.abort();
        }
    }

    /// Resolves when every task spawned through the context has been dropped.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub(crate) async fn spawned_gone(&self) {
        loop {
            let gone = self.shared.gone.notified();
            if lock(&self.shared.spawned).tasks.is_empty() {
                return;
            }
            gone.await;
        }
    }

    /// Spawns `future` as a task of this instance: guarded by its deadline, aborted when
    /// it ends.
    pub(crate) fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let key = {
            let mut spawned = lock(&self.shared.spawned);
            let key = spawned.next_key;
            spawned.next_key += 1;
            spawned.tasks.insert(key, None);
            key
        };
        // Owned by the task's future from the start, so the entry goes with the future
        // even if the task is aborted before its first poll.
        let leave = Leave {
            guard: self.clone(),
            key,
        };
        // Not under the lock: a runtime that is shutting down drops the future (and
        // `leave`, which takes the lock) inside `spawn`.
        let handle = tokio::spawn(async move {
            let leave = leave;
            match leave.guard.run_until(future, Self::has_expired).await {
                Ok(output) => output,
                // `future` is dropped already; this shell waits for `end` to abort it.
                Err(Expired) => std::future::pending().await,
            }
        });
        let abort = {
            let mut spawned = lock(&self.shared.spawned);
            let ended = self.shared.ended.load(Ordering::Acquire);
            match spawned.tasks.get_mut(&key) {
                // Set under the lock that `end` takes, so it aborts the task or we do.
                Some(slot) if !ended => {
                    *slot = Some(handle.abort_handle());
                    false
                }
                Some(_) => true,
                // The task has already finished.
                None => false,
            }
        };
        if abort {
            handle.abort();
        }
        handle
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field(
                "deadline",
                &self
                    .shared
                    .deadline
                    .as_ref()
                    .map(|held| held.local_deadline()),
            )
            .field("spawned", &lock(&self.shared.spawned).tasks.len())
            .finish_non_exhaustive()
    }
}

/// Takes a spawned task out of its guard when the task's future is dropped.
struct Leave {
    guard: Guard,
    key: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let shared = &self.guard.shared;
        let mut spawned = lock(&shared.spawned);
        spawned.tasks.remove(&self.key);
        if spawned.tasks.is_empty() {
            drop(spawned);
            shared.gone.notify_waiters();
        }
    }
}
