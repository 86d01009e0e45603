//! Faults: etcd killed, restarted, wiped and paused; the session lease revoked and keys
//! deleted behind the holder's back. Each test that harms its server starts its own.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Deadline, TTL, backend, key_info, raw, unique_key, within};
use leasehold_conformance::servers::EtcdServer;
use leasehold_core::{Error, Lease, LockBackend};
use leasehold_etcd::EtcdBackend;

/// Long enough for etcd to restart within it.
const LONG_TTL: Duration = Duration::from_secs(10);

/// Refreshes until the outcome is not transient, failing if that takes past `limit`.
async fn refresh_until_verdict(
    lease: &mut Box<dyn Lease>,
    ttl: Duration,
    limit: Duration,
) -> Result<(), Error> {
    let deadline = Deadline::new(limit, "refresh must reach a verdict");
    loop {
        match within(limit, "one refresh", lease.refresh(ttl)).await {
            Err(err) if err.is_transient() => deadline.tick().await,
            verdict => return verdict,
        }
    }
}

/// Acquires until it succeeds, tolerating transient errors (etcd coming back).
async fn acquire_until_held(
    backend: &EtcdBackend,
    key: &leasehold_core::LockKey,
    ttl: Duration,
) -> Box<dyn Lease> {
    let deadline = Deadline::new(LONG_TTL * 2, format!("{key} must be acquired"));
    loop {
        match within(LONG_TTL, "one acquire", backend.try_acquire(key, ttl)).await {
            Ok(Some(lease)) => return lease,
            Ok(None) => {}
            Err(err) => assert!(
                err.is_transient(),
                "only transient errors are expected: {err:?}"
            ),
        }
        deadline.tick().await;
    }
}

#[tokio::test]
async fn restart_with_data_kept_keeps_the_lease_and_requests_fail_fast_while_down() {
    let mut server = leasehold_conformance::require_server!(EtcdServer::start());
    let a = backend(&server).await;
    let key = unique_key("restart");
    let mut lease = a.try_acquire(&key, LONG_TTL).await.unwrap().expect("free");
    server.kill();
    let err = within(
        Duration::from_secs(3),
        "refresh while etcd is down",
        lease.refresh(LONG_TTL),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_transient(),
        "etcd down must be a transient error: {err:?}"
    );
    let err = within(
        Duration::from_secs(3),
        "acquire while etcd is down",
        a.try_acquire(&unique_key("down"), LONG_TTL),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_transient(),
        "etcd down must be a transient error: {err:?}"
    );
    server.restart();
    refresh_until_verdict(&mut lease, LONG_TTL, LONG_TTL)
        .await
        .expect("etcd kept the lease across its restart: refresh must succeed");
    let (revision, _) = key_info(&mut raw(&server).await, &a.etcd_key(&key))
        .await
        .unwrap();
    assert_eq!(
        u64::try_from(revision).unwrap(),
        lease.fencing_token().get()
    );
    let b = backend(&server).await;
    assert!(
        b.try_acquire(&key, LONG_TTL).await.unwrap().is_none(),
        "still held"
    );
    let mut other = acquire_until_held(&a, &unique_key("after-restart"), LONG_TTL).await;
    other.release().await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test]
