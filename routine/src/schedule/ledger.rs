//! Claiming fires in the name's [`FireRecord`]: who runs which fire is decided by one
//! compare-and-set on the record, guarded by the fencing token of the name's lease, not
//! by the members' clocks.
//!
//! With one instance the run holds the name's lease, so it claims and finishes under
//! that lease. With several, a run holds a slot (`<name>#<i>`) and takes the name's
//! lease only for the moment of each record write.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leasehold_core::{Error, FencingToken, LockBackend, LockKey, RecordWrite, Result};
use tokio::time::Instant;

use super::record::{FireRecord, Running};
use super::spec::{MissedFires, Timing, fire_id};
use crate::options::ScheduleOptions;

/// How many times a record write is retried after a conflict before giving up: a
/// conflict means another member wrote between our read and write, which with the
/// name's lease held can only be a holder that lost it.
const WRITE_TRIES: usize = 4;

/// How many earlier fires a claim looks at for one still unclaimed.
const MAX_CATCH_UP_STEPS: usize = 1024;

/// What a claim decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Run this fire now: the one asked for, a missed one caught up first, or one whose
    /// run was cut off, retried.
    Run(SystemTime),
    /// The fire asked for was claimed already.
    Taken,
}

/// A run of another member found cut off: retried here or recorded as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interrupted {
    pub(crate) fire: SystemTime,
    pub(crate) retried: bool,
}

/// Everything the record steps need, owned, so a run's future can finish its fire.
#[derive(Clone)]
pub(crate) struct Ledger {
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) name: LockKey,
    pub(crate) slots: Arc<[LockKey]>,
    pub(crate) options: ScheduleOptions,
    pub(crate) timing: Timing,
    pub(crate) request_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) holder: Arc<str>,
    /// Fires at or before this are before this member's schedule began: not caught up.
    pub(crate) since: SystemTime,
}

impl Ledger {
    async fn read(&self) -> Result<(Option<Vec<u8>>, FireRecord)> {
        let bytes =
            tokio::time::timeout(self.request_timeout, self.backend.read_record(&self.name))
                .await
                .map_err(|_| {
                    Error::timeout(self.backend.name(), "read_record", self.request_timeout)
                })??;
        let record = match &bytes {
            Some(bytes) => FireRecord::decode(&self.name, bytes)?,
            None => FireRecord::default(),
        };
        Ok((bytes, record))
    }

    async fn write(
        &self,
        token: FencingToken,
        expected: Option<&[u8]>,
        record: &FireRecord,
    ) -> Result<RecordWrite> {
        let value = record.encode();
        tokio::time::timeout(
            self.request_timeout,
            self.backend
                .write_record(&self.name, token, expected, &value),
        )
        .await
        .map_err(|_| Error::timeout(self.backend.name(), "write_record", self.request_timeout))?
    }

    /// Claims the fire to run for `fire` (this member's fire, by its clock, at `now`),
    /// holding the name's lease with `token`, for the run holding slot `slot` with
    /// `slot_token`. Runs found cut off are retried or recorded as failed on the way.
    ///
    /// `Err(Error::Lost)` if the name's lease is no longer ours.
    pub(crate) async fn claim(
        &self,
        token: FencingToken,
        slot: u32,
        slot_token: FencingToken,
        fire: SystemTime,
        now: SystemTime,
    ) -> Result<(Claim, Vec<Interrupted>)> {
        for _ in 0..WRITE_TRIES {
            let (bytes, record) = self.read().await?;
            // Our own claim, from a write whose answer was lost (a resent write then
            // reports a conflict with our own value).
            if let Some(ours) = record
                .running
                .iter()
                .find(|run| run.slot == slot && run.token == slot_token)
            {
                return Ok((Claim::Run(ours.fire), Vec::new()));
            }
            let mut next = record.clone();
            let mut interrupted = Vec::new();
            for run in &record.running {
                if !self.cut_off(run, token).await {
                    continue;
                }
                next.running.retain(|other| other != run);
                let retried = interrupted.iter().all(|i: &Interrupted| !i.retried)
                    && self.options.retry_interrupted.is_some_and(|within| {
                        now.duration_since(run.fire).unwrap_or_default() <= within
                    });
                if !retried {
                    next.failed = next.failed.max(Some(run.fire));
                }
                interrupted.push(Interrupted {
                    fire: run.fire,
                    retried,
                });
            }
            let target = match interrupted.iter().find(|i| i.retried) {
                Some(retry) => Some(retry.fire),
                None if record.is_claimed(fire) => None,
                None => Some(self.pick(&record, fire, now)),
            };
            if let Some(target) = target {
                next.claim(target);
                next.running.push(Running {
                    fire: target,
                    slot,
                    token: slot_token,
                });
            }
            if next == record {
                return Ok((Claim::Taken, interrupted));
            }
            match self.write(token, bytes.as_deref(), &next).await? {
                RecordWrite::Written => {
                    let claim = target.map_or(Claim::Taken, Claim::Run);
                    return Ok((claim, interrupted));
                }
                RecordWrite::Fenced => return Err(Error::lost(&self.name)),
                RecordWrite::Conflict { .. } => {
                    tracing::debug!(fire = %fire_id(fire), "schedule record changed under us; reading it again");
                }
                _ => {}
            }
        }
        // Every write conflicted: other writers keep changing the record while we
        // hold the name, which only a holder that lost the lease can do.
        tracing::warn!(
            tries = WRITE_TRIES,
            "the schedule record kept changing under our writes; taking the name's lease as lost"
        );
        Err(Error::lost(&self.name))
    }

