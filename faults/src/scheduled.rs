//! The scheduled-fire scenario: three members running `RunOptions::every(1 s)` with
//! wall clocks -2 s, 0 and +2 s off the system's, while the harness kills and pauses the
//! member running a fire, mid-run; judged by [`fires::check`].
//!
//! The guarantee under test (`RunOptions::every`, README): each fire is claimed in the
//! name's record with a compare-and-set under the lease's fencing token, so it starts at
//! most once whatever the clocks say; a run cut off (its member killed, or paused past its
//! lease) stays listed in the record, and the next member to take the name runs it again
//! (`retry_interrupted`); fires nobody could run meanwhile are caught up
//! (`MissedFires::RunEach`) within the catch-up window. So every fire completes exactly
//! once, and no two runs overlap.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::checker::fires::{self, FireParams, FireReport};
use super::checker::ms;
use super::cluster::{Cluster, ClusterConfig, ScheduleConfig};
use super::log::{Event, EventKind, FaultKind, Mono, now};
use super::server::BackendKind;

/// One scheduled run of a cluster.
#[derive(Debug, Clone)]
pub struct ScheduledConfig {
    /// The `member` program.
    pub member_exe: PathBuf,
    /// Which server.
    pub backend: BackendKind,
    /// `RunOptions::every`.
    pub every: Duration,
    /// One member per entry, its wall clock offset by this many milliseconds; a member
    /// killed is replaced by one with the same offset.
    pub clock_offsets_ms: Vec<i64>,
    /// How long each run takes.
    pub run: Duration,
    /// `MissedFires::RunEach(n)`.
    pub run_each: u32,
    /// `RunOptions::catch_up_window`.
    pub catch_up_window: Duration,
    /// `RunOptions::retry_interrupted`.
    pub retry_interrupted: Duration,
    /// How long faults go on, from when every member is up.
    pub duration: Duration,
    /// The time between the end of one fault and the next (kills and pauses alternate,
    /// a kill first).
    pub fault_every: Duration,
}

impl ScheduledConfig {
    /// Three members with clocks at -2 s, 0 and +2 s, `every(1 s)`, 250 ms runs,
    /// `MissedFires::RunEach(10)` within a 10 s catch-up window, `retry_interrupted(10 s)`,
    /// a kill or a pause of the member running a fire every 3 s, for `duration`.
    pub fn with_faults(
        member_exe: impl Into<PathBuf>,
        backend: BackendKind,
        duration: Duration,
    ) -> Self {
        Self {
            member_exe: member_exe.into(),
            backend,
            every: Duration::from_secs(1),
            clock_offsets_ms: vec![-2000, 0, 2000],
            run: Duration::from_millis(250),
            run_each: 10,
            catch_up_window: Duration::from_secs(10),
            retry_interrupted: Duration::from_secs(10),
            duration,
            fault_every: Duration::from_secs(3),
        }
    }

    /// The spread of the members' clocks (largest minus smallest offset).
    pub fn spread(&self) -> Duration {
        let max = self.clock_offsets_ms.iter().copied().max().unwrap_or(0);
        let min = self.clock_offsets_ms.iter().copied().min().unwrap_or(0);
        Duration::from_millis(max.abs_diff(min))
    }

