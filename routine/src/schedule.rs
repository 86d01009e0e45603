//! The scheduling loop: a scheduled routine's task waits for each fire on the wall clock
//! and runs it under the name's lease with [`hold`](crate::hold::hold) (`run.rs`) unless
//! another member has run it.
//!
//! Which member runs a fire is decided by the name's record in the backend
//! (`record.rs`, `ledger.rs`), not by clocks: the run holding the name's lease adds the
//! fire to the record's claimed fires with a compare-and-set guarded by the lease's
//! fencing token, lists itself as running, and takes itself out when it ends. A member
//! whose clock is behind comes to a fire later and finds it claimed; one whose clock is
//! ahead runs it early. A run still listed when the next member takes the name was cut
//! off (its member died, lost the lease, or was stopped): it is retried or recorded as
//! failed, by [`RunOptions::retry_interrupted`](crate::RunOptions::retry_interrupted).
//!
//! The run itself uses the same machinery as every leased routine: `hold` refreshes the
//! name's lease with the keeper and drops the routine at the hard local deadline.
//! A run's timeout and [`hold_at_least`](crate::RunOptions::hold_at_least) wrap the
//! routine's future, so the hold sees one future from start to end.

mod due;
mod keys;
mod ledger;
mod record;
mod run;
pub(crate) mod spec;
mod wrap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use leasehold_core::{Error, LockBackend, LockKey};
use tokio::time::Instant;

use crate::backend_slot::BackendSlot;
use crate::backoff::Backoff;
use crate::events::{EventKind, FireSkipReason};
use crate::options::ScheduleOptions;
use crate::outcome::Outcome;
use crate::state::RoutineState;
use crate::task::{RoutineFn, Task};
pub(crate) use keys::check;
use spec::{Timing, fire_id};

pub use wrap::scheduled_fire;

/// The longest single sleep while waiting for a fire: the wall clock is read again after
/// it, so a clock stepped forward (NTP, a resumed VM) is noticed within this.
const LONGEST_NAP: Duration = Duration::from_secs(60);

/// How many fires passed during one wait a member reports with
/// [`EventKind::FireMissed`]; later ones are not reported (the warning still says the
/// member got to them late).
const MAX_MISSED_REPORTED: usize = 64;

/// What the loop does after a fire.
enum Next {
    Continue,
    Stop(Outcome),
}

/// One scheduled routine's loop on one member.
pub(crate) struct Schedule<'a> {
    task: &'a Task,
    name: LockKey,
    backend: BackendSlot,
    options: ScheduleOptions,
    timing: Timing,
    /// Shared with the wrapper each run hands to [`hold`](crate::hold::hold).
    routine: Arc<Mutex<RoutineFn>>,
    error_backoff: Backoff,
    /// Fires at or before this were past when this member's schedule began.
    since: SystemTime,
}

impl<'a> Schedule<'a> {
    pub(crate) fn new(
        task: &'a Task,
        name: LockKey,
        backend: BackendSlot,
        options: ScheduleOptions,
        routine: RoutineFn,
    ) -> Option<Self> {
        Some(Self {
            task,
            name,
            backend,
            timing: options.timing.clone()?,
            options,
            routine: Arc::new(Mutex::new(routine)),
            error_backoff: Backoff::new(),
            since: SystemTime::UNIX_EPOCH,
        })
    }

    /// Runs fires until the routine is cancelled or the schedule has no more fires.
    pub(crate) async fn run(mut self) -> Outcome {
        let started = self.options.clock.now();
        let late_limit = self.options.late_limit();
        // Fires at or before `floor` are past for this member.
        let mut floor = if self.options.delay.is_zero() {
            started.checked_sub(late_limit).unwrap_or(started)
        } else {
            (started + self.options.delay)
                .checked_sub(Duration::from_nanos(1))
                .unwrap_or(started)
        };
        self.since = floor;
        self.task.set_state(RoutineState::Waiting { holder: None });
        loop {
            let Some(next) = self.timing.next_after(floor) else {
                tracing::info!("schedule has no more fires");
                return Outcome::Returned;
            };
            if !Box::pin(self.sleep_until_wall(next)).await {
                return self.stopped();
            }
            let now = self.options.clock.now();
            let due = due::due(&self.timing, &self.options, next, now);
            // Every fire up to now has been looked at: the newest due one, or all of them
            // out of reach.
            floor = due.last().copied().unwrap_or(now);
            let chosen = due::choose(&self.options, &due, now);
            // The fires this member passed without trying them, reported up to a bound: a
            // member paused for days must not emit an event per second it slept.
            let mut passed = Some(next);
            for _ in 0..MAX_MISSED_REPORTED {
                let Some(fire) = passed.filter(|fire| *fire <= now) else {
                    break;
                };
                if !chosen.contains(&fire) {
                    self.missed(fire);
                }
                passed = self.timing.next_after(fire);
            }
            if chosen.is_empty()
                || now.duration_since(next).unwrap_or_default() > self.options.tolerance
            {
                tracing::warn!(
                    fire = %fire_id(next),
                    policy = ?self.options.missed,
                    "this member got to fires late (a long run, a late start or a pause); \
                     those it does not catch up are not run here"
                );
            }
            for fire in chosen {
                let late = self
                    .options
                    .clock
                    .now()
                    .duration_since(fire)
                    .unwrap_or_default();
                if late > late_limit {
                    tracing::warn!(fire = %fire_id(fire), ?late, "fire missed on this member");
                    self.missed(fire);
                    continue;
                }
                if let Next::Stop(outcome) = Box::pin(self.fire(fire)).await {
                    return outcome;
                }
            }
            self.task.set_state(RoutineState::Waiting { holder: None });
        }
    }

