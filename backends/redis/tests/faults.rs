//! Faults while leases are held, each on its own redis-server: the server killed and
//! restarted, paused longer than the TTL, the holder's connections cut, the key tampered
//! with, subscriptions refused. Each test says what happens to the lease.

mod common;

use std::time::Duration;

use common::{Deadline, backend, get, raw, unique_key, within};
use futures::FutureExt;
use leasehold_conformance::servers::RedisServer;
use leasehold_core::{Error, LockBackend};
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);
/// Generous bound for "did not hang": far above every timeout configured here.
const HANG: Duration = Duration::from_secs(10);

/// A backend with short timeouts, so a fault shows within a second.
async fn quick_backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::builder()
        .with_url(server.url())
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn killed_server_gives_transient_errors_and_acquire_works_after_restart() {
    let mut server = leasehold_conformance::require_server!(RedisServer::start());
    let backend = quick_backend(&server).await;
    let key = unique_key("killed");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();

    server.kill();
    let err = within(HANG, "refresh with the server down", lease.refresh(TTL))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "refresh must fail transiently: {err:?}");
    let other = unique_key("killed-other");
    let err = within(
        HANG,
        "acquire with the server down",
        backend.try_acquire(&other, TTL),
    )
    .await
    .unwrap_err();
    assert!(err.is_transient(), "acquire must fail transiently: {err:?}");
    let err = within(
        HANG,
        "expires_in with the server down",
        backend.expires_in(&key),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_transient(),
        "expires_in must fail transiently: {err:?}"
    );
    let waited = within(
        HANG,
        "released() with the server down",
        backend.released(&key),
    )
    .await;
    assert!(
        waited.is_err(),
        "released() must report the broken subscription"
    );

    server.restart();
    let deadline = Deadline::new(HANG, "acquire succeeds after the restart");
    let mut second = loop {
        match backend.try_acquire(&other, TTL).await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("nobody holds {other} on the fresh server"),
            Err(err) => assert!(err.is_transient(), "only transient errors: {err:?}"),
        }
        deadline.tick().await;
    };
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "the restarted server lost the old lock: {err:?}"
    );

    // Notifications come back too: the next wait subscribes again (and may wake once,
    // spuriously), and a wait registered once subscribed is woken by a release.
    resubscribe(&backend, &other).await;
    let released = backend.released(&other);
    tokio::pin!(released);
    assert!(released.as_mut().now_or_never().is_none());
    second.release().await.unwrap();
    within(HANG, "released() after the restart", released)
        .await
        .unwrap();
}

/// Starts a wait (which subscribes again after a failure) and waits until the backend
/// reports the subscription live.
async fn resubscribe(backend: &RedisBackend, key: &leasehold_core::LockKey) {
    assert!(!backend.notifications_active(), "the subscription was lost");
    let _ = backend.released(key).now_or_never();
    let deadline = Deadline::new(HANG, "the subscription is back");
    while !backend.notifications_active() {
        deadline.tick().await;
    }
}

#[tokio::test]
async fn paused_server_times_out_refresh_and_the_lease_is_lost_after_resume() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let backend = backend(&server).await;
    let ttl = Duration::from_secs(1);
    let key = unique_key("paused");
    let mut lease = backend.try_acquire(&key, ttl).await.unwrap().unwrap();

    server.process().pause().unwrap();
    let err = within(HANG, "refresh with the server paused", lease.refresh(ttl))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { timeout, .. } if timeout <= ttl / 2),
        "refresh must time out within half the TTL: {err:?}"
    );
    // The fault itself: the server stays stopped for longer than the TTL.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    server.process().resume().unwrap();

    let err = lease.refresh(ttl).await.unwrap_err();
    assert!(
        err.is_lost(),
        "the lease expired while the server was paused: {err:?}"
    );
    let other = common::backend(&server).await;
    assert!(
        other.try_acquire(&key, ttl).await.unwrap().is_some(),
        "the expired key is free for another client"
    );
}

#[tokio::test]
async fn cut_command_connection_reconnects_and_refresh_still_works() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let backend = backend(&server).await;
    let key = unique_key("cut");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let mut admin = raw(&server).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        killed, 2,
        "the backend's command connection and direct lane were cut"
    );

    lease
        .refresh(TTL)
        .await
        .expect("refresh must reconnect and extend the lease");
    let other = common::backend(&server).await;
    assert!(
        other.try_acquire(&key, TTL).await.unwrap().is_none(),
        "the lease is still held after the reconnection"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn cut_pubsub_connection_fails_waiters_and_the_next_wait_resubscribes() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let backend = backend(&server).await;
    let key = unique_key("cut-pubsub");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let waiting = backend.released(&key);
    tokio::pin!(waiting);
    assert!(waiting.as_mut().now_or_never().is_none());
    let mut admin = raw(&server).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the backend's one pub/sub connection was cut");
    let err = within(HANG, "the waiter notices", waiting)
        .await
        .unwrap_err();
    assert!(
        err.is_transient(),
        "a lost subscription is transient: {err:?}"
    );

    // Leases do not depend on the subscription.
    lease
        .refresh(TTL)
        .await
        .expect("refresh works without pub/sub");

    resubscribe(&backend, &key).await;
    let released = backend.released(&key);
    tokio::pin!(released);
    assert!(released.as_mut().now_or_never().is_none());
    lease.release().await.unwrap();
    within(HANG, "released() after resubscribing", released)
        .await
        .unwrap();
}

#[tokio::test]
async fn key_deleted_behind_the_holders_back_is_reported_lost() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let key = unique_key("deleted");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let mut conn = raw(server).await;
    let _: i64 = redis::cmd("DEL")
        .arg(backend.lock_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "refresh of a deleted lock must be Lost: {err:?}"
    );
    lease
        .release()
        .await
        .expect("release of a lost lease is a no-op");
}

#[tokio::test]
async fn key_overwritten_behind_the_holders_back_is_lost_and_left_alone() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let key = unique_key("overwritten");
    let redis_key = backend.lock_key(&key);
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let mut conn = raw(server).await;
    let _: () = redis::cmd("SET")
        .arg(&redis_key)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "refresh of an overwritten lock must be Lost: {err:?}"
    );
    lease.release().await.unwrap();
    assert_eq!(
        get(&mut conn, &redis_key).await.as_deref(),
        Some("someone-else"),
        "release must leave the foreign value alone"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > TTL.as_millis() as i64,
        "the foreign TTL is untouched: {pttl} ms"
    );
}

#[tokio::test]
async fn leases_work_when_the_server_refuses_subscriptions() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let mut admin = raw(&server).await;
    // An ACL user allowed everything but pattern subscriptions.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "nosub",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-psubscribe",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let backend = RedisBackend::from_url(&format!("redis://nosub:pw@127.0.0.1:{}", server.port()))
        .await
        .expect("building must not fail because notifications are refused");
    assert!(!backend.notifications_active(), "PSUBSCRIBE was refused");
    let key = unique_key("nosub");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    lease.refresh(TTL).await.unwrap();
    let err = within(
        HANG,
        "released() without subscriptions",
        backend.released(&key),
    )
    .await
    .unwrap_err();
    let chain = format!("{err} / {:?}", std::error::Error::source(&err));
    assert!(
        chain.contains("NOPERM") || chain.contains("permission"),
        "says why: {chain}"
    );
    lease.release().await.unwrap();
    assert!(backend.try_acquire(&key, TTL).await.unwrap().is_some());
}
