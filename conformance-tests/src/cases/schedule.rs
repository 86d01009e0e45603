//! Scheduled cases: `RunOptions::every` on the backend under test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use leasehold::RunOptions;

use crate::Harness;

/// Two runners, each with its own client, run one routine every second: each fire runs
/// once, on one of them. Each fire is claimed in the name's record (the backend's
/// `write_record`), so the runner that comes to a fire second finds it claimed, even for
/// a run that takes no time.
pub async fn scheduled_fires_run_once_across_runners(h: &Harness) {
    let runs: Arc<Mutex<Vec<SystemTime>>> = Arc::default();
    let name = h.key("every").to_string();
    let mut runners = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let runner = h.runner().await;
        let runs = Arc::clone(&runs);
        handles.push(runner.run_named(
            &name,
            move |_ctx| {
                let fire = leasehold::scheduled_fire().expect("a scheduled run knows its fire");
                runs.lock().unwrap_or_else(|p| p.into_inner()).push(fire);
                async {}
            },
            RunOptions::every(Duration::from_secs(1)),
        ));
        runners.push(runner);
    }
    // Three fires after the one at the start, however late a slow backend answers.
    let deadline = tokio::time::Instant::now() + h.scaled(Duration::from_secs(10));
    loop {
        let distinct = counts(&runs).len();
        if distinct >= 4 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for handle in &handles {
        handle.cancel();
    }
    for handle in handles {
        handle.join().await;
    }
    for runner in runners {
        runner.shutdown().await;
    }
    let counts = counts(&runs);
    assert!(
        counts.len() >= 3,
        "at least three fires must have run within 10 s: {counts:?}"
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "each fire must run once across the two runners: {counts:?}"
    );
}

/// How often each fire ran.
fn counts(runs: &Mutex<Vec<SystemTime>>) -> BTreeMap<SystemTime, usize> {
    let mut counts = BTreeMap::new();
    for fire in runs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        *counts.entry(*fire).or_default() += 1;
    }
    counts
}
