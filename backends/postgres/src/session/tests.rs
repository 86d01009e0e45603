//! The lane (see the `lane` module) against a throwaway server: acquires and releases
//! run on it, a request dropped mid-statement leaves no lock and no unread answer behind,
//! and the session task still hears notifications and the connection's loss.

use std::time::Duration;

use leasehold_conformance::servers::PostgresServer;
use leasehold_conformance::wait::eventually;
use leasehold_core::{LockBackend, LockKey};
use sqlx::Connection as _;

use crate::PostgresBackend;

const TTL: Duration = Duration::from_secs(30);
const WITHIN: Duration = Duration::from_secs(10);

fn key(name: &str) -> LockKey {
    LockKey::new(name).expect("a valid key")
}

async fn backend(server: &PostgresServer, namespace: &str) -> PostgresBackend {
    PostgresBackend::builder()
        .with_url(server.url())
        .with_namespace(namespace)
        .with_request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("backend")
}

/// The pid of the server backend holding the advisory lock `lock_key`, if any.
fn holder_pid(server: &PostgresServer, lock_key: i64) -> Option<i32> {
    server
        .psql(&format!(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted \
             AND ((classid::int8 << 32) | objid::int8) = {lock_key}"
        ))
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_and_releases_run_on_the_lane() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let backend = backend(&server, "lane-runs").await;
    let key = key("lane-runs");
    let before = backend.lane_requests();
    for _ in 0..5 {
        let mut lease = backend
            .try_acquire(&key, TTL)
            .await
            .expect("acquire")
            .expect("free");
        assert!(holder_pid(&server, backend.lock_key(&key)).is_some());
        lease.release().await.expect("release");
        assert_eq!(holder_pid(&server, backend.lock_key(&key)), None);
    }
    assert_eq!(
        backend.lane_requests() - before,
        10,
        "every acquire and release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_mid_statement_leaves_no_lock_and_the_next_gets_its_own_answer() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let backend = backend(&server, "lane-dropped").await;
    let (blocked, other) = (key("lane-dropped"), key("lane-next"));
    let hash = backend.lock_key(&blocked);
    // The key's fencing row, locked by a transaction: the acquire statement takes the
    // advisory lock, then waits for the row.
    backend
        .try_acquire(&blocked, TTL)
        .await
        .expect("acquire")
        .expect("free")
        .release()
        .await
        .expect("release");
    let mut blocker = sqlx::PgConnection::connect(&server.url())
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut blocker)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM public.routine_fencing WHERE lock_key = $1 FOR UPDATE")
        .bind(hash)
        .fetch_one(&mut blocker)
        .await
        .expect("lock the row");

    let before = backend.lane_requests();
    let mut dropped = Box::pin(backend.try_acquire(&blocked, TTL));
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut dropped).await;
    assert!(waited.is_err(), "the acquire waits for the row");
    assert_eq!(backend.lane_requests(), before + 1, "it ran on the lane");
    assert!(
        holder_pid(&server, hash).is_some(),
        "mid-statement: the advisory lock is taken"
    );
    drop(dropped);

    // The next request waits for the dropped statement to end, then gets its own answer.
    let next = tokio::spawn({
        let backend = backend.clone();
        let other = other.clone();
        async move { backend.try_acquire(&other, TTL).await }
    });
    sqlx::query("COMMIT")
        .execute(&mut blocker)
        .await
        .expect("commit");
    let mut lease = tokio::time::timeout(WITHIN, next)
        .await
        .expect("the next request is answered")
        .expect("no panic")
        .expect("acquire")
        .expect("the other key is free");
    assert_eq!(lease.key(), &other, "the answer is the next request's own");
    assert!(holder_pid(&server, backend.lock_key(&other)).is_some());
    eventually(WITHIN, "the dropped acquire's lock is given back", || {
        holder_pid(&server, hash).is_none()
    })
    .await;
    let mut again = backend
        .try_acquire(&blocked, TTL)
        .await
        .expect("acquire")
        .expect("the dropped acquire holds nothing");
    again.release().await.expect("release");
    lease.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_still_hears_releases_between_lane_statements() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let (a, b) = (
        backend(&server, "lane-hears").await,
        backend(&server, "lane-hears").await,
    );
    let key = key("lane-hears");
    // `a` takes and gives back on the lane, then waits for `b`'s release.
    let mut lease = a.try_acquire(&key, TTL).await.expect("a").expect("free");
    lease.release().await.expect("release");
    let before = a.lane_requests();
    let mut held = b.try_acquire(&key, TTL).await.expect("b").expect("free");
    assert_eq!(a.try_acquire(&key, TTL).await.expect("a").map(|_| ()), None);
    assert_eq!(
        a.lane_requests(),
        before + 1,
        "the refused acquire ran on the lane"
    );
    let waiter = tokio::spawn({
        let a = a.clone();
        let key = key.clone();
        async move { a.released(&key).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.release().await.expect("release");
    tokio::time::timeout(WITHIN, waiter)
        .await
        .expect("a hears b's release")
        .expect("no panic")
        .expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_fires_when_the_lane_session_is_terminated() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let backend = backend(&server, "lane-revoked").await;
    let key = key("lane-revoked");
    let before = backend.lane_requests();
    let lease = backend
        .try_acquire(&key, TTL)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(backend.lane_requests(), before + 1, "it ran on the lane");
    let revoked = lease.revoked().expect("a revocation signal");
    let pid = holder_pid(&server, backend.lock_key(&key)).expect("held");
    server.psql(&format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::timeout(WITHIN, revoked)
        .await
        .expect("the idle session task notices the terminated connection");
    drop(lease);
    // A new session takes the key (the lost lease's release, queued first, goes first,
    // so this acquire may go through the task), then runs on the lane again.
    let lease = tokio::time::timeout(WITHIN, async {
        loop {
            if let Ok(Some(lease)) = backend.try_acquire(&key, TTL).await {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a new session takes the key");
    drop(lease);
    let lease = tokio::time::timeout(WITHIN, async {
        loop {
            if let Ok(Some(lease)) = backend.try_acquire(&key, TTL).await {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the dropped lease gave the key back");
    let before = backend.lane_requests();
    let mut lease = lease;
    lease.release().await.expect("release");
    let mut again = backend
        .try_acquire(&key, TTL)
        .await
        .expect("acquire")
        .expect("free");
    again.release().await.expect("release");
    assert_eq!(backend.lane_requests(), before + 3, "on the lane again");
}
