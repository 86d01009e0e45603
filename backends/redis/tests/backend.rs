//! Backend-level behaviour against a real redis-server: acquire, contention, refresh,
//! release, fencing, notifications, expiry reports, TTL validation and namespaces.

mod common;

use std::time::Duration;

use common::{Deadline, backend, get, raw, shared_server, unique_key, within};
use futures::FutureExt;
use leasehold_core::{Error, LockBackend};
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn acquire_takes_a_free_key_and_a_second_acquire_is_contended() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("contention");
    let lease = a.try_acquire(&key, TTL).await.unwrap();
    assert!(lease.is_some(), "a free key must be acquired");
    let lease = lease.unwrap();
    assert_eq!(lease.key(), &key, "the lease must name its key");
    assert!(
        b.try_acquire(&key, TTL).await.unwrap().is_none(),
        "another client must see contention (Ok(None)), not an error"
    );
    assert!(
        a.try_acquire(&key, TTL).await.unwrap().is_none(),
        "the same backend acquiring again must see contention too"
    );
}

#[tokio::test]
async fn the_lock_key_holds_a_plain_string_with_the_requested_ttl() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("layout");
    let _lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let redis_key = backend.lock_key(&key);
    assert_eq!(redis_key, format!("routine:lock:{key}"), "Go key layout");
    let kind: String = redis::cmd("TYPE")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        kind, "string",
        "the lock must be a plain string as in bsm/redislock"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 10_000,
        "the key must expire within the TTL: {pttl} ms"
    );
}

#[tokio::test]
async fn refresh_extends_the_lease_to_the_new_ttl() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("refresh");
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    lease.refresh(Duration::from_secs(60)).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(backend.lock_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 2_000,
        "refresh must set the new, longer TTL: {pttl} ms left"
    );
}

#[tokio::test]
async fn release_frees_the_key_for_another_client() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("release");
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().unwrap();
    lease.release().await.unwrap();
    assert!(
        b.try_acquire(&key, TTL).await.unwrap().is_some(),
        "a released key must be free at once, not after its TTL"
    );
}

#[tokio::test]
async fn release_is_idempotent_and_never_touches_a_later_holder() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("idempotent");
    let mut lease = a
        .try_acquire(&key, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    // Let the short lease run out, then someone else takes the key.
    let deadline = Deadline::new(DEADLINE, "the expired key is acquired by b");
    let later = loop {
        if let Some(later) = b.try_acquire(&key, TTL).await.unwrap() {
            break later;
        }
        deadline.tick().await;
    };
    lease.release().await.unwrap();
    lease.release().await.unwrap();
    assert!(
        a.try_acquire(&key, TTL).await.unwrap().is_none(),
        "releasing an expired lease must leave the new holder's key alone"
    );
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "refreshing a released lease must be Lost: {err:?}"
    );
    drop(later);
}

#[tokio::test]
async fn fencing_tokens_increase_with_every_acquisition() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("fencing");
    let mut last = None;
    for round in 0..5 {
        let backend = if round % 2 == 0 { &a } else { &b };
        let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
        let token = lease.fencing_token();
        if let Some(last) = last {
            assert!(
                token > last,
                "round {round}: token {token} must exceed {last}"
            );
        }
        last = Some(token);
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn release_wakes_a_waiter_on_another_backend() {
    let Some(server) = shared_server() else {
        return;
    };
    let (holder, waiter) = (backend(server).await, backend(server).await);
    let key = unique_key("notify");
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().unwrap();
    let released = waiter.released(&key);
    tokio::pin!(released);
    assert!(
        released.as_mut().now_or_never().is_none(),
        "released() must wait while the key is held"
    );
    // The first poll above registered the waiter; the release must now wake it.
    lease.release().await.unwrap();
    within(DEADLINE, "released() after the release", released)
        .await
        .unwrap();
    assert!(
        waiter.try_acquire(&key, TTL).await.unwrap().is_some(),
        "the woken waiter must be able to acquire"
    );
}

#[tokio::test]
async fn released_of_one_key_is_not_woken_by_another_keys_release() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let (watched, other) = (unique_key("watched"), unique_key("other"));
    let _held = backend.try_acquire(&watched, TTL).await.unwrap().unwrap();
    let mut lease = backend.try_acquire(&other, TTL).await.unwrap().unwrap();
    let watched_released = backend.released(&watched);
    let other_released = backend.released(&other);
    tokio::pin!(watched_released, other_released);
    assert!(watched_released.as_mut().now_or_never().is_none());
    assert!(other_released.as_mut().now_or_never().is_none());
    lease.release().await.unwrap();
    // One listener dispatches messages in order: once `other`'s waiter woke, its message
    // has been handled, and it must not have woken `watched`'s waiter.
    within(DEADLINE, "released(other)", other_released)
        .await
        .unwrap();
    assert!(
        watched_released.as_mut().now_or_never().is_none(),
        "a release of another key must not wake this key's waiter"
    );
}

