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
//! (`faults::scheduled`: 60 s of kills and pauses of the member running a fire, on
//! members whose clocks are up to 2 s apart from the system's). It is not one of the random faults: its
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

/// How long the scheduled-fire scenario injects faults on each backend.
const SCHEDULED_FOR: Duration = Duration::from_secs(60);

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
    let backends = BackendKind::all()
        .into_iter()
        .chain(BackendKind::topologies());
    for (index, backend) in backends.enumerate() {
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
        if BackendKind::topologies().contains(&backend) {
            continue; // schedules run on the single servers
        }
        let exe = env!("CARGO_BIN_EXE_faults-member");
        let config = ScheduledConfig::with_faults(exe, backend, SCHEDULED_FOR);
        if let Some(result) = scheduled::run(config).await? {
            println!("{}: {}", backend.name(), result.report.summary());
            for problem in result.problems() {
                schedule_problems.push(format!("{}: {problem}", backend.name()));
            }
            schedules.push(result);
        }
    }

    let written = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = format!(
        "# Fault injection: latest randomized run\n\n\
         Written by `cargo test -p leasehold-faults --test faults_random -- --ignored` \
         ({written}, seed {seed}, `ROUTINE_FAULTS_MINUTES={minutes}`). Each backend runs \
         one cluster of three `member` processes, each behind its own TCP proxy to each \
         server, with 50 ms work steps; faults are drawn at random from those valid for \
         the backend and each is held until it has played out (see `faults/`). Besides \
         the single servers, the server topologies run the same way: a three-member \
         etcd cluster (members listing every etcd member), a PostgreSQL primary with a \
         synchronous or an asynchronous standby (multi-host URLs), Redis behind \
         Sentinel and a Redis Cluster (three masters with a replica each; members reach \
         the nodes directly), each with and without durable mode; their server faults \
         replace the single server's restart and pause. Takeover is measured from the \
         fault to the next `acquired` for faults that end the holder's lease, and from \
         the fault's end (the server back, the last cancel, the old password back, the \
         failover done, the member back or the cut healed) to the first step under a \
         live lease for the others; bounds are `faults::scenario::Bounds`. Topologies whose failover \
         may lose acknowledged writes (asynchronous standby, Sentinel or Cluster \
         without durable mode) are measured: their problems are listed, not asserted.\n\n{}\n{}",
        soak::markdown(&results),
        scheduled_section(&schedules),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../FAULTS.md");
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))?;

    // A PostgreSQL pair with asynchronous replication, and Redis behind Sentinel or a
    // Redis Cluster without durable mode, promise no more than recovery across a
    // failover: their findings are measured (written above), not asserted.
    let problems: Vec<String> = results
        .iter()
        .filter(|r| !r.backend.loses_writes_on_failover())
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
        "## Scheduled fires under clock offsets, kills and pauses\n\n\
         The guarantee (`RunOptions::every`, README): a fire is claimed in the name's \
         record in the backend with a compare-and-set under the lease's fencing token, so \
         each fire starts at most once across the cluster whatever the members' clocks \
         say; a run cut off (its member killed, or paused past its lease) stays listed in \
         the record, and the next member to take the name reports it \
         (`EventKind::FireInterrupted`) and, with `retry_interrupted`, runs it again. \
         Each run starts three `member` processes with `--every 1s` (250 ms runs) whose \
         wall clocks are the system's offset by -2 s, 0 and +2 s \
         (`RunOptions::with_wall_clock`), with `MissedFires::RunEach(10)` within a 10 s \
         catch-up window and `retry_interrupted(10 s)`. For {} s, every 3 s the member \
         running a fire is hit mid-run, a third of the way into the run: alternately \
         killed (`SIGKILL`, and replaced by a member with the same clock offset) or \
         paused (`SIGSTOP`) for twice the TTL plus 1 s, then resumed. The cluster then \
         runs on for the catch-up window before it is stopped. \
         `checker::fires` judges every member's `fire_started`/`fire_done` lines: the \
         *window* is every fire from the first the clock furthest ahead reaches after all \
         members are up to the last the clock furthest behind reaches before the faults \
         end; each must have *completed* (a `fire_done`, not cancelled) exactly once. \
         *Duplicates* are fires completed twice or started again after a run that was \
         not cut off; *lost* are fires in the window never completed; *interrupted* are \
         fires whose run was cut off, *retried* when a later run on another member \
         completed them. *Overlap* is the time two runs (of any fires) went on at once; \
         a run without `fire_done` counts as going on until its member was killed or \
         paused (a resumed member's routine is dropped before it is polled again, so if \
         it ran on it would print its end). The last two columns give the longest time \
         from a kill or a pause to the next run started on another member: the holder's \
         lease has to run out first.\n\n{}",
        SCHEDULED_FOR.as_secs(),
        scheduled::markdown(results)
    )
}
