//! The scheduled-fire scenario: members running `RunOptions::every` with wall clocks
//! offset from each other ("clock skew"), optionally with the member that runs a fire
//! killed mid-run, judged by [`fires::check`].
//!
//! The guarantee under test (README, Guarantees): each fire runs at most once across the
//! cluster while no two members' wall clocks are further apart than `max_clock_offset`;
//! a fire whose runner dies mid-run is not run again. A negative control runs with
//! offsets beyond the bound, where duplicates must show up, so the check is known to be
//! able to fail.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::checker::fires::{self, FireParams, FireReport};
use super::checker::ms;
use super::cluster::{Cluster, ClusterConfig, ScheduleConfig};
use super::log::{EventKind, now};
use super::server::BackendKind;

/// The schedule's default tolerance (`RunOptions::tolerance`).
const TOLERANCE: Duration = Duration::from_secs(1);

/// One scheduled run of a cluster.
#[derive(Debug, Clone)]
pub struct ScheduledConfig {
    /// The `member` program.
    pub member_exe: PathBuf,
    /// Which server.
    pub backend: BackendKind,
    /// `RunOptions::every`.
    pub every: Duration,
    /// `RunOptions::max_clock_offset`.
    pub max_clock_offset: Duration,
    /// One member per entry, its wall clock offset by this many milliseconds.
    pub clock_offsets_ms: Vec<i64>,
    /// How long each run takes.
    pub run: Duration,
    /// How many periods to watch (before the kill, and again after it).
    pub fires: u32,
    /// Kill (`SIGKILL`) the member running a fire, mid-run, once, and start a
    /// replacement with its clock offset.
    pub kill: bool,
}

impl ScheduledConfig {
    /// Three members with clocks at -3 s, 0 and +3 s (within the default 10 s bound),
    /// `every(1 s)`, 250 ms runs, about ten fires, and one runner killed mid-run.
    pub fn clock_skew_with_kill(member_exe: impl Into<PathBuf>, backend: BackendKind) -> Self {
        Self {
            member_exe: member_exe.into(),
            backend,
            every: Duration::from_secs(1),
            max_clock_offset: Duration::from_secs(10),
            clock_offsets_ms: vec![-3000, 0, 3000],
            run: Duration::from_millis(250),
            fires: 10,
            kill: true,
        }
    }

    /// The negative control: the same clocks with `max_clock_offset` 1 s, so fires'
    /// claims expire before the members behind get to them; no kill.
    pub fn beyond_the_bound(member_exe: impl Into<PathBuf>, backend: BackendKind) -> Self {
        Self {
            max_clock_offset: Duration::from_secs(1),
            kill: false,
            fires: 8,
            ..Self::clock_skew_with_kill(member_exe, backend)
        }
    }

    /// The spread of the members' clocks (largest minus smallest offset).
    pub fn spread(&self) -> Duration {
        let max = self.clock_offsets_ms.iter().copied().max().unwrap_or(0);
        let min = self.clock_offsets_ms.iter().copied().min().unwrap_or(0);
        Duration::from_millis(max.abs_diff(min))
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        let offsets: Vec<String> = self
            .clock_offsets_ms
            .iter()
            .map(|o| format!("{:+}", *o as f64 / 1000.0))
            .collect();
        format!(
            "clocks {} s, max_clock_offset {}{}",
            offsets.join("/"),
            humantime::format_duration(self.max_clock_offset),
            if self.kill { ", runner SIGKILL" } else { "" }
        )
    }
}

/// What a scheduled run found.
#[derive(Debug, Clone)]
pub struct ScheduledResult {
    /// The run's configuration.
    pub config: ScheduledConfig,
    /// The lease TTL.
    pub ttl: Duration,
    /// The fire check.
    pub report: FireReport,
    /// The member killed and the fire it was running, if any.
    pub killed: Option<(usize, u64)>,
    /// How long from the kill to the next run that completed (the name's lease of the
    /// killed runner must run out first).
    pub after_kill: Option<Duration>,
}

impl ScheduledResult {
    /// What breaks the guarantee within the bound: duplicates, fires lost other than the
    /// killed runner's, unexcused misses; and a kill that missed its run. Empty if none. (For a negative control the
    /// caller asserts duplicates instead.)
    pub fn problems(&self) -> Vec<String> {
        let r = &self.report;
        let mut problems = Vec::new();
        for fire in &r.duplicates {
            problems.push(format!("fire {fire} ran {} times", r.runs[fire].len()));
        }
        let killed_fire = self.killed.map(|k| k.1);
        for fire in &r.lost {
            if Some(*fire) != killed_fire {
                problems.push(format!(
                    "fire {fire} was lost without its runner being killed"
                ));
            }
        }
        if let Some((member, fire)) = self.killed
            && !r.lost.contains(&fire)
        {
            problems.push(format!(
                "member {member} was killed running fire {fire}, but that run was not cut \
                 short (the kill missed the run)"
            ));
        }
        for fire in &r.missed_unexcused {
            problems.push(format!(
                "fire {fire} was missed while every member was up and no fault was near"
            ));
        }
        if r.expected.is_empty() {
            problems.push("no fire ran".to_owned());
        }
        problems
    }

