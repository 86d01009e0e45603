//! A routine's own lease TTL and backoff (`RunOptions::lease_ttl`, `RunOptions::backoff`)
//! on a runner with other settings: refreshes at the routine's interval, in batches of
//! one TTL each, expiry after the routine's TTL, restarts after the routine's backoff,
//! and the checks when the routine starts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{wait_acquired, wait_for};
use leasehold::{
    Capabilities, Error, EventKind, Lease, LockBackend, LockKey, MemoryBackend, Outcome, Result,
    RunOptions, Runner,
};
use tokio::time::Instant;

/// A memory backend that records the TTL and size of every `refresh_many` call.
#[derive(Debug, Clone, Default)]
struct Recording {
    inner: MemoryBackend,
    calls: Arc<Mutex<Vec<(Duration, usize)>>>,
}

impl Recording {
    fn calls(&self) -> Vec<(Duration, usize)> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls were made for `ttl`, each of which must carry `leases` leases.
    fn calls_for(&self, ttl: Duration, leases: usize) -> usize {
        let calls = self.calls();
        let matching: Vec<_> = calls.iter().filter(|(t, _)| *t == ttl).collect();
        assert!(
            matching.iter().all(|(_, n)| *n == leases),
            "every call for {ttl:?} carries {leases} lease(s): {calls:?}"
        );
        matching.len()
    }
}

#[async_trait]
impl LockBackend for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .with_min_ttl(Duration::from_millis(500))
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        self.inner.try_acquire_as(key, ttl, holder).await
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.released(key).await
    }

    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        self.calls.lock().unwrap().push((ttl, leases.len()));
        self.inner.refresh_many(leases, ttl).await
    }

    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        self.inner.read_record(key).await
    }

    async fn write_record(
        &self,
        key: &LockKey,
        token: leasehold::FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<leasehold::RecordWrite> {
        self.inner.write_record(key, token, expected, value).await
    }
}

/// A runner on `backend` with a lease TTL of a minute (refreshed every 12 s).
fn long_ttl_runner(backend: &Recording) -> Runner {
    Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(Duration::from_secs(60))
        .with_signal_handling(false)
        .build()
        .unwrap()
}

