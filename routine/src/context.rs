//! `Context`: what a running routine knows about itself.

use std::future::Future;
use std::sync::Arc;

use routine_core::FencingToken;
use tokio_util::sync::CancellationToken;

/// Why a routine's [`Context`] was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`RoutineHandle::cancel`](crate::RoutineHandle::cancel) was called.
    Cancelled,
    /// The runner is shutting down ([`Runner::shutdown`](crate::Runner::shutdown), SIGINT
    /// or SIGTERM).
    Shutdown,
    /// The routine's lease was lost or could not be refreshed in time. The routine is
    /// dropped at the local lease deadline even if it does not return.
    LeaseLost,
}

/// Handed to every routine: its cancellation, number, name and, for routines that run
/// under a lease, the lease's fencing token.
///
/// The context is cancelled when the routine's handle is cancelled, when the runner
/// shuts down, and when the routine's lease is lost. A routine should return soon after;
/// one that runs under a lease is dropped at its local lease deadline regardless.
///
/// # Examples
///
/// ```
/// # async fn do_work(_: u64) {}
/// async fn job(ctx: routine::Context) {
///     while !ctx.is_cancelled() {
///         tokio::select! {
///             _ = ctx.cancelled() => break,
///             _ = do_work(ctx.fencing_token().map_or(0, |t| t.get())) => {}
///         }
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) number: u64,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) token: CancellationToken,
    pub(crate) handle_token: CancellationToken,
    pub(crate) shutdown_token: CancellationToken,
    pub(crate) fencing_token: Option<FencingToken>,
}

impl Context {
    /// The routine's process-wide number, as in the Go original's log fields.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The routine's name, for routines started with `run_named`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The fencing token of the lease this instance runs under, if any. Pass it along
    /// with writes so that a store remembering the highest token rejects a stale holder.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        self.fencing_token
    }

    /// Whether the routine has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the routine has been asked to stop.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.token.cancelled()
    }

    /// The underlying token, to hand to code that takes a [`CancellationToken`].
    /// Cancelling it stops this instance of the routine only.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the context was cancelled, or `None` while it is not.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        if !self.token.is_cancelled() {
            None
        } else if self.shutdown_token.is_cancelled() {
            Some(CancelReason::Shutdown)
        } else if self.handle_token.is_cancelled() {
            Some(CancelReason::Cancelled)
        } else {
            Some(CancelReason::LeaseLost)
        }
    }
}
