//! Acquires whose caller stopped waiting: the runner bounds `try_acquire` by its own
//! request timeout (half the TTL by default) and drops the future when that passes. The
//! backend's own bound must come first, and a dropped acquire must not leave the key held
//! for its whole TTL.

mod common;

use std::time::Duration;

use common::{Deadline, raw, unique_key};
use leasehold_conformance::servers::RedisServer;
use leasehold_core::{Error, LockBackend};
use leasehold_redis::RedisBackend;

/// Generous bound for "freed soon": far below the TTLs used here.
const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn an_acquire_dropped_in_flight_leaves_the_key_free_soon_after_the_server_answers() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let backend = RedisBackend::builder()
        .with_url(server.url())
        .with_request_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let key = unique_key("dropped");
    let lock = backend.lock_key(&key);
    let fence = format!("routine:fence:{key}");
    let mut admin = raw(&server).await;
    // Loads the acquire script, so that the paused server gets the whole acquire in one
    // request (a first `EVALSHA` would come back `NOSCRIPT` to a caller already gone).
    let warm_up = backend.try_acquire(&unique_key("warm-up"), ttl).await;
    warm_up.unwrap().unwrap().release().await.unwrap();

    server.process().pause().unwrap();
    // The request is written to the paused server, then the caller gives up on it, as
    // the runner does when its own timeout passes.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), backend.try_acquire(&key, ttl)).await;
    assert!(gave_up.is_err(), "the paused server cannot have answered");
    server.process().resume().unwrap();

    // The acquire ran once the server resumed (it counted a fencing token), and the key
    // it took was given back, well before its TTL.
    let deadline = Deadline::new(SOON, "the dropped acquire's key is deleted");
    loop {
        let (held, counted): (bool, Option<u64>) = redis::pipe()
            .cmd("EXISTS")
            .arg(&lock)
            .cmd("GET")
            .arg(&fence)
            .query_async(&mut admin)
            .await
            .unwrap();
        if !held && counted == Some(1) {
            break;
        }
        deadline.tick().await;
    }
    let other = common::backend(&server).await;
    assert!(
        other.try_acquire(&key, ttl).await.unwrap().is_some(),
        "another client takes the key at once"
    );
}

#[tokio::test]
async fn an_acquire_times_out_before_the_runners_default_bound_of_half_the_ttl() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    // The client's own request timeout is above the TTL: the lease's bound applies.
    let backend = RedisBackend::builder()
        .with_url(server.url())
        .with_request_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(1);
    server.process().pause().unwrap();
    let outcome =
        tokio::time::timeout(ttl / 2, backend.try_acquire(&unique_key("bounded"), ttl)).await;
    server.process().resume().unwrap();
    let err = outcome
        .expect("the backend must give up before the runner's timeout of TTL/2 fires")
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { timeout, .. } if timeout < ttl / 2),
        "a timeout strictly shorter than half the TTL: {err:?}"
    );
}
