//! Launching a routine: spawning the task that runs it (plainly or under a lease) in the
//! caller's span and Sentry hub and reports its outcome to the handle that controls it.

use std::sync::Arc;

use leasehold_core::{Error, LockKey};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::backend_slot::BackendSlot;
use crate::events::EventKind;
use crate::handle::RoutineHandle;
use crate::instance::Instance;
use crate::options::ScheduleOptions;
use crate::outcome::Outcome;
use crate::schedule::Schedule;
use crate::state::RoutineState;
use crate::task::{RoutineFn, Task};

/// The lease a named routine runs under: its key, where the backend comes from, and,
/// for a scheduled routine, its schedule.
pub(crate) struct LeasePlan {
    pub(crate) key: LockKey,
    pub(crate) backend: BackendSlot,
    pub(crate) schedule: Option<ScheduleOptions>,
}

/// Spawns the task of `task`'s routine on `runtime` and returns the handle that controls
/// it. The task runs `routine` under `lease`, or plainly without one, and reports the
/// outcome to the handle.
///
/// The task is built here, not when first polled: the span and the Sentry hub must be
/// taken from the *caller's* context, not from whatever thread first polls the task.
pub(crate) fn launch(
    task: Task,
    routine: RoutineFn,
    lease: Option<LeasePlan>,
    runtime: &tokio::runtime::Handle,
) -> RoutineHandle {
    let shared = Arc::clone(task.shared());
    let (outcome_tx, outcome_rx) = oneshot::channel();
    let handle = RoutineHandle::new(
        task.number(),
        task.name().cloned(),
        task.cancel().clone(),
        outcome_rx,
        task.state_cell(),
    );
    let span = tracing::info_span!(
        "routine",
        number = task.number(),
        name = task.name().map(|name| &**name).unwrap_or_default()
    );
    let run = async move {
        let outcome = match lease {
            None => task.run_plain(routine).await,
            Some(LeasePlan {
                key,
                backend,
                schedule: None,
            }) => Instance::new(&task, key, backend).run(routine).await,
            Some(LeasePlan {
                key,
                backend,
                schedule: Some(schedule),
            }) => match Schedule::new(&task, key, backend, schedule, routine) {
                Some(schedule) => schedule.run().await,
                None => Outcome::Failed(Arc::new(Error::config("schedule", "no schedule"))),
            },
        };
        tracing::debug!(?outcome, "routine stopped");
        task.emit(EventKind::Stopped);
        task.set_state(RoutineState::Stopped(outcome.clone()));
        // The handle may have been dropped: nobody waits for the outcome.
        let _ = outcome_tx.send(outcome);
    }
    .instrument(span);
    shared.spawn_routine(crate::report::bind_caller_hub(run), runtime);
    handle
}