fn idle(runner: &Runner, name: &str, options: RunOptions) -> leasehold::RoutineHandle {
    runner.run_named(name, |ctx| async move { ctx.cancelled().await }, options)
}

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_short_ttl_routine_is_refreshed_at_its_own_interval_and_expires_after_its_own_ttl() {
    let backend = Recording::default();
    let runner = long_ttl_runner(&backend);
    let mut events = runner.subscribe();
    let _short = idle(
        &runner,
        "short",
        RunOptions::keep_running_one_instance().lease_ttl(Duration::from_secs(2)),
    );
    wait_acquired(&mut events).await;
    // Its refresh interval is a fifth of its TTL: 400 ms, not the runner's 12 s.
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    assert_eq!(
        backend.calls_for(Duration::from_secs(2), 1),
        10,
        "ten refreshes in 4 s, each for the routine's TTL: {:?}",
        backend.calls()
    );
    assert_eq!(
        backend.calls().len(),
        10,
        "no refresh for the runner's TTL: {:?}",
        backend.calls()
    );
    // The holder vanishes: its lease must run out after the routine's TTL.
    runner.abort();
    let vanished = Instant::now();
    assert!(
        backend.inner.holder(&key("short")).is_some(),
        "the lease outlives its holder until its TTL"
    );
    tokio::time::sleep(Duration::from_millis(2_001)).await;
    assert!(
        backend.inner.holder(&key("short")).is_none(),
        "the lease must expire within the routine's TTL of 2 s after the holder vanished \
         ({:?} ago), not the runner's minute",
        vanished.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_ttl_routine_is_dropped_by_its_own_deadline_when_refreshes_hang() {
    let backend = Recording::default();
    let runner = long_ttl_runner(&backend);
    let mut events = runner.subscribe();
    let _short = idle(
        &runner,
        "short",
        RunOptions::keep_running_one_instance().lease_ttl(Duration::from_secs(2)),
    );
    wait_acquired(&mut events).await;
    let hung = Instant::now();
    backend.inner.set_hanging(true);
    wait_for(
        &mut events,
        Duration::from_secs(2),
        "lease lost",
        kind!(EventKind::LeaseLost { .. }),
    )
    .await;
    assert!(
        hung.elapsed() <= Duration::from_millis(1_800),
        "the routine must stop by its own local deadline (TTL 2 s - margin 0.2 s), \
         stopped after {:?}",
        hung.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn routines_with_different_ttls_are_refreshed_in_separate_batches() {
    let backend = Recording::default();
    let runner = long_ttl_runner(&backend);
    let mut events = runner.subscribe();
    let _two = idle(
        &runner,
        "two",
        RunOptions::keep_running_one_instance().lease_ttl(Duration::from_secs(2)),
    );
    let _also_two = idle(
        &runner,
        "also-two",
        RunOptions::exclusive().lease_ttl(Duration::from_secs(2)),
    );
    let _three = idle(
        &runner,
        "three",
        RunOptions::keep_running_one_instance().lease_ttl(Duration::from_secs(3)),
    );
    let _default = idle(&runner, "default", RunOptions::keep_running_one_instance());
    for _ in 0..4 {
        wait_acquired(&mut events).await;
    }
    tokio::time::sleep(Duration::from_millis(6_100)).await;
    assert_eq!(
        backend.calls_for(Duration::from_secs(2), 2),
        15,
        "both 2 s leases are refreshed together every 400 ms: {:?}",
        backend.calls()
    );
    assert_eq!(
        backend.calls_for(Duration::from_secs(3), 1),
        10,
        "the 3 s lease is refreshed on its own every 600 ms: {:?}",
        backend.calls()
    );
    assert_eq!(
        backend.calls_for(Duration::from_secs(60), 1),
        0,
        "the runner's TTL is not due within 6 s: {:?}",
        backend.calls()
    );
    for name in ["two", "also-two", "three", "default"] {
        assert!(
            backend.inner.holder(&key(name)).is_some(),
            "`{name}` must still be held"
        );
    }
    assert!(runner.health().is_healthy(), "no lease is late");
}

#[tokio::test(start_paused = true)]
async fn the_routines_backoff_bounds_the_restart_delay_after_panics() {
    let backend = MemoryBackend::new();
    // The runner's backoff starts at a fifth of 60 s: 12 s.
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(Duration::from_secs(60))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let _panicky = runner.run_named(
        "panicky",
        |_ctx| async { panic!("always") },
        RunOptions::keep_running_one_instance()
            .backoff(Duration::from_millis(100), Duration::from_millis(200)),
    );
    let mut starts = Vec::new();
    while starts.len() < 6 {
        let started = wait_for(
            &mut events,
            Duration::from_secs(1),
            "started",
            kind!(EventKind::Started),
        )
        .await;
        starts.push(started.at);
    }
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(100) && gap <= Duration::from_millis(200),
            "each restart after a panic waits within the routine's backoff [100 ms, 200 ms], \
             waited {gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_routines_backoff_bounds_the_wait_after_backend_errors() {
    let backend = MemoryBackend::new();
    backend.set_unavailable(true);
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(Duration::from_secs(60))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let _waiting = idle(
        &runner,
        "unlucky",
        RunOptions::keep_running_one_instance()
            .backoff(Duration::from_millis(100), Duration::from_millis(200)),
    );
    let mut errors = Vec::new();
    while errors.len() < 6 {
        let error = wait_for(
            &mut events,
            Duration::from_secs(1),
            "backend error",
            kind!(EventKind::BackendError { .. }),
        )
        .await;
        errors.push(error.at);
    }
    for pair in errors.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(100) && gap <= Duration::from_millis(200),
            "each retry after a backend error waits within the routine's backoff \
             [100 ms, 200 ms] (the runner's starts at 12 s), waited {gap:?}"
        );
    }
}

/// The setting named by the `Config` error `options` fail the routine with.
async fn failing_setting(runner: &Runner, options: RunOptions) -> String {
    let outcome = idle(runner, "bad", options).join().await;
    match outcome {
        Outcome::Failed(error) => match &*error {
            Error::Config { setting, .. } => setting.clone(),
            other => panic!("expected a Config error, got {other:?}"),
        },
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_lease_options_fail_the_routine_naming_the_option() {
    let backend = Recording::default();
    let runner = long_ttl_runner(&backend);
    let always = RunOptions::keep_running_one_instance;
    let cases = [
        (
            always().lease_ttl(Duration::ZERO),
            "lease_ttl",
            "a zero TTL",
        ),
        (
            always().lease_ttl(Duration::from_nanos(4)),
            "lease_ttl",
            "a TTL too short to derive the timing from",
        ),
        (
            always().lease_ttl(Duration::from_millis(100)),
            "lease_ttl",
            "a TTL below the backend's minimum",
        ),
        (
            RunOptions::every(Duration::from_secs(1)).lease_ttl(Duration::ZERO),
            "lease_ttl",
            "a zero TTL on a schedule",
        ),
        (
            RunOptions::new().lease_ttl(Duration::from_secs(2)),
            "lease_ttl",
            "a TTL on a routine without a lease",
        ),
        (
            always().backoff(Duration::ZERO, Duration::from_secs(1)),
            "backoff",
            "a zero minimum backoff",
        ),
        (
            RunOptions::exclusive().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "backoff",
            "a maximum below the minimum",
        ),
        (
            RunOptions::new().backoff(Duration::from_secs(1), Duration::from_secs(2)),
            "backoff",
            "a backoff on a routine without a lease",
        ),
    ];
    for (options, setting, what) in cases {
        assert_eq!(
            failing_setting(&runner, options).await,
            setting,
            "{what} must fail the routine with a Config error naming `{setting}`"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_routine_runs_under_its_own_ttl() {
    let backend = Recording::default();
    let runner = long_ttl_runner(&backend);
    let start = Instant::now();
    let base = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let handle = runner.run_named(
        "scheduled",
        |_ctx| tokio::time::sleep(Duration::from_millis(1_100)),
        RunOptions::every(Duration::from_secs(10))
            .with_wall_clock(move || base + start.elapsed())
            .lease_ttl(Duration::from_secs(2)),
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        backend.calls_for(Duration::from_secs(2), 1),
        2,
        "the run's lease is refreshed at 400 ms and 800 ms for the routine's TTL: {:?}",
        backend.calls()
    );
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
}
