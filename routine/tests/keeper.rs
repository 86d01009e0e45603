//! The runner's lease keeper: every held lease is refreshed in one `refresh_many` call per
//! refresh interval, and what a batch says about one lease affects that lease only.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{TTL, idle_singleton, runner, runner_on, wait_acquired, wait_for};
use leasehold::{
    Capabilities, EventKind, Lease, LockBackend, LockKey, MemoryBackend, Result, Runner,
};

/// A memory backend that records the size of every `refresh_many` call.
#[derive(Debug, Clone, Default)]
struct Counting {
    inner: MemoryBackend,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Counting {
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

#[async_trait]
impl LockBackend for Counting {
    fn name(&self) -> &'static str {
        "counting"
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
        self.inner.try_acquire_as(key, ttl, holder).await
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.released(key).await
    }

    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        self.batches.lock().unwrap().push(leases.len());
        self.inner.refresh_many(leases, ttl).await
    }
}

fn counting_runner(backend: &Counting) -> Runner {
    runner_on(backend.clone())
}

#[tokio::test(start_paused = true)]
async fn all_leases_are_refreshed_in_one_call_per_interval() {
    const ROUTINES: usize = 100;
    let backend = Counting::default();
    let runner = counting_runner(&backend);
    let mut events = runner.subscribe();
    let _handles: Vec<_> = (0..ROUTINES)
        .map(|i| idle_singleton(&runner, &format!("job-{i}")))
        .collect();
    for _ in 0..ROUTINES {
        wait_acquired(&mut events).await;
    }
    let interval = runner.config().refresh_interval;
    tokio::time::sleep(interval * 10 + interval / 2).await;

    let batches = backend.batches();
    assert_eq!(
        batches,
        vec![ROUTINES; 10],
        "ten refresh intervals must take ten calls, each with every lease"
    );
    for i in 0..ROUTINES {
        let key = LockKey::new(format!("job-{i}")).unwrap();
        assert!(
            backend.inner.holder(&key).is_some(),
            "`job-{i}` must still be held"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_acquired_later_joins_the_next_batch() {
    let backend = Counting::default();
    let runner = counting_runner(&backend);
    let mut events = runner.subscribe();
    let interval = runner.config().refresh_interval;
    let _first = idle_singleton(&runner, "first");
    wait_acquired(&mut events).await;
    // Acquired a third of an interval after the first: due before the first's next
    // refresh plus half an interval, so it is refreshed together with it from then on.
    tokio::time::sleep(interval / 3).await;
    let _second = idle_singleton(&runner, "second");
    wait_acquired(&mut events).await;
    tokio::time::sleep(interval * 5).await;
    let batches = backend.batches();
    assert!(
        batches.iter().all(|&size| size == 2),
        "both leases must be refreshed together every time: {batches:?}"
    );
    assert_eq!(batches.len(), 5, "one call per interval: {batches:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_in_a_batch_drops_only_its_own_routine() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let names = ["a", "b", "c"];
    let _handles: Vec<_> = names
        .iter()
        .map(|name| idle_singleton(&runner, name))
        .collect();
    for _ in names {
        wait_acquired(&mut events).await;
    }
    backend.revoke(&LockKey::new("b").unwrap());
    let lost = wait_for(&mut events, TTL, "lost", kind!(EventKind::LeaseLost { .. })).await;
    assert_eq!(lost.name.as_deref(), Some("b"), "only `b` was revoked");
    // `b` takes its key again; `a` and `c` are never disturbed.
    let deadline = tokio::time::Instant::now() + TTL * 3;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if matches!(
            event.kind,
            EventKind::LeaseLost { .. } | EventKind::Dropped | EventKind::RefreshFailed { .. }
        ) {
            assert_eq!(
                event.name.as_deref(),
                Some("b"),
                "a loss of `b` must not affect another routine: {event:?}"
            );
        }
    }
    for name in names {
        assert!(
            backend.holder(&LockKey::new(name).unwrap()).is_some(),
            "`{name}` must be held"
        );
    }
}

#[test]
fn leases_are_kept_after_the_runtime_that_started_the_keeper_is_gone() {
    // The process-wide default runner is used this way by tests: each with its own
    // runtime. The first runtime's keeper task dies with it; the second runtime's
    // leases must get a keeper of their own.
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        let mut events = runner.subscribe();
        let _handle = idle_singleton(&runner, "first");
        wait_acquired(&mut events).await;
        let interval = runner.config().refresh_interval;
        tokio::time::sleep(interval * 2).await;
    });
    runtime().block_on(async {
        let mut events = runner.subscribe();
        let _handle = idle_singleton(&runner, "second");
        wait_acquired(&mut events).await;
        let deadline = tokio::time::Instant::now() + TTL * 3;
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            assert!(
                !matches!(event.kind, EventKind::LeaseLost { .. } | EventKind::Dropped),
                "the second runtime's lease must be refreshed: {event:?}"
            );
        }
        assert!(
            backend.holder(&LockKey::new("second").unwrap()).is_some(),
            "`second` must still be held after three TTLs"
        );
    });
}

/// A memory backend whose acquires of one key take `delay`.
#[derive(Debug, Clone)]
struct SlowAcquire {
    inner: MemoryBackend,
    slow: LockKey,
    delay: Duration,
}

#[async_trait]
impl LockBackend for SlowAcquire {
    fn name(&self) -> &'static str {
        "slow"
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
        if *key == self.slow {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.try_acquire_as(key, ttl, holder).await
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.released(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_acquire_is_refreshed_in_time_although_the_keeper_planned_its_next_tick_before() {
    // TTL 10 s, a refresh every 5 s: a lease whose acquire was sent 3.5 s before it
    // returned is due 1.5 s after it is kept, before the keeper's next planned tick.
    let backend = SlowAcquire {
        inner: MemoryBackend::new(),
        slow: LockKey::new("slow").unwrap(),
        delay: Duration::from_millis(3500),
    };
    let runner = Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(Duration::from_secs(10))
        .with_refresh_interval(Duration::from_secs(5))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let _fast = idle_singleton(&runner, "fast");
    wait_acquired(&mut events).await;
    // The keeper ticks at 5 s (and plans 10 s then); the slow acquire is sent at 2 s
    // and returns at 5.5 s, due at 7 s. Unwoken, the keeper would refresh it at 10 s,
    // after its grace period began at 2 + 10 - 1 - 2 = 9 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _slow = idle_singleton(&runner, "slow");
    wait_for(&mut events, Duration::from_secs(10), "slow acquired", |e| {
        e.name.as_deref() == Some("slow") && matches!(e.kind, EventKind::Acquired { .. })
    })
    .await;
    let lost = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(event) if matches!(event.kind, EventKind::LeaseLost { .. }) => return event,
                Ok(_) => {}
                Err(error) => panic!("events: {error}"),
            }
        }
    })
    .await;
    assert!(
        lost.is_err(),
        "a lease on a healthy backend must not be lost: {lost:?}"
    );
    runner.shutdown().await;
}
