//! `Instance`: the loop that keeps one instance of a named routine running under a lease.
//!
//! Each round tries once to take the lease. The winner runs the routine (see `hold`);
//! the others wait for a release notification or the retry interval, whichever comes
//! first, or, if the backend reports when the holder's lease runs out, until then. While
//! release notifications work, a waiter polls only to notice a crashed holder: about
//! once per TTL instead of every retry interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, LeaseInfo, LockBackend, LockKey, Result};
use tokio::time::Instant;

use crate::attempt::{Attempt, attempt};
use crate::backend_slot::BackendSlot;
use crate::backoff::Backoff;
use crate::events::EventKind;
use crate::hold::{HoldEnd, hold};
use crate::metrics::{self, Operation, RestartReason};
use crate::options::Mode;
use crate::outcome::Outcome;
use crate::state::RoutineState;
use crate::task::{RoutineFn, Task};

/// What a waiter after contention waits for (see `Instance::contended_wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The holder's lease runs out in this time (capped), by the backend's report.
    Expiry(Duration),
    /// The backend said the key is free: try at once.
    Free,
    /// A fixed interval: the backend cannot tell, or its answer failed.
    Interval(Duration),
}

impl Wait {
    fn duration(self) -> Duration {
        match self {
            Wait::Expiry(wait) | Wait::Interval(wait) => wait,
            Wait::Free => Duration::ZERO,
        }
    }
}

pub(crate) struct Instance<'a> {
    task: &'a Task,
    key: LockKey,
    backend: BackendSlot,
    /// Backoff after panics of the routine.
    panic_backoff: Backoff,
    /// Backoff after backend errors. Using one backoff resets the other, so that one
    /// kind of trouble does not lengthen the wait after the other: a routine that panics
    /// once after an outage starts its panic backoff afresh.
    error_backoff: Backoff,
    /// Whether the last attempt found the key held, so `Contended` is emitted once per
    /// wait rather than once per retry.
    contended: bool,
    /// Release notifications that failed: waits without them until `paused_until`, with
    /// a backoff from the retry interval, so a channel that fails at once (no permission
    /// to subscribe, too many clients) costs a request per retry, not a loop of them.
    notify_backoff: Backoff,
    notify_paused_until: Option<Instant>,
    /// Whether a failure of release notifications was logged at `warn` since they last
    /// worked: one warning per outage, the rest at `debug`.
    notify_warned: bool,
    /// Whether the last wait after contention was skipped because the backend said the
    /// key was free: a second such answer in a row waits the retry interval, so a backend
    /// that says "free" while the key stays held cannot make the waiter spin.
    retried_at_once: bool,
}

impl<'a> Instance<'a> {
    pub(crate) fn new(task: &'a Task, key: LockKey, backend: BackendSlot) -> Self {
        Self {
            task,
            key,
            backend,
            panic_backoff: Backoff::new(),
            error_backoff: Backoff::new(),
            contended: false,
            notify_backoff: Backoff::new(),
            notify_paused_until: None,
            notify_warned: false,
            retried_at_once: false,
        }
    }

