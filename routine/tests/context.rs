//! The context's life: cancelled when its instance ends, why, and the work spawned
//! through it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TTL, runner, wait_acquired, wait_for};
use leasehold::{
    CancelReason, Context, EventKind, FencingToken, LockKey, MemoryBackend, Outcome, RunOptions,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Runs `f` once with the context of a routine that then returns, and hands the context
/// back.
fn send_context(
    tx: oneshot::Sender<Context>,
) -> impl FnMut(Context) -> futures::future::BoxFuture<'static, ()> + Send + 'static {
    let mut tx = Some(tx);
    move |ctx| {
        let tx = tx.take();
        Box::pin(async move {
            if let Some(tx) = tx {
                let _ = tx.send(ctx);
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_context_is_cancelled_when_a_leased_routine_returns() {
    let runner = runner(&MemoryBackend::new());
    let (tx, rx) = oneshot::channel();
    let handle = runner.run_named("job", send_context(tx), RunOptions::exclusive());
    assert!(matches!(handle.join().await, Outcome::Returned));
    let ctx = rx.await.unwrap();
    assert!(
        ctx.is_cancelled(),
        "work that kept the context must learn that the instance is over"
    );
    assert_eq!(ctx.cancel_reason(), Some(CancelReason::Ended));
}

#[tokio::test(start_paused = true)]
async fn the_context_is_cancelled_when_a_leased_routine_panics() {
    let runner = runner(&MemoryBackend::new());
    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    let handle = runner.run_named(
        "job",
        move |ctx| {
            let tx = tx.take();
            async move {
                if let Some(tx) = tx {
                    let _ = tx.send(ctx);
                }
                panic!("on purpose");
            }
        },
        RunOptions::exclusive(),
    );
    assert!(matches!(handle.join().await, Outcome::Panicked(_)));
    let ctx = rx.await.unwrap();
    assert!(ctx.is_cancelled(), "a panic ends the instance too");
    assert_eq!(ctx.cancel_reason(), Some(CancelReason::Ended));
}

#[tokio::test(start_paused = true)]
async fn the_context_is_cancelled_when_a_plain_routine_returns() {
    let runner = runner(&MemoryBackend::new());
    let (tx, rx) = oneshot::channel();
    let handle = runner.run(move |ctx| async move {
        let _ = tx.send(ctx);
    });
    assert!(matches!(handle.join().await, Outcome::Returned));
    let ctx = rx.await.unwrap();
    assert!(ctx.is_cancelled(), "the instance is over");
    assert_eq!(ctx.cancel_reason(), Some(CancelReason::Ended));
}

#[tokio::test(start_paused = true)]
async fn a_routine_that_cancels_its_own_context_returns_and_restarts_after_the_retry_interval() {
    let runner = runner(&MemoryBackend::new());
    let mut events = runner.subscribe();
    let (tx, mut reasons) = mpsc::unbounded_channel();
    let _handle = runner.run_named(
        "job",
        move |ctx| {
            let tx = tx.clone();
            async move {
                ctx.cancellation_token().cancel();
                let _ = tx.send(ctx.cancel_reason());
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    let mut starts = Vec::new();
    let mut lost = 0;
    while starts.len() < 3 {
        let event = wait_for(&mut events, TTL, "an event", |_| true).await;
        match event.kind {
            EventKind::Started => starts.push(event.at),
            EventKind::LeaseLost { .. } => lost += 1,
            _ => {}
        }
    }
    assert_eq!(
        lost, 0,
        "cancelling its own context does not lose the lease"
    );
    for pair in starts.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            runner.config().retry_interval,
            "the routine returned: it is restarted after the retry interval"
        );
    }
    assert_eq!(reasons.recv().await.unwrap(), Some(CancelReason::Routine));
}

/// What the drop of a routine (or of work it spawned) saw.
#[derive(Clone, Default)]
struct Drops(Arc<Mutex<Vec<Dropped>>>);

#[derive(Debug, Clone, PartialEq)]
struct Dropped {
    at: Instant,
    reason: Option<CancelReason>,
    /// Who held the lease `job` then.
    holder: Option<FencingToken>,
}

impl Drops {
    fn guard(&self, ctx: &Context, backend: &MemoryBackend) -> impl Send + use<> {
        OnDrop {
            drops: self.clone(),
            ctx: ctx.clone(),
            backend: backend.clone(),
        }
    }

    fn all(&self) -> Vec<Dropped> {
        self.0.lock().unwrap().clone()
    }
}

struct OnDrop {
    drops: Drops,
    ctx: Context,
    backend: MemoryBackend,
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.drops.0.lock().unwrap().push(Dropped {
            at: Instant::now(),
            reason: self.ctx.cancel_reason(),
            holder: self.backend.holder(&LockKey::new("job").unwrap()),
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_routine_dropped_for_a_lost_lease_can_tell_why_while_it_is_dropped() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let drops = Drops::default();
    let _handle = runner.run_named(
        "job",
        {
            let (drops, backend) = (drops.clone(), backend.clone());
            move |ctx| {
                let on_drop = drops.guard(&ctx, &backend);
                async move {
                    let _on_drop = on_drop;
                    std::future::pending::<()>().await;
                }
            }
        },
        RunOptions::exclusive(),
    );
    wait_acquired(&mut events).await;
    backend.revoke(&LockKey::new("job").unwrap());
    wait_for(&mut events, TTL, "dropped", kind!(EventKind::Dropped)).await;
    let drops = drops.all();
    assert_eq!(drops.len(), 1, "the routine was dropped once");
    assert_eq!(
        drops[0].reason,
        Some(CancelReason::LeaseLost),
        "the context is cancelled before the routine is dropped"
    );
}

/// A routine that spawns, through its context, a task that steps every 10 ms until it
/// is stopped, and hands out the task's handle; then waits `then` and returns.
fn spawner(
    backend: &MemoryBackend,
    drops: &Drops,
    steps: &Arc<Mutex<Vec<Instant>>>,
    handles: mpsc::UnboundedSender<tokio::task::JoinHandle<()>>,
    then: Duration,
) -> impl FnMut(Context) -> futures::future::BoxFuture<'static, ()> + Send + 'static {
    let (backend, drops, steps) = (backend.clone(), drops.clone(), Arc::clone(steps));
    move |ctx| {
        let on_drop = drops.guard(&ctx, &backend);
        let steps = Arc::clone(&steps);
        let spawned = ctx.spawn(async move {
            let _on_drop = on_drop;
            loop {
                steps.lock().unwrap().push(Instant::now());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let _ = handles.send(spawned);
        Box::pin(async move {
            tokio::time::sleep(then).await;
        })
    }
}

#[tokio::test(start_paused = true)]
async fn work_spawned_through_the_context_is_dropped_before_the_lease_is_released() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let (drops, steps) = (Drops::default(), Arc::default());
    let (tx, mut handles) = mpsc::unbounded_channel();
    let spawner = spawner(&backend, &drops, &steps, tx, Duration::from_millis(100));
    let handle = runner.run_named("job", spawner, RunOptions::exclusive());
    assert!(matches!(handle.join().await, Outcome::Returned));
    let returned = wait_for(&mut events, TTL, "returned", kind!(EventKind::Returned)).await;
    let released = wait_for(
        &mut events,
        TTL,
        "released",
        kind!(EventKind::Released { .. }),
    )
    .await;
    let EventKind::Released { token } = released.kind else {
        unreachable!()
    };
    let drops = drops.all();
    assert_eq!(drops.len(), 1, "the spawned work was dropped: {drops:?}");
    assert_eq!(drops[0].reason, Some(CancelReason::Ended));
    assert_eq!(
        drops[0].holder,
        Some(token),
        "the spawned work is dropped while the lease is still held"
    );
    assert!(
        steps.lock().unwrap().iter().all(|&at| at <= returned.at),
        "the spawned work does not step after the routine returned"
    );
    let spawned = handles.recv().await.unwrap().await;
    assert!(
        spawned.is_err_and(|error| error.is_cancelled()),
        "the spawned task was aborted"
    );
}

#[tokio::test(start_paused = true)]
async fn work_spawned_through_the_context_is_dropped_when_a_plain_routine_returns() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let (drops, steps) = (Drops::default(), Arc::default());
    let (tx, _handles) = mpsc::unbounded_channel();
    let spawner = spawner(&backend, &drops, &steps, tx, Duration::from_millis(100));
    let handle = runner.run(spawner);
    assert!(matches!(handle.join().await, Outcome::Returned));
    let drops = drops.all();
    assert_eq!(
        drops.len(),
        1,
        "the spawned work was dropped by join: {drops:?}"
    );
    assert_eq!(drops[0].reason, Some(CancelReason::Ended));
    let before = steps.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(steps.lock().unwrap().len(), before, "and never steps again");
}

#[tokio::test(start_paused = true)]
async fn work_spawned_through_the_context_is_dropped_with_a_routine_that_lost_its_lease() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let (drops, steps) = (Drops::default(), Arc::<Mutex<Vec<Instant>>>::default());
    let (tx, _handles) = mpsc::unbounded_channel();
    let spawner = spawner(&backend, &drops, &steps, tx, Duration::MAX);
    let handle = runner.run_named("job", spawner, RunOptions::exclusive());
    wait_acquired(&mut events).await;
    backend.revoke(&LockKey::new("job").unwrap());
    let dropped = wait_for(&mut events, TTL, "dropped", kind!(EventKind::Dropped)).await;
    assert!(matches!(handle.join().await, Outcome::LeaseLost));
    let drops = drops.all();
    assert_eq!(drops.len(), 1, "the spawned work was dropped: {drops:?}");
    assert_eq!(drops[0].reason, Some(CancelReason::LeaseLost));
    assert_eq!(drops[0].at, dropped.at, "at once");
    assert!(
        steps.lock().unwrap().iter().all(|&at| at <= dropped.at),
        "the spawned work does not step after the routine was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn work_spawned_after_the_instance_ended_never_runs() {
    let runner = runner(&MemoryBackend::new());
    let (tx, rx) = oneshot::channel();
    let handle = runner.run_named("job", send_context(tx), RunOptions::exclusive());
    assert!(matches!(handle.join().await, Outcome::Returned));
    let ctx = rx.await.unwrap();
    let late = ctx.spawn(async { unreachable!("must not run after the instance ended") });
    assert!(
        late.await.is_err_and(|error| error.is_cancelled()),
        "it is aborted at once"
    );
}
