//! Operator queries and records beyond the shared suite: a fencing table of an earlier
//! version gains `holder_identity` and `record`; `force_release` ends the holder's lock
//! session, which revokes every lease of that backend at once while its other keys stay
//! guarded by the session's heartbeat; and it needs the privilege to end that session. A
//! record write of a released lease is fenced.

mod common;

use std::time::Duration;

use leasehold_conformance::servers::PostgresServer;
use leasehold_core::{Error, LockBackend, RecordWrite};
use tokio::time::Instant;

use common::{backend, builder, eventually, holder_pid, key};

/// Hang guard for calls that must return by themselves (the backend's request timeout in
/// these tests is 2 s).
const GUARD: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tables_of_earlier_versions_gain_holder_identity_and_keep_their_tokens() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    // Without heartbeats (four columns), with heartbeats but without identities, and
    // with both but without records.
    for (table, extra) in [
        ("fencing_v1", ""),
        ("fencing_v2", ", holder_session bigint"),
        (
            "fencing_v3",
            ", holder_session bigint, holder_identity text",
        ),
    ] {
        server.psql(&format!(
            "CREATE TABLE public.{table} (lock_key bigint PRIMARY KEY, namespace text NOT NULL,
             name text NOT NULL, token bigint NOT NULL,
             acquired_at timestamptz NOT NULL DEFAULT now(){extra})"
        ));
        let backend = builder(&server.url(), "migrated")
            .with_table(table)
            .build()
            .await
            .unwrap_or_else(|err| panic!("a backend on the old table {table} builds: {err:?}"));
        let k = key("job");
        server.psql(&format!(
            "INSERT INTO public.{table} (lock_key, namespace, name, token)
             VALUES ({}, 'migrated', 'job', 41)",
            backend.lock_key(&k)
        ));
        assert_eq!(
            server.psql(&format!(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.{table}'::regclass
                 AND attname IN ('holder_session', 'holder_identity', 'record')
                 AND NOT attisdropped"
            )),
            "3",
            "{table} gained the new columns"
        );
        let mut lease = backend
            .try_acquire_as(&k, Duration::from_secs(10), "replica-7")
            .await
            .unwrap()
            .expect("free");
        assert!(
            lease.fencing_token().get() > 41,
            "{table}: the token {} continues above the old row's 41",
            lease.fencing_token()
        );
        let info = backend.describe(&k).await.unwrap().expect("held");
        assert_eq!(info.holder.as_deref(), Some("replica-7"), "{table}");
        assert_eq!(info.fencing_token, Some(lease.fencing_token()), "{table}");
        assert_eq!(
            backend
                .write_record(&k, lease.fencing_token(), None, b"kept")
                .await
                .unwrap(),
            RecordWrite::Written,
            "{table}: the holder writes a record"
        );
        lease.release().await.unwrap();
        assert_eq!(
            backend.read_record(&k).await.unwrap().as_deref(),
            Some(&b"kept"[..]),
            "{table}: the record outlives the lease"
        );
    }
}

/// Replicas of a new version starting at once on a table of the previous one (without
/// `record`) all build: their `ADD COLUMN IF NOT EXISTS` statements race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_upgrading_a_fencing_table_at_once_all_build() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    for round in 0..5 {
        let table = format!("fencing_upgrade_{round}");
        server.psql(&format!(
            "CREATE TABLE public.{table} (lock_key bigint PRIMARY KEY, namespace text NOT NULL,
             name text NOT NULL, token bigint NOT NULL,
             acquired_at timestamptz NOT NULL DEFAULT now(), holder_session bigint,
             holder_identity text)"
        ));
        let builds = (0..6).map(|_| builder(&server.url(), "upgrade").with_table(&table).build());
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

