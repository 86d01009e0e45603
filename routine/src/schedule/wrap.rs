//! A scheduled run's routine as [`hold`](crate::hold) sees it: the user's routine in the
//! fire's task-local scope, bounded by the run's timeout, and kept (holding the lease)
//! until `hold_at_least` has passed since it started.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::time::Instant;

use crate::context::Context;
use crate::task::RoutineFn;

tokio::task_local! {
    static FIRE: SystemTime;
}

/// The scheduled instant of the fire the calling routine runs for, if it runs on a
/// schedule ([`RunOptions::every`](crate::RunOptions::every),
/// [`RunOptions::cron`](crate::RunOptions::cron)). Read it from the routine's own future
/// (a task-local value: work spawned from it does not see it).
///
/// # Examples
///
/// ```
/// async fn report(_ctx: leasehold::Context) {
///     if let Some(fire) = leasehold::scheduled_fire() {
///         // Report on the period that ends at `fire`, whatever time it is now.
///         let _ = fire;
///     }
/// }
/// ```
pub fn scheduled_fire() -> Option<SystemTime> {
    FIRE.try_with(|fire| *fire).ok()
}

/// Records the end of a run in the name's record (see `Ledger::finish`), called by the
/// run's own future while the lease is still held.
pub(crate) type Finish = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// How one run is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunBounds {
    /// Cancel the run after this; drop it `grace` later.
    pub(crate) timeout: Option<Duration>,
    /// How long the run keeps the lease at least, from its start.
    pub(crate) at_least: Duration,
    /// How long a timed-out run may take to return once cancelled.
    pub(crate) grace: Duration,
}

/// The routine as `hold` calls it for one run of `fire`: in the fire's task-local scope,
/// cancelled at the run's timeout and dropped a grace period later, and kept (holding the
/// lease) until `at_least` has passed since it started. A run that times out counts as
/// returned: its context was cancelled by the run itself, not by the lease. When the run
/// returns, times out or panics, `finish` records its end, still under the lease; a run
/// dropped by the lease's deadline is not recorded as ended, so it counts as cut off.
pub(crate) fn wrap(
    routine: &Arc<Mutex<RoutineFn>>,
    fire: SystemTime,
    bounds: RunBounds,
    finish: Finish,
) -> RoutineFn {
    let routine = Arc::clone(routine);
    let RunBounds {
        timeout,
        at_least,
        grace,
    } = bounds;
    Box::new(move |ctx: Context| {
        let started = Instant::now();
        let future = {
            let mut routine = routine
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            FIRE.sync_scope(fire, || (*routine)(ctx.clone()))
        };
        let finish = Arc::clone(&finish);
        async move {
            let run = std::panic::AssertUnwindSafe(FIRE.scope(fire, future)).catch_unwind();
            tokio::pin!(run);
            let mut panicked = None;
            let finished = match timeout {
                None => {
                    panicked = run.as_mut().await.err();
                    true
                }
                Some(timeout) => tokio::select! {
                    end = run.as_mut() => {
                        panicked = end.err();
                        true
                    }
                    () = tokio::time::sleep(timeout) => false,
                },
            };
            if !finished {
                tracing::warn!(?timeout, "run timed out; cancelling it");
                ctx.cancellation_token().cancel();
                tokio::select! {
                    end = run.as_mut() => panicked = end.err(),
                    () = tokio::time::sleep(grace) => {
                        tracing::warn!(?grace, "timed-out run did not return within the grace period; dropping it");
                    }
                }
            }
            finish().await;
            if let Some(panic) = panicked {
                std::panic::resume_unwind(panic);
            }
            if !finished {
                return;
            }
            tokio::select! {
                () = ctx.cancelled() => {}
                () = tokio::time::sleep_until(started + at_least) => {}
            }
        }
        .boxed()
    })
}
