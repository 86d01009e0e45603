//! Waking one waiter per release (the `waiters` module): a waiter registered the way the
//! runner does is woken alone, the others in turn by the next releases; without a
//! registered waiter, or with only expired ones, a release wakes everyone.

mod common;

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use leasehold_conformance::wait::within;
use leasehold_core::{LockBackend, LockKey, Result};
use leasehold_postgres::PostgresBackend;

use common::{backend, key, unique, waiter_rows};

const TTL: Duration = Duration::from_secs(30);
/// How long a release has to wake its waiters: a hang, not slowness.
const WAKE: Duration = Duration::from_secs(10);
/// How long waiters that a release must not wake are watched after the woken one woke:
/// a release that woke everyone would have reached them by then (same server, same
/// notification), so a failure here is a wake-up, not a slow machine.
const QUIET: Duration = Duration::from_millis(500);

/// Waits for `key` on `waiter` as the runner does: the `released` future is polled first
/// (interest registered), the attempt meets contention, then `expires_in` is asked (which
/// registers the waiter). Returns the pending `released` future.
async fn wait_as_runner(waiter: &PostgresBackend, key: &LockKey) -> BoxFuture<'static, Result<()>> {
    let mut released = {
        let (waiter, key) = (waiter.clone(), key.clone());
        async move { waiter.released(&key).await }.boxed()
    };
    assert!(
        released.as_mut().now_or_never().is_none(),
        "nothing released yet"
    );
    assert!(
        waiter.try_acquire(key, TTL).await.unwrap().is_none(),
        "the key is held"
    );
    let left = waiter.expires_in(key).await.unwrap();
    assert!(left.is_some(), "a live holder's heartbeat runs");
    released
}

