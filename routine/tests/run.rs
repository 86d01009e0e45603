//! `run`: plain background routines, cancellation, panics, shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{runner, wait_for};
use leasehold::{CancelReason, MemoryBackend, Outcome, RunOptions, Runner};

#[tokio::test(start_paused = true)]
async fn run_reports_a_routine_that_returns() {
    let runner = runner(&MemoryBackend::new());
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let handle = runner.run(move |ctx| async move {
        assert!(
            !ctx.is_cancelled(),
            "a fresh routine must not start cancelled"
        );
        assert_eq!(ctx.fencing_token(), None, "plain routines hold no lease");
        flag.store(true, Ordering::SeqCst);
    });
    assert!(matches!(handle.join().await, Outcome::Returned));
    assert!(ran.load(Ordering::SeqCst), "the routine must have run");
}

#[tokio::test(start_paused = true)]
async fn routines_get_increasing_process_wide_numbers() {
    let a = runner(&MemoryBackend::new());
    let b = runner(&MemoryBackend::new());
    let first = a.run(|_| async {});
    let second = b.run(|_| async {});
    assert!(
        second.number() > first.number(),
        "numbers are process-wide and grow across runners"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_through_the_handle_cancels_the_context() {
    let runner = runner(&MemoryBackend::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = runner.run(move |ctx| async move {
        ctx.cancelled().await;
        let _ = tx.send(ctx.cancel_reason());
    });
    handle.cancel();
    assert!(matches!(handle.join().await, Outcome::Cancelled));
    assert_eq!(rx.await.unwrap(), Some(CancelReason::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_caught_and_the_runner_goes_on() {
    let runner = runner(&MemoryBackend::new());
    let handle = runner.run(|_| async { panic!("boom in routine") });
    match handle.join().await {
        Outcome::Panicked(message) => assert_eq!(message, "boom in routine"),
        other => panic!("a panicking routine must report Panicked, got {other:?}"),
    }
    let after = runner.run(|_| async {});
    assert!(
        matches!(after.join().await, Outcome::Returned),
        "the runner must keep working after a routine panicked"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_every_routine_and_rejects_new_ones() {
    let runner = runner(&MemoryBackend::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let tx = tx.clone();
            runner.run(move |ctx| async move {
                ctx.cancelled().await;
                let _ = tx.send(ctx.cancel_reason());
            })
        })
        .collect();
    runner.shutdown().await;
    for handle in handles {
        assert!(matches!(handle.join().await, Outcome::Cancelled));
        assert_eq!(rx.recv().await.unwrap(), Some(CancelReason::Shutdown));
    }
    let late = runner.run(|_| async { unreachable!("must not start after shutdown") });
    assert!(matches!(late.join().await, Outcome::Rejected));
    let late_named = runner.run_named("x", |_| async {}, RunOptions::keep_running_one_instance());
    assert!(matches!(late_named.join().await, Outcome::Rejected));
}

#[tokio::test(start_paused = true)]
async fn shutdown_drops_routines_that_ignore_cancellation_after_the_drain_timeout() {
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_drain_timeout(Duration::from_secs(3))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let handle = runner.run(|_| std::future::pending());
    let started = tokio::time::Instant::now();
    runner.shutdown().await;
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "shutdown must wait exactly the drain timeout for a stuck routine"
    );
    wait_for(
        &mut events,
        Duration::ZERO,
        "dropped",
        kind!(leasehold::EventKind::Dropped),
    )
    .await;
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn wait_for_shutdown_resolves_after_shutdown_finished() {
    let runner = runner(&MemoryBackend::new());
    let waiter = tokio::spawn({
        let runner = runner.clone();
        async move { runner.wait_for_shutdown().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "no shutdown yet");
    runner.shutdown().await;
    waiter.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_whose_caller_stopped_waiting_still_finishes() {
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_drain_timeout(Duration::from_secs(3))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let handle = runner.run(|_| std::future::pending());
    // The first caller gives up while the drain is under way.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), runner.shutdown()).await;
    assert!(gave_up.is_err(), "the drain takes the whole drain timeout");
    tokio::time::timeout(Duration::from_secs(10), runner.shutdown())
        .await
        .expect("a second shutdown() must finish, not hang");
    tokio::time::timeout(Duration::from_secs(10), runner.wait_for_shutdown())
        .await
        .expect("wait_for_shutdown() must finish, not hang");
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

#[test]
fn run_outside_a_runtime_fails_with_a_clear_error() {
    let runner = Runner::without_backend();
    let handle = runner.run(|_| async {});
    let outcome = futures_lite_block_on(handle.join());
    match outcome {
        Outcome::Failed(error) => assert!(
            error.to_string().contains("tokio runtime"),
            "the error must say a runtime is needed: {error}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn a_routine_dropped_with_its_runtime_is_finished_and_aborted() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_signal_handling(false)
        .build()
        .unwrap();
    let handle = runtime.block_on(async { runner.run(|_| std::future::pending()) });
    assert!(!handle.is_finished(), "still running");
    drop(runtime);
    assert!(
        handle.is_finished(),
        "a routine whose task was dropped with its runtime has finished"
    );
    assert!(matches!(
        futures_lite_block_on(handle.join()),
        Outcome::Aborted
    ));
}
