//! The application's shutdown signal, and who owns SIGINT/SIGTERM.

mod common;

use std::time::Duration;

use common::{TTL, idle_singleton, wait_acquired};
use leasehold::{LockKey, MemoryBackend, Outcome, Runner};
use tokio_util::sync::CancellationToken;

#[test]
fn builder_runners_leave_signals_to_the_application_and_the_default_runner_takes_them() {
    let runner = Runner::builder().build().unwrap();
    assert!(!runner.config().handle_signals);
    assert!(
        !Runner::with_backend(MemoryBackend::new())
            .config()
            .handle_signals
    );
    assert!(leasehold::default_runner().config().handle_signals);
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_token_drains_and_releases_every_lease() {
    let backend = MemoryBackend::new();
    let cancel = CancellationToken::new();
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(TTL)
        .with_shutdown_token(cancel.clone())
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;
    assert!(!runner.is_shutting_down());

    cancel.cancel();
    tokio::time::timeout(TTL, runner.shutdown_started())
        .await
        .expect("the token starts the shutdown");
    assert!(runner.is_shutting_down());
    tokio::time::timeout(TTL, runner.wait_for_shutdown())
        .await
        .expect("the shutdown finishes");
    assert_eq!(
        backend.holder(&LockKey::new("job").unwrap()),
        None,
        "the lease is released by the time the shutdown has finished"
    );
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

#[test]
fn a_shutdown_signal_given_outside_a_runtime_is_watched_once_routines_start() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let backend = MemoryBackend::new();
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(TTL)
        .with_shutdown_signal(async move {
            let _ = rx.await;
        })
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut events = runner.subscribe();
        let handle = idle_singleton(&runner, "job");
        wait_acquired(&mut events).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!runner.is_shutting_down(), "no signal yet");
        tx.send(()).unwrap();
        tokio::time::timeout(TTL, runner.wait_for_shutdown())
            .await
            .expect("the signal shuts the runner down");
        assert_eq!(backend.holder(&LockKey::new("job").unwrap()), None);
        assert!(matches!(handle.join().await, Outcome::Cancelled));
    });
}