#[tokio::test]
async fn expires_in_reports_the_holders_remaining_ttl() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let key = unique_key("expires");
    assert_eq!(
        backend.expires_in(&key).await.unwrap(),
        None,
        "a free key has no expiry"
    );
    let _lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let left = backend
        .expires_in(&key)
        .await
        .unwrap()
        .expect("held key reports expiry");
    assert!(
        left > Duration::ZERO && left <= TTL,
        "remaining {left:?} must be within the TTL"
    );
    assert!(
        backend.capabilities().reports_expiry,
        "capability must be declared"
    );
    assert!(backend.capabilities().release_notifications);
}

#[tokio::test]
async fn zero_ttl_is_an_invalid_ttl_error() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let key = unique_key("zero-ttl");
    let err = backend.try_acquire(&key, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "acquire: {err:?}");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let err = lease.refresh(Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "refresh: {err:?}");
    lease
        .refresh(TTL)
        .await
        .expect("the lease is still held after the bad refresh");
}

#[tokio::test]
async fn ttls_outside_the_declared_bounds_are_invalid_ttl_errors() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let caps = backend.capabilities();
    let key = unique_key("ttl-bounds");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let mut check = async |ttl: Duration, bound: &str| {
        for (operation, outcome) in [
            ("acquire", backend.try_acquire(&key, ttl).await.map(drop)),
            ("refresh", lease.refresh(ttl).await),
        ] {
            match outcome {
                Err(Error::InvalidTtl { ttl: got, reason }) => {
                    assert_eq!(got, ttl, "{operation} names the TTL");
                    assert!(reason.contains(bound), "{operation} {ttl:?}: {reason}");
                }
                other => panic!("{operation} with {ttl:?} must be InvalidTtl: {other:?}"),
            }
        }
    };
    for ttl in [
        Duration::from_nanos(1),
        caps.min_ttl - Duration::from_nanos(1),
    ] {
        check(ttl, "at least").await;
    }
    assert!(
        caps.max_ttl < Duration::MAX,
        "the backend declares the longest TTL `PX` can represent"
    );
    for ttl in [caps.max_ttl + Duration::from_millis(1), Duration::MAX] {
        check(ttl, "at most").await;
    }
    lease
        .refresh(caps.max_ttl)
        .await
        .expect("the longest declared TTL is accepted by the server");
    lease.release().await.unwrap();
    let lease = backend.try_acquire(&key, caps.max_ttl).await.unwrap();
    lease.expect("the key is free").release().await.unwrap();
}

