//! A lock session that ends while its holders still believe they hold: terminated by an
//! operator, dropped by the backend after a failed statement, or interrupted by a
//! cancelled statement. The server frees every advisory lock of an ended session at once;
//! these tests check that no other client can take those keys before the holders' local
//! deadlines have certainly passed, and that a cancelled statement ends nothing.

mod common;

use std::time::Duration;

use leasehold_conformance::servers::PostgresServer;
use leasehold_core::{Error, LockBackend};
use tokio::time::Instant;

use common::{backend, block_acquires_of, eventually, holder_pid, key};

/// Hang guard for calls that must return by themselves (the backend's request timeout in
/// these tests is 2 s).
const GUARD: Duration = Duration::from_secs(20);

/// Whether the server backend `pid` still exists.
fn session_alive(server: &PostgresServer, pid: i32) -> bool {
    server.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
    )) != "0"
}

/// Waits until the server backend `pid` waits for a lock (a row lock the test holds).
async fn wait_until_blocked(server: &PostgresServer, pid: i32) {
    eventually(GUARD, "the lock session waits for the row lock", || {
        server.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
        )) == "1"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_keeps_its_keys_from_others_until_the_holders_deadline() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, b) = (
        backend(&server.url(), "terminated").await,
        backend(&server.url(), "terminated").await,
    );
    let k = key("job");
    let ttl = Duration::from_secs(2);
    let sent = Instant::now();
    let mut lease = a.try_acquire(&k, ttl).await.unwrap().expect("free");
    let pid = holder_pid(&server, a.lock_key(&k)).expect("held");
    server.psql(&format!("SELECT pg_terminate_backend({pid})"));
    eventually(GUARD, "the terminated session is gone", || {
        !session_alive(&server, pid)
    })
    .await;
    // The advisory lock is free now, but a's holder does not know yet: it may run until
    // `sent + ttl - margin`.
    assert!(
        b.try_acquire(&k, ttl).await.unwrap().is_none(),
        "the key must not be taken while the terminated session's holder may still run"
    );
    let left = b
        .expires_in(&k)
        .await
        .unwrap()
        .expect("the ended session's heartbeat still guards the key");
    assert!(left <= ttl, "{left:?} left must be within the TTL {ttl:?}");
    let mut taken = loop {
        if let Some(lease) = b.try_acquire(&k, ttl).await.unwrap() {
            break lease;
        }
        assert!(
            sent.elapsed() < GUARD,
            "b must take the key after the heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let taken_after = sent.elapsed();
    assert!(
        taken_after >= ttl * 99 / 100,
        "the key was taken {taken_after:?} after a's acquire was sent, before a's TTL {ttl:?}"
    );
    assert!(
        lease.refresh(ttl).await.unwrap_err().is_lost(),
        "a's lease is lost"
    );
    taken.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_statement_leaves_the_session_and_its_leases_alone() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, b) = (
        backend(&server.url(), "cancelled").await,
        backend(&server.url(), "cancelled").await,
    );
    let ttl = Duration::from_secs(10);
    let (held, other) = (key("held"), key("other"));
    let mut lease = a.try_acquire(&held, ttl).await.unwrap().expect("free");
    let pid = holder_pid(&server, a.lock_key(&held)).expect("held");
    let mut blocker = block_acquires_of(&server.url(), &a, &other).await;
    let blocked = tokio::spawn({
        let a = a.clone();
        let other = other.clone();
        async move {
            a.try_acquire(&other, ttl)
                .await
                .map(|lease| lease.is_some())
        }
    });
    wait_until_blocked(&server, pid).await;
    server.psql(&format!("SELECT pg_cancel_backend({pid})"));
    let result = tokio::time::timeout(GUARD, blocked)
        .await
        .expect("the cancelled acquire returns")
        .expect("no panic");
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "a cancelled acquire is Unavailable, got {result:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

    lease
        .refresh(ttl)
        .await
        .expect("a cancelled statement must not end the session or lose its leases");
    assert_eq!(
        holder_pid(&server, a.lock_key(&held)),
        Some(pid),
        "the same session still holds the lock"
    );
    assert!(
        b.try_acquire(&held, ttl).await.unwrap().is_none(),
        "the held key stays held"
    );
    let mut taken = b
        .try_acquire(&other, ttl)
        .await
        .unwrap()
        .expect("the cancelled acquire gave its lock back");
    taken.release().await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_session_revokes_its_leases_and_keeps_their_keys_guarded() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, b) = (
        backend(&server.url(), "abandoned").await,
        backend(&server.url(), "abandoned").await,
    );
    let ttl = Duration::from_secs(30);
    let (held, other) = (key("held"), key("other"));
    let mut lease = a.try_acquire(&held, ttl).await.unwrap().expect("free");
    let revoked = lease
        .revoked()
        .expect("a postgres lease has a revocation signal");
    let pid = holder_pid(&server, a.lock_key(&held)).expect("held");
    let mut blocker = block_acquires_of(&server.url(), &a, &other).await;
    // An acquire of another key with a short TTL times out (after TTL/2) on the client,
    // which abandons the whole session.
    let err = tokio::time::timeout(GUARD, a.try_acquire(&other, Duration::from_secs(2)))
        .await
        .expect("the acquire times out by itself")
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. }),
        "the blocked acquire times out, got {err:?}"
    );
    tokio::time::timeout(GUARD, revoked)
        .await
        .expect("the held lease is revoked when its session is abandoned");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    eventually(GUARD, "the abandoned session is gone", || {
        !session_alive(&server, pid)
    })
    .await;
    assert!(
        b.try_acquire(&held, ttl).await.unwrap().is_none(),
        "the key of a revoked lease whose holder has not stopped must stay guarded"
    );
    // The holder stops and releases; the next statement of a's new session clears the
    // ended session's claim, and b takes the key without waiting for the heartbeat.
    assert!(lease.refresh(ttl).await.unwrap_err().is_lost());
    lease.release().await.expect("releasing a lost lease is Ok");
    let mut third = a
        .try_acquire(&key("third"), ttl)
        .await
        .unwrap()
        .expect("free");
    let mut taken = b
        .try_acquire(&held, ttl)
        .await
        .unwrap()
        .expect("a stopped holder's key is free at once");
    taken.release().await.unwrap();
    third.release().await.unwrap();
}