    /// Reports `fire` as passed unclaimed by this member.
    fn missed(&self, fire: SystemTime) {
        self.task.emit(EventKind::FireMissed { fire });
    }

    /// Reports `fire` as skipped on this member for `reason`.
    fn skipped(&self, fire: SystemTime, reason: FireSkipReason) {
        self.task.emit(EventKind::FireSkipped { fire, reason });
    }

    /// Runs `fire` unless another member claimed it (see `run.rs`).
    async fn fire(&mut self, fire: SystemTime) -> Next {
        let backend = match self.connect().await {
            Ok(backend) => backend,
            Err(next) => return next,
        };
        if !backend.capabilities().records {
            let error =
                Error::unsupported(backend.name(), "records, which scheduled routines need");
            tracing::error!(error = %error, "the backend cannot run scheduled routines; routine stops");
            return Next::Stop(Outcome::Failed(Arc::new(error)));
        }
        Box::pin(self.run_fire(&backend, fire)).await
    }

    /// The backend, connecting it if needed; backs off on failure.
    async fn connect(&mut self) -> std::result::Result<Arc<dyn LockBackend>, Next> {
        let config = self.task.config();
        loop {
            let connected = tokio::select! {
                biased;
                _ = self.task.shared().aborted() => None,
                _ = self.task.cancel().cancelled() => None,
                connected = self.backend.get(config.lease_ttl) => Some(connected),
            };
            match connected {
                None => return Err(Next::Stop(self.stopped())),
                Some(Ok(backend)) => return Ok(backend),
                Some(Err(error)) => {
                    if let Some(next) = self.backend_error(error).await {
                        return Err(next);
                    }
                }
            }
        }
    }

    /// Logs a backend error and waits out the error backoff. `Some` ends the routine.
    async fn backend_error(&mut self, error: Error) -> Option<Next> {
        if error.is_permanent() {
            tracing::error!(error = %error.chain(), "lease backend misconfigured; routine stops");
            return Some(Next::Stop(Outcome::Failed(Arc::new(error))));
        }
        tracing::warn!(error = %error.chain(), "lease backend request failed; backing off");
        self.task.emit(EventKind::BackendError {
            error: error.chain(),
        });
        let config = self.task.config();
        let wait = self
            .error_backoff
            .next_wait(config.backoff_min, config.backoff_max);
        self.task.set_state(RoutineState::BackingOff {
            error: error.chain(),
            until: Instant::now() + wait,
        });
        let task = self.task;
        tokio::select! {
            biased;
            _ = task.shared().aborted() => Some(Next::Stop(self.stopped())),
            _ = task.cancel().cancelled() => Some(Next::Stop(self.stopped())),
            _ = tokio::time::sleep(wait) => None,
        }
    }

    /// Sleeps until the wall clock reads `at`; `false` if stopped first.
    async fn sleep_until_wall(&self, at: SystemTime) -> bool {
        let task = self.task;
        loop {
            let Ok(wait) = at.duration_since(self.options.clock.now()) else {
                return true;
            };
            if wait.is_zero() {
                return true;
            }
            tokio::select! {
                biased;
                _ = task.shared().aborted() => return false,
                _ = task.cancel().cancelled() => return false,
                _ = tokio::time::sleep(wait.min(LONGEST_NAP)) => {}
            }
        }
    }

    fn stopped(&self) -> Outcome {
        if self.task.shared().is_aborted() {
            Outcome::Aborted
        } else {
            Outcome::Cancelled
        }
    }
}