    /// Runs rounds until the routine is cancelled (or, without restarts, has run once).
    /// `routine` is kept out of `self` because it is not `Sync`.
    ///
    /// This future lives as long as the routine, one per named routine: the steps that
    /// are not holding (acquiring, waiting after contention, backing off) are boxed, so
    /// that their state takes memory only while they run.
    pub(crate) async fn run(mut self, mut routine: RoutineFn) -> Outcome {
        let restart = self.task.mode() == Mode::KeepRunning;
        let task = self.task;
        let shared = task.shared();
        let config = task.config();
        metrics::not_holding(self.key.as_str());
        loop {
            if shared.is_aborted() {
                return Outcome::Aborted;
            }
            if task.cancel().is_cancelled() {
                return Outcome::Cancelled;
            }
            // Connecting is interrupted by cancellation and shutdown like every other wait.
            let connected = tokio::select! {
                biased;
                _ = shared.aborted() => None,
                _ = task.cancel().cancelled() => None,
                connected = Box::pin(self.backend.get(config.lease_ttl)) => Some(connected),
            };
            let backend = match connected {
                None => return self.stopped(),
                Some(Ok(backend)) => backend,
                Some(Err(error)) => {
                    metrics::connect_failed(&error);
                    match Box::pin(self.backend_error(error)).await {
                        Some(outcome) => return outcome,
                        None => continue,
                    }
                }
            };

            // Register for the release notification before trying, so a release between
            // our attempt and our wait is not missed (see `LockBackend::released`).
            let key = self.key.clone();
            let use_notifications = self
                .notify_paused_until
                .is_none_or(|until| Instant::now() >= until);
            let mut released: Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> =
                if use_notifications {
                    backend.released(&key)
                } else {
                    Box::pin(std::future::pending())
                };
            // Resolved before anything happened means spurious or broken: poll instead.
            let notifications = match futures::poll!(released.as_mut()) {
                std::task::Poll::Pending => use_notifications,
                std::task::Poll::Ready(Ok(())) => false,
                std::task::Poll::Ready(Err(error)) => {
                    self.notifications_failed(backend.name(), &error);
                    false
                }
            };
            // The error boxed: the attempt's result is kept while the lease is held, and an
            // error takes 64 bytes.
            let Some((result, sent)) = Box::pin(self.attempt(&*backend))
                .await
                .map(|Attempt { result, sent }| (result.map_err(Box::new), sent))
            else {
                return self.stopped();
            };
            match result {
                Ok(Some(lease)) => {
                    drop(released);
                    self.contended = false;
                    self.retried_at_once = false;
                    self.error_backoff.reset();
                    let held = hold(task, Arc::clone(&backend), lease, sent, &mut routine).await;
                    let wait = match held {
                        HoldEnd::Returned if !restart => return Outcome::Returned,
                        HoldEnd::Returned => {
                            metrics::restart(key.as_str(), RestartReason::Returned);
                            self.panic_backoff.reset();
                            task.set_state(RoutineState::Starting);
                            config.retry_interval
                        }
                        HoldEnd::Panicked(message) if !restart => {
                            return Outcome::Panicked(message);
                        }
                        HoldEnd::Panicked(message) => {
                            metrics::restart(key.as_str(), RestartReason::Panicked);
                            self.error_backoff.reset();
                            let wait = self
                                .panic_backoff
                                .next_wait(config.backoff_min, config.backoff_max);
                            task.set_state(RoutineState::BackingOff {
                                error: format!("routine panicked: {message}"),
                                until: Instant::now() + wait,
                            });
                            wait
                        }
                        HoldEnd::LeaseLost if !restart => return Outcome::LeaseLost,
                        // Someone else probably holds it now: the next round finds out.
                        HoldEnd::LeaseLost => {
                            metrics::restart(key.as_str(), RestartReason::Lost);
                            task.set_state(RoutineState::Starting);
                            Duration::ZERO
                        }
                        HoldEnd::Cancelled => return Outcome::Cancelled,
                        HoldEnd::Aborted => return Outcome::Aborted,
                    };
                    if !Box::pin(self.sleep(wait)).await {
                        return self.stopped();
                    }
                    task.set_state(RoutineState::Starting);
                }
                Ok(None) => {
                    // The backend answered: the outage, if any, is over. Without this reset
                    // separate outages would add up to ever longer backoffs.
                    self.error_backoff.reset();
                    if !self.contended {
                        self.contended = true;
                        let info = Box::pin(self.describe_holder(&*backend)).await;
                        task.emit(EventKind::Contended {
                            holder: info.as_ref().and_then(|info| info.holder.clone()),
                            token: info.as_ref().and_then(|info| info.fencing_token),
                        });
                        task.set_state(RoutineState::Waiting {
                            holder: info.and_then(|info| info.holder),
                        });
                    }
                    let woke = Box::pin(self.wait_after_contention(
                        &*backend,
                        released.as_mut(),
                        notifications,
                    ))
                    .await;
                    if !woke {
                        return self.stopped();
                    }
                }
                Err(error) => {
                    drop(released);
                    if let Some(outcome) = Box::pin(self.backend_error(*error)).await {
                        return outcome;
                    }
                }
            }
        }
    }

    /// One bounded, interruptible try at the key (see [`attempt`]).
    async fn attempt(&self, backend: &dyn LockBackend) -> Option<Attempt> {
        attempt(self.task, backend, &self.key, self.task.config().lease_ttl).await
    }

    /// Who holds the key, asked once per contention streak (not per retry: a waiter must
    /// not double the load it puts on the backend). An error, `Unsupported` included, or
    /// a timeout just leaves the holder unknown: it is for display only.
    async fn describe_holder(&self, backend: &dyn LockBackend) -> Option<LeaseInfo> {
        let shared = self.task.shared();
        let describe = tokio::time::timeout(
            self.task.config().request_timeout,
            backend.describe(&self.key),
        );
        tokio::select! {
            biased;
            _ = shared.aborted() => None,
            _ = self.task.cancel().cancelled() => None,
            answer = describe => match answer {
                Ok(Ok(info)) => info,
                Ok(Err(error)) => {
                    tracing::debug!(error = %error.chain(), "cannot tell who holds the lease");
                    None
                }
                Err(_) => None,
            },
        }
    }

