//! What the conformance suite (`tests/conformance.rs`) cannot show about `RedisBackend`
//! on a real redis-server: key layout and TTLs on the server, per-key notifications,
//! namespaces, connection counts, batched refreshes and password redaction.

mod common;

use std::time::Duration;

use common::{Deadline, backend, get, raw, unique_key, within};
use futures::FutureExt;
use leasehold_core::LockBackend;
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_lock_key_holds_a_plain_string_with_the_requested_ttl() {
    let server = leasehold_conformance::require_server!(RedisServer);
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
    let server = leasehold_conformance::require_server!(RedisServer);
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
async fn released_of_one_key_is_not_woken_by_another_keys_release() {
    let server = leasehold_conformance::require_server!(RedisServer);
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
async fn the_declared_capabilities_are_what_the_server_honours() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let caps = backend.capabilities();
    assert!(
        caps.release_notifications && caps.reports_expiry,
        "Redis declares both, so the suite's notification and expiry cases run"
    );
    assert!(
        caps.max_ttl < Duration::MAX,
        "the backend declares the longest TTL `PX` can represent"
    );
    // The suite checks that TTLs outside the bounds are refused; here, that the longest
    // one inside them is accepted by the server, for a refresh and for an acquire.
    let key = unique_key("ttl-bounds");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
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
    let server = leasehold_conformance::require_server!(RedisServer);
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
    let server = leasehold_conformance::require_server!(RedisServer);
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
async fn many_leases_use_three_connections() {
    let server = leasehold_conformance::require_server!(
        leasehold_conformance::servers::RedisServer::start()
    );
    let backend = backend(&server).await;
    let mut leases = Vec::new();
    for _ in 0..50 {
        let key = unique_key("many");
        leases.push(backend.try_acquire(&key, TTL).await.unwrap().unwrap());
    }
    // Refresh them all at once: they share the multiplexed connection (and the lane,
    // which takes one of them when it is free).
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
        count, 3,
        "one command, one direct lane and one pub/sub connection, got:\n{clients}"
    );
}

#[tokio::test]
async fn refresh_many_sends_one_script_per_500_leases_and_extends_each() {
    let server = leasehold_conformance::require_server!(
        leasehold_conformance::servers::RedisServer::start()
    );
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
    let server = leasehold_conformance::require_server!(
        leasehold_conformance::servers::RedisServer::start_with_password(Some("s3cr3t-pw"))
    );
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
