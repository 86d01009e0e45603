//! The hard deadline on a CPU-starved runtime: real time, one worker, busy tasks.
//!
//! tokio fires timers only when a worker parks or every 61 polls, so on a busy worker a
//! timer at the local deadline fires late. These tests starve the runtime on purpose and
//! check that nothing of the instance is polled at or after its deadline anyway. Paused
//! time cannot model this: the starvation is real CPU time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{CancelReason, Event, EventKind, MemoryBackend, Outcome, RunOptions, Runner};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);

/// Two tasks that burn `BURN` of CPU per poll and wake each other, so the worker never
/// parks; each round they also wake `target`.
struct Busy {
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

const BURN: Duration = Duration::from_millis(10);

impl Busy {
    fn start(target: Arc<Notify>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let mut handles = Vec::new();
        for (mine, other) in [(Arc::clone(&a), Arc::clone(&b)), (b, Arc::clone(&a))] {
            let (stop, target) = (Arc::clone(&stop), Arc::clone(&target));
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    mine.notified().await;
                    std::thread::sleep(BURN);
                    other.notify_one();
                    target.notify_one();
                }
                other.notify_one();
            }));
        }
        a.notify_one();
        Self { stop, handles }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.handles {
            handle.await.unwrap();
        }
    }
}

fn runner(backend: &MemoryBackend) -> Runner {
    Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap()
}

/// Every event received so far.
fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

/// An upper bound of the local deadline of the first lease: it counts from when the
/// acquire was sent, which is before the `Acquired` event.
fn deadline_bound(runner: &Runner, events: &[Event]) -> Instant {
    let acquired = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::Acquired { .. }))
        .expect("the lease was acquired");
    acquired.at + runner.config().lease_ttl - runner.config().safety_margin
}

/// What a starved run saw.
struct Starved {
    outcome: Option<Outcome>,
    events: Vec<Event>,
    /// An upper bound of the local deadline.
    bound: Instant,
}

/// Runs `routine` once under a lease on a worker kept busy by [`Busy`] tasks that also
/// wake `wake`; every refresh fails, so the first deadline is the last.
async fn run_starved<F, Fut>(backend: &MemoryBackend, wake: &Arc<Notify>, routine: F) -> Starved
where
    F: FnMut(leasehold::Context) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runner = runner(backend);
    let mut events = runner.subscribe();
    let mut routine = routine;
    let handle = runner.run_named(
        "job",
        {
            let backend = backend.clone();
            move |ctx| {
                // Every refresh fails from the start.
                backend.set_unavailable(true);
                routine(ctx)
            }
        },
        RunOptions::exclusive(),
    );
    let busy = Busy::start(Arc::clone(wake));
    let outcome = tokio::time::timeout(TTL * 10, handle.join()).await.ok();
    busy.stop().await;
    let events = drain(&mut events);
    let bound = deadline_bound(&runner, &events);
    Starved {
        outcome,
        events,
        bound,
    }
}

impl Starved {
    /// Checks that the instance was dropped for its lease and that none of `steps` came
    /// at or after the deadline, but some before it.
    fn assert_no_step_at_or_after_the_deadline(&self, steps: &[Instant]) {
        assert!(
            matches!(self.outcome, Some(Outcome::LeaseLost)),
            "the routine must end with its lease: {:?}",
            self.outcome
        );
        assert!(
            self.events.iter().any(|e| e.kind == EventKind::Dropped),
            "the routine must be dropped"
        );
        assert!(
            steps.iter().any(|&at| at < self.bound),
            "the busy tasks must have woken the work before its deadline"
        );
        let late: Vec<Duration> = steps
            .iter()
            .filter(|&&at| at >= self.bound)
            .map(|&at| at - self.bound)
            .collect();
        assert!(
            late.is_empty(),
            "no step may run at or after the local deadline; {} did, up to {:?} after it",
            late.len(),
            late.last()
        );
    }
}

/// Records the context's cancel reason when dropped.
struct OnDrop(leasehold::Context, Arc<Mutex<Option<Option<CancelReason>>>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        *self.1.lock().unwrap() = Some(self.0.cancel_reason());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_routine_woken_by_busy_tasks_is_never_polled_at_or_after_its_local_deadline() {
    let backend = MemoryBackend::new();
    let wake = Arc::new(Notify::new());
    let steps = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let dropped = Arc::new(Mutex::new(None));
    let starved = run_starved(&backend, &wake, {
        let (wake, steps, dropped) = (Arc::clone(&wake), Arc::clone(&steps), Arc::clone(&dropped));
        move |ctx| {
            let (wake, steps) = (Arc::clone(&wake), Arc::clone(&steps));
            let on_drop = OnDrop(ctx, Arc::clone(&dropped));
            async move {
                let _on_drop = on_drop;
                loop {
                    wake.notified().await;
                    steps.lock().unwrap().push(Instant::now());
                }
            }
        }
    })
    .await;
    starved.assert_no_step_at_or_after_the_deadline(&steps.lock().unwrap());
    assert_eq!(
        *dropped.lock().unwrap(),
        Some(Some(CancelReason::LeaseLost)),
        "the routine's context is cancelled for its lease before the routine is dropped"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn work_spawned_through_the_context_is_never_polled_at_or_after_the_local_deadline() {
    let backend = MemoryBackend::new();
    let wake = Arc::new(Notify::new());
    let steps = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let dropped = Arc::new(Mutex::new(None));
    let starved = run_starved(&backend, &wake, {
        let (wake, steps, dropped) = (Arc::clone(&wake), Arc::clone(&steps), Arc::clone(&dropped));
        move |ctx| {
            let (wake, steps) = (Arc::clone(&wake), Arc::clone(&steps));
            let on_drop = OnDrop(ctx.clone(), Arc::clone(&dropped));
            ctx.spawn(async move {
                let _on_drop = on_drop;
                loop {
                    wake.notified().await;
                    steps.lock().unwrap().push(Instant::now());
                }
            });
            // The routine itself waits on timers only; its spawned work is what is
            // woken.
            std::future::pending()
        }
    })
    .await;
    starved.assert_no_step_at_or_after_the_deadline(&steps.lock().unwrap());
    assert_eq!(
        *dropped.lock().unwrap(),
        Some(Some(CancelReason::LeaseLost)),
        "the spawned work is dropped with the routine, its context cancelled for the lease"
    );
}
