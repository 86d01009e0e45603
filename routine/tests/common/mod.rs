//! Shared helpers for the runner's paused-time tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub mod counting;

use leasehold::{Event, EventKind, MemoryBackend, Runner};
use tokio::sync::broadcast;

pub const TTL: Duration = Duration::from_secs(5);

/// A runner on `backend` with the default timing for a 5 s TTL and no signal handlers.
pub fn runner(backend: &MemoryBackend) -> Runner {
    runner_on(backend.clone())
}

/// [`runner`] on any backend.
pub fn runner_on(backend: impl leasehold::LockBackend) -> Runner {
    Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap()
}

/// Waits (in tokio time) for the first event matching `pred`, failing after `within`.
pub async fn wait_for(
    events: &mut broadcast::Receiver<Event>,
    within: Duration,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let found = tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(event) if pred(&event) => return event,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("lost {n} events"),
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no event `{what}` within {within:?}"))
}

/// Waits (in tokio time, up to [`TTL`]) for the next `Acquired` event.
pub async fn wait_acquired(events: &mut broadcast::Receiver<Event>) -> Event {
    wait_for(events, TTL, "acquired", |event| {
        matches!(event.kind, EventKind::Acquired { .. })
    })
    .await
}

/// Matches an event kind with a pattern.
#[macro_export]
macro_rules! kind {
    ($pattern:pat) => {
        |event: &leasehold::Event| matches!(event.kind, $pattern)
    };
}

/// Counts routine instances running at once and remembers the maximum.
#[derive(Debug, Default, Clone)]
pub struct Concurrency {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Concurrency {
    /// Marks an instance as running until the guard drops (dropped futures count too).
    pub fn enter(&self) -> impl Drop + Send + use<> {
        let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(running, Ordering::SeqCst);
        Guard(Arc::clone(&self.now))
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn is(event: &Event, kind: EventKind) -> bool {
    event.kind == kind
}

/// Starts `name` on `runner` as a singleton that waits for its cancellation.
pub fn idle_singleton(runner: &Runner, name: &str) -> leasehold::RoutineHandle {
    runner.run_named(
        name,
        |ctx| async move { ctx.cancelled().await },
        leasehold::RunOptions::keep_running_one_instance(),
    )
}

/// A holder and a waiter of the singleton `job` on two runners: returns once `holder`
/// holds the lease and `waiter` has found it contended, with both handles and the
/// waiter's event receiver.
pub async fn holder_and_waiter(
    holder: &Runner,
    waiter: &Runner,
) -> (
    leasehold::RoutineHandle,
    leasehold::RoutineHandle,
    broadcast::Receiver<Event>,
) {
    let mut holder_events = holder.subscribe();
    let mut waiter_events = waiter.subscribe();
    let held = idle_singleton(holder, "job");
    wait_for(&mut holder_events, TTL, "holder acquires", |e| {
        matches!(e.kind, EventKind::Acquired { .. })
    })
    .await;
    let waiting = idle_singleton(waiter, "job");
    wait_for(&mut waiter_events, TTL, "waiter contended", |e| {
        matches!(e.kind, EventKind::Contended { .. })
    })
    .await;
    (held, waiting, waiter_events)
}
