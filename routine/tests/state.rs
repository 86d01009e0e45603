//! `RoutineHandle::state`: what a routine is doing now.

mod common;

use std::time::Duration;

use common::{TTL, holder_and_waiter, runner};
use leasehold::{LockKey, MemoryBackend, Outcome, RoutineState, RunOptions, Runner};
use tokio::sync::watch;

/// Waits (tokio time, up to `within`) for a state matching `pred`, and returns it.
async fn wait_state(
    state: &mut watch::Receiver<RoutineState>,
    within: Duration,
    what: &str,
    pred: impl FnMut(&RoutineState) -> bool,
) -> RoutineState {
    tokio::time::timeout(within, state.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("no state `{what}` within {within:?}"))
        .expect("the state channel stays open")
        .clone()
}

#[tokio::test(start_paused = true)]
async fn the_state_follows_a_waiter_to_holding_and_stopped() {
    let backend = MemoryBackend::new();
    let (first, second) = (runner(&backend), runner(&backend));
    let (held, waiting, _events) = holder_and_waiter(&first, &second).await;
    let mut held_state = held.state();
    assert!(held_state.borrow().is_holding(), "the holder holds");
    let mut state = waiting.state();
    wait_state(&mut state, TTL, "waiting", |s| {
        matches!(s, RoutineState::Waiting { .. })
    })
    .await;

    held.cancel();
    let RoutineState::Holding { fencing_token, .. } =
        wait_state(&mut state, TTL, "holding", RoutineState::is_holding).await
    else {
        unreachable!()
    };
    assert_eq!(
        backend.holder(&LockKey::new("job").unwrap()),
        Some(fencing_token),
        "the state's token must be the live lease's"
    );
    let ended = wait_state(&mut held_state, TTL, "stopped", RoutineState::is_stopped).await;
    assert!(
        matches!(ended, RoutineState::Stopped(Outcome::Cancelled)),
        "{ended:?}"
    );

    waiting.cancel();
    let state_after_join = waiting.state();
    waiting.join().await;
    assert!(
        matches!(
            *state_after_join.borrow(),
            RoutineState::Stopped(Outcome::Cancelled)
        ),
        "a joined routine's state is stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_plain_routine_is_running_then_stopped() {
    let runner = Runner::without_backend();
    let handle = runner.run(|ctx| async move { ctx.cancelled().await });
    let mut state = handle.state();
    wait_state(&mut state, TTL, "running", |s| {
        matches!(s, RoutineState::Running)
    })
    .await;
    handle.cancel();
    wait_state(&mut state, TTL, "stopped", RoutineState::is_stopped).await;
}

#[tokio::test(start_paused = true)]
async fn backend_errors_show_as_backing_off_until_the_backend_answers() {
    let backend = MemoryBackend::new();
    backend.set_unavailable(true);
    let runner = runner(&backend);
    let handle = common::idle_singleton(&runner, "job");
    let mut state = handle.state();
    let backing_off = wait_state(&mut state, TTL, "backing off", |s| {
        matches!(s, RoutineState::BackingOff { .. })
    })
    .await;
    let RoutineState::BackingOff { error, until } = backing_off else {
        unreachable!()
    };
    assert!(
        until > tokio::time::Instant::now(),
        "the backoff ends later"
    );
    assert!(!error.is_empty(), "the state says why");
    backend.set_unavailable(false);
    wait_state(
        &mut state,
        Duration::from_secs(60),
        "holding",
        RoutineState::is_holding,
    )
    .await;
    handle.cancel();
    handle.join().await;
}

#[tokio::test(start_paused = true)]
async fn a_rejected_routine_is_stopped_from_the_start() {
    let runner = Runner::without_backend();
    runner.shutdown().await;
    let handle = runner.run_named(
        "late",
        |_ctx| async {},
        RunOptions::keep_running_one_instance(),
    );
    assert!(matches!(
        *handle.state().borrow(),
        RoutineState::Stopped(Outcome::Rejected)
    ));
}

#[test]
fn a_routine_dropped_with_its_runtime_is_stopped_as_aborted() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::without_backend();
    let handle = runtime.block_on(async {
        let handle = runner.run(|ctx| async move { ctx.cancelled().await });
        let mut state = handle.state();
        state
            .wait_for(|s| matches!(s, RoutineState::Running))
            .await
            .unwrap();
        handle
    });
    drop(runtime);
    assert!(
        matches!(
            *handle.state().borrow(),
            RoutineState::Stopped(Outcome::Aborted)
        ),
        "a dropped task leaves its state stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_shows_as_backing_off_with_its_message() {
    let backend = MemoryBackend::new();
    let runner = runner(&backend);
    let handle = runner.run_named(
        "job",
        |_ctx| async { panic!("boom") },
        RunOptions::keep_running_one_instance(),
    );
    let mut state = handle.state();
    let backing_off = wait_state(&mut state, TTL, "backing off", |s| {
        matches!(s, RoutineState::BackingOff { .. })
    })
    .await;
    assert!(
        matches!(&backing_off, RoutineState::BackingOff { error, .. } if error.contains("boom")),
        "{backing_off:?}"
    );
    handle.cancel();
    handle.join().await;
}
