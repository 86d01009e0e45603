//! Randomized runs: many random faults, one after the other, on one long-lived cluster,
//! and their results as a Markdown table.

use std::fmt::Write as _;
use std::time::Duration;

use rand::Rng;
use rand::seq::SliceRandom as _;
use tokio::time::Instant;

use super::checker::{Report, ms};
use super::cluster::{Cluster, ClusterConfig};
use super::log::{Event, EventKind, FaultKind, Mono};
use super::scenario::{Bounds, inject_after, judge};
use super::server::BackendKind;

/// How many problems of one backend FAULTS.md lists; a measured topology (one whose
/// failovers lose writes) can have hundreds of stale steps, which its figures sum up.
const PROBLEMS_LISTED: usize = 20;

/// What a randomized run on one backend found.
#[derive(Debug, Clone)]
pub struct SoakResult {
    /// The backend.
    pub backend: BackendKind,
    /// The lease TTL.
    pub ttl: Duration,
    /// How long faults were injected.
    pub duration: Duration,
    /// The checker's report over the whole run.
    pub report: Report,
    /// The bounds it was judged against.
    pub bounds: Bounds,
    /// Broken promises (see [`judge`]) and faults that did not play out; empty if none.
    pub problems: Vec<String>,
    /// For every takeover outside its bounds, the events around its fault, and for time
    /// without a holder beyond the tolerance, the events around its longest stretch (work
    /// steps left out), for diagnosis.
    pub excerpts: Vec<String>,
}

/// Injects random faults, drawn from those valid for the backend
/// ([`FaultKind::for_backend`]) in shuffled rounds ([`FaultRounds`]: every class once per
/// round), into a cluster for `duration` and at least one whole round, replacing killed
/// and terminated members so the cluster keeps its size, then stops it and judges the
/// whole run.
/// `Ok(None)` if the server's binary is missing outside CI.
///
/// # Errors
///
/// If the cluster cannot be started. A fault that does not play out (a wait runs out)
/// ends the run early and is reported as a problem.
pub async fn soak(
    config: ClusterConfig,
    duration: Duration,
    gap_tolerance: Duration,
    rng: &mut impl Rng,
) -> anyhow::Result<Option<SoakResult>> {
    let backend = config.backend;
    let ttl = config.ttl;
    let step = config.step;
    let max_steps = usize::try_from(ttl.as_nanos() / config.step.as_nanos().max(1)).unwrap_or(3);
    let Some(mut cluster) = Cluster::start(config).await? else {
        return Ok(None);
    };
    let mut faults = FaultRounds::new(backend);
    let mut problems = Vec::new();
    let until = Instant::now() + duration;
    while Instant::now() < until || faults.rounds_done() == 0 {
        let Some(kind) = faults.next(rng) else {
            break;
        };
        // Anywhere in the refresh cycle: up to a TTL's worth of steps before the fault.
        let steps = rng.random_range(3..=max_steps.max(3));
        if let Err(error) = inject_after(&mut cluster, kind, steps).await {
            problems.push(format!("{kind} did not play out: {error:#}"));
            break;
        }
        if matches!(kind, FaultKind::Kill | FaultKind::Terminate) {
            cluster.add_member().await?;
        }
    }
    let run = cluster.stop().await?;
    let report = run.check();
    let bounds = Bounds::new(backend, ttl, step);
    problems.extend(judge(&report, &bounds, gap_tolerance));
    let mut excerpts: Vec<String> = report
        .takeovers
        .iter()
        .filter(|t| {
            let (min, max) = bounds.takeover_among(&t.fault, &report.takeovers);
            t.after().is_none_or(|after| after < min || after > max)
        })
        .map(|t| {
            let title = format!("{} (member {:?})", t.fault.kind, t.fault.member);
            excerpt(&run.events, &title, t.fault.at, ttl * 2)
        })
        .collect();
    if report.gap_max > gap_tolerance {
        let title = format!(
            "the longest time without a holder ({:.1} ms)",
            ms(report.gap_max)
        );
        excerpts.push(excerpt(&run.events, &title, report.gap_max_at, ttl * 2));
    }
    Ok(Some(SoakResult {
        backend,
        ttl,
        duration,
        report,
        bounds,
        problems,
        excerpts,
    }))
}

/// The order of a randomized run's faults: the backend's fault classes
/// ([`FaultKind::for_backend`]) in rounds, each round all of them in an order shuffled
/// with the run's generator. Unlike drawing each fault independently, no class can be
/// left out of a run by a short duration or an unlucky seed, and the order still
/// depends only on the seed.
#[derive(Debug, Clone)]
pub struct FaultRounds {
    kinds: Vec<FaultKind>,
    /// What is left of the current round, taken from the back.
    round: Vec<FaultKind>,
    rounds_begun: usize,
}

impl FaultRounds {
    /// The rounds for `backend`, none begun yet.
    pub fn new(backend: BackendKind) -> Self {
        Self {
            kinds: FaultKind::for_backend(backend),
            round: Vec::new(),
            rounds_begun: 0,
        }
    }

    /// The next fault: the next of this round, or the first of a new round shuffled with
    /// `rng`. `None` only if the backend has no fault classes.
    pub fn next(&mut self, rng: &mut impl Rng) -> Option<FaultKind> {
        if self.round.is_empty() {
            if self.kinds.is_empty() {
                return None;
            }
            self.round = self.kinds.clone();
            self.round.shuffle(rng);
            self.rounds_begun += 1;
        }
        self.round.pop()
    }

    /// How many rounds have been drawn in full.
    pub fn rounds_done(&self) -> usize {
        self.rounds_begun - usize::from(!self.round.is_empty())
    }
}

