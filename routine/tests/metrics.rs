//! Metrics (feature `metrics`): what a singleton's life on `MemoryBackend` records.
//!
//! Each test installs a `DebuggingRecorder` as the recorder of its own thread. The
//! runtime is `current_thread` (tokio's test default), so the runner's tasks run on that
//! thread and record into it.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use common::{TTL, idle_singleton, runner, runner_on, wait_acquired, wait_for};
use leasehold::{
    Capabilities, EventKind, FencingToken, Lease, LockBackend, LockKey, MemoryBackend, Result,
    RunOptions,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use tokio_util::sync::CancellationToken;

/// The metrics recorded so far. A snapshot of `DebuggingRecorder` takes what was
/// recorded since the last one (counters and gauges are swapped to zero), so each read
/// adds it to the running totals; the runner only raises and lowers its gauges, never
/// sets them, so summing gives their values too.
struct Recorded {
    snapshotter: Snapshotter,
    counters: HashMap<Id, u64>,
    gauges: HashMap<Id, f64>,
    histograms: HashMap<Id, Vec<f64>>,
}

/// A metric's name and its labels, sorted.
type Id = (String, Vec<(String, String)>);

fn id(name: &str, labels: &[(&str, &str)]) -> Id {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|&(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

fn id_of(key: &CompositeKey) -> Id {
    let labels: Vec<(&str, &str)> = key
        .key()
        .labels()
        .map(|label| (label.key(), label.value()))
        .collect();
    id(key.key().name(), &labels)
}

impl Recorded {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            counters: HashMap::new(),
            gauges: HashMap::new(),
            histograms: HashMap::new(),
        }
    }

    fn read(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let id = id_of(&key);
            match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.counters.entry(id).or_default() += n;
                }
                (MetricKind::Gauge, DebugValue::Gauge(n)) => {
                    *self.gauges.entry(id).or_default() += n.into_inner();
                }
                (MetricKind::Histogram, DebugValue::Histogram(values)) => self
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(values.into_iter().map(|value| value.into_inner())),
                (kind, value) => panic!("{kind:?} metric with a {value:?} value"),
            }
        }
    }

    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.read();
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }

    /// `None` if the gauge was never registered.
    fn gauge(&mut self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.read();
        self.gauges.get(&id(name, labels)).copied()
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.read();
        self.histograms
            .get(&id(name, labels))
            .cloned()
            .unwrap_or_default()
    }

    /// Every counter named `name`, whatever its labels.
    fn counters_named(&mut self, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
        self.read();
        self.counters
            .iter()
            .filter(|((metric, _), _)| metric == name)
            .map(|((_, labels), n)| (labels.clone(), *n))
            .collect()
    }
}

