//! `Context`: what a running routine knows about itself, and the work it spawns.

use std::fmt;
use std::future::Future;

use leasehold_core::FencingToken;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::guard::Guard;

/// Why a routine's [`Context`] was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`RoutineHandle::cancel`](crate::RoutineHandle::cancel) was called.
    Cancelled,
    /// The runner is shutting down ([`Runner::shutdown`](crate::Runner::shutdown), the
    /// application's shutdown signal, or SIGINT/SIGTERM if the runner handles them).
    Shutdown,
    /// The routine's lease was lost or could not be refreshed in time. The routine is
    /// dropped at the local lease deadline even if it does not return.
    LeaseLost,
    /// This instance has ended: the routine returned or panicked. Work it spawned sees
    /// this reason.
    Ended,
    /// The routine cancelled its own context (through
    /// [`Context::cancellation_token`]).
    Routine,
}

/// Handed to every routine: its cancellation, number, name and, for routines that run
/// under a lease, the lease's fencing token.
///
/// The context is cancelled when the routine's handle is cancelled, when the runner
/// shuts down, when the routine's lease is lost, and when this instance ends (the routine
/// returned, panicked or was dropped). A routine should return soon after; one that runs
/// under a lease is dropped at its local lease deadline regardless. Its context is
/// cancelled before it is dropped, so code that runs as it is dropped can read
/// [`cancel_reason`](Context::cancel_reason).
///
/// Work the routine spawns with [`Context::spawn`] belongs to this instance: it is never
/// polled past the lease deadline and is dropped when the instance ends. Work spawned
/// any other way (`tokio::spawn`, threads) is not stopped by the runner: give it a clone
/// of the context and have it return when the context is cancelled.
///
/// # Examples
///
/// ```
/// # async fn do_work(_: u64) {}
/// async fn job(ctx: leasehold::Context) {
///     while !ctx.is_cancelled() {
///         tokio::select! {
///             _ = ctx.cancelled() => break,
///             _ = do_work(ctx.fencing_token().map_or(0, |t| t.get())) => {}
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) fencing_token: Option<FencingToken>,
    /// The instance's limits, its cancellation and whose it is (number, name, the
    /// handle's and the shutdown's cancellation; see `guard::Origin`).
    pub(crate) guard: Guard,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.guard.origin();
        f.debug_struct("Context")
            .field("number", &origin.number)
            .field("name", &origin.name)
            .field("cancel", self.guard.cancel())
            .field("fencing_token", &self.fencing_token)
            .field("guard", &self.guard)
            .finish()
    }
}

impl Context {
    /// The routine's process-wide number: it tells the log lines of one routine from
    /// another's, whichever runner started them.
    pub fn number(&self) -> u64 {
        self.guard.origin().number
    }

    /// The routine's name, for routines started with `run_named`.
    pub fn name(&self) -> Option<&str> {
        self.guard.origin().name.as_deref()
    }

    /// The fencing token of the lease this instance runs under, if any. Pass it along
    /// with writes so that a store remembering the highest token rejects a stale holder.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        self.fencing_token
    }

    /// Whether the routine has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.guard.cancel().is_cancelled()
    }

    /// Resolves when the routine has been asked to stop.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.guard.cancel().cancelled()
    }

    /// The underlying cancellation token, to hand to code that takes a [`CancellationToken`].
    /// Cancelling it asks this instance of the routine only to stop: a routine that
    /// then returns counts as returned (one kept running is started again after the
    /// retry interval).
    pub fn cancellation_token(&self) -> &CancellationToken {
        self.guard.cancel()
    }

    /// Why the context was cancelled, or `None` while it is not. When several causes
    /// came together, the runner's own (lease lost, instance ended) counts if it came
    /// first, then shutdown, then the handle.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        if !self.guard.cancel().is_cancelled() {
            None
        } else if self.guard.cancelled_for_lease() {
            Some(CancelReason::LeaseLost)
        } else if self.guard.cancelled_as_ended() {
            Some(CancelReason::Ended)
        } else if self.guard.origin().shutdown.is_cancelled() {
            Some(CancelReason::Shutdown)
        } else if self.guard.origin().handle_cancel.is_cancelled() {
            Some(CancelReason::Cancelled)
        } else {
            Some(CancelReason::Routine)
        }
    }

    /// Spawns `future` as a tokio task that belongs to this instance of the routine, and
    /// returns its handle.
    ///
    /// The task is polled like the routine's own future: under a lease, never at or
    /// after the local lease deadline (the clock is read before every poll, so a busy
    /// runtime whose timers fire late cannot stretch it). When the instance ends (the
    /// routine returned or panicked, or was dropped for its lease, at the drain timeout,
    /// or by [`Runner::abort`](crate::Runner::abort)) the context is cancelled and the
    /// task is aborted: its future is dropped at its next yield, and the handle reports
    /// a cancelled [`JoinError`](tokio::task::JoinError). Except after an abort, the
    /// runner waits for these futures to be dropped before it releases the lease and
    /// before [`RoutineHandle::join`](crate::RoutineHandle::join) returns. Spawned after
    /// the instance ended, the task is aborted at once. For a routine without a lease
    /// the task is only tied to the instance's lifetime.
    ///
    /// To stop cleanly before it is aborted (during the grace period before a lease
    /// deadline, or on shutdown), give `future` a clone of the context and return when
    /// it is cancelled. Like the routine, a task that blocks its thread cannot be dropped
    /// until it yields, and delays the release until then.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like [`tokio::spawn`].
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn flush(_: u64) {}
    /// async fn job(ctx: leasehold::Context) {
    ///     let flusher = ctx.spawn({
    ///         let ctx = ctx.clone();
    ///         async move {
    ///             while !ctx.is_cancelled() {
    ///                 flush(ctx.fencing_token().map_or(0, |t| t.get())).await;
    ///                 tokio::select! {
    ///                     _ = ctx.cancelled() => {}
    ///                     _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    ///                 }
    ///             }
    ///         }
    ///     });
    ///     ctx.cancelled().await;
    ///     // Not needed for the flusher to stop, but lets it finish its last flush.
    ///     let _ = flusher.await;
    /// }
    /// ```
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.guard.spawn(future)
    }
}