    /// How late a fire may still start: the catch-up window (or the default 1 s
    /// tolerance, if larger).
    pub fn late_limit(&self) -> Duration {
        self.catch_up_window.max(Duration::from_secs(1))
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        let offsets: Vec<String> = self
            .clock_offsets_ms
            .iter()
            .map(|o| format!("{:+}", *o as f64 / 1000.0))
            .collect();
        format!(
            "clocks {} s, {} s of kills and pauses",
            offsets.join("/"),
            self.duration.as_secs()
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
    /// How many members were killed mid-run.
    pub kills: usize,
    /// How many members were paused mid-run (past the TTL).
    pub pauses: usize,
}

impl ScheduledResult {
    /// What breaks the guarantee: duplicates, lost fires, overlapping runs, runs cut off
    /// that were not retried elsewhere (a fire before the window may be recorded as
    /// failed instead: found past its retry window) or that no member reported; and a
    /// run without a
    /// kill and a pause, or without a fire retried. Empty if none.
    pub fn problems(&self) -> Vec<String> {
        let r = &self.report;
        let mut problems = Vec::new();
        for fire in &r.duplicates {
            problems.push(format!(
                "fire {fire} ran more than once: {:?}",
                r.runs[fire]
            ));
        }
        for fire in &r.lost {
            problems.push(format!(
                "fire {fire} never completed: {:?}",
                r.runs.get(fire).cloned().unwrap_or_default()
            ));
        }
        for overlap in &r.overlaps {
            problems.push(format!("runs overlapped: {overlap:?}"));
        }
        // A fire in the window must be retried; one before it (a catch-up run cut off at
        // the start) may be recorded as failed when it was found past the retry window.
        let excused = |fire: &u64| !r.window.contains(fire) && r.recorded_failed.contains(fire);
        for fire in r
            .interrupted
            .iter()
            .filter(|f| !r.retried.contains(f) && !excused(f))
        {
            problems.push(format!(
                "fire {fire} was cut off and not completed on another member: {:?}",
                r.runs[fire]
            ));
        }
        if !r.unreported.is_empty() {
            problems.push(format!(
                "fires {:?} were cut off but no member reported them interrupted",
                r.unreported
            ));
        }
        if r.window.len() < 5 {
            problems.push(format!("only {} fires in the window", r.window.len()));
        }
        if self.kills == 0 || self.pauses == 0 {
            problems.push(format!(
                "{} kills and {} pauses: the run needs at least one of each",
                self.kills, self.pauses
            ));
        }
        if r.retried.is_empty() {
            problems.push("no interrupted fire was retried".to_owned());
        }
        problems
    }

    /// One Markdown table row (see [`markdown`]).
    pub fn row(&self) -> String {
        let r = &self.report;
        let takeover = |kind| {
            r.longest_takeover(kind)
                .map_or("-".to_owned(), |d| format!("{:.0} ms", ms(d)))
        };
        format!(
            "| {} | {} | {} kills, {} pauses | {} | {} | {} | {} | {} ({} retried) | {:.0} ms | {} | {} |",
            self.config.backend.name(),
            self.config.name(),
            self.kills,
            self.pauses,
            r.window.len(),
            r.completed.len(),
            r.duplicates.len(),
            r.lost.len(),
            r.interrupted.len(),
            r.retried.len(),
            ms(r.overlap()),
            takeover(FaultKind::Kill),
            takeover(FaultKind::Pause),
        )
    }
}

/// The first `fire_started` from `since` on of a member not exited: `(member, fire_ms,
/// token, at)`.
fn running(events: &[Event], exited: &[usize]) -> Option<(usize, u64, u64, Mono)> {
    events.iter().find_map(|e| match e.kind {
        EventKind::FireStarted { fire_ms, token } if !exited.contains(&e.member) => {
            Some((e.member, fire_ms, token, e.at))
        }
        _ => None,
    })
}

/// Runs `config` on a fresh cluster and checks its fires. `Ok(None)` if the server's
/// binary is missing outside CI.
///
/// # Errors
///
/// If the cluster cannot be started, or a wait runs out (a member does not start its
/// schedule, no run starts for a fault).
pub async fn run(config: ScheduledConfig) -> anyhow::Result<Option<ScheduledResult>> {
    let mut cluster_config = ClusterConfig::new(&config.member_exe, config.backend);
    cluster_config.members = config.clock_offsets_ms.len();
    cluster_config.step = config.run;
    cluster_config.name = "scheduled".to_owned();
    cluster_config.schedule = Some(ScheduleConfig {
        every: config.every,
        missed: Some(format!("run-each:{}", config.run_each)),
        catch_up_window: Some(config.catch_up_window),
        retry_interrupted: Some(config.retry_interrupted),
        clock_offsets_ms: config.clock_offsets_ms.clone(),
    });
    let ttl = cluster_config.ttl;
    let Some(mut cluster) = Cluster::start(cluster_config).await? else {
        return Ok(None);
    };
    // Generous: these waits only end a hung run; the checker judges the timing.
    let patience = ttl * 6 + config.late_limit() + Duration::from_secs(10);
    let mut offsets = config.clock_offsets_ms.clone();
    let members = offsets.len();
    let from = cluster
        .wait_for(0, patience, "every member's schedule", |events| {
            let up: Vec<Mono> = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Scheduled { .. }))
                .map(|e| e.at)
                .collect();
            (up.len() >= members).then(|| up.into_iter().max().unwrap_or(0))
        })
        .await?;
    let until = from + u64::try_from(config.duration.as_nanos()).unwrap_or(u64::MAX);
    let (mut kills, mut pauses) = (0, 0);
    let mut exited = Vec::new();
    // The first members catch up the fires of the catch-up window before they started:
    // begin the faults once that is over.
    tokio::time::sleep(config.fault_every).await;
    while now() < until {
        let kill = kills <= pauses;
        let since = now();
        let (victim, fire, token, started) = cluster
            .wait_for(since, patience, "a run to cut off", |events| {
                running(events, &exited)
            })
            .await?;
        // Mid-run: a third of the way in (the run is only seen once it has started).
        tokio::time::sleep(config.run / 3).await;
        let finished = cluster.events().iter().any(|e| {
            e.member == victim
                && e.at >= started
                && matches!(e.kind, EventKind::FireDone { fire_ms, .. } if fire_ms == fire)
        });
        if finished {
            continue;
        }
        if kill {
            cluster.kill(victim, token).await?;
            exited.push(victim);
            kills += 1;
            let offset = offsets[victim];
            cluster.add_member_with_clock_offset(offset).await?;
            offsets.push(offset);
        } else {
            let id = cluster.pause(victim, token)?;
            pauses += 1;
            // Past the lease: the others take the name over meanwhile.
            tokio::time::sleep(ttl * 2 + Duration::from_secs(1)).await;
            cluster.resume(id)?;
        }
        tokio::time::sleep(config.fault_every).await;
    }
    // Let the fires of the faults' time be caught up before stopping.
    tokio::time::sleep(config.late_limit() + config.spread() + ttl * 2).await;
    let run = cluster.stop().await?;
    let params = FireParams {
        period: config.every,
        late_limit: config.late_limit(),
        from,
        until: until.min(run.end),
        origin: run.clock_origin,
    };
    let report = fires::check(&run.events, &run.faults, run.end, &params);
    Ok(Some(ScheduledResult {
        config,
        ttl,
        report,
        kills,
        pauses,
    }))
}

/// The results as a Markdown section: one table row per run.
pub fn markdown(results: &[ScheduledResult]) -> String {
    let mut text = String::from(
        "| backend | clocks, faults | faults | fires in window | completed once | \
         duplicates | lost | interrupted | overlap | kill to next run (max) | \
         pause to next run (max) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for result in results {
        let _ = writeln!(text, "{}", result.row());
    }
    text
}
