//! `Task`: what every run of one started routine shares (its number, name, cancellation
//! and the runner's shared state), running the routine's future once with panics caught,
//! and the plain run of a routine without a lease.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use leasehold_core::FencingToken;
use tokio_util::sync::CancellationToken;

use crate::config::RunnerConfig;
use crate::context::Context;
use crate::events::EventKind;
use crate::guard::{Guard, HasDeadline, Origin};
use crate::options::Mode;
use crate::outcome::Outcome;
use crate::shared::Shared;
use crate::state::{RoutineState, StateCell};

/// A routine as the runner calls it: once for `run`, once per restart for `run_named`.
pub(crate) type RoutineFn = Box<dyn FnMut(Context) -> BoxFuture<'static, ()> + Send>;

/// One started routine, as its runs see it.
pub(crate) struct Task {
    shared: Arc<Shared>,
    number: u64,
    name: Option<Arc<str>>,
    mode: Mode,
    /// The runner's settings with the routine's own lease TTL and backoff: the runner's
    /// own, shared, for a routine without its own (most), rather than a 170-byte copy in
    /// every routine's task.
    config: Arc<RunnerConfig>,
    /// Cancelled by the handle; a child of the runner's shutdown.
    cancel: CancellationToken,
    /// What the routine is doing now, for its handle.
    state: Arc<StateCell>,
}

/// How one run of the routine's future ended.
pub(crate) enum RunEnd {
    Returned,
    Panicked(String),
}

impl Task {
    /// Routine `number`, named `name`, of the runner whose state is `shared`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        number: u64,
        name: Option<Arc<str>>,
        mode: Mode,
        config: Arc<RunnerConfig>,
    ) -> Self {
        Self {
            config,
            cancel: shared.routine_cancel(),
            shared,
            number,
            name,
            mode,
            state: Arc::new(StateCell::new(RoutineState::Starting)),
        }
    }

    /// Sets what the routine is doing now.
    pub(crate) fn set_state(&self, state: RoutineState) {
        // Kept even without receivers: a handle may subscribe later.
        self.state.modify(|now| {
            *now = state;
            true
        });
    }

    /// The routine's state, for its handle.
    pub(crate) fn state_cell(&self) -> Arc<StateCell> {
        Arc::clone(&self.state)
    }

    /// The runner's shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The routine's process-wide number.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// The routine's name, if it has one.
    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    /// The routine's settings: the runner's, with its own lease TTL and backoff
    /// (see [`RunnerConfig::for_routine`]).
    pub(crate) fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// How the routine runs.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Cancelled by the routine's handle and by shutdown.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs a routine without a lease, once.
    pub(crate) async fn run_plain(&self, mut routine: RoutineFn) -> Outcome {
        let guard = self.guard(None);
        let _end = EndOnDrop(&guard);
        let ctx = self.context(&guard, None);
        self.set_state(RoutineState::Running);
        let outcome = tokio::select! {
            biased;
            _ = self.shared.aborted() => Outcome::Aborted,
            end = self.run_routine(&mut routine, ctx) => match end {
                RunEnd::Returned if self.cancel.is_cancelled() => Outcome::Cancelled,
                RunEnd::Returned => Outcome::Returned,
                RunEnd::Panicked(message) => Outcome::Panicked(message),
            },
            _ = self.shared.hard_stopped() => {
                self.emit(EventKind::Dropped);
                Outcome::Cancelled
            }
        };
        self.end_instance(&guard).await;
        outcome
    }

    /// Ends an instance whose routine has returned or been dropped: cancels its context
    /// and drops the work it spawned through it, waiting for that unless the runner was
    /// aborted (a crash stops nothing gracefully).
    pub(crate) async fn end_instance(&self, guard: &Guard) {
        guard.end();
        tokio::select! {
            biased;
            _ = self.shared.aborted() => {}
            _ = guard.spawned_gone() => {}
        }
    }

    /// Runs the routine's future once, catching a panic.
    pub(crate) async fn run_routine(&self, routine: &mut RoutineFn, ctx: Context) -> RunEnd {
        self.emit(EventKind::Started);
        // Calling `routine` may itself panic (before it returns a future).
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| routine(ctx))) {
            Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
            Err(payload) => Err(payload),
        };
        match future {
            Ok(()) => {
                self.emit(EventKind::Returned);
                RunEnd::Returned
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                crate::report::panic(self.number, self.name.as_deref(), &message);
                self.emit(EventKind::Panicked {
                    message: message.clone(),
                });
                RunEnd::Panicked(message)
            }
        }
    }

    /// The guard of a new instance, bounded by `deadline` if it runs under a lease.
    pub(crate) fn guard(&self, deadline: Option<Arc<dyn HasDeadline>>) -> Guard {
        let origin = Origin {
            number: self.number,
            name: self.name.clone(),
            handle_cancel: self.cancel.clone(),
            shutdown: self.shared.shutdown_cancel(),
        };
        Guard::new(origin, self.cancel.child_token(), deadline)
    }

    /// The context of the instance that `guard` guards.
    pub(crate) fn context(&self, guard: &Guard, fencing: Option<FencingToken>) -> Context {
        Context {
            fencing_token: fencing,
            guard: guard.clone(),
        }
    }

    /// Broadcasts an event of this routine.
    pub(crate) fn emit(&self, kind: EventKind) {
        self.shared.emit(self.number, &self.name, kind);
    }
}

/// A task dropped before its routine stopped (its runtime went away, or the runner was
/// aborted) leaves its handle's state stopped, not stuck at what it was doing.
impl Drop for Task {
    fn drop(&mut self) {
        self.state.modify(|state| {
            if state.is_stopped() {
                return false;
            }
            *state = RoutineState::Stopped(Outcome::Aborted);
            true
        });
        // Receivers learn that no change will come.
        self.state.close();
    }
}

/// Ends an instance whose future was dropped before it could end it (its task dropped
/// with the runtime): the work it spawned must not outlive it.
pub(crate) struct EndOnDrop<'a>(pub(crate) &'a Guard);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
