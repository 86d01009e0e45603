//! The scheduled-fire check: each fire runs at most once across the cluster, and none is
//! missed while every member was up and connected for the fire's whole window.
//!
//! Definitions (fires are wall-clock instants, UNIX milliseconds; everything else is on
//! `CLOCK_MONOTONIC`):
//!
//! - A *run* is one `fire_started` of a member, with its `fire_done` if it printed one.
//!   It *completed* if its `fire_done` says it was not cancelled.
//! - A *duplicate* is a fire started more than once (by one member or several): a broken
//!   at-most-once promise.
//! - A fire is *lost* if it was started but no run of it completed, and the run ended
//!   (cancelled, or its member died) before the harness began stopping the cluster: the
//!   claim is not retried, by design, so a runner killed mid-run costs its fire.
//! - A fire's *window* is the time from the first member's wall clock reaching it to the
//!   last member's clock passing it by the tolerance (each member's clock is the
//!   system's plus its printed `clock_offset_ms`; the system's maps to monotonic time
//!   through [`FireParams::origin`]). *Expected* fires are the multiples of the period
//!   from the first fire started to the last whose window ended before the stop.
//! - A *missed* fire is expected and never started. It is *unexcused* (a broken
//!   at-least-once promise) only if at least [`FireParams::members`] members were up
//!   (from their `scheduled` line to their exit) for the whole window and no fault
//!   began within [`FireParams::settle`] before the window or during it; otherwise it
//!   counts like a gap, as a figure.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use crate::log::{Event, EventKind, Fault, Mono};

/// What the fire check needs besides the events.
#[derive(Debug, Clone, Copy)]
pub struct FireParams {
    /// The schedule's period (`RunOptions::every`).
    pub period: Duration,
    /// How late a member may start a fire (the schedule's tolerance, 1 s by default).
    pub tolerance: Duration,
    /// How many members must be up for a missed fire to count against the schedule.
    pub members: usize,
    /// How long after a fault missed fires are excused: a dead holder's leases can keep
    /// the name taken for up to the claims' retention plus a TTL.
    pub settle: Duration,
    /// The system's wall clock and `CLOCK_MONOTONIC` read together ([`crate::Run`]).
    pub origin: (SystemTime, Mono),
}

/// One run of a fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireRun {
    /// The member.
    pub member: usize,
    /// The fencing token of the name's lease it ran under.
    pub token: u64,
    /// When it started.
    pub started: Mono,
    /// When it ended, if it printed `fire_done`.
    pub ended: Option<Mono>,
    /// Whether it was cancelled instead of finishing.
    pub cancelled: bool,
}

impl FireRun {
    /// Whether the run finished its work.
    pub fn completed(&self) -> bool {
        self.ended.is_some() && !self.cancelled
    }
}

/// What the fire check found.
#[derive(Debug, Clone, Default)]
pub struct FireReport {
    /// Every run, by fire (UNIX milliseconds).
    pub runs: BTreeMap<u64, Vec<FireRun>>,
    /// The fires the cluster should have run (see the module docs).
    pub expected: Vec<u64>,
    /// Fires started more than once.
    pub duplicates: Vec<u64>,
    /// Fires started whose runs all ended uncompleted before the stop.
    pub lost: Vec<u64>,
    /// Expected fires never started.
    pub missed: Vec<u64>,
    /// Missed fires while every member was up and no fault was near: failures.
    pub missed_unexcused: Vec<u64>,
}

impl FireReport {
    /// How many runs there were in all.
    pub fn run_count(&self) -> usize {
        self.runs.values().map(Vec::len).sum()
    }

    /// One line: fires, runs, duplicates, lost, missed.
    pub fn summary(&self) -> String {
        format!(
            "fires expected {}, started {} ({} runs), duplicates {}, lost {}, missed {} \
             ({} unexcused)",
            self.expected.len(),
            self.runs.len(),
            self.run_count(),
            self.duplicates.len(),
            self.lost.len(),
            self.missed.len(),
            self.missed_unexcused.len(),
        )
    }
}

