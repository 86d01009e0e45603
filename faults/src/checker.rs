//! The checker: reads every member's events and the injected faults and reports overlaps,
//! stale steps and whether a fencing store would have rejected them, takeover times, gaps
//! and fencing-token order.
//!
//! Definitions (all times on `CLOCK_MONOTONIC`, merged across processes):
//!
//! - A *tenure* is one acquisition by one member: from its `acquired` to the first of its
//!   `lost`/`released` with that token, the member's `stopped`, or its exit. Its *work
//!   span* runs from `acquired` to its last `work` step: the time it may have been
//!   writing.
//! - *Overlap* is the time covered by two or more work spans at once.
//! - A *stale step* is a `work` event of a member while another member holds a newer
//!   token (inside that tenure). It is *fenced* if some member other than its author had
//!   already done a step with a newer token before it: a store that keeps the highest
//!   token it has seen would reject it. A paused holder may do fenced stale steps (it
//!   cannot act while frozen and may finish a step it was in on `SIGCONT`); unfenced
//!   ones, and overlap under any other fault, are safety violations.
//! - *Takeover* after a fault that ends the holder's lease
//!   ([`FaultKind::hits_holder`](super::FaultKind::hits_holder)): from the fault to the
//!   next `acquired` with a newer token. *Recovery* after a server fault, or after the
//!   holder's statements were cancelled for a while: from the fault's end (the server
//!   back, the last cancel) to the first step under a lease that is provably live after
//!   the fault: acquired after the fault began, or kept with a step later than `fault +
//!   TTL` (a lease not renewed after the fault began cannot outlive that by the runner's
//!   local deadline).
//! - A *gap* is time after the first acquisition with no tenure open, outside every
//!   fault's window (from the fault to its takeover or recovery).
//! - Fencing tokens must grow with every acquisition, in time order.

use std::time::Duration;

use super::log::{Event, EventKind, Fault, Mono, between};

pub mod fires;
#[cfg(test)]
mod tests;

/// One acquisition by one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenure {
    /// The member.
    pub member: usize,
    /// The lease's fencing token.
    pub token: u64,
    /// When it printed `acquired`.
    pub acquired: Mono,
    /// Its last work step, if any.
    pub last_work: Option<Mono>,
    /// How many steps it did.
    pub works: usize,
    /// When it ended (`lost`, `released`, `stopped` or exit), if it did.
    pub end: Option<Mono>,
}

/// A step done while another member held a newer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleStep {
    /// Who did it.
    pub member: usize,
    /// With which token.
    pub token: u64,
    /// When.
    pub at: Mono,
    /// Whether a step with a newer token by another member came before it, so a fencing
    /// store would reject it.
    pub fenced: bool,
}

/// How fast the cluster had a holder again after a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// The fault.
    pub fault: Fault,
    /// Where the measurement starts: the fault for holder faults, its end for the others.
    pub from: Mono,
    /// The new `acquired` (holder faults) or the first step under a live lease (the
    /// others), if it came.
    pub at: Option<Mono>,
    /// Who took over.
    pub by: Option<usize>,
    /// With which token.
    pub token: Option<u64>,
}

impl Takeover {
    /// The takeover (or recovery) time, if there was one.
    pub fn after(&self) -> Option<Duration> {
        self.at.map(|at| between(self.from, at))
    }
}

/// What the checker found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every tenure, by acquisition time.
    pub tenures: Vec<Tenure>,
    /// Time during which two or more members were doing work.
    pub overlap: Duration,
    /// Steps done while another member held a newer token.
    pub stale_steps: Vec<StaleStep>,
    /// One per fault, in fault order.
    pub takeovers: Vec<Takeover>,
    /// Total time without a holder outside fault windows.
    pub gap_total: Duration,
    /// The longest such stretch.
    pub gap_max: Duration,
    /// Where the longest stretch began (0 if there was none).
    pub gap_max_at: Mono,
    /// Acquisitions whose token was not greater than an earlier one: `(at, token,
    /// highest earlier token)`.
    pub token_regressions: Vec<(Mono, u64, u64)>,
}

impl Report {
    /// Stale steps that a fencing store would have accepted: safety violations.
    pub fn unfenced(&self) -> usize {
        self.stale_steps.iter().filter(|s| !s.fenced).count()
    }

