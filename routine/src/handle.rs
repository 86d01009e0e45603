//! `RoutineHandle`: cancelling a routine, watching its state and learning how it ended.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::outcome::Outcome;
use crate::state::{RoutineState, StateCell};

/// A started routine: cancel it or wait for it to end.
///
/// Dropping the handle does not cancel the routine (as with `tokio::spawn`).
#[derive(Debug)]
pub struct RoutineHandle {
    number: u64,
    name: Option<Arc<str>>,
    /// Cancels the routine (a child of the runner's shutdown).
    cancel: CancellationToken,
    /// The outcome's channel, or the outcome once [`RoutineHandle::is_finished`] saw it.
    outcome: Mutex<Received>,
    /// The routine's state, set by its task.
    state: Arc<StateCell>,
}

/// What a handle has received of its outcome.
#[derive(Debug)]
enum Received {
    /// Not yet looked at: the channel it comes on.
    Waiting(oneshot::Receiver<Outcome>),
    /// Taken from the channel.
    Arrived(Outcome),
}

impl RoutineHandle {
    /// The handle of a started routine, cancelled by `cancel`, whose task sends its
    /// outcome to `outcome`.
    pub(crate) fn new(
        number: u64,
        name: Option<Arc<str>>,
        cancel: CancellationToken,
        outcome: oneshot::Receiver<Outcome>,
        state: Arc<StateCell>,
    ) -> Self {
        Self {
            number,
            name,
            cancel,
            outcome: Mutex::new(Received::Waiting(outcome)),
            state,
        }
    }

    /// The handle of a routine that ended before it started, with `outcome`.
    pub(crate) fn finished(number: u64, name: Option<Arc<str>>, outcome: Outcome) -> Self {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let state = Arc::new(StateCell::closed(RoutineState::Stopped(outcome.clone())));
        Self {
            number,
            name,
            cancel,
            outcome: Mutex::new(Received::Arrived(outcome)),
            state,
        }
    }

    /// The routine's process-wide number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The routine's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The routine's state now, and each change of it: waiting for its lease (and for
    /// whom), holding it, backing off, stopped.
    ///
    /// The receiver always holds the latest state, whatever was missed; it keeps working
    /// after the handle is dropped or joined, and after the routine stopped (its last
    /// value is then [`RoutineState::Stopped`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use leasehold::{MemoryBackend, RoutineState, RunOptions, Runner};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Runner::with_backend(MemoryBackend::new());
    /// let handle = runner.run_named(
    ///     "report",
    ///     |ctx| async move { ctx.cancelled().await },
    ///     RunOptions::keep_running_one_instance(),
    /// );
    /// let mut state = handle.state();
    /// state.wait_for(RoutineState::is_holding).await.unwrap();
    /// runner.shutdown().await;
    /// # }
    /// ```
    pub fn state(&self) -> watch::Receiver<RoutineState> {
        self.state.subscribe()
    }

    /// Asks this routine to stop: its [`Context`](crate::Context) is cancelled and, for a
    /// routine kept running, it is not restarted. Other instances in the cluster are not
    /// affected; one of them may take over. Returns at once; await
    /// [`RoutineHandle::join`] to wait for the routine to end and its lease to be
    /// released.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A cancellation token that cancels this routine when cancelled, like [`RoutineHandle::cancel`].
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether the routine has ended, including when its task was dropped with its
    /// runtime ([`Outcome::Aborted`]).
    pub fn is_finished(&self) -> bool {
        let mut received = self
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outcome = match &mut *received {
            Received::Arrived(_) => return true,
            Received::Waiting(receiver) => match receiver.try_recv() {
                Ok(outcome) => outcome,
                Err(oneshot::error::TryRecvError::Closed) => Outcome::Aborted,
                Err(oneshot::error::TryRecvError::Empty) => return false,
            },
        };
        *received = Received::Arrived(outcome);
        true
    }

    /// Waits until the routine has ended (and released its lease) and says how.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: dropping the future loses the outcome (the routine keeps running).
    pub async fn join(self) -> Outcome {
        let received = self
            .outcome
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match received {
            Received::Arrived(outcome) => outcome,
            Received::Waiting(receiver) => receiver.await.unwrap_or(Outcome::Aborted),
        }
    }
}
