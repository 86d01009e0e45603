//! The test that a second signal during the drain ends it at once, for each signal in a
//! test binary of its own (signals are process-wide).

use std::process::Command;
use std::time::Duration;

use leasehold::{MemoryBackend, Outcome, Runner};

/// Sends `signal` (`TERM`, `INT`) to this process.
fn signal_self(signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// A routine that sees its cancellation and then ignores it: the first `signal` starts the
/// drain (600 s), the second must end it at once and drop the routine.
pub(crate) async fn a_second_signal_during_the_drain_drops_the_routines_still_running(
    signal: &str,
) {
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_drain_timeout(Duration::from_secs(600))
        .with_signal_handling(true)
        .build()
        .unwrap();
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel();
    let handle = runner.run(|ctx| async move {
        ctx.cancelled().await;
        let _ = cancelled_tx.send(());
        std::future::pending::<()>().await;
    });
    signal_self(signal);
    tokio::time::timeout(Duration::from_secs(10), cancelled_rx)
        .await
        .unwrap_or_else(|_| panic!("the first SIG{signal} starts the drain"))
        .unwrap();
    signal_self(signal);
    tokio::time::timeout(Duration::from_secs(10), runner.wait_for_shutdown())
        .await
        .unwrap_or_else(|_| panic!("the second SIG{signal} must end the 600 s drain at once"));
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}
