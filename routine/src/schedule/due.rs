//! Which fires a member tries when it wakes: the fires due since it last looked that
//! are still within reach, and among them what the missed-fire policy picks.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::options::ScheduleOptions;
use crate::schedule::spec::{MissedFires, Timing};

/// The fires from `first` (the first after the last one looked at) up to `now`, oldest
/// first, without those past the late limit, and only as many as the policy may run:
/// a member far behind does not list every fire it slept through.
pub(crate) fn due(
    timing: &Timing,
    options: &ScheduleOptions,
    first: SystemTime,
    now: SystemTime,
) -> Vec<SystemTime> {
    let keep = match options.missed {
        MissedFires::RunEach(n) => n.max(1) as usize,
        _ => 1,
    };
    let oldest = now
        .checked_sub(options.late_limit())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut fire = if first < oldest {
        // Fires before `oldest` are out of reach, and there may be very many of them.
        match timing.next_after(
            oldest
                .checked_sub(Duration::from_nanos(1))
                .unwrap_or(oldest),
        ) {
            Some(fire) => fire,
            None => return Vec::new(),
        }
    } else {
        first
    };
    let mut due = VecDeque::new();
    while fire <= now {
        if due.len() == keep {
            due.pop_front();
        }
        due.push_back(fire);
        match timing.next_after(fire) {
            Some(next) => fire = next,
            None => break,
        }
    }
    due.into()
}

/// The fires of `due` a member tries, by the missed-fire policy: the newest if it is on
/// time (within the tolerance) or, when catching up, within the late limit; or each of
/// them within the late limit.
pub(crate) fn choose(
    options: &ScheduleOptions,
    due: &[SystemTime],
    now: SystemTime,
) -> Vec<SystemTime> {
    let within = |limit: Duration| {
        move |fire: &&SystemTime| now.duration_since(**fire).unwrap_or_default() <= limit
    };
    match options.missed {
        MissedFires::Skip => due
            .last()
            .filter(within(options.tolerance))
            .copied()
            .into_iter()
            .collect(),
        MissedFires::RunOnce => due
            .last()
            .filter(within(options.late_limit()))
            .copied()
            .into_iter()
            .collect(),
        MissedFires::RunEach(_) => due
            .iter()
            .filter(within(options.late_limit()))
            .copied()
            .collect(),
    }
}
