//! `RoutineState`: what a routine is doing now, as its handle's watch channel shows it.
//!
//! The watch channel is made only when a handle's `state()` is first called
//! ([`StateCell`]): a tokio watch channel takes about 400 bytes (eight `Notify`s for its
//! receivers), which every routine paid for whether or not anyone watched it; at 100,000
//! routines that was a tenth of what the runner takes per routine. Until then the cell
//! keeps the plain state.

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

/// A routine's state, shared by its task and its handle; see the module documentation of
/// why the watch channel is made only when asked for.
pub(crate) struct StateCell {
    inner: std::sync::Mutex<Cell>,
}

enum Cell {
    /// Nobody has asked for a receiver yet.
    Plain(RoutineState),
    /// Some receiver has been handed out: changes go through the channel.
    Watched(tokio::sync::watch::Sender<RoutineState>),
    /// The task has ended: receivers handed out from now on see the last state, and
    /// their `changed` fails, as with a dropped sender.
    Closed(RoutineState),
}

impl StateCell {
    /// A cell of a running routine, in `state`.
    pub(crate) fn new(state: RoutineState) -> Self {
        Self {
            inner: std::sync::Mutex::new(Cell::Plain(state)),
        }
    }

    /// A cell of a routine that has ended, in `state`.
    pub(crate) fn closed(state: RoutineState) -> Self {
        Self {
            inner: std::sync::Mutex::new(Cell::Closed(state)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cell> {
        // Every critical section only replaces a value: poisoning is harmless.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the state, with `modify`; `modify` says whether it changed it.
    pub(crate) fn modify(&self, modify: impl FnOnce(&mut RoutineState) -> bool) {
        match &mut *self.lock() {
            Cell::Plain(state) | Cell::Closed(state) => {
                modify(state);
            }
            Cell::Watched(sender) => {
                sender.send_if_modified(modify);
            }
        }
    }

    /// A receiver of the state and each change of it.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<RoutineState> {
        let mut cell = self.lock();
        match &mut *cell {
            Cell::Watched(sender) => sender.subscribe(),
            Cell::Closed(state) => tokio::sync::watch::channel(state.clone()).1,
            Cell::Plain(state) => {
                let state = std::mem::replace(state, RoutineState::Starting);
                let (sender, receiver) = tokio::sync::watch::channel(state);
                *cell = Cell::Watched(sender);
                receiver
            }
        }
    }

    /// The task has ended: drops the channel's sender, if there is one.
    pub(crate) fn close(&self) {
        let mut cell = self.lock();
        if let Cell::Watched(sender) = &*cell {
            let last = sender.borrow().clone();
            *cell = Cell::Closed(last);
        } else if let Cell::Plain(state) = &mut *cell {
            let last = std::mem::replace(state, RoutineState::Starting);
            *cell = Cell::Closed(last);
        }
    }
}

impl std::fmt::Debug for StateCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.lock() {
            Cell::Plain(state) | Cell::Closed(state) => std::fmt::Debug::fmt(state, f),
            Cell::Watched(sender) => std::fmt::Debug::fmt(&*sender.borrow(), f),
        }
    }
}