    /// One Markdown table row (see [`markdown`]).
    pub fn row(&self) -> String {
        let r = &self.report;
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} ({} unexcused) | {} |",
            self.config.backend.name(),
            self.config.name(),
            r.expected.len(),
            r.runs.len(),
            r.run_count(),
            r.duplicates.len(),
            r.lost.len(),
            r.missed.len(),
            r.missed_unexcused.len(),
            self.after_kill
                .map_or("-".to_owned(), |d| format!("{:.0} ms", ms(d))),
        )
    }
}

/// Runs `config` on a fresh cluster and checks its fires. `Ok(None)` if the server's
/// binary is missing outside CI.
///
/// # Errors
///
/// If the cluster cannot be started, or a wait runs out (no fire runs, no member to
/// kill, no run after the kill).
pub async fn run(config: ScheduledConfig) -> anyhow::Result<Option<ScheduledResult>> {
    let mut cluster_config = ClusterConfig::new(&config.member_exe, config.backend);
    cluster_config.members = config.clock_offsets_ms.len();
    cluster_config.step = config.run;
    cluster_config.name = "scheduled".to_owned();
    cluster_config.schedule = Some(ScheduleConfig {
        every: config.every,
        max_clock_offset: config.max_clock_offset,
        clock_offsets_ms: config.clock_offsets_ms.clone(),
    });
    let ttl = cluster_config.ttl;
    let Some(mut cluster) = Cluster::start(cluster_config).await? else {
        return Ok(None);
    };
    // How long the claims are kept, and so at most how long a dead runner's leases
    // (PostgreSQL: its session's heartbeat) keep the name taken: tolerance + bound +
    // request timeout (TTL/2) + safety margin (TTL/10).
    let retention = TOLERANCE + config.max_clock_offset + ttl / 2 + ttl / 10;
    let patience = retention + ttl * 4 + Duration::from_secs(15);
    let watch = config.every * config.fires;

    let first = cluster
        .wait_for(0, patience, "a first scheduled run", |events| {
            events
                .iter()
                .find(|e| matches!(e.kind, EventKind::FireStarted { .. }))
                .map(|e| e.at)
        })
        .await?;
    let mut killed = None;
    let mut after_kill = None;
    if config.kill {
        tokio::time::sleep(watch / 2).await;
        // The next run to start: kill its member while it runs.
        let since = now();
        let (victim, fire, token) = cluster
            .wait_for(since, patience, "a run to kill", |events| {
                events.iter().find_map(|e| match e.kind {
                    EventKind::FireStarted { fire_ms, token } => Some((e.member, fire_ms, token)),
                    _ => None,
                })
            })
            .await?;
        let id = cluster.kill(victim, token).await?;
        let at = cluster.fault(id).at;
        killed = Some((victim, fire));
        let offset = config.clock_offsets_ms[victim % config.clock_offsets_ms.len()];
        cluster.add_member_with_clock_offset(offset).await?;
        let next = cluster
            .wait_for(at, patience, "a completed run after the kill", |events| {
                events.iter().find_map(|e| match e.kind {
                    EventKind::FireDone {
                        cancelled: false, ..
                    } => Some(e.at),
                    _ => None,
                })
            })
            .await?;
        after_kill = Some(super::log::between(at, next));
        tokio::time::sleep(watch / 2).await;
    } else {
        let elapsed = super::log::between(first, now());
        tokio::time::sleep(watch.saturating_sub(elapsed)).await;
    }
    // Let the members behind get to the last fires before stopping.
    tokio::time::sleep(config.spread() + TOLERANCE).await;
    let members = config.clock_offsets_ms.len();
    let run = cluster.stop().await?;
    let params = FireParams {
        period: config.every,
        tolerance: TOLERANCE,
        members,
        settle: retention + ttl + Duration::from_secs(1),
        origin: run.clock_origin,
    };
    let report = fires::check(&run.events, &run.faults, run.end, &params);
    Ok(Some(ScheduledResult {
        config,
        ttl,
        report,
        killed,
        after_kill,
    }))
}

/// The results as a Markdown section: one table row per run.
pub fn markdown(results: &[ScheduledResult]) -> String {
    let mut text = String::from(
        "| backend | clocks, bound, fault | fires expected | fires started | runs | \
         duplicates | lost | missed | kill to next completed run |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for result in results {
        let _ = writeln!(text, "{}", result.row());
    }
    text
}
