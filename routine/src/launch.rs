//! Launching a started routine: the task that runs it (plainly or under a lease) in the
//! caller's span and Sentry hub and reports its outcome, and the handle that controls it.

use std::future::Future;
use std::sync::Arc;

use leasehold_core::LockKey;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::backend_slot::BackendSlot;
use crate::events::EventKind;
use crate::handle::RoutineHandle;
use crate::instance::Instance;
use crate::options::Mode;
use crate::shared::Shared;
use crate::task::{RoutineFn, Task};

/// The lease a named routine runs under: its key, and where the backend comes from.
pub(crate) struct LeasePlan {
    pub(crate) key: LockKey,
    pub(crate) backend: BackendSlot,
}

/// The task of routine `number`, to spawn, and the handle that controls it. The task
/// runs `routine` under `lease`, or plainly without one.
///
/// The task is built now, not when first polled: the span and the Sentry hub must be
/// taken from the *caller's* context, not from whatever thread first polls the task.
pub(crate) fn launch(
    shared: Arc<Shared>,
    number: u64,
    name: Option<Arc<str>>,
    mode: Mode,
    routine: RoutineFn,
    lease: Option<LeasePlan>,
) -> (impl Future<Output = ()> + Send + 'static, RoutineHandle) {
    let task = Task::new(shared, number, name.clone(), mode);
    let (outcome_tx, outcome_rx) = oneshot::channel();
    let handle = RoutineHandle::new(number, name, task.cancel().clone(), outcome_rx);
    let span = tracing::info_span!(
        "routine",
        number = task.number(),
        name = task.name().map(|name| &**name).unwrap_or_default()
    );
    let run = async move {
        let outcome = match lease {
            None => task.run_plain(routine).await,
            Some(LeasePlan { key, backend }) => {
                Instance::new(&task, key, backend).run(routine).await
            }
        };
        tracing::debug!(?outcome, "routine stopped");
        task.emit(EventKind::Stopped);
        // The handle may have been dropped: nobody waits for the outcome.
        let _ = outcome_tx.send(outcome);
    }
    .instrument(span);
    (crate::report::bind_caller_hub(run), handle)
}