    /// One line: overlap, stale steps, takeovers, gaps.
    pub fn summary(&self) -> String {
        let takeovers: Vec<String> = self
            .takeovers
            .iter()
            .map(|t| match t.after() {
                Some(after) => format!("{} {:.0} ms", t.fault.kind, ms(after)),
                None => format!("{} none", t.fault.kind),
            })
            .collect();
        format!(
            "overlap {:.1} ms, stale steps {} ({} unfenced), takeovers [{}], gaps {:.1} ms \
             (max {:.1} ms), token regressions {}, tenures {}",
            ms(self.overlap),
            self.stale_steps.len(),
            self.unfenced(),
            takeovers.join(", "),
            ms(self.gap_total),
            ms(self.gap_max),
            self.token_regressions.len(),
            self.tenures.len(),
        )
    }
}

/// Milliseconds, for reports.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Checks a run: `events` of every member (any order), the `faults` injected, the end of
/// observation (`end`: when the harness began stopping the cluster) and the lease TTL.
pub fn check(events: &[Event], faults: &[Fault], end: Mono, ttl: Duration) -> Report {
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.at);
    let tenures = tenures(&events);
    let takeovers: Vec<Takeover> = faults
        .iter()
        .map(|fault| takeover(&events, fault, ttl))
        .collect();
    let windows: Vec<(Mono, Mono)> = takeovers
        .iter()
        .map(|t| (t.fault.at, t.at.unwrap_or(end).max(t.fault.until)))
        .collect();
    let (gap_total, gap_max, gap_max_at) = gaps(&tenures, &windows, end);
    Report {
        overlap: overlap(&tenures),
        stale_steps: stale_steps(&events, &tenures, end),
        token_regressions: token_regressions(&events),
        takeovers,
        gap_total,
        gap_max,
        gap_max_at,
        tenures,
    }
}

/// Tenures from time-ordered events.
pub fn tenures(events: &[Event]) -> Vec<Tenure> {
    let mut tenures: Vec<Tenure> = Vec::new();
    let open = |tenures: &mut Vec<Tenure>, member: usize, token: u64, at: Mono| -> usize {
        match tenures
            .iter()
            .position(|t| t.member == member && t.token == token)
        {
            Some(index) => index,
            None => {
                tenures.push(Tenure {
                    member,
                    token,
                    acquired: at,
                    last_work: None,
                    works: 0,
                    end: None,
                });
                tenures.len() - 1
            }
        }
    };
    for event in events {
        match event.kind {
            EventKind::Acquired { token } => {
                open(&mut tenures, event.member, token, event.at);
            }
            EventKind::Work { token, .. } => {
                // A step printed before its `acquired` line still opens the tenure.
                let index = open(&mut tenures, event.member, token, event.at);
                tenures[index].works += 1;
                tenures[index].last_work = Some(event.at);
            }
            EventKind::Lost { token } | EventKind::Released { token } => {
                if let Some(t) = tenures
                    .iter_mut()
                    .find(|t| t.member == event.member && t.token == token)
                {
                    t.end.get_or_insert(event.at);
                }
            }
            EventKind::Stopped | EventKind::Exited => {
                for t in tenures.iter_mut().filter(|t| t.member == event.member) {
                    t.end.get_or_insert(event.at);
                }
            }
            EventKind::Cancelled { .. }
            | EventKind::FireInterrupted { .. }
            | EventKind::Other { .. }
            | EventKind::Scheduled { .. }
            | EventKind::FireStarted { .. }
            | EventKind::FireDone { .. } => {}
        }
    }
    tenures.sort_by_key(|t| t.acquired);
    tenures
}

/// Time covered by two or more work spans.
fn overlap(tenures: &[Tenure]) -> Duration {
    let mut edges: Vec<(Mono, i32)> = Vec::new();
    for t in tenures {
        if let Some(last) = t.last_work {
            edges.push((t.acquired, 1));
            edges.push((last, -1));
        }
    }
    // Ends before starts at the same instant: touching spans do not overlap.
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut active, mut since, mut total) = (0, 0, 0u64);
    for (at, delta) in edges {
        if active >= 2 {
            total += at.saturating_sub(since);
        }
        active += delta;
        since = at;
    }
    Duration::from_nanos(total)
}