async fn restart_with_data_wiped_reports_lost_and_acquire_works_again() {
    let mut server = leasehold_conformance::require_server!(EtcdServer::start());
    let a = backend(&server).await;
    let key = unique_key("wiped");
    let mut lease = a.try_acquire(&key, LONG_TTL).await.unwrap().expect("free");
    let mut sibling = a
        .try_acquire(&unique_key("sibling"), LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    server.restart_wiped();
    let err = refresh_until_verdict(&mut lease, LONG_TTL, LONG_TTL)
        .await
        .unwrap_err();
    assert!(err.is_lost(), "a wiped etcd lost the lease: {err:?}");
    let err = within(LONG_TTL, "sibling refresh", sibling.refresh(LONG_TTL))
        .await
        .unwrap_err();
    assert!(
        err.is_lost(),
        "every key of the lost session is lost: {err:?}"
    );
    let mut again = acquire_until_held(&a, &key, LONG_TTL).await;
    again
        .refresh(LONG_TTL)
        .await
        .expect("the new session must work");
    again.release().await.unwrap();
    lease.release().await.expect("releasing a lost lease is Ok");
}

#[tokio::test]
async fn pause_past_the_ttl_times_out_promptly_then_reports_lost() {
    let server = leasehold_conformance::require_server!(EtcdServer::start());
    let (a, b) = (backend(&server).await, backend(&server).await);
    let key = unique_key("paused");
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let refreshed = tokio::time::Instant::now();
    server.process().pause().unwrap();
    let err = within(TTL, "refresh while etcd is paused", lease.refresh(TTL))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. }),
        "a paused etcd must time out: {err:?}"
    );
    let err = within(
        TTL,
        "acquire while etcd is paused",
        b.try_acquire(&key, TTL),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // The pause must outlast the TTL; this waits for time to pass, not for an event.
    tokio::time::sleep_until(refreshed + TTL + TTL / 2).await;
    server.process().resume().unwrap();
    let err = within(TTL, "refresh after the pause", lease.refresh(TTL))
        .await
        .unwrap_err();
    assert!(
        err.is_lost(),
        "a lease not refreshed for its TTL is lost: {err:?}"
    );
    let mut taken = acquire_until_held(&b, &key, TTL).await;
    assert!(taken.fencing_token() > lease.fencing_token());
    taken.release().await.unwrap();
}

#[tokio::test]
async fn revoked_session_loses_every_key_and_later_acquires_use_a_new_session() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let mut raw = raw(server).await;
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(
            a.try_acquire(&unique_key("revoked"), TTL)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let (_, session) = key_info(&mut raw, &a.etcd_key(leases[0].key()))
        .await
        .unwrap();
    raw.lease_revoke(session).await.unwrap();
    for lease in &mut leases {
        let err = lease.refresh(TTL).await.unwrap_err();
        assert!(
            err.is_lost(),
            "every key of a revoked session is lost: {err:?}"
        );
    }
    let key = unique_key("after-revoke");
    let mut fresh = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let (_, new_session) = key_info(&mut raw, &a.etcd_key(&key)).await.unwrap();
    assert_ne!(new_session, session, "a new session lease must be granted");
    fresh.refresh(TTL).await.expect("the new session works");
    fresh.release().await.unwrap();
}

#[tokio::test]
async fn key_deleted_behind_the_holders_back_reports_lost_for_that_key_only() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let mut raw = raw(server).await;
    let mut deleted = a
        .try_acquire(&unique_key("deleted"), TTL)
        .await
        .unwrap()
        .unwrap();
    let mut kept = a
        .try_acquire(&unique_key("kept"), TTL)
        .await
        .unwrap()
        .unwrap();
    raw.delete(a.etcd_key(deleted.key()), None).await.unwrap();
    let err = deleted.refresh(TTL).await.unwrap_err();
    assert!(err.is_lost(), "a deleted key is lost: {err:?}");
    kept.refresh(TTL)
        .await
        .expect("the session's other keys are unaffected");
    kept.release().await.unwrap();
}