/// Checks the scheduled runs in `events` (any order) against the `faults` injected, up
/// to `end` (when the harness began stopping the cluster).
pub fn check(events: &[Event], faults: &[Fault], end: Mono, params: &FireParams) -> FireReport {
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.at);
    let mut report = FireReport::default();
    // Up intervals and clock offsets per member.
    let mut up: HashMap<usize, (Mono, Mono)> = HashMap::new();
    let mut offsets: HashMap<usize, i64> = HashMap::new();
    for e in &events {
        match e.kind {
            EventKind::Scheduled { clock_offset_ms } => {
                offsets.insert(e.member, clock_offset_ms);
                up.insert(e.member, (e.at, Mono::MAX));
            }
            EventKind::Exited => {
                if let Some(interval) = up.get_mut(&e.member) {
                    interval.1 = interval.1.min(e.at);
                }
            }
            EventKind::FireStarted { fire_ms, token } => {
                report.runs.entry(fire_ms).or_default().push(FireRun {
                    member: e.member,
                    token,
                    started: e.at,
                    ended: None,
                    cancelled: false,
                });
            }
            EventKind::FireDone {
                fire_ms, cancelled, ..
            } => {
                // The member's latest open run of the fire (`started_ns` is read just
                // before `fire_started` is printed, so it is not that line's `mono_ns`).
                if let Some(run) = report.runs.get_mut(&fire_ms).and_then(|runs| {
                    runs.iter_mut()
                        .rev()
                        .find(|r| r.member == e.member && r.ended.is_none())
                }) {
                    run.ended = Some(e.at);
                    run.cancelled = cancelled;
                }
            }
            _ => {}
        }
    }
    let exited = |member: usize| up.get(&member).map_or(Mono::MAX, |u| u.1);
    for (&fire, runs) in &report.runs {
        if runs.len() > 1 {
            report.duplicates.push(fire);
        }
        let ended_before_stop = runs
            .iter()
            .all(|r| r.ended.unwrap_or_else(|| exited(r.member)) < end && !r.completed());
        if ended_before_stop {
            report.lost.push(fire);
        }
    }

    let period = u64::try_from(params.period.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let Some(&first) = report.runs.keys().next() else {
        return report;
    };
    let (ahead, behind) = (
        offsets.values().copied().max().unwrap_or(0),
        offsets.values().copied().min().unwrap_or(0),
    );
    let tolerance = u64::try_from(params.tolerance.as_nanos()).unwrap_or(u64::MAX);
    let settle = u64::try_from(params.settle.as_nanos()).unwrap_or(u64::MAX);
    let origin_ms = unix_ms(params.origin.0);
    // Where on the monotonic clock a clock offset by `offset` ms shows `fire`.
    let mono_of = |fire: u64, offset: i64| -> Mono {
        let ns = (i128::from(fire) - i128::from(origin_ms) - i128::from(offset)) * 1_000_000;
        u64::try_from(i128::from(params.origin.1) + ns).unwrap_or(0)
    };
    let mut fire = first;
    loop {
        let from = mono_of(fire, ahead);
        let to = mono_of(fire, behind).saturating_add(tolerance);
        if to > end {
            break;
        }
        report.expected.push(fire);
        if !report.runs.contains_key(&fire) {
            report.missed.push(fire);
            let members_up = up
                .values()
                .filter(|&&(since, until)| since <= from && to <= until)
                .count();
            let fault_near = faults
                .iter()
                .any(|f| f.at <= to && f.until.saturating_add(settle) >= from);
            if members_up >= params.members && !fault_near {
                report.missed_unexcused.push(fire);
            }
        }
        fire += period;
    }
    report
}

/// A wall-clock instant in UNIX milliseconds (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