fn stale_steps(events: &[Event], tenures: &[Tenure], end: Mono) -> Vec<StaleStep> {
    let works: Vec<(usize, u64, Mono)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Work { token, .. } => Some((e.member, token, e.at)),
            _ => None,
        })
        .collect();
    works
        .iter()
        .filter(|&&(member, token, at)| {
            tenures.iter().any(|t| {
                t.member != member
                    && t.token > token
                    && t.acquired <= at
                    && at <= t.end.unwrap_or(end)
            })
        })
        .map(|&(member, token, at)| StaleStep {
            member,
            token,
            at,
            fenced: works
                .iter()
                .any(|&(m, newer, before)| m != member && newer > token && before < at),
        })
        .collect()
}

/// The takeover or recovery after `fault`, from time-ordered `events` (all of them, or
/// those from the fault on).
pub fn takeover(events: &[Event], fault: &Fault, ttl: Duration) -> Takeover {
    let since = &events[events.partition_point(|e| e.at < fault.at)..];
    let (from, found) = if fault.kind.hits_holder() {
        let held = fault.token.unwrap_or(0);
        let next = since.iter().find_map(|e| match e.kind {
            EventKind::Acquired { token } if token > held => Some((e.at, e.member, token)),
            _ => None,
        });
        (fault.at, next)
    } else {
        (fault.until, recovery(since, fault, ttl))
    };
    Takeover {
        fault: fault.clone(),
        from,
        at: found.map(|f| f.0),
        by: found.map(|f| f.1),
        token: found.map(|f| f.2),
    }
}

/// The first step after a server fault (or cancelled statements) under a lease provably
/// live after it: `(at, member, token)`. `events` are time-ordered and include everything
/// from the fault on.
fn recovery(events: &[Event], fault: &Fault, ttl: Duration) -> Option<(Mono, usize, u64)> {
    let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    let proof = fault.at.saturating_add(ttl).max(fault.until);
    let live: std::collections::HashSet<(usize, u64)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Acquired { token } if e.at >= fault.at => Some((e.member, token)),
            EventKind::Work { token, .. } if e.at >= proof => Some((e.member, token)),
            _ => None,
        })
        .collect();
    events.iter().find_map(|e| match e.kind {
        EventKind::Work { token, .. }
            if e.at >= fault.until && live.contains(&(e.member, token)) =>
        {
            Some((e.at, e.member, token))
        }
        _ => None,
    })
}

/// Time in `[first acquisition, end]` covered by no tenure and no fault window: the
/// total, the longest stretch and where it began.
fn gaps(tenures: &[Tenure], windows: &[(Mono, Mono)], end: Mono) -> (Duration, Duration, Mono) {
    let Some(start) = tenures.iter().map(|t| t.acquired).min() else {
        return (Duration::ZERO, Duration::ZERO, 0);
    };
    let mut covered: Vec<(Mono, Mono)> = tenures
        .iter()
        .map(|t| (t.acquired, t.end.unwrap_or(end)))
        .chain(windows.iter().copied())
        .collect();
    covered.sort();
    let (mut cursor, mut total, mut longest, mut longest_at) = (start, 0u64, 0u64, 0);
    let mut gap = |from: Mono, to: Mono| {
        total += to - from;
        if to - from > longest {
            longest = to - from;
            longest_at = from;
        }
    };
    for (from, to) in covered {
        let from = from.min(end);
        if from > cursor {
            gap(cursor, from);
        }
        cursor = cursor.max(to.min(end));
    }
    if end > cursor {
        gap(cursor, end);
    }
    (
        Duration::from_nanos(total),
        Duration::from_nanos(longest),
        longest_at,
    )
}

fn token_regressions(events: &[Event]) -> Vec<(Mono, u64, u64)> {
    let mut highest: Option<u64> = None;
    let mut regressions = Vec::new();
    for e in events {
        if let EventKind::Acquired { token } = e.kind {
            match highest {
                Some(before) if token <= before => regressions.push((e.at, token, before)),
                _ => highest = Some(token),
            }
        }
    }
    regressions
}
