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
    /// Boxed: the plan is captured by the routine's task and keeps its place there for
    /// as long as the routine runs, and most routines have no schedule (176 bytes).
    pub(crate) schedule: Option<Box<ScheduleOptions>>,
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
            }) => match Schedule::new(&task, key, backend, *schedule, routine) {
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

#[cfg(test)]
mod sizes {
    //! What a held routine keeps for as long as it runs: its task's `Instance::run`
    //! future (the largest of a routine task's futures) and the `Context` it is handed.
    //! They were 1,776 and 72 bytes before issue 20's round on 100,000 routines (see
    //! BENCHMARKS.md); the budgets below leave room for a toolchain's few bytes.

    use super::*;
    use crate::config::RunnerConfig;
    use crate::options::Mode;
    use crate::shared::{Setup, Shared};

    #[test]
    fn a_held_routine_keeps_within_its_memory_budget() {
        let config = RunnerConfig::defaults(std::time::Duration::from_secs(5));
        let shared = Arc::new(Shared::new(config.clone(), Setup::default()));
        let task = Task::new(shared, 1, None, Mode::KeepRunning, Arc::new(config));
        let backend: Arc<dyn leasehold_core::LockBackend> =
            Arc::new(leasehold_core::MemoryBackend::new());
        let key = LockKey::new("k").expect("a valid name");
        let routine: RoutineFn = Box::new(|_| Box::pin(async {}));
        let instance = Instance::new(&task, key, BackendSlot::Ready(backend)).run(routine);
        let size = std::mem::size_of_val(&instance);
        assert!(size <= 1_536, "Instance::run is {size} bytes");
        let context = std::mem::size_of::<crate::Context>();
        assert!(context <= 24, "Context is {context} bytes");
    }
}
