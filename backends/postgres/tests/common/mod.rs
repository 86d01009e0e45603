//! PostgreSQL helpers of the integration tests: backends, `pg_locks` queries, acquiring
//! with a deadline, blocking acquires. Servers, unique names and `eventually` come from
//! `leasehold-conformance`, shared with the other backends.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use leasehold_conformance::servers::PostgresServer;
use leasehold_core::{Lease, LockBackend, LockKey};
use leasehold_postgres::{PostgresBackend, PostgresBackendBuilder};
use sqlx::Connection as _;

// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use leasehold_conformance::{unique, wait::eventually};

/// `name` as a key; test key names are valid.
pub fn key(name: &str) -> LockKey {
    LockKey::new(name).expect("test key names are valid")
}

/// A builder for `url` with a short request timeout.
pub fn builder(url: &str, namespace: &str) -> PostgresBackendBuilder {
    PostgresBackend::builder()
        .with_url(url)
        .with_namespace(namespace)
        .with_request_timeout(Duration::from_secs(2))
}

pub async fn backend(url: &str, namespace: &str) -> PostgresBackend {
    builder(url, namespace)
        .build()
        .await
        .unwrap_or_else(|err| panic!("backend on {url} must build: {err:?}"))
}

/// SQL matching the advisory lock `lock_key` (the `bigint` form) in `pg_locks`.
fn lock_filter(lock_key: i64) -> String {
    format!(
        "locktype = 'advisory' AND objsubid = 1 AND granted \
         AND ((classid::int8 << 32) | objid::int8) = {lock_key}"
    )
}

/// Whether any session holds the advisory lock `lock_key`.
pub fn advisory_lock_held(server: &PostgresServer, lock_key: i64) -> bool {
    server.psql(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE {})",
        lock_filter(lock_key)
    )) == "t"
}

/// The server backend pid of the session holding `lock_key`.
pub fn holder_pid(server: &PostgresServer, lock_key: i64) -> Option<i32> {
    server
        .psql(&format!(
            "SELECT pid FROM pg_locks WHERE {}",
            lock_filter(lock_key)
        ))
        .parse()
        .ok()
}

/// How many processes are registered as waiters for `lock_key` in the waiter table beside
/// the default fencing table.
pub fn waiter_rows(server: &PostgresServer, lock_key: i64) -> i64 {
    server
        .psql(&format!(
            "SELECT count(*) FROM public.routine_fencing_waiters WHERE lock_key = {lock_key}"
        ))
        .parse()
        .expect("a count")
}

/// Tries to acquire `key` on `backend` until it succeeds (errors count as failed tries),
/// failing after `within`.
pub async fn acquire_within(
    backend: &dyn LockBackend,
    key: &LockKey,
    ttl: Duration,
    within: Duration,
) -> Box<dyn Lease> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match backend.try_acquire(key, ttl).await {
            Ok(Some(lease)) => return lease,
            Ok(None) => "contention".to_owned(),
            Err(err) => format!("{err:?}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "could not acquire {key} within {within:?}; last attempt: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A transaction on its own connection holding the row lock of `key`'s fencing row (made
/// first by acquiring and releasing `key` on `backend`), so that acquires of `key` block
/// until it ends.
pub async fn block_acquires_of(
    url: &str,
    backend: &PostgresBackend,
    key: &LockKey,
) -> sqlx::PgConnection {
    backend
        .try_acquire(key, Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("free")
        .release()
        .await
        .expect("release");
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("test connection");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    let rows = sqlx::query("SELECT 1 FROM public.routine_fencing WHERE lock_key = $1 FOR UPDATE")
        .bind(backend.lock_key(key))
        .fetch_all(&mut conn)
        .await
        .expect("lock the fencing row");
    assert_eq!(rows.len(), 1, "the fencing row must exist to be locked");
    conn
}
