//! Lease keeping: local deadline from the send time, grace period, hard stop, loss.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{TTL, idle_singleton, runner, wait_acquired, wait_for};
use leasehold::{
    CancelReason, Capabilities, EventKind, Lease, LockBackend, LockKey, MemoryBackend, RunOptions,
    Runner,
};
use tokio::time::Instant;

/// When the routine saw its cancellation, and why.
type Cancellation = Option<(Instant, Option<CancelReason>)>;

/// Records when a routine saw its cancellation and how long it kept running after it.
#[derive(Clone, Default)]
struct Trace {
    cancelled: Arc<Mutex<Cancellation>>,
    last_step: Arc<Mutex<Option<Instant>>>,
}

impl Trace {
    /// A routine that notes its cancellation but ignores it and keeps stepping.
    fn stubborn(
        &self,
    ) -> impl FnMut(leasehold::Context) -> futures::future::BoxFuture<'static, ()> + Send + 'static
    {
        let trace = self.clone();
        move |ctx| {
            let trace = trace.clone();
            Box::pin(async move {
                let watcher = {
                    let trace = trace.clone();
                    let ctx = ctx.clone();
                    async move {
                        ctx.cancelled().await;
                        *trace.cancelled.lock().unwrap() =
                            Some((Instant::now(), ctx.cancel_reason()));
                        std::future::pending::<()>().await
                    }
                };
                let stepper = async {
                    loop {
                        *trace.last_step.lock().unwrap() = Some(Instant::now());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::join!(watcher, stepper);
            })
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_backend_cancels_the_routine_then_drops_it_at_the_local_deadline() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let trace = Trace::default();
    let _handle = runner.run_named(
        "job",
        trace.stubborn(),
        RunOptions::keep_running_one_instance(),
    );
    let acquired = wait_acquired(&mut events).await;
    backend.set_hanging(true);

    let dropped = wait_for(&mut events, TTL * 2, "dropped", kind!(EventKind::Dropped)).await;
    let config = runner.config();
    let deadline = acquired.at + config.lease_ttl - config.safety_margin;
    assert_eq!(
        dropped.at, deadline,
        "the routine is dropped exactly at the local deadline"
    );
    let (cancelled_at, reason) = trace.cancelled.lock().unwrap().expect("context cancelled");
    assert_eq!(
        cancelled_at,
        deadline - config.grace_period,
        "the context is cancelled one grace period before the deadline"
    );
    assert_eq!(reason, Some(CancelReason::LeaseLost));
    let last_step = trace.last_step.lock().unwrap().expect("stepped");
    assert!(last_step <= deadline, "no step may run after the deadline");
    tokio::time::sleep(TTL).await;
    assert_eq!(
        *trace.last_step.lock().unwrap(),
        Some(last_step),
        "the dropped routine never steps again"
    );
}

/// Answers `try_acquire` only `delay` after the memory backend granted the lease.
#[derive(Debug, Clone)]
struct SlowReplies {
    inner: MemoryBackend,
    delay: Duration,
}

#[async_trait]
impl LockBackend for SlowReplies {
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
    ) -> leasehold::Result<Option<Box<dyn Lease>>> {
        let lease = self.inner.try_acquire_as(key, ttl, holder).await;
        tokio::time::sleep(self.delay).await;
        lease
    }
    async fn released(&self, key: &LockKey) -> leasehold::Result<()> {
        self.inner.released(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_local_deadline_counts_from_when_the_acquire_was_sent() {
    let memory = MemoryBackend::new();
    // Shorter than the refresh interval, so the test can hang the backend before the
    // first refresh.
    let delay = Duration::from_millis(500);
    let runner = Runner::builder()
        .with_backend(SlowReplies {
            inner: memory.clone(),
            delay,
        })
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let _handle = runner.run_named(
        "job",
        Trace::default().stubborn(),
        RunOptions::keep_running_one_instance(),
    );
    let acquired = wait_acquired(&mut events).await;
    memory.set_hanging(true);
    let dropped = wait_for(&mut events, TTL * 2, "dropped", kind!(EventKind::Dropped)).await;
    let sent = acquired.at - delay;
    let config = runner.config();
    assert_eq!(
        dropped.at,
        sent + config.lease_ttl - config.safety_margin,
        "the deadline must count from the request's send time, not the reply's arrival"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_away_drops_the_routine_at_the_next_refresh_and_it_restarts() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let _handle = runner.run_named(
        "job",
        Trace::default().stubborn(),
        RunOptions::keep_running_one_instance(),
    );
    let first = wait_acquired(&mut events).await;
    let key = LockKey::new("job").unwrap();
    backend.revoke(&key);
    let lost = wait_for(&mut events, TTL, "lost", kind!(EventKind::LeaseLost { .. })).await;
    assert_eq!(
        lost.at,
        first.at + runner.config().refresh_interval,
        "the loss is noticed at the next refresh"
    );
    let dropped = wait_for(&mut events, TTL, "dropped", kind!(EventKind::Dropped)).await;
    assert_eq!(
        dropped.at, lost.at,
        "a confirmed loss drops the routine at once"
    );
    let again = wait_for(
        &mut events,
        TTL,
        "acquired again",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    let (EventKind::Acquired { token: before }, EventKind::Acquired { token: after }) =
        (first.kind, again.kind)
    else {
        unreachable!()
    };
    assert!(after > before, "the new lease has a greater fencing token");
}

#[tokio::test(start_paused = true)]
async fn a_short_outage_does_not_cancel_the_routine() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let trace = Trace::default();
    let _handle = runner.run_named(
        "job",
        trace.stubborn(),
        RunOptions::keep_running_one_instance(),
    );
    wait_acquired(&mut events).await;
    backend.set_unavailable(true);
    wait_for(
        &mut events,
        TTL,
        "refresh failed",
        kind!(EventKind::RefreshFailed { .. }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.set_unavailable(false);
    tokio::time::sleep(TTL * 3).await;
    assert!(
        trace.cancelled.lock().unwrap().is_none(),
        "failed refreshes well before the deadline must not cancel the routine"
    );
}

#[tokio::test(start_paused = true)]
async fn backend_errors_back_off_then_recover() {
    let backend = MemoryBackend::new();
    backend.set_unavailable(true);
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let _handle = idle_singleton(&runner, "job");
    let mut errors = Vec::new();
    for _ in 0..4 {
        let event = wait_for(
            &mut events,
            Duration::from_secs(60),
            "backend error",
            kind!(EventKind::BackendError { .. }),
        )
        .await;
        errors.push(event.at);
    }
    let gaps: Vec<Duration> = errors.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(gaps[2] > gaps[0], "error backoff must grow: {gaps:?}");
    backend.set_unavailable(false);
    wait_for(
        &mut events,
        Duration::from_secs(60),
        "acquired after recovery",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_acquire_times_out_and_is_retried() {
    let backend = MemoryBackend::new();
    backend.set_hanging(true);
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let start = Instant::now();
    let _handle = idle_singleton(&runner, "job");
    let error = wait_for(
        &mut events,
        TTL,
        "timeout",
        kind!(EventKind::BackendError { .. }),
    )
    .await;
    assert_eq!(
        error.at - start,
        runner.config().request_timeout,
        "acquire is bounded by the request timeout"
    );
    let EventKind::BackendError { error } = error.kind else {
        unreachable!()
    };
    assert!(error.contains("did not answer acquire"), "{error}");
    backend.set_hanging(false);
    wait_for(
        &mut events,
        Duration::from_secs(60),
        "acquired",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_between_outages_resets_the_error_backoff() {
    let backend = MemoryBackend::new();
    // The holder's lease outlasts both outages, so the key stays held throughout: the
    // waiter, woken by releases, asks the backend only when the holder's lease could have
    // run out (at most its own TTL later), so it notices an outage up to a TTL late.
    let holder = leasehold::Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(TTL * 12)
        .with_signal_handling(false)
        .build()
        .unwrap();
    let waiter = runner(&backend);
    let (_h, _w, mut events) = common::holder_and_waiter(&holder, &waiter).await;
    // Two outages, with the backend answering (the key is held) in between: the second
    // outage's first backoff must be as short as the first outage's.
    let first_gap = outage(&backend, &mut events).await;
    backend.set_unavailable(false);
    wait_for(
        &mut events,
        TTL * 4,
        "contended again",
        kind!(EventKind::Contended { .. }),
    )
    .await;
    let second_gap = outage(&backend, &mut events).await;
    backend.set_unavailable(false);
    let max_first = runner(&backend).config().backoff_min.mul_f64(1.25);
    assert!(
        first_gap <= max_first,
        "first outage backs off from the minimum: {first_gap:?}"
    );
    assert!(
        second_gap <= max_first,
        "after the backend answered, the next outage must back off from the minimum again, \
         not continue the old backoff: {second_gap:?}"
    );
}

/// Makes `backend` unavailable and returns the time between the first two backend errors
/// the waiter reports.
async fn outage(
    backend: &MemoryBackend,
    events: &mut tokio::sync::broadcast::Receiver<leasehold::Event>,
) -> Duration {
    backend.set_unavailable(true);
    let error = kind!(EventKind::BackendError { .. });
    let first = wait_for(events, TTL * 2, "backend error", error).await;
    let second = wait_for(events, TTL * 2, "backend error", error).await;
    second.at - first.at
}

#[tokio::test(start_paused = true)]
async fn a_lease_reported_lost_is_not_reported_released() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let _handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;
    backend.revoke(&LockKey::new("job").unwrap());
    let lost = wait_for(&mut events, TTL, "lost", kind!(EventKind::LeaseLost { .. })).await;
    let EventKind::LeaseLost { token: lost_token } = lost.kind else {
        unreachable!()
    };
    let mut after = Vec::new();
    loop {
        let event = wait_for(&mut events, TTL, "acquired again", |_| true).await;
        if let EventKind::Acquired { .. } = event.kind {
            break;
        }
        after.push(event.kind);
    }
    assert!(
        !after.contains(&EventKind::Released { token: lost_token }),
        "a lease reported lost must not be reported released after it: {after:?}"
    );
}