/// The events from `around` before `at` to `around` after it, without work steps, with
/// times relative to `at`.
fn excerpt(events: &[Event], title: &str, at: Mono, around: Duration) -> String {
    let around = u64::try_from(around.as_nanos()).unwrap_or(u64::MAX);
    let mut text = format!("around {title}:\n");
    for e in events
        .iter()
        .filter(|e| e.at.abs_diff(at) <= around && !matches!(e.kind, EventKind::Work { .. }))
    {
        let offset = (e.at as f64 - at as f64) / 1e6;
        let _ = writeln!(
            text,
            "  {offset:>9.1} ms  member {}: {:?}",
            e.member, e.kind
        );
    }
    text
}

/// One section per backend: per fault, how often it was injected, its takeover (or
/// recovery) times against the bound, and overall overlap, stale steps, gaps and
/// problems.
pub fn markdown(results: &[SoakResult]) -> String {
    let mut text = String::new();
    for result in results {
        let report = &result.report;
        let _ = writeln!(
            text,
            "## {} (TTL {}, {} of faults)\n",
            result.backend.name(),
            humantime::format_duration(result.ttl),
            humantime::format_duration(Duration::from_secs(result.duration.as_secs())),
        );
        let _ = writeln!(
            text,
            "| fault | count | takeover min / median / max | bound (max) |\n|---|---|---|---|"
        );
        for kind in FaultKind::for_backend(result.backend) {
            let takeovers: Vec<_> = report
                .takeovers
                .iter()
                .filter(|t| t.fault.kind == kind)
                .collect();
            if takeovers.is_empty() {
                continue;
            }
            let mut times: Vec<f64> = takeovers.iter().filter_map(|t| t.after().map(ms)).collect();
            times.sort_by(f64::total_cmp);
            let bound = takeovers
                .iter()
                .map(|t| result.bounds.takeover_among(&t.fault, &report.takeovers).1)
                .max()
                .unwrap_or_default();
            let spread = match (times.first(), times.get(times.len() / 2), times.last()) {
                (Some(min), Some(median), Some(max)) => {
                    format!("{min:.0} / {median:.0} / {max:.0} ms")
                }
                _ => "none".to_owned(),
            };
            let missing = takeovers.len() - times.len();
            let missing = if missing > 0 {
                format!(" ({missing} without takeover)")
            } else {
                String::new()
            };
            let _ = writeln!(
                text,
                "| {kind} | {} | {spread}{missing} | {:.0} ms |",
                takeovers.len(),
                ms(bound),
            );
        }
        let _ = writeln!(
            text,
            "\nOverlap {:.1} ms; stale steps {} ({} unfenced); time without a holder outside \
             fault windows {:.1} ms (longest {:.1} ms); fencing-token regressions {}; \
             tenures {}.\n",
            ms(report.overlap),
            report.stale_steps.len(),
            report.unfenced(),
            ms(report.gap_total),
            ms(report.gap_max),
            report.token_regressions.len(),
            report.tenures.len(),
        );
        if result.problems.is_empty() {
            let _ = writeln!(text, "Problems: none.\n");
        } else {
            let _ = writeln!(text, "Problems:\n");
            for problem in result.problems.iter().take(PROBLEMS_LISTED) {
                // The first line: the rest is the event dump of a failed wait.
                let first = problem.lines().next().unwrap_or_default();
                let _ = writeln!(text, "- {first}");
            }
            let more = result.problems.len().saturating_sub(PROBLEMS_LISTED);
            if more > 0 {
                let _ = writeln!(
                    text,
                    "- … and {more} more (the figures above count them all)"
                );
            }
            let _ = writeln!(text);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    fn draws(backend: BackendKind, seed: u64, count: usize) -> Vec<FaultKind> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults = FaultRounds::new(backend);
        (0..count)
            .map(|_| faults.next(&mut rng).expect("every backend has faults"))
            .collect()
    }

    #[test]
    fn every_fault_class_of_each_backend_comes_up_in_the_first_round() {
        for backend in BackendKind::all() {
            let kinds = FaultKind::for_backend(backend);
            for seed in 0..64 {
                let drawn = draws(backend, seed, 2 * kinds.len());
                for (number, round) in drawn.chunks(kinds.len()).enumerate() {
                    let classes: HashSet<_> = round.iter().copied().collect();
                    assert_eq!(
                        classes,
                        kinds.iter().copied().collect::<HashSet<_>>(),
                        "{}: round {number} with seed {seed} must hold every fault class \
                         once: {round:?}",
                        backend.name()
                    );
                }
            }
        }
    }

    #[test]
    fn the_order_is_shuffled_and_depends_only_on_the_seed() {
        for backend in BackendKind::all() {
            let count = 3 * FaultKind::for_backend(backend).len();
            assert_eq!(draws(backend, 7, count), draws(backend, 7, count));
            let orders: HashSet<Vec<FaultKind>> =
                (0..16).map(|seed| draws(backend, seed, count)).collect();
            assert!(
                orders.len() > 1,
                "{}: the rounds must be shuffled",
                backend.name()
            );
        }
        let mut faults = FaultRounds::new(BackendKind::Redis);
        let mut rng = StdRng::seed_from_u64(1);
        let classes = FaultKind::for_backend(BackendKind::Redis).len();
        for _ in 0..classes {
            assert_eq!(faults.rounds_done(), 0);
            faults.next(&mut rng);
        }
        assert_eq!(faults.rounds_done(), 1, "a run goes on until this is 1");
        faults.next(&mut rng);
        assert_eq!(faults.rounds_done(), 1);
    }
}
