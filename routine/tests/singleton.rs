//! `keep_running_one_instance`: one instance across runners, restarts, handover.

mod common;

use std::time::Duration;

use common::{
    Concurrency, TTL, holder_and_waiter, idle_singleton, runner, wait_acquired, wait_for,
};
use leasehold::{EventKind, LockKey, MemoryBackend, Outcome, RunOptions, Runner};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn exactly_one_instance_runs_across_several_runners() {
    let backend = MemoryBackend::new();
    let concurrency = Concurrency::default();
    let runners: Vec<Runner> = (0..4).map(|_| runner(&backend)).collect();
    let mut events = runners[0].subscribe();
    let handles: Vec<_> = runners
        .iter()
        .map(|r| {
            let concurrency = concurrency.clone();
            r.run_named(
                "job",
                move |ctx| {
                    let concurrency = concurrency.clone();
                    async move {
                        let _running = concurrency.enter();
                        // Work a while, then return so the lease changes hands often.
                        tokio::select! {
                            _ = ctx.cancelled() => {}
                            _ = tokio::time::sleep(Duration::from_millis(700)) => {}
                        }
                    }
                },
                RunOptions::keep_running_one_instance(),
            )
        })
        .collect();
    // Let it churn for a simulated minute, stopping holders one by one.
    wait_for(
        &mut events,
        TTL,
        "first acquire",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    for (i, handle) in handles.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(15)).await;
        handle.cancel();
        assert!(
            matches!(handle.join().await, Outcome::Cancelled),
            "runner {i}"
        );
    }
    assert_eq!(
        concurrency.max(),
        1,
        "never more than one instance may run at once"
    );
}

#[tokio::test(start_paused = true)]
async fn restarts_after_the_routine_returns_after_the_retry_interval() {
    let runner = runner(&MemoryBackend::new());
    let mut events = runner.subscribe();
    let _handle = runner.run_named("job", |_| async {}, RunOptions::keep_running_one_instance());
    let mut starts = Vec::new();
    for _ in 0..3 {
        let event = wait_for(&mut events, TTL, "started", kind!(EventKind::Started)).await;
        starts.push(event.at);
    }
    for pair in starts.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            TTL / 5,
            "a routine that returned is restarted after the retry interval (TTL/5)"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn restarts_after_a_panic_with_growing_backoff() {
    let runner = runner(&MemoryBackend::new());
    let mut events = runner.subscribe();
    let _handle = runner.run_named(
        "job",
        |_| async { panic!("always") },
        RunOptions::keep_running_one_instance(),
    );
    let mut starts = Vec::new();
    for _ in 0..5 {
        let event = wait_for(
            &mut events,
            Duration::from_secs(60),
            "started",
            kind!(EventKind::Started),
        )
        .await;
        starts.push(event.at);
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|p| p[1] - p[0]).collect();
    let min = TTL / 5;
    assert!(
        gaps[0] >= min.mul_f64(0.75).max(min) && gaps[0] <= min.mul_f64(1.25),
        "first backoff is about TTL/5: {gaps:?}"
    );
    assert!(
        gaps[3] > gaps[0] * 4,
        "backoff must grow exponentially: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_caller_in_the_same_process_waits_then_takes_over_at_once_on_release() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let first = idle_singleton(&runner, "job");
    let acquired = wait_for(
        &mut events,
        TTL,
        "first acquires",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    assert_eq!(acquired.number, first.number());
    let second = idle_singleton(&runner, "job");
    wait_for(
        &mut events,
        TTL,
        "second is contended",
        kind!(EventKind::Contended { .. }),
    )
    .await;

    // Give the waiter time to settle into its wait, well inside a retry interval.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let cancelled_at = Instant::now();
    first.cancel();
    let taken = wait_for(
        &mut events,
        TTL,
        "second acquires",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    assert_eq!(
        taken.number,
        second.number(),
        "the waiting caller takes over"
    );
    assert_eq!(
        taken.at, cancelled_at,
        "release notification: takeover must not wait for a retry interval"
    );
    assert!(matches!(first.join().await, Outcome::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn a_vanished_holder_is_taken_over_right_when_its_lease_expires() {
    let backend = MemoryBackend::new();
    let (holder, waiter) = (runner(&backend), runner(&backend));
    let (_h, _w, mut waiter_events) = holder_and_waiter(&holder, &waiter).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let key = LockKey::new("job").unwrap();
    let crashed_at = Instant::now();
    holder.abort();
    let left = leasehold::LockBackend::expires_in(&backend, &key)
        .await
        .unwrap()
        .unwrap();
    let taken = wait_for(
        &mut waiter_events,
        TTL * 2,
        "waiter acquires",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    let takeover = taken.at - crashed_at;
    assert!(
        takeover >= left && takeover <= left + Duration::from_millis(2),
        "takeover {takeover:?} must come right when the lease ran out ({left:?} after the crash)"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_holder_releases_with_a_fresh_timeout() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let mut events = runner.subscribe();
    let handle = idle_singleton(&runner, "job");
    let acquired = wait_acquired(&mut events).await;
    handle.cancel();
    let released = wait_for(
        &mut events,
        TTL,
        "released",
        kind!(EventKind::Released { .. }),
    )
    .await;
    let EventKind::Acquired { token } = acquired.kind else {
        unreachable!()
    };
    assert_eq!(
        released.kind,
        EventKind::Released { token },
        "the same lease is released"
    );
    assert!(matches!(handle.join().await, Outcome::Cancelled));
    assert_eq!(
        backend.holder(&LockKey::new("job").unwrap()),
        None,
        "the key must be free right after the routine was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_over_to_another_runner_at_once() {
    let backend = MemoryBackend::new();
    let (a, b) = (runner(&backend), runner(&backend));
    let (_ha, _hb, mut events_b) = holder_and_waiter(&a, &b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    a.shutdown().await;
    let taken = wait_for(
        &mut events_b,
        TTL,
        "b acquires",
        kind!(EventKind::Acquired { .. }),
    )
    .await;
    assert_eq!(
        taken.at, stopped_at,
        "drain-then-release: b must take over without waiting"
    );
}

#[tokio::test(start_paused = true)]
async fn exclusive_runs_once_under_the_lease() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let handle = runner.run_named(
        "once",
        move |ctx| {
            let token = ctx.fencing_token();
            let tx = tx.take();
            async move {
                if let Some(tx) = tx {
                    let _ = tx.send(token);
                }
            }
        },
        RunOptions::exclusive(),
    );
    assert!(
        matches!(handle.join().await, Outcome::Returned),
        "exclusive runs once and returns"
    );
    assert!(
        rx.await.unwrap().is_some(),
        "it ran under a lease with a fencing token"
    );
    assert_eq!(
        backend.holder(&LockKey::new("once").unwrap()),
        None,
        "and released it"
    );
}
