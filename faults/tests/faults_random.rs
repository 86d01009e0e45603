//! The long randomized run: random faults for minutes on every backend, one long-lived
//! cluster each, judged as a whole. Ignored by default; its latest results go to
//! `FAULTS.md` at the repository root.
//!
//! ```text
//! cargo test -p leasehold-faults --test faults_random -- --ignored --nocapture
//! ROUTINE_FAULTS_MINUTES=10 ROUTINE_FAULTS_SEED=42 ROUTINE_FAULTS_BACKENDS=etcd,postgres \
//!     cargo test -p leasehold-faults --test faults_random -- --ignored --nocapture
//! ```
//!
//! A seed fixes the order of faults and of the steps between them on each backend (how
//! many faults fit in the time still depends on timing).
//!
//! After the random faults, each backend also runs the scheduled-fire scenario
//! (`faults::scheduled`: clock skew within the bound with a runner killed mid-run, and
//! the negative control beyond the bound). It is not one of the random faults: its
//! members run a schedule, not the kept-running routine, and their clocks are fixed when
//! they start, so it needs a cluster of its own.

use std::time::Duration;

use anyhow::Context as _;
use leasehold_faults::scheduled::{self, ScheduledConfig, ScheduledResult};
use leasehold_faults::soak::{self, SoakResult};
use leasehold_faults::{BackendKind, ClusterConfig};
use rand::SeedableRng as _;

/// As in the per-fault tests: no time without a holder outside fault windows.
const GAP_TOLERANCE: Duration = Duration::from_millis(5);

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("{name}={value:?} is not a whole number")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes of random faults per backend; run with --ignored (ROUTINE_FAULTS_MINUTES, ROUTINE_FAULTS_SEED)"]
async fn random_faults_for_minutes_stay_within_the_bounds_on_every_backend() -> anyhow::Result<()> {
    let minutes = env_number("ROUTINE_FAULTS_MINUTES", 2)?;
    let seed = env_number("ROUTINE_FAULTS_SEED", rand::random::<u32>().into())?;
    let only = std::env::var("ROUTINE_FAULTS_BACKENDS").ok();
    let mut results: Vec<SoakResult> = Vec::new();
    let mut schedules: Vec<ScheduledResult> = Vec::new();
    let mut schedule_problems: Vec<String> = Vec::new();
    for (index, backend) in BackendKind::all().into_iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|only| !only.split(',').any(|name| name.trim() == backend.name()))
        {
            continue;
        }
        // One generator per backend, so the order on one does not depend on how many
        // faults fitted into the time on another.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(index as u64));
        let config = ClusterConfig::new(env!("CARGO_BIN_EXE_faults-member"), backend);
        let duration = Duration::from_secs(minutes * 60);
        if let Some(result) = soak::soak(config, duration, GAP_TOLERANCE, &mut rng).await? {
            println!("{}: {}", backend.name(), result.report.summary());
            for excerpt in &result.excerpts {
                println!("{excerpt}");
            }
            results.push(result);
        }
        let exe = env!("CARGO_BIN_EXE_faults-member");
        if let Some(result) =
            scheduled::run(ScheduledConfig::clock_skew_with_kill(exe, backend)).await?
        {
            println!("{}: {}", backend.name(), result.report.summary());
            for problem in result.problems() {
                schedule_problems.push(format!("{}: {problem}", backend.name()));
            }
            schedules.push(result);
        }
        if let Some(result) =
            scheduled::run(ScheduledConfig::beyond_the_bound(exe, backend)).await?
        {
            println!("{}: {}", backend.name(), result.report.summary());
            if result.report.duplicates.is_empty() {
                schedule_problems.push(format!(
                    "{}: the negative control beyond max_clock_offset ran no fire twice",
                    backend.name()
                ));
            }
            schedules.push(result);
        }
    }

    let written = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = format!(
        "# Fault injection: latest randomized run\n\n\
         Written by `cargo test -p leasehold-faults --test faults_random -- --ignored` \
         ({written}, seed {seed}, `ROUTINE_FAULTS_MINUTES={minutes}`). Each backend runs \
         one cluster of three `member` processes, each behind its own TCP proxy, with \
         50 ms work steps; faults are drawn at random from those valid for the \
         backend and each is held until it has played out (see \
         `faults/`). Takeover is measured from the fault to the next \
         `acquired` for faults that end the holder's lease, and from the fault's end \
         (the server back, the last cancel, the old password back) to the first step \
         under a live lease for server faults, cancelled statements and rotated \
         credentials; bounds are \
         `faults::scenario::Bounds`.\n\n{}\n{}",
        soak::markdown(&results),
        scheduled_section(&schedules),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../FAULTS.md");
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))?;

    let problems: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(|p| format!("{}: {p}", r.backend.name()))
        })
        .chain(schedule_problems)
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The section of `FAULTS.md` on scheduled fires.
fn scheduled_section(results: &[ScheduledResult]) -> String {
    format!(
        "## Scheduled fires under clock skew\n\n\
         The guarantee: each fire of a scheduled routine runs at most once across the \
         cluster while no two members' wall clocks are further apart than \
         `max_clock_offset` (README, Guarantees). Each run starts three `member` processes \
         with `--every 1s` (250 ms runs) whose wall clocks are the system's offset by \
         -3 s, 0 and +3 s (`RunOptions::with_wall_clock`). Within the default 10 s bound, \
         the member running a fire is killed (`SIGKILL`) mid-run once, about five fires \
         in, and replaced by a member with the same offset; the run goes on about five \
         fires after the first run completed after the kill. The negative control sets \
         `max_clock_offset` to 1 s, below the clocks' 6 s spread, without a kill: fires \
         must run more than once there, or the check could not fail. \
         `checker::fires` counts, from every member's `fire_started`/`fire_done` lines: \
         *expected* fires (every period from the first fire run to the last whose window, \
         from the first member's clock reaching it to the last's passing it by the 1 s \
         tolerance, closed before the stop); fires *started* (including later ones whose \
         window was still open at the stop) and *runs*; *duplicates* (fires started more \
         than once); *lost* (started, no run completed, cut short before the stop: by \
         design the killed runner's fire is not run again); *missed* (expected, never \
         started: a failure only if every member was up for the whole window and no fault \
         began within the claims' retention plus a TTL before it, otherwise a figure like a \
         gap). On PostgreSQL a member's claims and the name's lease share its session, whose \
         heartbeat follows the longest TTL it holds (the claims' retention, about 11.6 s), \
         so the name is taken over only that long after the kill.\n\n{}",
        scheduled::markdown(results)
    )
}
