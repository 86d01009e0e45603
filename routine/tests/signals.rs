//! SIGTERM shuts the runner down (its own test binary: it signals its own process).
#![cfg(all(unix, feature = "signals"))]

use std::process::Command;

use leasehold::{CancelReason, MemoryBackend, Outcome, Runner};

#[tokio::test]
async fn sigterm_cancels_every_routine_and_shuts_the_runner_down() {
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_signal_handling(true)
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = runner.run(|ctx| async move {
        ctx.cancelled().await;
        let _ = tx.send(ctx.cancel_reason());
    });
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
    assert_eq!(
        rx.await.unwrap(),
        Some(CancelReason::Shutdown),
        "SIGTERM cancels the routine"
    );
    assert!(matches!(handle.join().await, Outcome::Cancelled));
    runner.wait_for_shutdown().await;
    let late = runner.run(|_| async {});
    assert!(
        matches!(late.join().await, Outcome::Rejected),
        "no routine starts after the signal"
    );
}
