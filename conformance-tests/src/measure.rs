//! Measurements shared by the backends' latency benchmarks: graceful handover between
//! two clients, and a percentile table row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use leasehold::{LockBackend, LockKey};

/// Times `count` graceful handovers of `key` from `holder` to `waiter`: the holder
/// releases while the waiter (another client, as another process would be) waits for
/// the release notification; each sample runs from the release call to the waiter's
/// successful acquire. One extra warm-up round (it may start the waiter's subscription)
/// is not counted.
///
/// # Panics
///
/// If a backend call fails: this is benchmark code.
pub async fn handovers(
    holder: Arc<dyn LockBackend>,
    waiter: Arc<dyn LockBackend>,
    key: &LockKey,
    ttl: Duration,
    count: usize,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(count);
    for round in 0..=count {
        let mut lease = holder
            .try_acquire(key, ttl)
            .await
            .expect("holder acquires")
            .expect("the key is free between rounds");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = {
            let waiter = Arc::clone(&waiter);
            let key = key.clone();
            tokio::spawn(async move {
                // As the runner does: register for the next release *before* each
                // attempt, so a release between a failed attempt and the wait is not
                // missed.
                let mut released = waiter.released(&key);
                let mut pending = released.as_mut().now_or_never().is_none();
                let _ = ready_tx.send(());
                loop {
                    if pending {
                        released.as_mut().await.expect("release notification");
                    }
                    released = waiter.released(&key);
                    pending = released.as_mut().now_or_never().is_none();
                    if let Some(lease) = waiter.try_acquire(&key, ttl).await.expect("acquire") {
                        return (Instant::now(), lease);
                    }
                }
            })
        };
        ready_rx.await.expect("the waiter registers");
        let started = Instant::now();
        lease.release().await.expect("holder releases");
        let (acquired, mut taken) = task.await.expect("waiter task");
        if round > 0 {
            samples.push(acquired - started);
        }
        taken.release().await.expect("waiter releases");
    }
    samples
}

/// The `q`-th percentile (0–100) of `samples`, which must be sorted.
pub fn percentile(sorted: &[Duration], q: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * q / 100).min(sorted.len() - 1)]
}

/// Prints `| name | p50 | p99 |` for `samples` (sorted in place), in microseconds.
pub fn print_row(name: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let micros = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "| {name} | {} | {} |",
        micros(percentile(samples, 50)),
        micros(percentile(samples, 99))
    );
}

/// Latency samples of a backend next to its raw floor; see
/// [`acquire_release_against_floor`].
#[derive(Debug, Default)]
pub struct Latency {
    /// The library's `try_acquire` + `release`, uncontended.
    pub library: Vec<Duration>,
    /// The same operations without the library.
    pub floor: Vec<Duration>,
    /// One `refresh` of a held lease.
    pub refresh: Vec<Duration>,
}

/// Times `iterations` uncontended acquire+release rounds of `key` on `backend` and of
/// `floor` (the bare protocol operations on the same server), interleaved in every
/// iteration after 50 warm-up rounds of each, then `iterations` refreshes of one lease.
///
/// # Panics
///
/// If a backend call fails: this is benchmark code.
pub async fn acquire_release_against_floor(
    backend: &dyn LockBackend,
    key: &LockKey,
    ttl: Duration,
    iterations: usize,
    mut floor: impl AsyncFnMut(),
) -> Latency {
    let library_round = async || {
        let mut lease = backend
            .try_acquire(key, ttl)
            .await
            .expect("acquire")
            .expect("the key is free");
        lease.release().await.expect("release");
    };
    // Warm up both paths (scripts, prepared statements, connection buffers).
    for _ in 0..50 {
        library_round().await;
        floor().await;
    }
    let mut latency = Latency::default();
    for _ in 0..iterations {
        let start = Instant::now();
        library_round().await;
        latency.library.push(start.elapsed());
        let start = Instant::now();
        floor().await;
        latency.floor.push(start.elapsed());
    }
    let mut lease = backend
        .try_acquire(key, ttl)
        .await
        .expect("acquire")
        .expect("the key is free");
    for _ in 0..iterations {
        let start = Instant::now();
        lease.refresh(ttl).await.expect("refresh");
        latency.refresh.push(start.elapsed());
    }
    lease.release().await.expect("release");
    latency
}
