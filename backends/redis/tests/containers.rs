//! The whole conformance suite against Redis in a container (`leasehold-conformance`'s
//! `containers` feature: `redis:7`, or the image built from Debian's package with
//! `LEASEHOLD_CONTAINER_IMAGES=local`), and the faults containers make easy: the server
//! frozen (`docker pause`), crashed and started again (`docker restart`), and cut off
//! the network (`docker network disconnect`), while a runner holds a lease
//! (`leasehold_conformance::containers::faults`).

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::containers::RedisContainer;
use leasehold_conformance::containers::faults::stops_within_the_ttl_and_runs_again;
use leasehold_conformance::require_server;
use leasehold_core::LockBackend;
use leasehold_redis::RedisBackend;

leasehold_conformance::conformance_tests!(|| async {
    let Some(redis) = RedisContainer::shared() else {
        leasehold_conformance::skip("docker is not usable");
    };
    RedisBackend::from_url(&redis.url())
        .await
        .unwrap_or_else(|err| panic!("redis backend must connect: {err:?}"))
});

const TTL: Duration = Duration::from_secs(1);

/// A backend on `redis` with timeouts short enough for a refresh to fail within the TTL.
async fn backend(redis: &RedisContainer) -> Arc<dyn LockBackend> {
    Arc::new(
        RedisBackend::builder()
            .with_url(redis.url())
            .with_connect_timeout(Duration::from_millis(300))
            .with_request_timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_container_stops_the_routine_within_the_ttl() {
    let redis = require_server!(RedisContainer::start());
    stops_within_the_ttl_and_runs_again(
        backend(&redis).await,
        TTL,
        &redis,
        |r| r.pause(),
        |r| r.unpause(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_redis_container_stops_the_routine_and_it_runs_again() {
    let redis = require_server!(RedisContainer::start());
    // `docker restart -t 0` is a crash and a start; the data is gone with the server.
    stops_within_the_ttl_and_runs_again(
        backend(&redis).await,
        TTL,
        &redis,
        |r| r.restart(),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_container_cut_off_the_network_stops_the_routine_within_the_ttl() {
    let redis = require_server!(RedisContainer::start());
    stops_within_the_ttl_and_runs_again(
        backend(&redis).await,
        TTL,
        &redis,
        |r| r.disconnect_network(),
        |r| r.connect_network(),
    )
    .await;
}