#[tokio::test]
async fn refresh_after_expiry_reports_lost() {
    let Some(server) = shared_server() else {
        return;
    };
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("expired");
    let mut lease = backend
        .try_acquire(&key, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    let redis_key = backend.lock_key(&key);
    let deadline = Deadline::new(DEADLINE, "the lock key expires");
    while get(&mut conn, &redis_key).await.is_some() {
        deadline.tick().await;
    }
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(err.is_lost(), "refresh after expiry must be Lost: {err:?}");
}

#[tokio::test]
async fn namespaces_separate_applications() {
    let Some(server) = shared_server() else {
        return;
    };
    let build = |namespace: &'static str| async move {
        RedisBackend::builder()
            .with_url(server.url())
            .with_namespace(namespace)
            .build()
            .await
            .unwrap()
    };
    let (billing, reports) = (build("billing").await, build("reports").await);
    let key = unique_key("shared-name");
    let mut lease = billing.try_acquire(&key, TTL).await.unwrap().unwrap();
    assert!(
        reports.try_acquire(&key, TTL).await.unwrap().is_some(),
        "the same name in another namespace must be independent"
    );
    assert_eq!(billing.lock_key(&key), format!("billing:lock:{key}"));
    // A release in one namespace must not wake the other's waiters. `reports` gets a
    // marker on another key of its own namespace after billing's release: its listener
    // handles messages in order, so once the marker's waiter woke, a billing message
    // (had one been delivered) would have been handled too.
    let marker = unique_key("marker");
    let released = reports.released(&key);
    let marker_released = reports.released(&marker);
    tokio::pin!(released, marker_released);
    assert!(released.as_mut().now_or_never().is_none());
    assert!(marker_released.as_mut().now_or_never().is_none());
    lease.release().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("reports:released:{marker}"))
        .arg("")
        .query_async(&mut raw(server).await)
        .await
        .unwrap();
    within(DEADLINE, "released(marker)", marker_released)
        .await
        .unwrap();
    assert!(
        released.as_mut().now_or_never().is_none(),
        "a release in namespace billing must not wake a waiter in namespace reports"
    );
}

#[tokio::test]
async fn many_leases_use_two_connections() {
    let Some(server) = leasehold_conformance::servers::RedisServer::start() else {
        return;
    };
    let backend = backend(&server).await;
    let mut leases = Vec::new();
    for _ in 0..50 {
        let key = unique_key("many");
        leases.push(backend.try_acquire(&key, TTL).await.unwrap().unwrap());
    }
    // Refresh them all at once: they share the multiplexed connection.
    let refreshes = leases.iter_mut().map(|lease| lease.refresh(TTL));
    for result in futures::future::join_all(refreshes).await {
        result.unwrap();
    }
    let mut conn = raw(&server).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let count = clients.lines().count() - 1; // less our own inspection connection
    assert_eq!(
        count, 2,
        "one command and one pub/sub connection, got:\n{clients}"
    );
}

#[tokio::test]
async fn refresh_many_sends_one_script_per_500_leases_and_extends_each() {
    let Some(server) = leasehold_conformance::servers::RedisServer::start() else {
        return;
    };
    let backend = backend(&server).await;
    let mut leases = Vec::new();
    for _ in 0..1_200 {
        let key = unique_key("batch");
        leases.push(
            backend
                .try_acquire(&key, Duration::from_secs(2))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Once to load the script, so the counted call below runs only EVALSHA.
    for result in backend
        .refresh_many(&mut leases, Duration::from_secs(2))
        .await
    {
        result.unwrap();
    }
    let mut conn = raw(&server).await;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let results = backend
        .refresh_many(&mut leases, Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 1_200, "one result per lease");
    for result in results {
        result.unwrap();
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        stats.contains("cmdstat_evalsha:calls=3,"),
        "1,200 leases must take three scripts of at most 500 keys:\n{stats}"
    );
    for lease in [&leases[0], &leases[600], &leases[1_199]] {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(backend.lock_key(lease.key()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            pttl > 2_000,
            "each lease must have the new TTL: {pttl} ms left"
        );
    }
}

#[tokio::test]
async fn debug_output_never_shows_the_password() {
    let Some(server) =
        leasehold_conformance::servers::RedisServer::start_with_password(Some("s3cr3t-pw"))
    else {
        return;
    };
    let backend = backend(&server).await;
    let shown = format!("{backend:?}");
    assert!(!shown.contains("s3cr3t-pw"), "password shown: {shown}");
    assert!(
        shown.contains("<redacted>"),
        "redaction must be visible: {shown}"
    );
    let builder = RedisBackend::builder().with_url(server.url());
    assert!(
        !format!("{builder:?}").contains("s3cr3t-pw"),
        "builder shows password"
    );
    let key = unique_key("auth-lease");
    let lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    assert!(!format!("{lease:?}").contains("s3cr3t-pw"));
}