#[tokio::test]
async fn unreachable_endpoints_give_a_transient_error_without_hanging() {
    let port = leasehold_conformance::servers::free_port();
    let started = EtcdBackend::builder()
        .with_endpoints([format!("127.0.0.1:{port}")])
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_millis(500));
    let err = within(
        Duration::from_secs(5),
        "connect to nothing",
        started.build(),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_transient(),
        "nothing listening must be transient: {err:?}"
    );
    let err = EtcdBackend::from_url("etcd://127.0.0.1:notaport")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_credentials_and_missing_permissions_are_typed_errors() {
    let server = leasehold_conformance::require_server!(EtcdServer::start());
    let mut raw = raw(&server).await;
    let with_user = |user: &str, password: &str| {
        EtcdBackend::builder()
            .with_endpoints([server.endpoint()])
            .with_user(user, password)
            .with_request_timeout(Duration::from_secs(2))
            .build()
    };
    let err = with_user("root", "rootpw").await.unwrap_err();
    assert!(
        matches!(err, Error::Auth { .. }),
        "credentials without auth enabled: {err:?}"
    );

    raw.user_add("root", "rootpw", None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.user_add("reader", "readerpw", None).await.unwrap();
    raw.role_add("reader").await.unwrap();
    raw.role_grant_permission(
        "reader",
        etcd_client::Permission::read("routine/").with_prefix(),
    )
    .await
    .unwrap();
    raw.user_grant_role("reader", "reader").await.unwrap();
    raw.auth_enable().await.unwrap();

    let err = with_user("root", "wrong").await.unwrap_err();
    assert!(
        matches!(err, Error::Auth { .. }),
        "a wrong password must be Auth: {err:?}"
    );
    let err = with_user("nobody", "x").await.unwrap_err();
    assert!(
        matches!(err, Error::Auth { .. }),
        "an unknown user must be Auth: {err:?}"
    );

    let key = unique_key("auth");
    let reader = with_user("reader", "readerpw")
        .await
        .expect("valid credentials");
    let err = reader.try_acquire(&key, TTL).await.unwrap_err();
    assert!(
        matches!(err, Error::PermissionDenied { .. }),
        "no write grant: {err:?}"
    );

    let root = with_user("root", "rootpw")
        .await
        .expect("valid credentials");
    let debug = format!("{root:?}");
    assert!(
        !debug.contains("rootpw"),
        "Debug must not show the password: {debug}"
    );
    assert!(debug.contains("root"), "Debug shows the user: {debug}");
    let mut lease = root.try_acquire(&key, TTL).await.unwrap().expect("free");
    lease.refresh(TTL).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test]
async fn keep_alives_are_shared_by_concurrent_refreshes() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let mut leases = Vec::new();
    for _ in 0..200 {
        leases.push(
            a.try_acquire(&unique_key("shared"), TTL)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut raw = raw(server).await;
    let mut sessions = HashSet::new();
    for lease in &leases {
        sessions.insert(
            key_info(&mut raw, &a.etcd_key(lease.key()))
                .await
                .unwrap()
                .1,
        );
    }
    assert_eq!(
        sessions.len(),
        1,
        "one session lease for every key of one TTL"
    );
    // Refreshing every key for two TTLs keeps all of them, through the one lease.
    let until = tokio::time::Instant::now() + TTL * 2;
    while tokio::time::Instant::now() < until {
        let refreshes = leases.iter_mut().map(|lease| lease.refresh(TTL));
        for result in futures::future::join_all(refreshes).await {
            result.expect("every refresh must succeed");
        }
        tokio::time::sleep(TTL / 4).await;
    }
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn keys_deleted_among_many_concurrent_refreshes_are_lost_and_only_they() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    // More keys than one checking transaction takes, so several chunks run, and two
    // deleted keys in different chunks make both fall back to reading key by key.
    let mut leases = Vec::new();
    for _ in 0..150 {
        leases.push(
            a.try_acquire(&unique_key("batch"), TTL)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut raw = raw(server).await;
    let deleted = [3, 120];
    for &i in &deleted {
        raw.delete(a.etcd_key(leases[i].key()), None).await.unwrap();
    }
    let refreshes = leases.iter_mut().map(|lease| lease.refresh(TTL));
    let results = futures::future::join_all(refreshes).await;
    for (i, result) in results.into_iter().enumerate() {
        if deleted.contains(&i) {
            let err = result.expect_err("a deleted key must not be refreshed");
            assert!(err.is_lost(), "a deleted key is lost: {err:?}");
        } else {
            result.expect("keys still held are refreshed, whatever their neighbours");
        }
    }
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn an_acquire_abandoned_before_its_reply_leaves_the_key_free() {
    let server = leasehold_conformance::require_server!(EtcdServer::start());
    let a = backend(&server).await;
    let b = backend(&server).await;
    // Refreshing this lease keeps a's session alive: a key left attached to it by the
    // abandoned acquire would stay held for as long as a lives.
    let mut keeper = a
        .try_acquire(&unique_key("keeper"), TTL)
        .await
        .unwrap()
        .unwrap();
    let key = unique_key("abandoned");
    server.process().pause().unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(300), a.try_acquire(&key, TTL)).await;
    assert!(
        gave_up.is_err(),
        "an acquire cannot finish on a paused server"
    );
    server.process().resume().unwrap();
    let deadline = Deadline::new(TTL * 3, "the abandoned acquire's key must become free");
    loop {
        let _ = keeper.refresh(TTL).await;
        match b.try_acquire(&key, TTL).await {
            Ok(Some(mut lease)) => {
                lease.release().await.unwrap();
                break;
            }
            Ok(None) | Err(_) => deadline.tick().await,
        }
    }
    keeper.release().await.unwrap();
}
