//! The keys a scheduled routine uses: its run slots (the name, or `<name>#<i>` for
//! several instances), checked before it starts. The name's record lives on the name.

use leasehold_core::{Error, LockKey, Result};

use crate::options::ScheduleOptions;
use crate::schedule::record::MAX_RUNS;

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
    if options.timing.is_none() {
        return Err(Error::config(
            "schedule",
            "schedule settings given without RunOptions::every or RunOptions::cron",
        ));
    }
    if options.instances > MAX_RUNS {
        return Err(Error::config(
            "instances",
            format!(
                "{} instances asked; at most {MAX_RUNS} runs of a scheduled routine can be recorded at once",
                options.instances
            ),
        ));
    }
    slot_keys(name, options.instances)?;
    Ok(())
}
