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
    //! Prints the sizes of a routine task's futures and what they keep (`cargo test -p
    //! leasehold --lib sizes -- --ignored --nocapture`; a release build gives the same
    //! figures within a few bytes): a held routine's task keeps the largest of them, the
    //! `Instance::run` future, for as long as it runs.

    use super::*;
    use crate::config::RunnerConfig;
    use crate::options::Mode;
    use crate::shared::{Setup, Shared};

    #[test]
    #[ignore = "prints sizes only: run with --ignored --nocapture"]
    fn print_future_sizes() {
        let config = RunnerConfig::defaults(std::time::Duration::from_secs(5));
        let shared = Arc::new(Shared::new(config.clone(), Setup::default()));
        let task = Task::new(
            Arc::clone(&shared),
            1,
            None,
            Mode::KeepRunning,
            Arc::new(config),
        );
        let backend: Arc<dyn leasehold_core::LockBackend> =
            Arc::new(leasehold_core::MemoryBackend::new());
        let key = LockKey::new("k").unwrap();
        let routine: RoutineFn = Box::new(|_| Box::pin(async {}));
        let instance = Instance::new(&task, key.clone(), BackendSlot::Ready(Arc::clone(&backend)))
            .run(routine);
        println!("Instance::run {}", std::mem::size_of_val(&instance));
        let routine: RoutineFn = Box::new(|_| Box::pin(async {}));
        let plain = task.run_plain(routine);
        println!("Task::run_plain {}", std::mem::size_of_val(&plain));
        let options = crate::RunOptions::every(std::time::Duration::from_secs(1));
        let schedule = options.schedule;
        let routine: RoutineFn = Box::new(|_| Box::pin(async {}));
        if let Some(schedule) =
            Schedule::new(&task, key, BackendSlot::Ready(backend), schedule, routine)
        {
            let run = schedule.run();
            println!("Schedule::run {}", std::mem::size_of_val(&run));
        }
        println!("Task {}", std::mem::size_of::<Task>());
        println!("RunnerConfig {}", std::mem::size_of::<RunnerConfig>());
        println!("Context {}", std::mem::size_of::<crate::Context>());
        println!(
            "Option<LeasePlan> {}",
            std::mem::size_of::<Option<LeasePlan>>()
        );
        println!("ScheduleOptions {}", std::mem::size_of::<ScheduleOptions>());
        println!("BackendSlot {}", std::mem::size_of::<BackendSlot>());
        println!("Error {}", std::mem::size_of::<leasehold_core::Error>());
        println!("Instance {}", std::mem::size_of::<Instance<'_>>());
        println!("Attempt {}", std::mem::size_of::<crate::attempt::Attempt>());
        println!("Guard {}", std::mem::size_of::<crate::guard::Guard>());
        let token = tokio_util::sync::CancellationToken::new();
        println!(
            "WaitForCancellationFuture {}",
            std::mem::size_of_val(&token.cancelled())
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let backend: Arc<dyn leasehold_core::LockBackend> =
                Arc::new(leasehold_core::MemoryBackend::new());
            let key = LockKey::new("h").unwrap();
            let lease = backend
                .try_acquire(&key, std::time::Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
            let mut routine: RoutineFn = Box::new(|_| Box::pin(async {}));
            let hold = crate::hold::hold(
                &task,
                backend,
                lease,
                tokio::time::Instant::now(),
                &mut routine,
            );
            println!("hold {}", std::mem::size_of_val(&hold));
        });
    }
}
