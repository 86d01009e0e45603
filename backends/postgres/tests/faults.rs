//! Faults: terminated sessions, restarts, pauses, silent holders, bad credentials and
//! missing permissions, each on a server of its own (or the shared one where the test
//! leaves the server alone).

mod common;

use std::time::Duration;

use futures::FutureExt;
use leasehold_conformance::servers::{PostgresServer, free_port};
use leasehold_core::{Error, LockBackend};
use leasehold_postgres::{PostgresBackend, PostgresBackendBuilder};

use common::{acquire_within, advisory_lock_held, backend, eventually, holder_pid, key, unique};

const TTL: Duration = Duration::from_secs(30);
/// Hang guard for calls that must return by themselves (the backend's request timeout in
/// these tests is 2 s).
const GUARD: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_lock_session_loses_every_lease_and_a_new_session_takes_over() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let a = backend(&server.url(), "terminate").await;
    let keys = [key("one"), key("two"), key("three")];
    let mut leases = Vec::new();
    for k in &keys {
        leases.push(a.try_acquire(k, TTL).await.unwrap().expect("free"));
    }
    let old_pid = holder_pid(&server, a.lock_key(&keys[0])).expect("held");
    server.psql(&format!("SELECT pg_terminate_backend({old_pid})"));
    for lease in &mut leases {
        let err = lease.refresh(TTL).await.unwrap_err();
        assert!(
            err.is_lost(),
            "every lease on the session must be Lost, got {err:?}"
        );
        lease.release().await.expect("releasing a lost lease is Ok");
    }
    let mut again = acquire_within(&a, &keys[0], TTL, Duration::from_secs(10)).await;
    let new_pid = holder_pid(&server, a.lock_key(&keys[0])).expect("held again");
    assert_ne!(new_pid, old_pid, "a new session must hold the lock");
    again
        .refresh(TTL)
        .await
        .expect("the new session's lease is live");
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_leases_then_locks_and_notifications_work_again() {
    let mut server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, b) = (
        backend(&server.url(), "restart").await,
        backend(&server.url(), "restart").await,
    );
    let k = key("job");
    // Short: after a restart no key is granted for the longest TTL used before it (the
    // restart guard, see `tokens_crash.rs`).
    let ttl = Duration::from_secs(2);
    let mut lease = a.try_acquire(&k, ttl).await.unwrap().expect("free");
    server.restart();
    let err = lease.refresh(ttl).await.unwrap_err();
    assert!(err.is_lost(), "a restart must lose the lease, got {err:?}");
    lease.release().await.expect("releasing a lost lease is Ok");

    let mut lease = acquire_within(&a, &k, ttl, Duration::from_secs(10) + ttl).await;
    // The lock session, which listens, reopens when asked; until then a wait may end at once (a
    // notification may have been missed) or fail. Eventually it must wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiter = loop {
        let mut waiter = Box::pin(b.released(&k));
        let early = tokio::time::timeout(Duration::from_millis(200), &mut waiter).await;
        if early.is_err() {
            break waiter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener must come back after the restart, last: {early:?}"
        );
    };
    lease.release().await.unwrap();
    tokio::time::timeout(GUARD, waiter)
        .await
        .expect("the release after the restart must wake the waiter")
        .expect("no notification error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_makes_calls_time_out_and_leases_lost_afterwards() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let a = backend(&server.url(), "pause").await;
    let k = key("job");
    let mut lease = a.try_acquire(&k, TTL).await.unwrap().expect("free");
    server.pause();
    let err = tokio::time::timeout(GUARD, lease.refresh(TTL))
        .await
        .expect("refresh must not hang on a paused server")
        .unwrap_err();
    assert!(
        err.is_transient() || err.is_lost(),
        "refresh on a paused server must time out or report the lease lost, got {err:?}"
    );
    let err = tokio::time::timeout(GUARD, a.try_acquire(&key("other"), TTL))
        .await
        .expect("acquire must not hang on a paused server")
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. }),
        "acquire on a paused server must time out, got {err:?}"
    );
    server.resume();
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "after the pause the old lease is lost, got {err:?}"
    );
    // Its holder stops and gives it back, as the runner does: the key is no longer
    // guarded by the abandoned session's heartbeat.
    lease.release().await.expect("releasing a lost lease is Ok");
    eventually(
        Duration::from_secs(10),
        "the abandoned session's lock is released",
        || !advisory_lock_held(&server, a.lock_key(&k)),
    )
    .await;
    let mut again = acquire_within(&a, &k, TTL, Duration::from_secs(10)).await;
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_holder_loses_its_lock_on_the_server_within_about_the_ttl() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let a = backend(&server.url(), "silent").await;
    let k = key("job");
    let ttl = Duration::from_secs(2);
    let acquired = tokio::time::Instant::now();
    let mut lease = a.try_acquire(&k, ttl).await.unwrap().expect("free");
    let pid = holder_pid(&server, a.lock_key(&k)).expect("held");
    // The holder now says nothing, as a paused process or a cut network would; the
    // server's idle_session_timeout ends the session.
    eventually(
        Duration::from_secs(15),
        "the server ends the silent session",
        || !advisory_lock_held(&server, a.lock_key(&k)),
    )
    .await;
    let freed_after = acquired.elapsed();
    assert!(
        freed_after >= ttl,
        "the lock must stay held for its TTL ({ttl:?}), was freed after {freed_after:?}"
    );
    let gone = server.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
    ));
    assert_eq!(gone, "0", "the silent lock session must be gone");
    let err = lease.refresh(ttl).await.unwrap_err();
    assert!(
        err.is_lost(),
        "the silent holder's lease is lost, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let role = unique("auth").replace('-', "_");
    server.create_role_with_password(&role, "right");
    let url = server.url_for(&role, "wrong", "postgres");
    let err = PostgresBackend::from_url(&url).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "got {err:?}");
    assert!(
        !format!("{err:?}").contains("wrong"),
        "no password in errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_database_is_a_config_error_naming_the_url_variable() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let url = format!("postgres://postgres@127.0.0.1:{}/no_such_db", server.port());
    let builder = PostgresBackendBuilder::from_env_with(|name| {
        Ok((name == "ROUTINE_POSTGRES_URL").then(|| url.clone()))
    })
    .unwrap();
    let err = builder.build().await.unwrap_err();
    assert!(
        matches!(&err, Error::Config { setting, reason, .. }
            if setting == "ROUTINE_POSTGRES_URL" && reason.contains("does not exist")),
        "a missing database must be Config on the URL variable, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_create_permission_is_permission_denied_until_an_admin_creates_the_table() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let url = server.create_role_without_create("app", "pw");
    let err = PostgresBackend::from_url(&url).await.unwrap_err();
    assert!(
        matches!(err, Error::PermissionDenied { .. }),
        "creating the fencing table without CREATE must be PermissionDenied, got {err:?}"
    );
    // An administrator creates it (by building a backend once), without grants yet.
    backend(&server.url(), "admin").await;
    let err = PostgresBackend::from_url(&url).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::PermissionDenied {
                operation: "write the fencing table",
                ..
            }
        ),
        "a table the role cannot write must be PermissionDenied, got {err:?}"
    );
    server.psql("GRANT SELECT, INSERT, UPDATE ON public.routine_fencing TO app");
    let err = PostgresBackend::from_url(&url).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::PermissionDenied {
                operation: "write the session table",
                ..
            }
        ),
        "a session table the role cannot write must be PermissionDenied, got {err:?}"
    );
    server.psql("GRANT SELECT, INSERT, UPDATE, DELETE ON public.routine_fencing_sessions TO app");
    let err = PostgresBackend::from_url(&url).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::PermissionDenied {
                operation: "write the epoch table",
                ..
            }
        ),
        "an epoch table the role cannot write must be PermissionDenied, got {err:?}"
    );
    server.psql("GRANT SELECT, INSERT, UPDATE ON public.routine_fencing_epoch TO app");
    // Nothing on the waiter table: the backend works, and wakes every waiter.
    let a = PostgresBackend::from_url(&url)
        .await
        .expect("grants suffice");
    let mut lease = a
        .try_acquire(&key("job"), TTL)
        .await
        .unwrap()
        .expect("free");
    lease.release().await.unwrap();
    // It waits as the runner does (interest, contention, `expires_in`) without
    // registering, and a release by a backend that can use the table wakes it.
    let admin = backend(&server.url(), "routine").await;
    let waited = key("waited");
    let mut held = admin
        .try_acquire(&waited, TTL)
        .await
        .unwrap()
        .expect("free");
    let mut released = Box::pin(a.released(&waited));
    assert!(futures::poll!(released.as_mut()).is_pending());
    assert!(a.try_acquire(&waited, TTL).await.unwrap().is_none());
    assert!(a.expires_in(&waited).await.unwrap().is_some());
    held.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), released)
        .await
        .expect("a release wakes a waiter that could not register")
        .expect("woken without error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let err = PostgresBackend::from_url(&url).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }),
        "connection refused must be Unavailable, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_lease_unlocks_it_on_a_healthy_session() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let a = backend(&server.url(), &unique("drop")).await;
    let k = key("job");
    let lease = a.try_acquire(&k, TTL).await.unwrap().expect("free");
    drop(lease);
    eventually(
        Duration::from_secs(10),
        "the dropped lease is unlocked",
        || !advisory_lock_held(server, a.lock_key(&k)),
    )
    .await;
    // A cancelled acquire gives its lock back too. The first poll normally only sends the
    // request; if it already has an answer (an error, because the server ended the lock
    // session while it sat idle during the wait above), try again on the new session.
    let mut cancelled_in_flight = false;
    for _ in 0..5 {
        match a.try_acquire(&key("cancelled"), TTL).now_or_never() {
            None => {
                cancelled_in_flight = true;
                break;
            }
            Some(Ok(Some(mut lease))) => lease.release().await.unwrap(),
            Some(other) => eprintln!("acquire answered at once: {other:?}"),
        }
    }
    assert!(cancelled_in_flight, "an acquire must need a round trip");
    let mut lease = acquire_within(&a, &key("cancelled"), TTL, Duration::from_secs(10)).await;
    lease.release().await.unwrap();
}
