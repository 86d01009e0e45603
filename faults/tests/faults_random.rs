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

use std::time::Duration;

use anyhow::Context as _;
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
         `faults::scenario::Bounds`.\n\n{}",
        soak::markdown(&results)
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
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
