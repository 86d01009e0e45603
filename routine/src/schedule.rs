//! The scheduling loop: a scheduled routine's task waits for each fire on the wall clock,
//! claims it cluster-wide, and runs it under the name's lease with
//! [`hold`](crate::hold::hold) (`run.rs`).
//!
//! Each fire is claimed by taking the lease `<name>@<fire>` (see `spec::fire_id`) for
//! the *retention* and not giving it back after the run: a member whose clock is behind
//! comes to the fire later and finds it claimed, so a quick run is not repeated (the
//! failure of a lock held only while the job runs). The claim is released only once
//! every member's last try at the fire is over; until then a task of its own keeps the
//! lease object, because dropping it would hand the key back early on backends that
//! clean up dropped leases in the background (etcd deletes the key, PostgreSQL unlocks
//! it), while Redis and memory would just let it expire by its TTL.
//!
//! The run itself uses the same machinery as every leased routine: `hold` refreshes the
//! name's lease with the keeper and drops the routine at the hard local deadline.
//! A run's timeout and [`hold_at_least`](crate::RunOptions::hold_at_least) wrap the
//! routine's future, so the hold sees one future from start to end.

mod due;
mod keys;
mod run;
pub(crate) mod spec;
mod wrap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use leasehold_core::{Error, Lease, LockBackend, LockKey, Result};
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend_slot::BackendSlot;
use crate::backoff::Backoff;
use crate::events::{EventKind, FireSkipReason};
use crate::options::ScheduleOptions;
use crate::outcome::Outcome;
use crate::state::RoutineState;
use crate::task::{RoutineFn, Task};
pub(crate) use keys::check;
use keys::fire_key;
use spec::{Timing, fire_id};

pub use wrap::scheduled_fire;

/// The longest single sleep while waiting for a fire: the wall clock is read again after
/// it, so a clock stepped forward (NTP, a resumed VM) is noticed within this.
const LONGEST_NAP: Duration = Duration::from_secs(60);

/// How many fires passed during one wait a member reports with
/// [`EventKind::FireMissed`]; later ones are not reported (the warning still says the
/// member got to them late).
const MAX_MISSED_REPORTED: usize = 64;

/// How one try to take a key went.
enum Tried {
    /// The backend's answer, and when the request was sent.
    Answered(Result<Option<Box<dyn Lease>>>, Instant),
    /// Not sent: past the fire's late limit.
    TooLate,
}

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
}

impl<'a> Schedule<'a> {
    pub(crate) fn new(
        task: &'a Task,
        name: LockKey,
        backend: BackendSlot,
        options: ScheduleOptions,
        routine: RoutineFn,
    ) -> Option<Self> {
        let config = task.config();
        Some(Self {
            task,
            name,
            backend,
            timing: options.timing.clone()?,
            options,
            routine: Arc::new(Mutex::new(routine)),
            error_backoff: Backoff::new(config.backoff_min, config.backoff_max),
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

    /// How long a fire's claim is kept: past every member's last try at it (see
    /// [`RunOptions::every`](crate::RunOptions::every)).
    fn retention(&self, backend: &dyn LockBackend) -> Duration {
        let config = self.task.config();
        let retention = self.options.late_limit()
            + self.options.max_clock_offset
            + config.request_timeout
            + config.safety_margin;
        backend.capabilities().effective_ttl(retention)
    }

    /// Claims `fire` and, if this member got it, runs it.
    async fn fire(&mut self, fire: SystemTime) -> Next {
        let id = fire_id(fire);
        let key = match fire_key(&self.name, fire) {
            Ok(key) => key,
            Err(error) => return Next::Stop(Outcome::Failed(Arc::new(error))),
        };
        let backend = match self.connect().await {
            Ok(backend) => backend,
            Err(next) => return next,
        };
        let retention = self.retention(&*backend);
        let claimed_until = loop {
            let not_after = fire + self.options.late_limit();
            let tried = self
                .attempt(&*backend, &key, retention, Some(not_after))
                .await;
            let (result, sent) = match tried {
                None => return Next::Stop(self.stopped()),
                Some(Tried::TooLate) => {
                    tracing::warn!(fire = %id, "fire missed on this member: no turn to claim it in time");
                    self.missed(fire);
                    return Next::Continue;
                }
                Some(Tried::Answered(result, sent)) => (result, sent),
            };
            match result {
                Ok(Some(claim)) => {
                    self.error_backoff.reset();
                    retain(claim, sent + retention, self.task);
                    tracing::debug!(fire = %id, "fire claimed");
                    self.task.emit(EventKind::FireClaimed { fire });
                    break sent + retention;
                }
                Ok(None) => {
                    self.error_backoff.reset();
                    tracing::debug!(fire = %id, "fire claimed by another member");
                    self.skipped(fire, FireSkipReason::ClaimedElsewhere);
                    return Next::Continue;
                }
                Err(error) => {
                    if let Some(next) = self.backend_error(error).await {
                        return next;
                    }
                    let late = self.options.clock.now().duration_since(fire);
                    if late.unwrap_or_default() > self.options.late_limit() {
                        tracing::warn!(fire = %id, "fire missed: the backend did not answer in time");
                        self.missed(fire);
                        return Next::Continue;
                    }
                }
            }
        };
        let span = tracing::info_span!("fire", fire = %id);
        Box::pin(
            self.run_fire(&backend, fire, claimed_until)
                .instrument(span),
        )
        .await
    }

    /// Waits for a turn among the runner's acquires, then tries `key` once for `ttl`.
    /// `None` if the routine was stopped meanwhile.
    ///
    /// With `not_after`, nothing is sent once the wall clock has passed it (the turn may
    /// come late on a runner acquiring many leases): a claim sent after the fire's late
    /// limit could outlive the retention of another member's claim.
    async fn attempt(
        &self,
        backend: &dyn LockBackend,
        key: &LockKey,
        ttl: Duration,
        not_after: Option<SystemTime>,
    ) -> Option<Tried> {
        let shared = self.task.shared();
        let config = self.task.config();
        let cancel = self.task.cancel();
        let turn = tokio::select! {
            biased;
            _ = shared.aborted() => return None,
            _ = cancel.cancelled() => return None,
            turn = shared.acquire_turn() => turn,
        };
        if not_after.is_some_and(|limit| self.options.clock.now() > limit) {
            return Some(Tried::TooLate);
        }
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            config.request_timeout,
            backend.try_acquire_as(key, ttl, shared.holder_identity()),
        );
        let result = tokio::select! {
            biased;
            _ = shared.aborted() => return None,
            _ = cancel.cancelled() => return None,
            attempt = attempt => attempt.unwrap_or_else(|_| {
                Err(Error::timeout(backend.name(), "acquire", config.request_timeout))
            }),
        };
        drop(turn);
        Some(Tried::Answered(result, sent))
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
        let wait = self.error_backoff.next_wait();
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

/// Keeps a fire's claim until `until`, then releases it, on a task of its own: the claim
/// must outlive the run, and shutdown must not wait for it. If the runtime goes away
/// first, the lease is dropped: Redis and memory keys expire by their TTL, and an etcd
/// or PostgreSQL process that exits takes its session, and the claim, with it.
fn retain(mut claim: Box<dyn Lease>, until: Instant, task: &Task) {
    let release_timeout = task.config().release_timeout;
    tokio::spawn(async move {
        tokio::time::sleep_until(until).await;
        let _ = tokio::time::timeout(release_timeout, claim.release()).await;
    });
}
