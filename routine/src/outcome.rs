//! `Outcome`: how a routine ended.

use std::sync::Arc;

use leasehold_core::Error;

/// How a routine ended, from [`RoutineHandle::join`](crate::RoutineHandle::join).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// The routine returned on its own, without being cancelled.
    Returned,
    /// The routine was cancelled (by its handle or by shutdown) and then ended.
    Cancelled,
    /// The routine panicked; the panic message, if it was a string.
    Panicked(String),
    /// The routine's lease was lost and it was stopped (only for routines run with
    /// [`RunOptions::exclusive`](crate::RunOptions::exclusive); routines kept running
    /// try to take the lease again instead).
    LeaseLost,
    /// The runner was already shutting down: the routine never started.
    Rejected,
    /// The routine could not run because of a configuration error (bad name, bad TTL,
    /// no backend configured, no tokio runtime).
    Failed(Arc<Error>),
    /// The routine's task was dropped before it finished: the tokio runtime shut down,
    /// or [`Runner::abort`](crate::Runner::abort) was called.
    Aborted,
}
