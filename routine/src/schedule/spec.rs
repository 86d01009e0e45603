//! When a scheduled routine fires: a fixed period counted from the UNIX epoch, or a cron
//! expression in a time zone; the name of each fire, the same on every member; and the
//! wall clock the schedule reads.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use leasehold_core::{Error, Result};

/// What a scheduled routine does with fires it could not start on time: its member was
/// busy with a run longer than the period, started late, or was paused.
///
/// A fire counts as missed on a member that gets to it more than the tolerance
/// ([`RunOptions::tolerance`](crate::RunOptions::tolerance)) after its time, on that
/// member's clock. Catching up only ever starts a fire that no member has claimed: the
/// name's record lists it otherwise (see [`RunOptions::every`](crate::RunOptions::every)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissedFires {
    /// Missed fires are not run; the member waits for the next fire (the default).
    #[default]
    Skip,
    /// The most recent missed fire within the catch-up window
    /// ([`RunOptions::catch_up_window`](crate::RunOptions::catch_up_window)) runs once,
    /// late; older ones are skipped.
    RunOnce,
    /// Each missed fire within the catch-up window runs, oldest first, but at most this
    /// many (the most recent ones); older ones are skipped.
    RunEach(u32),
}

/// When a schedule fires.
#[derive(Clone)]
pub(crate) enum Timing {
    /// Every multiple of the period since the UNIX epoch (UTC): the same instants on every
    /// member, whenever it started.
    Every(Duration),
    /// The instants a cron expression matches in a time zone.
    Cron {
        cron: Arc<croner::Cron>,
        zone: chrono_tz::Tz,
    },
}

impl fmt::Debug for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timing::Every(period) => write!(f, "every {period:?}"),
            Timing::Cron { cron, zone } => write!(f, "cron {:?} in {zone}", cron.as_str()),
        }
    }
}

/// Equal schedules fire at the same instants: the same period, or the same expression
/// in the same zone.
impl PartialEq for Timing {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Timing::Every(a), Timing::Every(b)) => a == b,
            (Timing::Cron { cron: a, zone: x }, Timing::Cron { cron: b, zone: y }) => {
                a.as_str() == b.as_str() && x == y
            }
            _ => false,
        }
    }
}

impl Eq for Timing {}

impl Timing {
    /// A period; zero is a configuration error.
    pub(crate) fn every(period: Duration) -> Result<Self> {
        if period.is_zero() {
            return Err(Error::config(
                "every",
                "the period must be greater than zero",
            ));
        }
        Ok(Timing::Every(period))
    }

    /// A cron expression (five fields, or six with seconds first) in `zone`.
    pub(crate) fn cron(expression: &str, zone: chrono_tz::Tz) -> Result<Self> {
        let cron = croner::Cron::from_str(expression).map_err(|error| {
            Error::config(
                "cron",
                format!("invalid expression {expression:?}: {error}"),
            )
        })?;
        Ok(Timing::Cron {
            cron: Arc::new(cron),
            zone,
        })
    }

    /// The first fire strictly after `after`, if there is one.
    pub(crate) fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self {
            Timing::Every(period) => {
                let since = after.duration_since(UNIX_EPOCH).ok()?.as_nanos();
                let period = period.as_nanos();
                let next = (since / period + 1).checked_mul(period)?;
                let secs = u64::try_from(next / 1_000_000_000).ok()?;
                let nanos = u32::try_from(next % 1_000_000_000).ok()?;
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            }
            Timing::Cron { cron, zone } => {
                let after = DateTime::<Utc>::from(after).with_timezone(zone);
                let next = cron.find_next_occurrence(&after, false).ok()?;
                Some(SystemTime::from(next.with_timezone(&Utc)))
            }
        }
    }
}

/// The name of the fire at `fire`, the same on every member: its instant in UTC, RFC 3339
/// (`2026-12-01T03:00:00Z`, with a fraction only for sub-second schedules).
pub(crate) fn fire_id(fire: SystemTime) -> String {
    DateTime::<Utc>::from(fire).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Where a schedule reads the wall time: the system clock, or one given for tests and
/// simulations.
#[derive(Clone, Default)]
pub(crate) struct WallClock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl WallClock {
    /// A clock that calls `now`.
    pub(crate) fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(now)))
    }

    /// The wall time now.
    pub(crate) fn now(&self) -> SystemTime {
        match &self.0 {
            Some(now) => now(),
            None => SystemTime::now(),
        }
    }
}

/// Clocks are equal when they are the system clock, or the same function.
impl PartialEq for WallClock {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for WallClock {}

impl fmt::Debug for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "system" })
    }
}

#[cfg(test)]
mod tests;