    /// After contention: waits for the holder's release, for its lease to run out, or
    /// for the retry interval. `false` if the routine was stopped meanwhile.
    ///
    /// While release notifications work, a release wakes the waiter, so it polls only to
    /// notice a holder that stopped without releasing: it sleeps until the holder's
    /// lease runs out (capped at the TTL), then asks again how long is left instead of
    /// trying to acquire, and tries only once the lease has run out. Against a live
    /// holder that costs one `expires_in` per refresh of the holder's lease, not an
    /// attempt and an `expires_in` per retry interval.
    async fn wait_after_contention(
        &mut self,
        backend: &dyn LockBackend,
        mut released: Pin<&mut (dyn Future<Output = Result<()>> + Send + '_)>,
        notifications: bool,
    ) -> bool {
        let shared = self.task.shared();
        let cancel = self.task.cancel();
        // A backend without notifications answers `released` with a future that never
        // resolves: it must be polled at the retry interval.
        let notified = notifications && backend.capabilities().release_notifications;
        let woke = loop {
            let wait = tokio::select! {
                biased;
                _ = shared.aborted() => return false,
                _ = cancel.cancelled() => return false,
                wait = self.contended_wait(backend, notified) => wait,
            };
            self.retried_at_once = wait == Wait::Free;
            tokio::select! {
                biased;
                _ = shared.aborted() => return false,
                _ = cancel.cancelled() => return false,
                woke = released.as_mut(), if notifications => break woke,
                _ = tokio::time::sleep(wait.duration()) => {
                    // The holder's lease should have run out: ask before trying.
                    if notified && matches!(wait, Wait::Expiry(_)) {
                        continue;
                    }
                    return true;
                }
            }
        };
        match woke {
            Ok(()) => {
                // Notifications work (again).
                self.notify_backoff.reset();
                self.notify_warned = false;
            }
            // The channel failed: try now, and wait without notifications for a while.
            Err(error) => self.notifications_failed(backend.name(), &error),
        }
        true
    }

    /// Release notifications failed: the next rounds wait without them for a backoff
    /// (doubling from the retry interval while they keep failing). Logged once per
    /// outage at `warn`.
    fn notifications_failed(&mut self, backend: &'static str, error: &Error) {
        metrics::backend_error(backend, Operation::Notify);
        let config = self.task.config();
        // From the retry interval: a channel that fails at once costs a request per retry.
        let wait = self.notify_backoff.next_wait(
            config.retry_interval,
            config.backoff_max.max(config.retry_interval),
        );
        self.notify_paused_until = Some(Instant::now() + wait);
        if self.notify_warned {
            tracing::debug!(error = %error.chain(), ?wait, "release notifications failed again");
        } else {
            self.notify_warned = true;
            tracing::warn!(
                error = %error.chain(),
                ?wait,
                "release notifications failed; polling at the retry interval until they work"
            );
        }
    }

    /// How long to wait after contention: until the holder's lease runs out if the
    /// backend says when, at most the retry interval, or, with release notifications
    /// (`notified`), at most the TTL; otherwise the retry interval (the TTL with
    /// notifications). A crashed holder is taken over right when its lease expires.
    async fn contended_wait(&self, backend: &dyn LockBackend, notified: bool) -> Wait {
        let config = self.task.config();
        let longest = if notified {
            config.lease_ttl
        } else {
            config.retry_interval
        };
        if !backend.capabilities().reports_expiry {
            return Wait::Interval(longest);
        }
        match tokio::time::timeout(config.request_timeout, backend.expires_in(&self.key)).await {
            // One millisecond past the expiry, so the key is free when we ask.
            Ok(Ok(Some(left))) => Wait::Expiry((left + Duration::from_millis(1)).min(longest)),
            // Released in the meantime: try again at once, but not twice in a row.
            Ok(Ok(None)) if !self.retried_at_once => Wait::Free,
            Ok(Ok(None)) => Wait::Interval(config.retry_interval),
            Ok(Err(_)) | Err(_) => {
                metrics::backend_error(backend.name(), Operation::ExpiresIn);
                Wait::Interval(config.retry_interval)
            }
        }
    }

    /// Logs a backend error and waits out the error backoff. `Some` ends the routine.
    async fn backend_error(&mut self, error: Error) -> Option<Outcome> {
        // Configuration errors do not heal by waiting: the routine fails instead. Everything
        // else (outages, timeouts, even rejected credentials, which an operator may fix while
        // the process runs) is retried with backoff.
        if error.is_permanent() {
            tracing::error!(error = %error.chain(), "lease backend misconfigured; routine stops");
            return Some(Outcome::Failed(Arc::new(error)));
        }
        if error.is_transient() {
            tracing::warn!(error = %error.chain(), "lease backend unavailable; backing off");
        } else {
            tracing::error!(error = %error.chain(), "lease backend refused the request; backing off");
        }
        self.task.emit(EventKind::BackendError {
            error: error.chain(),
        });
        // Contention seen after this error is news again.
        self.contended = false;
        self.panic_backoff.reset();
        let config = self.task.config();
        let wait = self
            .error_backoff
            .next_wait(config.backoff_min, config.backoff_max);
        self.task.set_state(RoutineState::BackingOff {
            error: error.chain(),
            until: Instant::now() + wait,
        });
        if self.sleep(wait).await {
            self.task.set_state(RoutineState::Starting);
            None
        } else {
            Some(self.stopped())
        }
    }

    /// Sleeps unless cancelled first; `false` if cancelled.
    fn sleep(&self, wait: Duration) -> impl Future<Output = bool> + Send + 'a {
        // Borrows the task only: the routine closure is not `Sync`.
        let task = self.task;
        async move {
            tokio::select! {
                biased;
                _ = task.shared().aborted() => false,
                _ = task.cancel().cancelled() => false,
                _ = tokio::time::sleep(wait) => true,
            }
        }
    }

    fn stopped(&self) -> Outcome {
        if self.task.shared().is_aborted() {
            Outcome::Aborted
        } else {
            Outcome::Cancelled
        }
    }
}
