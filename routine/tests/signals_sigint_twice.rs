//! A second SIGINT during the drain ends it at once: the twin of `signals_twice.rs` for
//! Ctrl-C (its own test binary: it signals its own process).
#![cfg(all(unix, feature = "signals"))]

use std::process::Command;
use std::time::Duration;

use leasehold::{MemoryBackend, Outcome, Runner};

fn sigint_to_self() {
    let status = Command::new("kill")
        .args(["-INT", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -INT failed");
}

#[tokio::test]
async fn a_second_sigint_during_the_drain_drops_the_routines_still_running() {
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_drain_timeout(Duration::from_secs(600))
        .with_signal_handling(true)
        .build()
        .unwrap();
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel();
    // Sees its cancellation, then ignores it.
    let handle = runner.run(|ctx| async move {
        ctx.cancelled().await;
        let _ = cancelled_tx.send(());
        std::future::pending::<()>().await;
    });
    sigint_to_self();
    tokio::time::timeout(Duration::from_secs(10), cancelled_rx)
        .await
        .expect("the first SIGINT starts the drain")
        .unwrap();
    sigint_to_self();
    tokio::time::timeout(Duration::from_secs(10), runner.wait_for_shutdown())
        .await
        .expect("the second SIGINT must end the 600 s drain at once");
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}
