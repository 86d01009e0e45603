//! Running a claimed fire: taking the name's lease (or a slot of it), waiting for it while
//! the claim lasts unless `skip_if_held`, and running the routine under it with [`hold`].

use std::sync::Arc;
use std::time::SystemTime;

use leasehold_core::{Lease, LockBackend};
use tokio::time::Instant;

use super::keys::slot_keys;
use super::spec::fire_id;
use super::wrap::{RunBounds, wrap};
use super::{Next, Schedule, Tried};
use crate::events::{EventKind, FireSkipReason};
use crate::hold::{HoldEnd, hold};
use crate::outcome::Outcome;
use crate::state::RoutineState;

impl Schedule<'_> {
    /// Takes a run slot (waiting for one unless `skip_if_held`) and runs the claimed
    /// `fire` under it.
    ///
    /// The wait ends with the claim, at `claimed_until`: a name held all along (a
    /// keep-running routine of the same name, a run that does not end) would otherwise
    /// keep this member from every later fire, while past its claim the fire is no
    /// longer this member's to run.
    pub(super) async fn run_fire(
        &mut self,
        backend: &Arc<dyn LockBackend>,
        fire: SystemTime,
        claimed_until: Instant,
    ) -> Next {
        let slots = match slot_keys(&self.name, self.options.instances) {
            Ok(slots) => slots,
            Err(error) => return Next::Stop(Outcome::Failed(Arc::new(error))),
        };
        let config = self.task.config();
        let mut contended = false;
        loop {
            if Instant::now() >= claimed_until {
                tracing::warn!(
                    fire = %fire_id(fire),
                    "name held while the fire's claim lasted; fire skipped"
                );
                self.skipped(fire, FireSkipReason::NoLeaseInTime);
                return Next::Continue;
            }
            for slot in &slots {
                let tried = self.attempt(&**backend, slot, config.lease_ttl, None).await;
                let Some(Tried::Answered(result, sent)) = tried else {
                    return Next::Stop(self.stopped());
                };
                match result {
                    Ok(Some(lease)) => {
                        self.error_backoff.reset();
                        return self.hold_run(backend, lease, sent, fire).await;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        if let Some(next) = self.backend_error(error).await {
                            return next;
                        }
                    }
                }
            }
            if self.options.skip_if_held {
                tracing::info!(
                    fire = %fire_id(fire),
                    "name held by another run; fire skipped"
                );
                self.skipped(fire, FireSkipReason::Held);
                return Next::Continue;
            }
            if !contended {
                contended = true;
                // Who holds the (first) slot, asked once per wait, for display only.
                let describe =
                    tokio::time::timeout(config.request_timeout, backend.describe(&slots[0]));
                let info = match describe.await {
                    Ok(Ok(info)) => info,
                    _ => None,
                };
                let holder = info.as_ref().and_then(|info| info.holder.clone());
                self.task.emit(EventKind::Contended {
                    holder: holder.clone(),
                    token: info.and_then(|info| info.fencing_token),
                });
                self.task.set_state(RoutineState::Waiting { holder });
            }
            // One slot: wake on its release; more: try them all again after the retry
            // interval (a release of any of them would do).
            let released = if slots.len() == 1 {
                backend.released(&slots[0])
            } else {
                Box::pin(std::future::pending())
            };
            let task = self.task;
            tokio::select! {
                biased;
                _ = task.shared().aborted() => return Next::Stop(self.stopped()),
                _ = task.cancel().cancelled() => return Next::Stop(self.stopped()),
                _ = released => {}
                _ = tokio::time::sleep(config.retry_interval) => {}
                _ = tokio::time::sleep_until(claimed_until) => {}
            }
        }
    }

    /// Runs the routine for `fire` under `lease`, with the run's timeout and minimum hold.
    async fn hold_run(
        &mut self,
        backend: &Arc<dyn LockBackend>,
        lease: Box<dyn Lease>,
        sent: Instant,
        fire: SystemTime,
    ) -> Next {
        let bounds = RunBounds {
            timeout: self.options.timeout,
            at_least: self.options.hold_at_least,
            grace: self.task.config().grace_period,
        };
        let mut wrapped = wrap(&self.routine, fire, bounds);
        let end = hold(self.task, Arc::clone(backend), lease, sent, &mut wrapped).await;
        match end {
            HoldEnd::Returned | HoldEnd::LeaseLost => Next::Continue,
            // Logged and reported by the task; the next fire runs as scheduled.
            HoldEnd::Panicked(_) => Next::Continue,
            HoldEnd::Cancelled => Next::Stop(Outcome::Cancelled),
            HoldEnd::Aborted => Next::Stop(Outcome::Aborted),
        }
    }
}