/// PostgreSQL can tell a released lease: its claim is cleared, so its record writes are
/// fenced even before anyone acquires the key again, and the record stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_writes_of_a_released_lease_are_fenced() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let a = backend(&server.url(), "records").await;
    let k = key("job");
    let mut lease = a
        .try_acquire(&k, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("free");
    let token = lease.fencing_token();
    assert!(
        a.write_record(&k, token, None, b"1")
            .await
            .unwrap()
            .is_written()
    );
    lease.release().await.unwrap();
    assert_eq!(
        a.write_record(&k, token, Some(b"1"), b"2").await.unwrap(),
        RecordWrite::Fenced,
        "a released lease no longer writes"
    );
    assert_eq!(
        a.write_record(&key("never"), token, None, b"x")
            .await
            .unwrap(),
        RecordWrite::Fenced,
        "a key never acquired has no holder"
    );
    assert_eq!(a.read_record(&k).await.unwrap().as_deref(), Some(&b"1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_names_the_process_as_holder() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, b) = (
        backend(&server.url(), "identity").await,
        backend(&server.url(), "identity").await,
    );
    let k = key("job");
    let mut lease = a
        .try_acquire(&k, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("free");
    let info = b.describe(&k).await.unwrap().expect("held");
    assert_eq!(
        info.holder.as_deref(),
        Some(leasehold_core::process_identity()),
        "try_acquire stores the process identity"
    );
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_matches_the_prefix_literally_and_only_in_its_namespace() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, elsewhere) = (
        backend(&server.url(), "listed").await,
        backend(&server.url(), "elsewhere").await,
    );
    let ttl = Duration::from_secs(10);
    let mut leases = Vec::new();
    for name in ["job_1", "jobx1", "job%2"] {
        leases.push(a.try_acquire(&key(name), ttl).await.unwrap().expect("free"));
    }
    let mut foreign = elsewhere
        .try_acquire(&key("job_9"), ttl)
        .await
        .unwrap()
        .expect("free");
    let names = |listed: Vec<leasehold_core::LeaseInfo>| -> Vec<String> {
        listed
            .into_iter()
            .map(|info| info.key.to_string())
            .collect()
    };
    assert_eq!(
        names(a.list("job_").await.unwrap()),
        ["job_1"],
        "_ is not a wildcard, and another namespace's keys are not listed"
    );
    assert_eq!(names(a.list("job%").await.unwrap()), ["job%2"], "nor is %");
    assert_eq!(
        names(a.list("").await.unwrap()),
        ["job%2", "job_1", "jobx1"],
        "the empty prefix lists every held key of the namespace, in byte order"
    );
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
    foreign.release().await.unwrap();
    assert!(
        a.list("").await.unwrap().is_empty(),
        "released keys are not held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_ends_the_holders_session_and_its_other_keys_stay_guarded() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let (a, b) = (
        backend(&server.url(), "forced").await,
        backend(&server.url(), "forced").await,
    );
    let (forced, other) = (key("forced"), key("other"));
    let ttl = Duration::from_secs(3);
    let sent = Instant::now();
    let mut forced_lease = a.try_acquire(&forced, ttl).await.unwrap().expect("free");
    let other_lease = a.try_acquire(&other, ttl).await.unwrap().expect("free");
    let revoked = (
        forced_lease
            .revoked()
            .expect("postgres leases can be revoked"),
        other_lease
            .revoked()
            .expect("postgres leases can be revoked"),
    );
    let pid = holder_pid(&server, a.lock_key(&forced)).expect("held");

    assert!(
        b.force_release(&forced).await.unwrap(),
        "the forced key was held"
    );
    eventually(GUARD, "the holder's lock session has ended", || {
        server.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )) == "0"
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), async {
        revoked.0.await;
        revoked.1.await;
    })
    .await
    .expect("every lease of the ended session is revoked at once, not at its next refresh");
    assert!(
        forced_lease.refresh(ttl).await.unwrap_err().is_lost(),
        "the forced-out holder's refresh reports the loss"
    );
    let mut next = b
        .try_acquire(&forced, ttl)
        .await
        .unwrap()
        .expect("the forced key is free at once");

    // The other key's lock is gone with the session, but a's routine may still run on it
    // until its deadline: its session's heartbeat guards it until then.
    let guarded = b.describe(&other).await.unwrap().expect("still guarded");
    let left = guarded.expires_in.expect("the heartbeat's remaining time");
    assert!(left <= ttl, "{left:?} left must be within the TTL {ttl:?}");
    assert!(
        b.try_acquire(&other, ttl).await.unwrap().is_none(),
        "the holder's other key must not be taken before its heartbeat runs out"
    );
    let mut taken = loop {
        if let Some(lease) = b.try_acquire(&other, ttl).await.unwrap() {
            break lease;
        }
        assert!(
            sent.elapsed() < GUARD,
            "the other key is free after the heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sent.elapsed() >= ttl * 99 / 100,
        "the other key was taken {:?} after a's acquire, before a's TTL {ttl:?}",
        sent.elapsed()
    );
    drop(other_lease);
    taken.release().await.unwrap();
    next.release().await.unwrap();
    assert!(
        !b.force_release(&forced).await.unwrap(),
        "a free key was not held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_needs_the_privilege_to_end_the_holders_session() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    // The tables are made by the superuser; two ordinary roles use them.
    let _setup = backend(&server.url(), "privileged").await;
    for role in ["holder_role", "operator_role"] {
        server.psql(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw';
             GRANT SELECT, INSERT, UPDATE ON public.routine_fencing TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON public.routine_fencing_sessions TO {role};
             GRANT SELECT, INSERT, UPDATE ON public.routine_fencing_epoch TO {role};"
        ));
    }
    let holder = backend(
        &server.url_for("holder_role", "pw", "postgres"),
        "privileged",
    )
    .await;
    let operator = backend(
        &server.url_for("operator_role", "pw", "postgres"),
        "privileged",
    )
    .await;
    let k = key("job");
    let ttl = Duration::from_secs(10);
    let mut lease = holder.try_acquire(&k, ttl).await.unwrap().expect("free");

    let err = tokio::time::timeout(GUARD, operator.force_release(&k))
        .await
        .expect("force_release returns")
        .expect_err("another role's session cannot be ended without pg_signal_backend");
    assert!(
        matches!(err, Error::PermissionDenied { .. }),
        "permission denied, got {err:?}"
    );
    assert!(
        format!("{err:?}").contains("pg_signal_backend"),
        "the error names the privilege needed: {err:?}"
    );
    lease
        .refresh(ttl)
        .await
        .expect("a refused force_release changes nothing");
    assert!(
        operator.describe(&k).await.unwrap().is_some(),
        "the key is still held"
    );

    server.psql("GRANT pg_signal_backend TO operator_role");
    assert!(
        operator.force_release(&k).await.unwrap(),
        "with pg_signal_backend the key is freed"
    );
    eventually(GUARD, "the holder learns its lease is gone", || {
        futures::FutureExt::now_or_never(lease.revoked().expect("revocable")).is_some()
    })
    .await;
}
