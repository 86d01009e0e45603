//! The deadline watchdog: a routine that is never woken, and so never passes its guard's
//! clock check, is still cancelled at its grace time and dropped at its local deadline
//! when the backend hangs, each lease at its own deadline.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TTL, runner, wait_for};
use leasehold::{CancelReason, Context, EventKind, MemoryBackend, RunOptions, Runner};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// When a routine's context was cancelled, and why.
type Cancellation = Option<(Instant, Option<CancelReason>)>;

/// When a routine's context was cancelled (and why) and when its future was dropped.
#[derive(Clone, Default)]
struct Seen {
    cancelled: Arc<Mutex<Cancellation>>,
    dropped: Arc<Mutex<Option<Instant>>>,
}

/// Notes when the future that owns it is dropped.
struct DropClock(Arc<Mutex<Option<Instant>>>);

impl Drop for DropClock {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

/// Starts `name`: a routine that ignores its context and waits forever without being
/// woken. A task outside it notes when its context is cancelled, and the routine's
/// future notes when it is dropped. Returns once the routine runs.
async fn start_deaf(runner: &Runner, name: &str, options: RunOptions) -> Seen {
    let seen = Seen::default();
    let (started, mut running) = mpsc::unbounded_channel::<Context>();
    let dropped = Arc::clone(&seen.dropped);
    let _handle = runner.run_named(
        name,
        move |ctx| {
            let _ = started.send(ctx);
            let clock = DropClock(Arc::clone(&dropped));
            async move {
                let _clock = clock;
                std::future::pending::<()>().await
            }
        },
        options,
    );
    let ctx = running.recv().await.expect("the routine starts");
    let cancelled = Arc::clone(&seen.cancelled);
    tokio::spawn(async move {
        ctx.cancelled().await;
        *cancelled.lock().unwrap() = Some((Instant::now(), ctx.cancel_reason()));
    });
    seen
}

#[tokio::test(start_paused = true)]
async fn a_routine_never_woken_is_cancelled_then_dropped_at_its_deadline_when_the_backend_hangs() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let options = RunOptions::keep_running_one_instance();
    let seen = start_deaf(&runner, "deaf", options).await;
    // The memory backend answers at once, in paused time: the acquire was sent now.
    let acquired = Instant::now();
    // Some refreshes first, so that the deadline has moved on; then hang between two
    // refresh ticks.
    tokio::time::sleep(TTL * 2 + runner.config().refresh_interval / 2).await;
    assert!(
        seen.cancelled.lock().unwrap().is_none(),
        "kept leases cancel nothing"
    );
    backend.set_hanging(true);
    let hung = Instant::now();

    let dropped = wait_for(&mut events, TTL * 2, "dropped", kind!(EventKind::Dropped)).await;
    let config = runner.config();
    // The last refresh that answered was sent at the last refresh tick before the hang.
    let interval = config.refresh_interval;
    let ticks = (hung - acquired).as_nanos() / interval.as_nanos();
    let last_sent = acquired + interval * u32::try_from(ticks).unwrap();
    let deadline = last_sent + config.lease_ttl - config.safety_margin;
    assert_eq!(
        dropped.at, deadline,
        "dropped exactly at the local deadline"
    );
    assert_eq!(
        *seen.dropped.lock().unwrap(),
        Some(deadline),
        "the routine's future is dropped at the deadline"
    );
    let (cancelled_at, reason) = seen.cancelled.lock().unwrap().expect("context cancelled");
    assert_eq!(
        cancelled_at,
        deadline - config.grace_period,
        "the context is cancelled one grace period before the deadline"
    );
    assert_eq!(reason, Some(CancelReason::LeaseLost));
}

#[tokio::test(start_paused = true)]
async fn a_shorter_lease_taken_later_is_dropped_at_its_own_earlier_deadline() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let long = start_deaf(&runner, "long", RunOptions::keep_running_one_instance()).await;
    let long_acquired = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The backend hangs from before the second acquire's reply on: the first lease is
    // never refreshed, the second is taken and never refreshed either.
    let short_ttl = Duration::from_secs(1);
    let short = start_deaf(
        &runner,
        "short",
        RunOptions::keep_running_one_instance().lease_ttl(short_ttl),
    )
    .await;
    let short_acquired = Instant::now();
    backend.set_hanging(true);

    wait_for(
        &mut events,
        TTL * 2,
        "first drop",
        kind!(EventKind::Dropped),
    )
    .await;
    wait_for(
        &mut events,
        TTL * 2,
        "second drop",
        kind!(EventKind::Dropped),
    )
    .await;
    // A short TTL's own timing: safety margin a tenth, grace period a fifth.
    let short_deadline = short_acquired + short_ttl - short_ttl / 10;
    assert_eq!(*short.dropped.lock().unwrap(), Some(short_deadline));
    let (cancelled_at, _) = short.cancelled.lock().unwrap().expect("cancelled");
    assert_eq!(cancelled_at, short_deadline - short_ttl / 5);
    let config = runner.config();
    let long_deadline = long_acquired + config.lease_ttl - config.safety_margin;
    assert_eq!(*long.dropped.lock().unwrap(), Some(long_deadline));
}
