//! Running a fire: taking the name's lease (or a slot of it), waiting for it within the
//! fire's late limit unless `skip_if_held`, claiming the fire in the name's record
//! ([`Ledger::claim`]) and running the routine under the lease with [`hold`].

use std::sync::Arc;
use std::time::SystemTime;

use futures::FutureExt;
use futures::future::BoxFuture;
use leasehold_core::{Lease, LockBackend};
use tokio::time::Instant;

use super::keys::slot_keys;
use super::ledger::{Claim, Ledger};
use super::spec::fire_id;
use super::wrap::{RunBounds, wrap};
use super::{Next, Schedule};
use crate::attempt::{Attempt, attempt};
use crate::events::{EventKind, FireSkipReason};
use crate::hold::{HoldEnd, hold};
use crate::outcome::Outcome;
use crate::state::RoutineState;

/// What to do after a slot was taken.
enum Taken {
    /// Ran `fire`; `true` if it was the fire asked for.
    Ran(Next, bool),
    /// The fire asked for was claimed elsewhere, or no claim could be made in time.
    Skipped(FireSkipReason),
    /// A backend error: back off and try again within the late limit.
    Failed(leasehold_core::Error),
}

impl Schedule<'_> {
    /// Runs `fire` (this member's fire, by its clock) unless another member claimed it:
    /// takes a run slot, waiting for one until the fire's late limit or the next fire,
    /// whichever is later, unless `skip_if_held`, claims the fire in the name's record and runs it. A missed fire
    /// being caught up, or a fire whose run was cut off on another member, may be run
    /// first under the same claim rules.
    pub(super) async fn run_fire(
        &mut self,
        backend: &Arc<dyn LockBackend>,
        fire: SystemTime,
    ) -> Next {
        let slots: Arc<[_]> = match slot_keys(&self.name, self.options.instances) {
            Ok(slots) => slots.into(),
            Err(error) => return Next::Stop(Outcome::Failed(Arc::new(error))),
        };
        let config = self.task.config();
        let ledger = Ledger {
            backend: Arc::clone(backend),
            name: self.name.clone(),
            slots: Arc::clone(&slots),
            options: self.options.clone(),
            timing: self.timing.clone(),
            request_timeout: config.request_timeout,
            lease_ttl: config.lease_ttl,
            retry_interval: config.retry_interval,
            holder: Arc::from(self.task.shared().holder_identity()),
            since: self.since,
        };
        // The wait for a slot ends with the fire's late limit or at the next fire,
        // whichever is later, on this member's clock.
        let give_up = self
            .timing
            .next_after(fire)
            .unwrap_or(fire)
            .max(fire + self.options.late_limit());
        let late_by = give_up
            .duration_since(self.options.clock.now())
            .unwrap_or_default();
        let until = Instant::now() + late_by;
        let mut contended = false;
        loop {
            if Instant::now() >= until {
                tracing::warn!(fire = %fire_id(fire), "no run slot before the fire's late limit or the next fire; fire skipped here");
                self.skipped(fire, FireSkipReason::NoLeaseInTime);
                return Next::Continue;
            }
            let mut all_held = true;
            for (slot, key) in slots.iter().enumerate() {
                let Some(Attempt { result, sent }) =
                    attempt(self.task, &**backend, key, config.lease_ttl).await
                else {
                    return Next::Stop(self.stopped());
                };
                let lease = match result {
                    Ok(Some(lease)) => lease,
                    Ok(None) => continue,
                    Err(error) => {
                        all_held = false;
                        if let Some(next) = self.backend_error(error).await {
                            return next;
                        }
                        break;
                    }
                };
                self.error_backoff.reset();
                all_held = false;
                let slot = u32::try_from(slot).unwrap_or(u32::MAX);
                match self
                    .claim_and_run(backend, &ledger, lease, sent, slot, fire, until)
                    .await
                {
                    Taken::Ran(next, true) => return next,
                    Taken::Ran(Next::Continue, false) => break,
                    Taken::Ran(next, false) => return next,
                    Taken::Skipped(reason) => {
                        self.skipped(fire, reason);
                        return Next::Continue;
                    }
                    Taken::Failed(error) => {
                        if let Some(next) = self.backend_error(error).await {
                            return next;
                        }
                        break;
                    }
                }
            }
            if !all_held {
                continue;
            }
            if self.options.skip_if_held {
                tracing::info!(fire = %fire_id(fire), "name held by another run; fire skipped");
                self.skipped(fire, FireSkipReason::Held);
                return Next::Continue;
            }
            if !contended {
                contended = true;
                self.report_contention(&**backend, &slots[0]).await;
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
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Who holds the (first) slot, asked once per wait, for display only.
    async fn report_contention(&self, backend: &dyn LockBackend, slot: &leasehold_core::LockKey) {
        let config = self.task.config();
        let describe = tokio::time::timeout(config.request_timeout, backend.describe(slot));
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

    /// With slot `slot` taken (`lease`), claims the fire to run for `fire` and runs it.
    #[allow(clippy::too_many_arguments)]
    async fn claim_and_run(
        &mut self,
        backend: &Arc<dyn LockBackend>,
        ledger: &Ledger,
        mut lease: Box<dyn Lease>,
        sent: Instant,
        slot: u32,
        fire: SystemTime,
        until: Instant,
    ) -> Taken {
        let slot_token = lease.fencing_token();
        let config = self.task.config();
        // A claim whose answer was lost is tried again under the same lease while it is
        // surely live (a new lease would make our own claim look cut off): a write that
        // went through is then found in the record as ours.
        let retry_until = sent + config.lease_ttl / 2;
        let claimed = loop {
            let now = self.options.clock.now();
            let claimed = if ledger.slots.len() <= 1 {
                ledger
                    .claim(slot_token, slot, slot_token, fire, now)
                    .await
                    .map(Some)
            } else {
                ledger
                    .with_name(until, |token| {
                        ledger.claim(token, slot, slot_token, fire, now)
                    })
                    .await
                    .and_then(|claimed| claimed.transpose())
            };
            match claimed {
                Err(error)
                    if error.is_transient()
                        && Instant::now() + config.retry_interval < retry_until =>
                {
                    tracing::debug!(error = %error.chain(), "claiming the fire failed; trying again under the same lease");
                    tokio::time::sleep(config.retry_interval / 2).await;
                }
                claimed => break claimed,
            }
        };
        let (claim, interrupted) = match claimed {
            Ok(Some(claimed)) => claimed,
            Ok(None) => {
                self.give_back(&mut *lease).await;
                return Taken::Skipped(FireSkipReason::NoLeaseInTime);
            }
            Err(error) => {
                self.give_back(&mut *lease).await;
                return Taken::Failed(error);
            }
        };
        for cut in interrupted {
            tracing::warn!(
                fire = %fire_id(cut.fire),
                retried = cut.retried,
                "a run of this routine was cut off before it ended (its member died, lost its lease or was stopped)"
            );
            self.task.emit(EventKind::FireInterrupted {
                fire: cut.fire,
                retried: cut.retried,
            });
        }
        let target = match claim {
            Claim::Taken => {
                self.give_back(&mut *lease).await;
                tracing::debug!(fire = %fire_id(fire), "fire claimed by another member");
                return Taken::Skipped(FireSkipReason::ClaimedElsewhere);
            }
            Claim::Run(target) => target,
        };
        tracing::debug!(fire = %fire_id(target), "fire claimed");
        self.task.emit(EventKind::FireClaimed { fire: target });
        let finish_token = (ledger.slots.len() <= 1).then_some(slot_token);
        let finisher = {
            let ledger = ledger.clone();
            Arc::new(move || -> BoxFuture<'static, ()> {
                let ledger = ledger.clone();
                async move { ledger.finish(finish_token, slot, slot_token, target).await }.boxed()
            })
        };
        let span = tracing::info_span!("fire", fire = %fire_id(target));
        let next = Box::pin(tracing::Instrument::instrument(
            self.hold_run(backend, lease, sent, target, finisher),
            span,
        ))
        .await;
        Taken::Ran(next, target == fire)
    }

    /// Releases a slot taken for nothing.
    async fn give_back(&self, lease: &mut dyn Lease) {
        let timeout = self.task.config().release_timeout;
        let _ = tokio::time::timeout(timeout, lease.release()).await;
    }

    /// Runs the routine for `fire` under `lease`, with the run's timeout and minimum hold;
    /// `finish` records the run's end before the lease goes.
    async fn hold_run(
        &mut self,
        backend: &Arc<dyn LockBackend>,
        lease: Box<dyn Lease>,
        sent: Instant,
        fire: SystemTime,
        finish: super::wrap::Finish,
    ) -> Next {
        let bounds = RunBounds {
            timeout: self.options.timeout,
            at_least: self.options.hold_at_least,
            grace: self.task.config().grace_period,
        };
        let mut wrapped = wrap(&self.routine, fire, bounds, finish);
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
