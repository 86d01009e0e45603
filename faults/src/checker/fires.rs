//! The scheduled-fire check: every fire in the window completed exactly once across the
//! cluster, runs cut off by a fault were retried elsewhere, and no two runs overlapped.
//!
//! Definitions (fires are wall-clock instants, UNIX milliseconds; everything else is on
//! `CLOCK_MONOTONIC`, which every member prints):
//!
//! - A *run* is one `fire_started` of a member, with its `fire_done` if it printed one.
//!   It *completed* if its `fire_done` says it was not cancelled.
//! - A run is *cut off* if it did not complete and ended before the stop: its member was
//!   killed or paused during it (the runner drops a resumed member's routine before
//!   polling it again, so it prints nothing more), or it was cancelled. A run still open
//!   at the stop is not cut off: the stop ends it.
//! - A run *ends* at its `fire_done`; without one, at the first kill or pause of its
//!   member after it started (a stopped process runs nothing; if the routine ran again
//!   after `SIGCONT` it would print `fire_done`, and that would be its end), or at the
//!   member's exit, or at the stop, whichever is first.
//! - A *duplicate* is a fire completed more than once, or started again after a run of
//!   it that was not cut off: a broken at-most-once promise (`retry_interrupted` runs a
//!   fire again only after its run was cut off).
//! - An *interrupted* fire has a run cut off; it was *retried* if a later run of it on
//!   another member completed. Members report what they find with `fire_interrupted`
//!   lines; the report counts them ([`FireReport::interrupted_reported`]).
//! - The *window*: every member's clock is the system's plus its printed
//!   `clock_offset_ms`, and the system's maps to monotonic time through
//!   [`FireParams::origin`]. A fire is in the window if the member clock furthest ahead
//!   reaches it at or after [`FireParams::from`], and the clock furthest behind reaches it
//!   by [`FireParams::until`] and at least [`FireParams::late_limit`] before the stop
//!   (later, it may still be waiting to be caught up).
//! - A fire in the window is *lost* if no run of it completed.
//! - *Overlap*: the time two runs (of any fires) were both going on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use crate::log::{Event, EventKind, Fault, FaultKind, Mono, between};

/// What the fire check needs besides the events.
#[derive(Debug, Clone, Copy)]
pub struct FireParams {
    /// The schedule's period (`RunOptions::every`).
    pub period: Duration,
    /// How late after its time a fire may still start (the catch-up window with
    /// `MissedFires::RunEach`).
    pub late_limit: Duration,
    /// The window's start: when every member was up.
    pub from: Mono,
    /// The window's end: when faults stopped.
    pub until: Mono,
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
    /// When it ended for the overlap check (see the module docs).
    pub until: Mono,
    /// Whether it was cut off before the stop.
    pub cut_off: bool,
    /// The fault that cut it off, if one did.
    pub fault: Option<FaultKind>,
}

impl FireRun {
    /// Whether the run finished its work.
    pub fn completed(&self) -> bool {
        self.ended.is_some() && !self.cancelled
    }
}

/// Two runs going on at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The earlier run's fire and member.
    pub first: (u64, usize),
    /// The later run's fire and member.
    pub second: (u64, usize),
    /// How long both went on.
    pub overlap: Duration,
}

/// What the fire check found.
#[derive(Debug, Clone, Default)]
pub struct FireReport {
    /// Every run, by fire (UNIX milliseconds).
    pub runs: BTreeMap<u64, Vec<FireRun>>,
    /// The fires in the window (see the module docs).
    pub window: Vec<u64>,
    /// Fires in the window completed exactly once.
    pub completed: Vec<u64>,
    /// Fires completed more than once, or started again after a run not cut off.
    pub duplicates: Vec<u64>,
    /// Fires in the window with no completed run.
    pub lost: Vec<u64>,
    /// Fires with a run cut off before the stop.
    pub interrupted: Vec<u64>,
    /// Interrupted fires completed later on another member.
    pub retried: Vec<u64>,
    /// Interrupted fires not retried that a member recorded as failed (reported with
    /// `retried: false`): what `retry_interrupted` does with a fire found later than its
    /// window.
    pub recorded_failed: Vec<u64>,
    /// Runs cut off without a kill or pause of their member (cancelled, e.g. a lease
    /// lost to a slow backend): a figure.
    pub cut_without_fault: Vec<u64>,
    /// `fire_interrupted` lines the members printed.
    pub interrupted_reported: usize,
    /// Interrupted fires that no member reported with `fire_interrupted`.
    pub unreported: Vec<u64>,
    /// Runs going on at once.
    pub overlaps: Vec<Overlap>,
    /// For every kill or pause of a member running a fire: the time from the fault to
    /// the next run started on another member.
    pub takeovers: Vec<(FaultKind, Duration)>,
}

