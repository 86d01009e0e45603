//! Runner-level cases: `keep_running_one_instance` on the backend under test.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{CancelReason, EventKind, FencingToken, Outcome, RunOptions};
use tokio::time::Instant;

use crate::wait::{self, acquired};
use crate::{Faulty, Harness};

/// Counts instances running at once; a guard per running instance.
#[derive(Clone, Default)]
struct Concurrency {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Concurrency {
    fn enter(&self) -> Running {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Running(Arc::clone(&self.now))
    }
}

async fn wait_cancelled(ctx: leasehold::Context) {
    ctx.cancelled().await;
}

/// Several runners, each with its own client, keep one routine running: at no time do
/// two instances run at once, and the routine moves between runners as holders stop.
pub async fn one_instance_across_runners(h: &Harness) {
    let concurrency = Concurrency::default();
    let mut runners = Vec::new();
    for _ in 0..3 {
        runners.push(h.runner().await);
    }
    let ttl = h.runner_ttl();
    let name = h.key("job").to_string();
    let mut handles = Vec::new();
    let mut events = Vec::new();
    for runner in &runners {
        events.push(runner.subscribe());
        let concurrency = concurrency.clone();
        handles.push(runner.run_named(
            &name,
            move |ctx| {
                let running = concurrency.enter();
                async move {
                    let _running = running;
                    tokio::select! {
                        _ = ctx.cancelled() => {}
                        _ = tokio::time::sleep(ttl / 3) => {}
                    }
                }
            },
            RunOptions::keep_running_one_instance(),
        ));
    }
    // Stop whoever holds the routine, twice; each time another runner must take over.
    let mut holders = HashSet::new();
    for _ in 0..2 {
        let (index, _) =
            first_acquisition(&mut events, h.scaled(Duration::from_secs(10)) + ttl * 3).await;
        holders.insert(index);
        handles[index].cancel();
        events[index] = runners[index].subscribe();
    }
    let (index, _) =
        first_acquisition(&mut events, h.scaled(Duration::from_secs(10)) + ttl * 3).await;
    holders.insert(index);
    for runner in &runners {
        runner.shutdown().await;
    }
    assert_eq!(
        concurrency.max.load(Ordering::SeqCst),
        1,
        "never two instances at once"
    );
    assert!(
        holders.len() >= 2,
        "the routine must move to another runner when its holder stops"
    );
}

/// The next acquisition by any runner whose handle is still live, as `(runner index, time)`.
async fn first_acquisition(
    events: &mut [tokio::sync::broadcast::Receiver<leasehold::Event>],
    within: Duration,
) -> (usize, Instant) {
    wait::until(within, "an acquisition", || {
        let mut found = None;
        for (index, rx) in events.iter_mut().enumerate() {
            while let Ok(event) = rx.try_recv() {
                if acquired(&event) && found.is_none() {
                    found = Some((index, event.at));
                }
            }
        }
        async move { found }
    })
    .await
}

/// When the holder's runner shuts down, it releases the lease and a waiting runner
/// takes over well before the lease could have expired.
pub async fn takeover_when_holder_shuts_down(h: &Harness) {
    let (holder, waiter) = (h.runner().await, h.runner().await);
    let name = h.key("job").to_string();
    let ttl = h.runner_ttl();
    let within = h.scaled(Duration::from_secs(10)) + ttl * 3;
    let mut holder_events = holder.subscribe();
    let mut waiter_events = waiter.subscribe();
    let _a = holder.run_named(
        &name,
        wait_cancelled,
        RunOptions::keep_running_one_instance(),
    );
    wait::event(&mut holder_events, within, "holder acquires", acquired).await;
    let _b = waiter.run_named(
        &name,
        wait_cancelled,
        RunOptions::keep_running_one_instance(),
    );
    wait::event(&mut waiter_events, within, "waiter contended", |e| {
        matches!(e.kind, EventKind::Contended { .. })
    })
    .await;

    let stopping = Instant::now();
    holder.shutdown().await;
    let taken = wait::event(&mut waiter_events, within, "waiter acquires", acquired).await;
    let handover = taken.at - stopping;
    let earliest_expiry = ttl - holder.config().refresh_interval;
    assert!(
        handover < earliest_expiry,
        "graceful handover took {handover:?}: the lease must be released, not left to expire \
         (it could not have expired before {earliest_expiry:?})"
    );
    waiter.shutdown().await;
}

/// When the holder vanishes without releasing (a crash), a waiting runner takes over
/// once the lease expires: within the TTL plus a retry interval.
pub async fn takeover_when_holder_vanishes(h: &Harness) {
    let (holder, waiter) = (h.runner().await, h.runner().await);
    let name = h.key("job").to_string();
    let ttl = h.runner_ttl();
    let within = h.scaled(Duration::from_secs(10)) + ttl * 3;
    let mut holder_events = holder.subscribe();
    let mut waiter_events = waiter.subscribe();
    let _a = holder.run_named(
        &name,
        wait_cancelled,
        RunOptions::keep_running_one_instance(),
    );
    wait::event(&mut holder_events, within, "holder acquires", acquired).await;
    let _b = waiter.run_named(
        &name,
        wait_cancelled,
        RunOptions::keep_running_one_instance(),
    );
    wait::event(&mut waiter_events, within, "waiter contended", |e| {
        matches!(e.kind, EventKind::Contended { .. })
    })
    .await;

    let crashed = Instant::now();
    holder.abort();
    let taken = wait::event(&mut waiter_events, within, "waiter acquires", acquired).await;
    let bound = ttl + waiter.config().retry_interval + h.scaled(Duration::from_millis(500));
    assert!(
        taken.at - crashed <= bound,
        "takeover after a crash took {:?}, more than TTL + retry interval ({bound:?})",
        taken.at - crashed
    );
    waiter.shutdown().await;
}

/// When refreshes keep failing, the routine's context is cancelled (reason `LeaseLost`)
/// and its future is dropped; only after that does another runner acquire the key.
pub async fn routine_cancelled_then_stopped_when_lease_lost(h: &Harness) {
    let faulty = Faulty::new(h.backend().await);
    let holder = h.runner_on(Arc::new(faulty.clone()));
    let other = h.runner().await;
    let name = h.key("job").to_string();
    let ttl = h.runner_ttl();
    let within = h.scaled(Duration::from_secs(10)) + ttl * 3;
    let mut events = holder.subscribe();
    let mut other_events = other.subscribe();
    let reason = Arc::new(Mutex::new(None));
    // Steps with the fencing token of the instance that took them: after the drop the
    // holder's runner may win the lease again, and that new instance's steps are fine.
    let steps_after_drop = Arc::new(Mutex::new(Vec::<(Option<FencingToken>, Instant)>::new()));
    let (seen, steps) = (Arc::clone(&reason), Arc::clone(&steps_after_drop));
    let _a = holder.run_named(
        &name,
        move |ctx| {
            let (seen, steps) = (Arc::clone(&seen), Arc::clone(&steps));
            let token = ctx.fencing_token();
            async move {
                // Ignores its cancellation on purpose: the runner must stop it anyway.
                let watch = async {
                    ctx.cancelled().await;
                    *seen.lock().expect("lock") = ctx.cancel_reason();
                    std::future::pending::<()>().await;
                };
                let work = async {
                    loop {
                        steps.lock().expect("lock").push((token, Instant::now()));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                tokio::join!(watch, work);
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    wait::event(&mut events, within, "holder acquires", acquired).await;
    let _b = other.run_named(
        &name,
        wait_cancelled,
        RunOptions::keep_running_one_instance(),
    );
    faulty.fail_refreshes(true);

    let lost = wait::event(&mut events, within, "lease lost", |e| {
        matches!(e.kind, EventKind::LeaseLost { .. })
    })
    .await;
    let EventKind::LeaseLost { token: lost_token } = lost.kind else {
        unreachable!("matched above")
    };
    let dropped = wait::event(&mut events, within, "routine dropped", |e| {
        e.kind == EventKind::Dropped
    })
    .await;
    assert_eq!(
        *reason.lock().expect("lock"),
        Some(CancelReason::LeaseLost),
        "the routine's context must be cancelled for the lost lease before it is dropped"
    );
    let taken = wait::event(&mut other_events, within, "other runner acquires", acquired).await;
    assert!(
        taken.at >= dropped.at,
        "the other runner acquired at {:?} before the old routine was dropped at {:?}",
        taken.at,
        dropped.at
    );
    let late_steps = steps_after_drop
        .lock()
        .expect("lock")
        .iter()
        .filter(|(token, at)| *token == Some(lost_token) && *at > dropped.at)
        .count();
    assert_eq!(
        late_steps, 0,
        "the dropped routine must not run another step"
    );
    holder.shutdown().await;
    other.shutdown().await;
}

/// A routine that returns is started again (under a new lease) after the retry interval.
pub async fn restart_after_return(h: &Harness) {
    let runner = h.runner().await;
    let within = h.scaled(Duration::from_secs(10)) + h.runner_ttl() * 3;
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        h.key("job").as_str(),
        |_| async {},
        RunOptions::keep_running_one_instance(),
    );
    for _ in 0..3 {
        wait::event(&mut events, within, "acquired", acquired).await;
        wait::event(&mut events, within, "returned", |e| {
            e.kind == EventKind::Returned
        })
        .await;
    }
    handle.cancel();
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

/// A routine that panics is caught, reported and started again after a backoff.
pub async fn restart_after_panic(h: &Harness) {
    let runner = h.runner().await;
    let within = h.scaled(Duration::from_secs(10)) + h.runner_ttl() * 3;
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        h.key("job").as_str(),
        |_| async { panic!("conformance: routine panics on purpose") },
        RunOptions::keep_running_one_instance(),
    );
    for _ in 0..2 {
        wait::event(&mut events, within, "panicked", |e| {
            matches!(e.kind, EventKind::Panicked { .. })
        })
        .await;
        wait::event(&mut events, within, "released after panic", |e| {
            matches!(e.kind, EventKind::Released { .. })
        })
        .await;
    }
    wait::event(&mut events, within, "acquired again", acquired).await;
    handle.cancel();
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

/// The Go package's example, with two members: each runs `task` until it has seen
/// three results, then cancels. The combined output is `task run 0..2` twice, in order,
/// never interleaved.
pub async fn go_example_two_members(h: &Harness) {
    let name = h.key("task").to_string();
    let output = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let mut members = Vec::new();
    for member in 0..2 {
        let runner = h.runner().await;
        let name = name.clone();
        let output = Arc::clone(&output);
        members.push(tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, tokio::sync::oneshot::Sender<()>)>(1);
            let handle = runner.run_named(
                &name,
                move |ctx| {
                    let tx = tx.clone();
                    async move {
                        for i in 0.. {
                            let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
                            tokio::select! {
                                _ = ctx.cancelled() => return,
                                sent = tx.send((format!("task run {i}"), ack_tx)) => if sent.is_err() { return },
                            }
                            // Like Go's unbuffered channel: wait until the line was taken.
                            tokio::select! {
                                _ = ctx.cancelled() => return,
                                _ = ack_rx => {}
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                },
                RunOptions::keep_running_one_instance(),
            );
            for _ in 0..3 {
                let (line, ack) = rx.recv().await.expect("the routine sends lines");
                output.lock().expect("lock").push((member, line));
                let _ = ack.send(());
            }
            handle.cancel();
            handle.join().await;
            runner.shutdown().await;
        }));
    }
    let within = h.scaled(Duration::from_secs(30)) + h.runner_ttl() * 4;
    for member in members {
        tokio::time::timeout(within, member)
            .await
            .expect("both members must finish")
            .expect("member task");
    }
    let output = output.lock().expect("lock").clone();
    let lines: Vec<&str> = output.iter().map(|(_, line)| line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "task run 0",
            "task run 1",
            "task run 2",
            "task run 0",
            "task run 1",
            "task run 2"
        ],
        "the combined output must be task run 0..2 twice, in order"
    );
    let first = output[0].0;
    assert!(
        output[..3].iter().all(|(m, _)| *m == first)
            && output[3..].iter().all(|(m, _)| *m != first),
        "one member's three lines, then the other's, never interleaved: {output:?}"
    );
}
