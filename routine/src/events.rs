//! `Event`: what happens to routines, for logs, metrics and tests.

use std::sync::Arc;
use std::time::SystemTime;

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
    /// A scheduled routine: this member claimed the fire at `fire` (its instant on the
    /// schedule) in the name's record, holding the name's lease (or a slot), and runs it
    /// now.
    FireClaimed {
        /// The fire's instant on the schedule.
        fire: SystemTime,
    },
    /// A scheduled routine: this member does not run the fire at `fire`, for `reason`.
    /// Emitted only where this member knows: a fire claimed elsewhere is reported by the
    /// members that tried it, not by those that never came to it.
    FireSkipped {
        /// The fire's instant on the schedule.
        fire: SystemTime,
        /// Why it was skipped.
        reason: FireSkipReason,
    },
    /// A scheduled routine: the fire at `fire` passed unclaimed by this member, by its
    /// [`MissedFires`](crate::MissedFires) policy: it got to the fire after the late
    /// limit (a long run, a late start, a pause, no acquire turn or no backend answer in
    /// time). Another member may still have run it.
    FireMissed {
        /// The fire's instant on the schedule.
        fire: SystemTime,
    },
    /// A scheduled routine: this member, taking the name, found that the run of the fire
    /// at `fire` was cut off before it ended (its member died, was paused past its lease,
    /// lost its lease or was shut down). With `retried` this member runs it again
    /// ([`RunOptions::retry_interrupted`](crate::RunOptions::retry_interrupted));
    /// otherwise it is recorded as failed in the name's record.
    FireInterrupted {
        /// The fire's instant on the schedule.
        fire: SystemTime,
        /// Whether this member runs it again.
        retried: bool,
    },
}

/// Why a member skipped a scheduled fire ([`EventKind::FireSkipped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FireSkipReason {
    /// Another member claimed the fire first: it runs there.
    ClaimedElsewhere,
    /// With [`skip_if_held`](crate::RunOptions::skip_if_held): the name's lease (every
    /// slot of it) was held by another run.
    Held,
    /// This member did not get the name's lease (or a slot) before the fire's late limit
    /// or the next fire, whichever is later:
    /// a long run elsewhere, for example a keep-running routine on the same name, held it
    /// all along. Another member may still run the fire.
    NoLeaseInTime,
}

impl FireSkipReason {
    /// A short stable name, for logs and JSON: `claimed_elsewhere`, `held`,
    /// `no_lease_in_time`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FireSkipReason::ClaimedElsewhere => "claimed_elsewhere",
            FireSkipReason::Held => "held",
            FireSkipReason::NoLeaseInTime => "no_lease_in_time",
        }
    }
}