impl FireReport {
    /// How many runs there were in all.
    pub fn run_count(&self) -> usize {
        self.runs.values().map(Vec::len).sum()
    }

    /// The time runs overlapped, summed.
    pub fn overlap(&self) -> Duration {
        self.overlaps.iter().map(|o| o.overlap).sum()
    }

    /// The longest takeover after a fault of `kind`.
    pub fn longest_takeover(&self, kind: FaultKind) -> Option<Duration> {
        self.takeovers
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .max()
    }

    /// One line: fires, runs, duplicates, lost, interrupted, overlap.
    pub fn summary(&self) -> String {
        format!(
            "fires in window {}, completed once {} ({} runs in all), duplicates {}, lost {}, \
             interrupted {} (retried {}, recorded failed {}, reported {}, cut off without a \
             fault {}), overlap {:.0} ms",
            self.window.len(),
            self.completed.len(),
            self.run_count(),
            self.duplicates.len(),
            self.lost.len(),
            self.interrupted.len(),
            self.retried.len(),
            self.recorded_failed.len(),
            self.interrupted_reported,
            self.cut_without_fault.len(),
            super::ms(self.overlap()),
        )
    }
}

/// Checks the scheduled runs in `events` (any order) against the `faults` injected, up
/// to `end` (when the harness began stopping the cluster).
pub fn check(events: &[Event], faults: &[Fault], end: Mono, params: &FireParams) -> FireReport {
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.at);
    let mut report = FireReport::default();
    let mut exited: HashMap<usize, Mono> = HashMap::new();
    let mut offsets: HashMap<usize, i64> = HashMap::new();
    // The fires members reported finding cut off.
    let mut reported = std::collections::BTreeSet::new();
    // The fires a member reported cut off and recorded as failed (not retried).
    let mut failed = std::collections::BTreeSet::new();
    for e in &events {
        match &e.kind {
            EventKind::Scheduled { clock_offset_ms } => {
                offsets.insert(e.member, *clock_offset_ms);
            }
            EventKind::Exited => {
                exited.entry(e.member).or_insert(e.at);
            }
            &EventKind::FireInterrupted { fire_ms, retried } => {
                report.interrupted_reported += 1;
                reported.insert(fire_ms);
                if !retried {
                    failed.insert(fire_ms);
                }
            }
            &EventKind::FireStarted { fire_ms, token } => {
                report.runs.entry(fire_ms).or_default().push(FireRun {
                    member: e.member,
                    token,
                    started: e.at,
                    ended: None,
                    cancelled: false,
                    until: end,
                    cut_off: false,
                    fault: None,
                });
            }
            &EventKind::FireDone {
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

    // Where each run ended, and whether it was cut off.
    let stops = |member: usize, after: Mono| {
        faults
            .iter()
            .filter(|f| {
                f.member == Some(member)
                    && matches!(f.kind, FaultKind::Kill | FaultKind::Pause)
                    && f.at >= after
            })
            .min_by_key(|f| f.at)
    };
    for runs in report.runs.values_mut() {
        for run in runs.iter_mut() {
            let stop = stops(run.member, run.started);
            run.until = match run.ended {
                Some(ended) => ended,
                None => stop
                    .map(|f| f.at)
                    .into_iter()
                    .chain(exited.get(&run.member).copied())
                    .chain([end])
                    .min()
                    .unwrap_or(end),
            };
            run.cut_off = !run.completed() && run.until < end;
            run.fault = stop.filter(|f| f.at <= run.until).map(|f| f.kind);
        }
        runs.sort_by_key(|r| r.started);
    }

    for (&fire, runs) in &report.runs {
        let completed = runs.iter().filter(|r| r.completed()).count();
        let restarted_after_whole_run = runs
            .iter()
            .enumerate()
            .any(|(i, run)| i + 1 < runs.len() && !run.cut_off);
        if completed > 1 || restarted_after_whole_run {
            report.duplicates.push(fire);
        }
        if let Some(cut) = runs.iter().position(|r| r.cut_off) {
            report.interrupted.push(fire);
            if !reported.contains(&fire) {
                report.unreported.push(fire);
            }
            if runs.iter().any(|r| r.fault.is_none() && r.cut_off) {
                report.cut_without_fault.push(fire);
            }
            let member = runs[cut].member;
            if runs[cut + 1..]
                .iter()
                .any(|r| r.completed() && r.member != member)
            {
                report.retried.push(fire);
            } else if failed.contains(&fire) {
                report.recorded_failed.push(fire);
            }
        }
    }

    // Overlaps: runs sorted by start, each against those started before it.
    let mut all: Vec<(u64, &FireRun)> = report
        .runs
        .iter()
        .flat_map(|(&fire, runs)| runs.iter().map(move |r| (fire, r)))
        .collect();
    all.sort_by_key(|(_, r)| r.started);
    for (i, (fire, run)) in all.iter().enumerate() {
        for (earlier_fire, earlier) in &all[..i] {
            if earlier.until > run.started {
                report.overlaps.push(Overlap {
                    first: (*earlier_fire, earlier.member),
                    second: (*fire, run.member),
                    overlap: between(run.started, earlier.until.min(run.until)),
                });
            }
        }
    }

    // Takeovers: from each kill or pause of a member running a fire to the next run
    // started elsewhere.
    for fault in faults {
        let Some(member) = fault.member else {
            continue;
        };
        if !matches!(fault.kind, FaultKind::Kill | FaultKind::Pause) {
            continue;
        }
        let next = all
            .iter()
            .filter(|(_, r)| r.member != member && r.started >= fault.at)
            .map(|(_, r)| r.started)
            .min();
        if let Some(next) = next {
            report.takeovers.push((fault.kind, between(fault.at, next)));
        }
    }

    // The window.
    let period = u64::try_from(params.period.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let (ahead, behind) = (
        offsets.values().copied().max().unwrap_or(0),
        offsets.values().copied().min().unwrap_or(0),
    );
    let origin_ms = unix_ms(params.origin.0);
    // Where on the monotonic clock a clock offset by `offset` ms shows `fire`.
    let mono_of = |fire: u64, offset: i64| -> i128 {
        let ns = (i128::from(fire) - i128::from(origin_ms) - i128::from(offset)) * 1_000_000;
        i128::from(params.origin.1) + ns
    };
    let late = i128::try_from(params.late_limit.as_nanos()).unwrap_or(i128::MAX);
    let last = i128::from(params.until).min(i128::from(end) - late);
    // The first fire the clock furthest ahead reaches at or after `from`.
    let from_ms = i128::from(origin_ms)
        + i128::from(ahead)
        + (i128::from(params.from) - i128::from(params.origin.1)).div_euclid(1_000_000);
    let Ok(from_ms) = u64::try_from(from_ms) else {
        return report;
    };
    let mut fire = from_ms.div_ceil(period) * period;
    while mono_of(fire, ahead) < i128::from(params.from) {
        fire += period;
    }
    while mono_of(fire, behind) <= last {
        report.window.push(fire);
        let completed = report
            .runs
            .get(&fire)
            .map_or(0, |runs| runs.iter().filter(|r| r.completed()).count());
        match completed {
            0 => report.lost.push(fire),
            1 => report.completed.push(fire),
            _ => {}
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
