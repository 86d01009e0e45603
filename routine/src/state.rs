//! `RoutineState`: what a routine is doing now, as its handle's watch channel shows it.

use leasehold_core::FencingToken;
use tokio::time::Instant;

use crate::outcome::Outcome;

/// What a routine is doing now, from [`RoutineHandle::state`](crate::RoutineHandle::state).
///
/// Set by the routine's task where things happen (the keep-running loop and the hold),
/// so the latest state is always there to read, unlike the events of
/// [`Runner::subscribe`](crate::Runner::subscribe), which a slow receiver may lose. A
/// watch channel keeps the latest value only: a state that lasted no time may be skipped.
///
/// Times are on tokio's clock ([`tokio::time::Instant`], a [`std::time::Instant`] under
/// paused test time too; `into_std` converts it), as in [`Event::at`](crate::Event::at).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RoutineState {
    /// A leased routine about to try for its lease: before the first attempt, and again
    /// after its routine returned or lost the lease.
    Starting,
    /// Someone else holds the lease; the routine waits for it.
    Waiting {
        /// The holder's identity, if the backend tells it (see
        /// [`LockBackend::describe`](crate::LockBackend::describe)).
        holder: Option<String>,
    },
    /// The routine runs under its lease.
    Holding {
        /// The lease's fencing token.
        fencing_token: FencingToken,
        /// When the acquire that took the lease was sent.
        since: Instant,
    },
    /// The routine waits out a backoff after a backend error or a panic.
    BackingOff {
        /// Why: the backend error's chain, or the panic message.
        error: String,
        /// When it tries again.
        until: Instant,
    },
    /// A plain routine (run without a lease) is running.
    Running,
    /// The routine will not run again; how it ended.
    Stopped(Outcome),
}

impl RoutineState {
    /// Whether the routine holds its lease now.
    pub fn is_holding(&self) -> bool {
        matches!(self, RoutineState::Holding { .. })
    }

    /// Whether the routine has stopped for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self, RoutineState::Stopped(_))
    }
}