const JOB: [(&str, &str); 2] = [("name", "job"), ("backend", "memory")];

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_counted_once_and_holds_until_released() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;
    // Several refreshes.
    tokio::time::sleep(TTL * 2).await;

    assert_eq!(
        recorded.counter("leasehold_leases_acquired_total", &JOB),
        1,
        "one acquire for a lease kept across refreshes"
    );
    assert_eq!(
        recorded.gauge("leasehold_routine_holding", &[("name", "job")]),
        Some(1.0),
        "the routine holds its lease"
    );
    assert_eq!(
        recorded.gauge("leasehold_leases_held", &[("backend", "memory")]),
        Some(1.0),
        "the runner keeps one lease"
    );
    let acquires = recorded.histogram("leasehold_acquire_duration_seconds", &JOB);
    assert_eq!(acquires.len(), 1, "one acquire request timed: {acquires:?}");
    let refreshes = recorded.histogram(
        "leasehold_refresh_duration_seconds",
        &[("backend", "memory")],
    );
    assert!(
        refreshes.len() >= 5,
        "each refresh batch is timed: {refreshes:?}"
    );
    let margins = recorded.histogram(
        "leasehold_deadline_margin_seconds",
        &[("backend", "memory")],
    );
    let usable = runner.config().lease_ttl - runner.config().safety_margin;
    assert_eq!(
        margins.len(),
        refreshes.len(),
        "one margin per refreshed lease"
    );
    for margin in &margins {
        let expected = (usable - runner.config().refresh_interval).as_secs_f64();
        assert!(
            (margin - expected).abs() < 0.01,
            "a refresh on time leaves the lease's TTL less the margin and one interval: \
             {margin} (expected {expected})"
        );
    }

    handle.cancel();
    handle.join().await;
    assert_eq!(
        recorded.gauge("leasehold_routine_holding", &[("name", "job")]),
        Some(0.0),
        "a stopped routine holds nothing"
    );
    assert_eq!(
        recorded.gauge("leasehold_leases_held", &[("backend", "memory")]),
        Some(0.0),
        "the lease was given back"
    );
    assert_eq!(recorded.counter("leasehold_leases_released_total", &JOB), 1);
    assert!(
        recorded
            .counters_named("leasehold_leases_lost_total")
            .is_empty(),
        "nothing was lost"
    );
    assert!(
        recorded
            .counters_named("leasehold_backend_errors_total")
            .is_empty(),
        "no backend error"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_and_a_waiter_in_one_process_count_one_holding() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    let (holder, waiter) = (runner(&backend), runner(&backend));
    let (_held, _waiting, _events) = common::holder_and_waiter(&holder, &waiter).await;
    assert_eq!(
        recorded.gauge("leasehold_routine_holding", &[("name", "job")]),
        Some(1.0),
        "one of the two instances in this process holds the lease"
    );
    assert_eq!(
        recorded.counter("leasehold_leases_acquired_total", &JOB),
        1,
        "the waiter took nothing"
    );
    assert_eq!(
        recorded
            .histogram("leasehold_acquire_duration_seconds", &JOB)
            .len(),
        2,
        "the contended acquire is timed too"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_finds_the_lease_gone_counts_a_loss_and_a_restart() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let _handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;
    backend.revoke(&LockKey::new("job").unwrap());
    wait_for(&mut events, TTL, "lost", kind!(EventKind::LeaseLost { .. })).await;
    wait_for(
        &mut events,
        TTL,
        "acquired again",
        kind!(EventKind::Acquired { .. }),
    )
    .await;

    let lost = [
        ("name", "job"),
        ("backend", "memory"),
        ("reason", "refused"),
    ];
    assert_eq!(
        recorded.counter("leasehold_leases_lost_total", &lost),
        1,
        "a refresh that finds the lease gone is a loss, reason `refused`"
    );
    assert_eq!(
        recorded.counter(
            "leasehold_routine_restarts_total",
            &[("name", "job"), ("reason", "lost")]
        ),
        1
    );
    assert_eq!(recorded.counter("leasehold_leases_acquired_total", &JOB), 2);
    assert_eq!(
        recorded.counter("leasehold_leases_released_total", &JOB),
        0,
        "a lost lease is not counted as released"
    );
    assert_eq!(
        recorded.gauge("leasehold_routine_holding", &[("name", "job")]),
        Some(1.0),
        "holding again, once"
    );
}

#[tokio::test(start_paused = true)]
async fn backend_errors_are_counted_by_backend_and_operation() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    backend.set_unavailable(true);
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let _handle = idle_singleton(&runner, "job");
    for _ in 0..3 {
        wait_for(
            &mut events,
            Duration::from_secs(60),
            "backend error",
            kind!(EventKind::BackendError { .. }),
        )
        .await;
    }
    let acquire = [("backend", "memory"), ("operation", "acquire")];
    assert_eq!(
        recorded.counter("leasehold_backend_errors_total", &acquire),
        3,
        "each failed acquire is one error"
    );
    assert_eq!(
        recorded
            .histogram("leasehold_acquire_duration_seconds", &JOB)
            .len(),
        3,
        "failed acquires are timed too"
    );

    backend.set_unavailable(false);
    wait_for(
        &mut events,
        Duration::from_secs(60),
        "acquired",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    backend.set_unavailable(true);
    wait_for(
        &mut events,
        TTL,
        "refresh failed",
        kind!(EventKind::RefreshFailed { .. }),
    )
    .await;
    let refresh = [("backend", "memory"), ("operation", "refresh")];
    assert_eq!(
        recorded.counter("leasehold_backend_errors_total", &refresh),
        1,
        "a failed refresh batch is one error"
    );
    // Unavailable until the deadline passes: the hold gives the lease up, and its
    // release fails too.
    wait_for(&mut events, TTL, "lost", kind!(EventKind::LeaseLost { .. })).await;
    let lost = [
        ("name", "job"),
        ("backend", "memory"),
        ("reason", "deadline"),
    ];
    assert_eq!(recorded.counter("leasehold_leases_lost_total", &lost), 1);
    wait_for(
        &mut events,
        TTL,
        "backend error after the loss",
        kind!(EventKind::BackendError { .. }),
    )
    .await;
    let release = [("backend", "memory"), ("operation", "release")];
    assert_eq!(
        recorded.counter("leasehold_backend_errors_total", &release),
        1,
        "the release of the lost lease failed"
    );
    assert_eq!(
        recorded.counter("leasehold_release_failures_total", &JOB),
        0,
        "a release after a loss is not reported as a release failure"
    );
}

#[tokio::test(start_paused = true)]
async fn restarts_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _handle = runner.run_named(
        "job",
        move |ctx| {
            let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match run {
                    0 => {}
                    1 => panic!("second run panics"),
                    _ => ctx.cancelled().await,
                }
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    for _ in 0..3 {
        wait_for(
            &mut events,
            Duration::from_secs(60),
            "started",
            kind!(EventKind::Started),
        )
        .await;
    }
    for reason in ["returned", "panicked"] {
        assert_eq!(
            recorded.counter(
                "leasehold_routine_restarts_total",
                &[("name", "job"), ("reason", reason)]
            ),
            1,
            "one restart after the routine {reason}"
        );
    }
    assert_eq!(recorded.counter("leasehold_leases_released_total", &JOB), 2);
    assert_eq!(
        recorded.gauge("leasehold_routine_holding", &[("name", "job")]),
        Some(1.0)
    );
}

/// [`MemoryBackend`] whose leases the test can revoke as a backend does when the session
/// they live on ends ([`Lease::revoked`]).
#[derive(Debug, Clone, Default)]
struct Revocable {
    inner: MemoryBackend,
    session_ended: CancellationToken,
}

#[derive(Debug)]
struct RevocableLease {
    inner: Box<dyn Lease>,
    session_ended: CancellationToken,
}

impl Revocable {
    fn wrap(&self, lease: Option<Box<dyn Lease>>) -> Option<Box<dyn Lease>> {
        lease.map(|inner| {
            Box::new(RevocableLease {
                inner,
                session_ended: self.session_ended.clone(),
            }) as Box<dyn Lease>
        })
    }
}

#[async_trait]
impl LockBackend for Revocable {
    fn name(&self) -> &'static str {
        "revocable"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        Ok(self.wrap(self.inner.try_acquire_as(key, ttl, holder).await?))
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.released(key).await
    }
}

#[async_trait]
impl Lease for RevocableLease {
    fn key(&self) -> &LockKey {
        self.inner.key()
    }

    fn fencing_token(&self) -> FencingToken {
        self.inner.fencing_token()
    }

    fn revoked(&self) -> Option<futures::future::BoxFuture<'static, ()>> {
        Some(Box::pin(self.session_ended.clone().cancelled_owned()))
    }

    async fn refresh(&mut self, ttl: Duration) -> Result<()> {
        self.inner.refresh(ttl).await
    }

    async fn release(&mut self) -> Result<()> {
        self.inner.release().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_the_backend_revokes_is_lost_for_reason_revoked() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = Revocable::default();
    let runner = runner_on(backend.clone());
    let mut events = runner.subscribe();
    let _handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::exclusive(),
    );
    wait_acquired(&mut events).await;
    backend.session_ended.cancel();
    wait_for(&mut events, TTL, "lost", kind!(EventKind::LeaseLost { .. })).await;
    let lost = [
        ("name", "job"),
        ("backend", "revocable"),
        ("reason", "revoked"),
    ];
    assert_eq!(recorded.counter("leasehold_leases_lost_total", &lost), 1);
    assert_eq!(
        recorded.counters_named("leasehold_leases_lost_total").len(),
        1,
        "one loss, for one reason"
    );
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_routines_acquires_are_timed_under_its_name() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    // Two instances: each run takes a slot `job#<i>`, still counted as `job`. The wall
    // clock follows tokio's paused clock.
    let start = tokio::time::Instant::now();
    let base = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let handle = runner.run_named(
        "job",
        |_ctx| async {},
        RunOptions::every(Duration::from_secs(1))
            .instances(2)
            .with_wall_clock(move || base + start.elapsed()),
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
    let acquires = recorded.histogram("leasehold_acquire_duration_seconds", &JOB);
    assert!(
        acquires.len() >= 2,
        "each fire's acquire is timed under the routine's name: {acquires:?}"
    );
    assert!(
        recorded
            .histogram(
                "leasehold_acquire_duration_seconds",
                &[("name", "job#0"), ("backend", "memory")]
            )
            .is_empty(),
        "no series per slot"
    );
}
