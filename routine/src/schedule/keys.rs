//! The keys a scheduled routine uses: one claim per fire (`<name>@<fire>`) and its run
//! slots (the name, or `<name>#<i>` for several instances), checked before it starts.

use std::time::{Duration, SystemTime};

use leasehold_core::{Error, LockKey, Result};

use crate::options::ScheduleOptions;
use crate::schedule::spec::fire_id;

/// The key of fire `fire` of the routine named `name`.
pub(crate) fn fire_key(name: &LockKey, fire: SystemTime) -> Result<LockKey> {
    LockKey::new(format!("{}@{}", name.as_str(), fire_id(fire)))
}

/// The lease slots runs take: the name for one instance, `<name>#<i>` for more.
pub(crate) fn slot_keys(name: &LockKey, instances: u32) -> Result<Vec<LockKey>> {
    if instances <= 1 {
        return Ok(vec![name.clone()]);
    }
    (0..instances)
        .map(|slot| LockKey::new(format!("{}#{slot}", name.as_str())))
        .collect()
}

/// Checks that the keys the schedule will use are valid, before the routine starts.
pub(crate) fn check(name: &LockKey, options: &ScheduleOptions) -> Result<()> {
    if let Some(error) = &options.error {
        return Err(Error::config("schedule", error.clone()));
    }
    let Some(timing) = &options.timing else {
        return Err(Error::config(
            "schedule",
            "schedule settings given without RunOptions::every or RunOptions::cron",
        ));
    };
    // The longest fire name: a fraction of a second, if the schedule has one.
    let sample = timing
        .next_after(SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    fire_key(name, sample + Duration::from_nanos(1))?;
    slot_keys(name, options.instances)?;
    Ok(())
}
