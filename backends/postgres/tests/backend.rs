//! What the conformance suite (`tests/conformance.rs`) cannot show about `PostgresBackend`
//! on a real throwaway server: advisory locks in `pg_locks`, lock sessions, the fencing
//! table, hashing, connection counts, table creation and configuration.

mod common;

use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use leasehold_core::{Error, LockBackend};
use leasehold_postgres::{PostgresBackend, advisory_lock_key};
use sqlx::Connection;

use common::{advisory_lock_held, backend, key, unique};

const TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_an_advisory_lock_in_pg_locks_until_released() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let a = backend(&server.url(), &unique("basic")).await;
    let k = key("job");
    let mut lease = a.try_acquire(&k, TTL).await.unwrap().expect("free key");
    assert!(
        advisory_lock_held(server, a.lock_key(&k)),
        "the advisory lock must be held on the server"
    );
    lease.release().await.unwrap();
    assert!(
        !advisory_lock_held(server, a.lock_key(&k)),
        "release must unlock on the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_lock_on_the_same_session() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let a = backend(&server.url(), &unique("refresh")).await;
    let k = key("job");
    let mut lease = a.try_acquire(&k, TTL).await.unwrap().expect("free key");
    let pid = common::holder_pid(server, a.lock_key(&k)).expect("held");
    for _ in 0..5 {
        lease.refresh(TTL).await.expect("refresh of a held lease");
    }
    assert_eq!(
        common::holder_pid(server, a.lock_key(&k)),
        Some(pid),
        "the same session must still hold the lock"
    );
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_clients_and_takeovers() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("fencing");
    let (a, b) = (
        backend(&server.url(), &ns).await,
        backend(&server.url(), &ns).await,
    );
    let k = key("job");
    let mut first = a.try_acquire(&k, TTL).await.unwrap().expect("free");
    let t1 = first.fencing_token();
    first.release().await.unwrap();
    // A short TTL: the takeover below waits for b's session heartbeat to run out.
    let mut second = b
        .try_acquire(&k, Duration::from_secs(2))
        .await
        .unwrap()
        .expect("free");
    let t2 = second.fencing_token();
    assert!(t2 > t1, "token {t2} after a release must exceed {t1}");
    // Take over from b by ending its session behind its back.
    let pid = common::holder_pid(server, b.lock_key(&k)).expect("held by b");
    server.psql(&format!("SELECT pg_terminate_backend({pid})"));
    let mut third = common::acquire_within(&a, &k, TTL, Duration::from_secs(10)).await;
    let t3 = third.fencing_token();
    assert!(t3 > t2, "token {t3} after a takeover must exceed {t2}");
    assert!(second.refresh(TTL).await.unwrap_err().is_lost());
    let stored = server.psql(&format!(
        "SELECT token FROM public.routine_fencing WHERE lock_key = {}",
        a.lock_key(&k)
    ));
    assert_eq!(
        stored,
        t3.to_string(),
        "the fencing row holds the last token"
    );
    third.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_lease_wakes_a_waiter_registered_on_first_poll() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("notify");
    let (a, b) = (
        backend(&server.url(), &ns).await,
        backend(&server.url(), &ns).await,
    );
    let k = key("job");
    let lease = a.try_acquire(&k, TTL).await.unwrap().expect("free");
    let mut waiter = b.released(&k);
    assert!(
        (&mut waiter).now_or_never().is_none(),
        "nothing released yet"
    );
    // The suite shows that a release wakes a waiter; a drop unlocks in the background,
    // and must notify as well.
    drop(lease);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("dropping the lease must wake the waiter")
        .expect("notification without error");
    let mut next = b.try_acquire(&k, TTL).await.unwrap().expect("released");
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_key_is_the_documented_hash() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("hash");
    let a = backend(&server.url(), &ns).await;
    let k = key("billing-sync");
    let expected = advisory_lock_key(&ns, "billing-sync");
    assert_eq!(a.lock_key(&k), expected);
    let mut lease = a.try_acquire(&k, TTL).await.unwrap().expect("free");
    assert!(
        advisory_lock_held(server, expected),
        "pg_locks must show the documented key {expected}"
    );
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_collision_is_an_error_and_the_lock_is_given_back() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("collision");
    let a = backend(&server.url(), &ns).await;
    let k = key("victim");
    let lock_key = a.lock_key(&k);
    // Another routine whose name hashes alike already used this key.
    server.psql(&format!(
        "INSERT INTO public.routine_fencing (lock_key, namespace, name, token) \
         VALUES ({lock_key}, '{ns}', 'impostor', 7)"
    ));
    let err = a.try_acquire(&k, TTL).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidName { reason, .. } if reason.contains("impostor")),
        "a collision must be InvalidName naming the other routine, got {err:?}"
    );
    assert!(
        !advisory_lock_held(server, lock_key),
        "the lock taken by the colliding acquire must be given back"
    );

    // Under contention: the other routine holds the lock.
    let mut other = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut other)
        .await
        .unwrap();
    let err = a.try_acquire(&k, TTL).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidName { reason, .. } if reason.contains("impostor")),
        "a collision under contention must be InvalidName too, got {err:?}"
    );
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_ttls_fit_the_int4_milliseconds_of_the_session_settings() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let a = backend(&server.url(), &unique("ttl")).await;
    // The suite checks that TTLs outside the declared bounds are refused; here, that the
    // bounds are PostgreSQL's: whole-second heartbeats, int4 milliseconds of timeouts.
    let caps = a.capabilities();
    assert!(
        caps.release_notifications && caps.reports_expiry,
        "PostgreSQL declares both, so the suite's notification and expiry cases run"
    );
    assert_eq!(caps.min_ttl, Duration::from_secs(1));
    assert!(
        caps.max_ttl <= Duration::from_millis(u64::from(i32::MAX.unsigned_abs())),
        "the longest TTL must fit the int4 milliseconds of the session settings: {:?}",
        caps.max_ttl
    );
    let mut lease = a
        .try_acquire(&key("job"), caps.max_ttl)
        .await
        .unwrap()
        .expect("free");
    lease
        .refresh(caps.max_ttl)
        .await
        .expect("the longest declared TTL is accepted by the server");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_waiting_and_naming_the_holder_keep_one_connection_and_the_release_wakes() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let app = unique("one-conn");
    let url = format!("{}?application_name={app}", server.url());
    let holder = backend(&server.url(), &app).await;
    let waiter = backend(&url, &app).await;
    let (wanted, own) = (key("wanted"), key("own"));
    let mut held = holder
        .try_acquire(&wanted, TTL)
        .await
        .unwrap()
        .expect("free");
    let mut mine = waiter.try_acquire(&own, TTL).await.unwrap().expect("free");
    let mut released = Box::pin(waiter.released(&wanted));
    assert!(
        futures::poll!(released.as_mut()).is_pending(),
        "nothing was released yet"
    );
    assert!(
        waiter.try_acquire(&wanted, TTL).await.unwrap().is_none(),
        "the key is held"
    );
    // What a contended waiter of the runner asks: who holds the key, and for how long.
    let info = waiter
        .describe(&wanted)
        .await
        .unwrap()
        .expect("the key is held");
    assert_eq!(info.fencing_token, Some(held.fencing_token()));
    assert!(info.expires_in.is_some(), "the holder's heartbeat runs");
    assert!(waiter.expires_in(&wanted).await.unwrap().is_some());
    let connections = server.psql(&format!(
        "SELECT string_agg(application_name, ', ') FROM pg_stat_activity \
         WHERE application_name LIKE '{app}%'"
    ));
    assert_eq!(
        connections,
        format!("{app} (routine lock session)"),
        "a backend holding a lease, waiting for a release and naming the holder must use \
         one connection, the lock session"
    );
    held.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), released)
        .await
        .expect("the release must wake the waiter, heard on the lock session")
        .unwrap();
    mine.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_held_then_waits_is_not_ended_for_idleness() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let app = unique("held-then-waits");
    let url = format!("{}?application_name={app}", server.url());
    let holder = backend(&server.url(), &app).await;
    let waiter = backend(&url, &app).await;
    let ttl = Duration::from_secs(1);
    let (wanted, own) = (key("wanted"), key("own"));
    // The waiter's session keeps its last lease's settings: idle_session_timeout = 1 s.
    let mut mine = waiter.try_acquire(&own, ttl).await.unwrap().expect("free");
    mine.release().await.unwrap();
    let mut held = holder
        .try_acquire(&wanted, TTL)
        .await
        .unwrap()
        .expect("free");
    let session = || {
        server.psql(&format!(
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
             WHERE application_name LIKE '{app}%'"
        ))
    };
    let mut released = Box::pin(waiter.released(&wanted));
    assert!(futures::poll!(released.as_mut()).is_pending());
    // A waiter's question, as the runner asks it about once per TTL.
    assert!(waiter.expires_in(&wanted).await.unwrap().is_some());
    let before = session();
    // Three TTLs without a statement: the server would end a session still set to 1 s.
    let early = tokio::time::timeout(ttl * 3, released.as_mut()).await;
    assert!(
        early.is_err(),
        "nothing was released and the session must stay: woken with {early:?}"
    );
    assert_eq!(
        session(),
        before,
        "the same single session must still listen"
    );
    held.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), released)
        .await
        .expect("the release must wake the waiter")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_leases_use_one_connection() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let app = unique("thousand");
    let url = format!("{}?application_name={app}", server.url());
    let a = backend(&url, &app).await;
    let keys: Vec<_> = (0..1000).map(|i| key(&format!("job-{i}"))).collect();
    let mut leases = Vec::new();
    for k in &keys {
        leases.push(a.try_acquire(k, TTL).await.unwrap().expect("free"));
    }
    let ours = server.psql(&format!(
        "SELECT string_agg(application_name, ', ' ORDER BY application_name) \
         FROM pg_stat_activity WHERE application_name LIKE '{app}%'"
    ));
    assert_eq!(
        ours,
        format!("{app} (routine lock session)"),
        "1,000 leases must use one connection, the lock session, which also listens"
    );
    let holders = server.psql(&format!(
        "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
         AND ((classid::int8 << 32) | objid::int8) IN ({})",
        keys.iter()
            .map(|k| a.lock_key(k).to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    assert_eq!(holders, "1", "one session must hold all 1,000 locks");
    let refreshed = join_all(leases.iter_mut().map(|lease| lease.refresh(TTL))).await;
    assert!(
        refreshed.iter().all(Result::is_ok),
        "every refresh succeeds"
    );
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_schema_and_table_are_created_idempotently() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let schema = unique("ops").replace('-', "_");
    let build = || {
        common::builder(&server.url(), "custom")
            .with_schema(&schema)
            .with_table("Fences")
            .build()
    };
    let a = build().await.expect("creates schema and table");
    let b = build().await.expect("finds them the second time");
    let k = key("job");
    let mut lease = a.try_acquire(&k, TTL).await.unwrap().expect("free");
    assert!(b.try_acquire(&k, TTL).await.unwrap().is_none());
    let stored = server.psql(&format!(
        "SELECT name FROM \"{schema}\".\"Fences\" WHERE lock_key = {}",
        a.lock_key(&k)
    ));
    assert_eq!(stored, "job");
    lease.release().await.unwrap();
}

/// Replicas of a service start at once against a fresh database: every one of them must
/// build, though their `CREATE ... IF NOT EXISTS` statements race in the catalog (a
/// concurrent creation reports "type already exists", SQLSTATE 42710, among others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_creating_the_tables_at_once_all_build() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    for round in 0..10 {
        let schema = unique("race").replace('-', "_");
        let builds = (0..8).map(|_| {
            common::builder(&server.url(), "race")
                .with_schema(&schema)
                .with_table("fences")
                .build()
        });
        for (i, built) in futures::future::join_all(builds)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(err) = built {
                panic!("round {round}: replica {i} failed to build: {err:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_existing_table_is_misconfigured() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let table = unique("unrelated").replace('-', "_");
    server.psql(&format!("CREATE TABLE public.\"{table}\" (id int)"));
    let err = common::builder(&server.url(), "x")
        .with_table(&table)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Misconfigured { .. }),
        "a table without the fencing columns must be Misconfigured, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_never_shows_the_password() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let role = unique("debug").replace('-', "_");
    let url = server.create_role_with_password(&role, "Sup3rSecret");
    // Its own table: the role may create one but not write the superuser's.
    let a = PostgresBackend::builder()
        .with_url(&url)
        .with_table(&role)
        .build()
        .await
        .expect("password role connects");
    let shown = format!("{a:?}");
    assert!(!shown.contains("Sup3rSecret"), "password leaked: {shown}");
    assert!(shown.contains(&role), "Debug shows the user: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_setting() {
    for (url, setting) in [("mysql://h/db", "url"), ("postgres://h:x/db", "url")] {
        let err = PostgresBackend::from_url(url).await.unwrap_err();
        assert!(
            matches!(&err, Error::Config { setting: s, .. } if s == setting),
            "{url} must be a Config error on `{setting}`, got {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_the_server_ended_is_replaced_by_the_next_acquire() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    // application_name marks this backend's connections in pg_stat_activity.
    let marker = unique("idle");
    let url = format!("{}?application_name={marker}", server.url());
    let a = backend(&url, &unique("idle")).await;
    let k = key("job");
    let ttl = Duration::from_secs(1);
    let sessions = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = '{marker} (routine lock session)'"
    );
    a.try_acquire(&k, ttl)
        .await
        .unwrap()
        .expect("free key")
        .release()
        .await
        .unwrap();
    // The released session keeps its lease's idle_session_timeout, and holds nothing.
    common::eventually(
        Duration::from_secs(20),
        "the server ends the idle lock session",
        || server.psql(&sessions) == "0",
    )
    .await;
    let mut lease = a
        .try_acquire(&k, ttl)
        .await
        .expect("an acquire after the idle session ended is no error")
        .expect("free key");
    assert_eq!(server.psql(&sessions), "1", "a new lock session holds it");
    lease.release().await.unwrap();
}
