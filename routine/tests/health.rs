//! `Runner::health`: late lease refreshes show before the lease is lost.

mod common;

use std::time::Duration;

use common::{TTL, idle_singleton, runner, wait_acquired, wait_for};
use leasehold::{EventKind, MemoryBackend, Runner};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_runner_holding_nothing_is_healthy() {
    let runner = Runner::with_backend(MemoryBackend::new());
    assert!(runner.health().is_healthy());
    assert_eq!(runner.health().to_string(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_backend_makes_a_held_lease_late_before_its_deadline() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let config = runner.config().clone();
    let mut events = runner.subscribe();
    let handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;

    // Refreshed on time: healthy at every look over several refresh intervals.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let health = runner.health();
        assert!(health.is_healthy(), "refreshed on time: {health}");
    }

    backend.set_hanging(true);
    let hung_at = Instant::now();
    // The last refresh was sent at most one interval before the hang.
    let deadline = hung_at + config.lease_ttl - config.safety_margin;
    let late = loop {
        let health = runner.health();
        if !health.is_healthy() {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "the late refresh must show before the local deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        Instant::now() < deadline - config.grace_period,
        "the late refresh must show before the routine is even cancelled"
    );
    assert_eq!(late.late.len(), 1, "{late}");
    assert_eq!(late.late[0].name.as_str(), "job");
    assert!(late.to_string().contains("job"), "{late}");
    // Later still: it grows later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = runner.health();
    assert!(
        later.late[0].late_by > late.late[0].late_by,
        "lateness grows while refreshes hang"
    );

    wait_for(&mut events, TTL, "lease lost", |e| {
        matches!(e.kind, EventKind::LeaseLost { .. })
    })
    .await;
    assert!(
        runner.health().is_healthy(),
        "a lease given up is no longer reported: the routine stopped using it"
    );
    handle.cancel();
    backend.set_hanging(false);
}