    /// Whether `run` was cut off: with one instance every run listed is over once we hold
    /// the name (with a token of our own); with several, a run whose slot is no longer
    /// held with its token. A slot the backend cannot describe counts as running.
    async fn cut_off(&self, run: &Running, token: FencingToken) -> bool {
        if self.slots.len() <= 1 {
            return run.token != token;
        }
        let Some(slot) = self.slots.get(run.slot as usize) else {
            return true;
        };
        match tokio::time::timeout(self.request_timeout, self.backend.describe(slot)).await {
            Ok(Ok(None)) => true,
            Ok(Ok(Some(info))) => info.fencing_token.is_some_and(|held| held != run.token),
            _ => false,
        }
    }

    /// The fire to run for `fire`: `fire` itself, or with [`MissedFires::RunEach`]`(n)`
    /// the oldest of the `n - 1` newest fires before it, after `since` (where this
    /// member's schedule began) and within the late limit, that no member claimed (the
    /// later ones follow, one claim each).
    fn pick(&self, record: &FireRecord, fire: SystemTime, now: SystemTime) -> SystemTime {
        let MissedFires::RunEach(limit) = self.options.missed else {
            return fire;
        };
        // `fire` itself is one of the `limit` fires a catch-up may run.
        let earlier = (limit.max(1) - 1) as usize;
        if earlier == 0 {
            return fire;
        }
        let oldest = now
            .checked_sub(self.options.late_limit())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut from = self.since.max(
            oldest
                .checked_sub(Duration::from_nanos(1))
                .unwrap_or(oldest),
        );
        let mut unclaimed = std::collections::VecDeque::with_capacity(earlier);
        // Bounded: a schedule far finer than the late limit is not walked through whole.
        for _ in 0..MAX_CATCH_UP_STEPS {
            match self.timing.next_after(from) {
                Some(missed) if missed < fire => {
                    if !record.is_claimed(missed) {
                        if unclaimed.len() == earlier {
                            unclaimed.pop_front();
                        }
                        unclaimed.push_back(missed);
                    }
                    from = missed;
                }
                _ => break,
            }
        }
        unclaimed.front().copied().unwrap_or(fire)
    }

    /// Takes `fire`'s run out of the record once it ended. Holding the name's lease
    /// (`token`) with one instance; with several, the name's lease is taken for the
    /// write. A run that cannot be recorded as ended stays listed, and is later found cut
    /// off.
    pub(crate) async fn finish(
        &self,
        token: Option<FencingToken>,
        slot: u32,
        slot_token: FencingToken,
        fire: SystemTime,
    ) {
        let ended = Running {
            fire,
            slot,
            token: slot_token,
        };
        let result = match token {
            Some(token) => self.remove(token, ended).await,
            None => {
                let deadline = Instant::now() + self.lease_ttl;
                self.with_name(deadline, |token| self.remove(token, ended))
                    .await
                    .and_then(|done| {
                        done.ok_or_else(|| {
                            Error::timeout(self.backend.name(), "finish a fire", self.lease_ttl)
                        })
                    })
                    .and_then(|result| result)
            }
        };
        if let Err(error) = result {
            tracing::warn!(fire = %fire_id(fire), error = %error.chain(), "the end of this run could not be recorded; it will count as cut off");
        }
    }

    async fn remove(&self, token: FencingToken, ended: Running) -> Result<()> {
        for _ in 0..WRITE_TRIES {
            let (bytes, record) = self.read().await?;
            if !record.running.contains(&ended) {
                return Ok(());
            }
            let mut next = record;
            next.running.retain(|run| *run != ended);
            match self.write(token, bytes.as_deref(), &next).await? {
                RecordWrite::Written => return Ok(()),
                RecordWrite::Fenced => return Err(Error::lost(&self.name)),
                _ => {}
            }
        }
        // Every write conflicted: other writers keep changing the record while we
        // hold the name, which only a holder that lost the lease can do.
        tracing::warn!(
            tries = WRITE_TRIES,
            "the schedule record kept changing under our writes; taking the name's lease as lost"
        );
        Err(Error::lost(&self.name))
    }

    /// Runs `step` holding the name's lease, taken for it (waiting for it until
    /// `deadline`) and released after. `Ok(None)` if the lease was not had in time.
    pub(crate) async fn with_name<'s, T, F, Fut>(
        &'s self,
        deadline: Instant,
        step: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: std::future::Future<Output = T> + 's,
    {
        loop {
            let released = self.backend.released(&self.name);
            let acquire = tokio::time::timeout(
                self.request_timeout,
                self.backend
                    .try_acquire_as(&self.name, self.lease_ttl, &self.holder),
            )
            .await
            .map_err(|_| Error::timeout(self.backend.name(), "acquire", self.request_timeout))?;
            if let Some(mut lease) = acquire? {
                let result = step(lease.fencing_token()).await;
                let _ = tokio::time::timeout(self.request_timeout, lease.release()).await;
                return Ok(Some(result));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(self.retry_interval) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}