/// Waits until one of `waits` resolves, and returns its index.
async fn first_woken(waits: &mut [Option<BoxFuture<'static, Result<()>>>]) -> usize {
    let pending = waits
        .iter_mut()
        .enumerate()
        .filter_map(|(place, wait)| wait.as_mut().map(|wait| (place, wait)));
    let woken = futures::future::select_all(pending.map(|(place, wait)| {
        async move {
            wait.await.expect("woken without error");
            place
        }
        .boxed()
    }));
    within(WAKE, "a waiter woken by the release", woken).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_one_of_five_registered_waiters_and_the_next_releases_the_others() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("wake-one");
    let k = key("job");
    let holder = backend(&server.url(), &ns).await;
    let hash = holder.lock_key(&k);
    let mut lease = holder.try_acquire(&k, TTL).await.unwrap().expect("free");
    let mut waiters = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..5 {
        let waiter = backend(&server.url(), &ns).await;
        waits.push(Some(wait_as_runner(&waiter, &k).await));
        waiters.push(waiter);
    }
    assert_eq!(waiter_rows(server, hash), 5, "each waiter registered once");
    for turn in 0..waiters.len() {
        lease.release().await.unwrap();
        let woken = first_woken(&mut waits).await;
        waits[woken] = None;
        tokio::time::sleep(QUIET).await;
        for (place, wait) in waits.iter_mut().enumerate() {
            if let Some(wait) = wait {
                assert!(
                    wait.as_mut().now_or_never().is_none(),
                    "release {turn} woke waiter {woken}, and also waiter {place}"
                );
            }
        }
        lease = waiters[woken]
            .try_acquire(&k, TTL)
            .await
            .unwrap()
            .expect("the woken waiter takes the key");
    }
    lease.release().await.unwrap();
    assert_eq!(
        waiter_rows(server, hash),
        0,
        "each release deleted the row of the waiter it woke"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registered_waiter_a_release_wakes_everyone() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("wake-all");
    let k = key("job");
    let holder = backend(&server.url(), &ns).await;
    let hash = holder.lock_key(&k);
    let mut lease = holder.try_acquire(&k, TTL).await.unwrap().expect("free");
    // A process that only asks (a monitor) does not register: nobody waits in it.
    let monitor = backend(&server.url(), &ns).await;
    assert!(monitor.expires_in(&k).await.unwrap().is_some());
    assert_eq!(
        waiter_rows(server, hash),
        0,
        "asking alone registers nothing"
    );
    // Waiters that have not asked yet (they just met contention) are not registered.
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(backend(&server.url(), &ns).await);
    }
    let mut waits: Vec<_> = waiters.iter().map(|waiter| waiter.released(&k)).collect();
    for wait in &mut waits {
        assert!(
            futures::poll!(wait.as_mut()).is_pending(),
            "nothing released yet"
        );
    }
    lease.release().await.unwrap();
    for result in within(WAKE, "every waiter woken", futures::future::join_all(waits)).await {
        result.expect("woken without error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_skips_and_deletes_expired_waiter_rows() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("wake-expired");
    let k = key("job");
    let holder = backend(&server.url(), &ns).await;
    let hash = holder.lock_key(&k);
    let mut lease = holder.try_acquire(&k, TTL).await.unwrap().expect("free");
    let waiter = backend(&server.url(), &ns).await;
    // A waiter that stopped asking a while ago: its row has expired. Picking it would
    // wake nobody. (Inserted after the backends were built: building one deletes
    // expired rows.)
    server.psql(&format!(
        "INSERT INTO public.routine_fencing_waiters (lock_key, waiter, deadline)
         VALUES ({hash}, 42, clock_timestamp() - interval '1 second')"
    ));
    let mut wait = Box::pin(waiter.released(&k));
    assert!(
        futures::poll!(wait.as_mut()).is_pending(),
        "nothing released yet"
    );
    lease.release().await.unwrap();
    within(WAKE, "the unregistered waiter woken", wait)
        .await
        .expect("woken without error");
    assert_eq!(
        waiter_rows(server, hash),
        0,
        "the release deleted the expired row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_session_was_replaced_loses_its_row_and_is_woken_by_the_new_session() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("wake-replaced");
    let k = key("job");
    let holder = backend(&server.url(), &ns).await;
    let hash = holder.lock_key(&k);
    let mut lease = holder.try_acquire(&k, TTL).await.unwrap().expect("free");
    let app = unique("waiter");
    let waiter = backend(&format!("{}?application_name={app}", server.url()), &ns).await;
    let wait = wait_as_runner(&waiter, &k).await;
    assert_eq!(waiter_rows(server, hash), 1);
    // End the waiter's lock session behind its back: its wait is woken (a release may go
    // unheard), and the next session deletes the dropped one's row, whose wake channel
    // nobody hears any more.
    let ended = server.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = '{app} (routine lock session)'"
    ));
    assert_eq!(ended, "1", "the waiter's lock session ended");
    within(WAKE, "the waiter of the dropped session woken", wait)
        .await
        .expect("woken without error");
    // The next wait opens a new session, which wakes it at once (a release may have
    // gone unheard in between): the runner then tries, and waits again.
    within(
        WAKE,
        "the wait that opens a new session",
        waiter.released(&k),
    )
    .await
    .expect("a new session");
    let wait = wait_as_runner(&waiter, &k).await;
    assert_eq!(
        waiter_rows(server, hash),
        1,
        "the new session's row replaced the dropped one's"
    );
    lease.release().await.unwrap();
    within(WAKE, "the waiter woken on its new session", wait)
        .await
        .expect("woken without error");
    assert_eq!(waiter_rows(server, hash), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_stops_waiting_unregisters_and_the_release_wakes_another() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("wake-gone");
    let k = key("job");
    let holder = backend(&server.url(), &ns).await;
    let hash = holder.lock_key(&k);
    let mut lease = holder.try_acquire(&k, TTL).await.unwrap().expect("free");
    let staying = backend(&server.url(), &ns).await;
    let stays = wait_as_runner(&staying, &k).await;
    let leaving = backend(&server.url(), &ns).await;
    let leaves = wait_as_runner(&leaving, &k).await;
    assert_eq!(waiter_rows(server, hash), 2);
    // The routine was stopped while it waited: a release that picked its row would wake
    // nobody, and the other waiter would wait for its next `expires_in`.
    drop(leaves);
    leasehold_conformance::wait::until(WAKE, "the leaving waiter's row deleted", || {
        std::future::ready((waiter_rows(server, hash) == 1).then_some(()))
    })
    .await;
    lease.release().await.unwrap();
    within(WAKE, "the staying waiter woken", stays)
        .await
        .expect("woken without error");
    assert_eq!(waiter_rows(server, hash), 0);
}
