//! Holder identities: who a runner holds its leases as, and what a waiter learns of the
//! holder.

mod common;

use std::time::Duration;

use common::counting::Counting;
use common::{TTL, idle_singleton, wait_acquired, wait_for};
use leasehold::{
    Error, EventKind, LockBackend, LockKey, MemoryBackend, RoutineState, Runner, process_identity,
};

fn runner_as(backend: impl LockBackend, identity: &str) -> Runner {
    Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(TTL)
        .with_holder_identity(identity)
        .build()
        .unwrap()
}

fn job() -> LockKey {
    LockKey::new("job").unwrap()
}

#[tokio::test(start_paused = true)]
async fn leases_are_held_as_the_runners_identity() {
    let backend = MemoryBackend::new();
    let runner = runner_as(backend.clone(), "web-7");
    assert_eq!(runner.holder_identity(), "web-7");
    let mut events = runner.subscribe();
    let handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;
    let info = backend
        .describe(&job())
        .await
        .unwrap()
        .expect("the job is held");
    assert_eq!(
        info.holder.as_deref(),
        Some("web-7"),
        "the lease must be held as the runner's identity"
    );
    handle.cancel();
    handle.join().await;
}

#[test]
fn the_default_identity_is_the_process_identity() {
    let runner = Runner::builder().build().unwrap();
    assert_eq!(runner.holder_identity(), process_identity());
}

#[test]
fn an_invalid_holder_identity_fails_the_build_with_a_config_error() {
    for identity in ["", "line\nbreak"] {
        let err = Runner::builder()
            .with_holder_identity(identity)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::Config { .. }),
            "{identity:?} must be a configuration error: {err:?}"
        );
        assert!(err.to_string().contains("holder_identity"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_learns_the_holder_once_per_contention_streak() {
    let backend = Counting::default();
    let holder = runner_as(backend.inner.clone(), "holder-a");
    let waiter = runner_as(backend.clone(), "waiter-b");
    let mut holder_events = holder.subscribe();
    let mut waiter_events = waiter.subscribe();
    let held = idle_singleton(&holder, "job");
    let token = wait_acquired(&mut holder_events).await;
    let waiting = idle_singleton(&waiter, "job");
    let seen = wait_for(&mut waiter_events, TTL, "holder seen", |e| {
        matches!(e.kind, EventKind::Contended { .. })
    })
    .await;
    let EventKind::Acquired { token } = token.kind else {
        unreachable!()
    };
    assert_eq!(
        seen.kind,
        EventKind::Contended {
            holder: Some("holder-a".into()),
            token: Some(token),
        }
    );
    let mut state = waiting.state();
    let state = state
        .wait_for(|state| matches!(state, RoutineState::Waiting { .. }))
        .await
        .unwrap()
        .clone();
    assert!(
        matches!(&state, RoutineState::Waiting { holder: Some(h) } if h == "holder-a"),
        "the waiter's state must name the holder: {state:?}"
    );
    // Many retry intervals of contention: still the one describe of the streak.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(
        backend.describes(),
        1,
        "a waiter describes the holder once per contention streak, not per retry"
    );
    held.cancel();
    held.join().await;
    waiting.cancel();
    waiting.join().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_cannot_describe_leaves_the_holder_unknown() {
    let backend = Counting::default();
    backend
        .unsupported
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let holder = runner_as(backend.inner.clone(), "holder-a");
    let waiter = runner_as(backend.clone(), "waiter-b");
    let mut holder_events = holder.subscribe();
    let held = idle_singleton(&holder, "job");
    wait_acquired(&mut holder_events).await;
    let waiting = idle_singleton(&waiter, "job");
    let mut state = waiting.state();
    let state = tokio::time::timeout(
        TTL,
        state.wait_for(|state| matches!(state, RoutineState::Waiting { .. })),
    )
    .await
    .expect("the waiter waits")
    .unwrap()
    .clone();
    assert!(
        matches!(state, RoutineState::Waiting { holder: None }),
        "an unsupported describe leaves the holder unknown: {state:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        backend.describes(),
        1,
        "the refusal is not retried per retry"
    );
    held.cancel();
    held.join().await;
    waiting.cancel();
    waiting.join().await;
}

#[tokio::test(start_paused = true)]
async fn the_runner_describes_who_holds_a_name() {
    let backend = MemoryBackend::new();
    let runner = runner_as(backend.clone(), "web-7");
    assert!(
        runner.describe("job").await.unwrap().is_none(),
        "nobody yet"
    );
    let mut events = runner.subscribe();
    let handle = idle_singleton(&runner, "job");
    wait_acquired(&mut events).await;
    let info = runner.describe("job").await.unwrap().expect("held");
    assert_eq!(info.holder.as_deref(), Some("web-7"));
    assert_eq!(info.fencing_token, backend.holder(&job()));
    assert!(runner.describe("").await.is_err(), "an invalid name");
    assert!(
        Runner::without_backend().describe("job").await.is_err(),
        "no backend"
    );
    handle.cancel();
    handle.join().await;
}
