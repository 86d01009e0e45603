//! What a waiter costs the backend: with release notifications it polls only to notice a
//! crashed holder (about once per TTL), without them at the retry interval.

mod common;

use std::time::Duration;

use common::counting::Counting;
use common::{TTL, holder_and_waiter, runner, runner_on, wait_acquired};
use leasehold::{LockBackend, LockKey, MemoryBackend};

/// TTLs the waiters below wait through.
const TTLS: u32 = 10;

/// A holder on `backend` and a waiter on `waiter` for `TTLS` TTLs: the waiter's requests
/// in that time (attempts, `expires_in`, `describe`).
async fn requests_while_waiting(
    backend: &MemoryBackend,
    waiter: &Counting,
) -> (usize, usize, usize) {
    let holder_runner = runner(backend);
    let waiter_runner = runner_on(waiter.clone());
    let (_held, _waiting, _events) = holder_and_waiter(&holder_runner, &waiter_runner).await;
    let before = waiter.counts();
    tokio::time::sleep(TTL * TTLS).await;
    let after = waiter.counts();
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

#[tokio::test(start_paused = true)]
async fn with_notifications_a_waiter_asks_about_once_per_ttl_and_never_tries() {
    let backend = MemoryBackend::new();
    let waiter = Counting::on(&backend, true);
    let (attempts, expiries, describes) = requests_while_waiting(&backend, &waiter).await;
    assert_eq!(
        attempts, 0,
        "the holder's lease never runs out: the waiter must not try"
    );
    assert_eq!(
        describes, 0,
        "who holds is asked once per contention streak"
    );
    // The holder refreshes every TTL / 5, so its lease has 4/5 to all of a TTL left
    // whenever the waiter asks: between one and 1.25 questions per TTL.
    let ttls = TTLS as usize;
    assert!(
        (ttls - 1..=ttls * 5 / 4 + 1).contains(&expiries),
        "about one `expires_in` per TTL: {expiries} in {TTLS} TTLs"
    );
}

#[tokio::test(start_paused = true)]
async fn without_notifications_a_waiter_polls_at_the_retry_interval() {
    let backend = MemoryBackend::new();
    let waiter = Counting::on(&backend, false);
    let (attempts, expiries, _) = requests_while_waiting(&backend, &waiter).await;
    // The retry interval is TTL / 5: five rounds, each an attempt and an `expires_in`,
    // per TTL.
    let rounds = TTLS as usize * 5;
    assert!(
        (rounds - 1..=rounds + 1).contains(&attempts),
        "an attempt per retry interval: {attempts} in {TTLS} TTLs"
    );
    assert!(
        (rounds - 1..=rounds + 1).contains(&expiries),
        "an `expires_in` per retry interval: {expiries} in {TTLS} TTLs"
    );
}

#[tokio::test(start_paused = true)]
async fn with_notifications_a_release_wakes_the_waiter_at_once() {
    let backend = MemoryBackend::new();
    let waiter = Counting::on(&backend, true);
    let holder_runner = runner(&backend);
    let waiter_runner = runner_on(waiter.clone());
    let (_held, _waiting, mut events) = holder_and_waiter(&holder_runner, &waiter_runner).await;
    // Well into a long wait for the holder's expiry.
    tokio::time::sleep(TTL / 2).await;
    let stopped = tokio::time::Instant::now();
    holder_runner.shutdown().await;
    let acquired = wait_acquired(&mut events).await;
    assert_eq!(
        acquired.at.saturating_duration_since(stopped),
        Duration::ZERO,
        "the release notification must wake the waiter, not its poll"
    );
}

#[tokio::test(start_paused = true)]
async fn with_notifications_a_crashed_holder_is_taken_over_when_its_lease_runs_out() {
    let backend = MemoryBackend::new();
    let waiter = Counting::on(&backend, true);
    let holder_runner = runner(&backend);
    let waiter_runner = runner_on(waiter.clone());
    let (_held, _waiting, mut events) = holder_and_waiter(&holder_runner, &waiter_runner).await;
    tokio::time::sleep(TTL * 2).await;
    let key = LockKey::new("job").unwrap();
    let left = backend.expires_in(&key).await.unwrap().unwrap();
    // Gone without releasing: only the lease's expiry frees the key.
    holder_runner.abort();
    let crashed = tokio::time::Instant::now();
    let acquired = wait_acquired(&mut events).await;
    let after = acquired.at.saturating_duration_since(crashed);
    assert!(
        after >= left,
        "taken over only once the lease ran out: after {after:?}, {left:?} were left"
    );
    assert!(
        after <= left + Duration::from_millis(10),
        "taken over right when the lease ran out, not up to a TTL later: after {after:?}, \
         {left:?} were left"
    );
}
