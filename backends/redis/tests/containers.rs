//! The whole conformance suite against Redis in a container (`leasehold-conformance`'s
//! `containers` feature: `redis:7`, or the image built from Debian's package with
//! `LEASEHOLD_CONTAINER_IMAGES=local`), and the faults containers make easy: the server
//! frozen (`docker pause`), crashed and started again (`docker restart`), and cut off
//! the network (`docker network disconnect`), while a runner holds a lease.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{RunOptions, Runner};
use leasehold_conformance::containers::RedisContainer;
use leasehold_conformance::{require_server, unique_key, wait::within};
use leasehold_redis::RedisBackend;
use tokio::sync::mpsc;
use tokio::time::Instant;

leasehold_conformance::conformance_tests!(|| async {
    let Some(redis) = RedisContainer::shared() else {
        leasehold_conformance::skip("docker is not usable");
    };
    RedisBackend::from_url(&redis.url())
        .await
        .unwrap_or_else(|err| panic!("redis backend must connect: {err:?}"))
});

const TTL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(20);

/// What the kept-running routine reports: `true` when it starts, `false` with the time
/// when it stops (returns or is dropped).
type Life = (bool, Instant);

struct Stopped(Arc<mpsc::UnboundedSender<Life>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.send((false, Instant::now()));
    }
}

/// A runner with a 1 s TTL on `redis` keeping a routine running that reports its life.
async fn keep_running(redis: &RedisContainer) -> (Runner, mpsc::UnboundedReceiver<Life>) {
    let backend = RedisBackend::builder()
        .with_url(redis.url())
        .with_connect_timeout(Duration::from_millis(300))
        .with_request_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let runner = Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap();
    let (tx, life) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    runner.run_named(
        unique_key("container-fault").as_str(),
        move |ctx| {
            let tx = Arc::clone(&tx);
            async move {
                let _ = tx.send((true, Instant::now()));
                let _stopped = Stopped(tx);
                ctx.cancelled().await;
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    (runner, life)
}

async fn next(life: &mut mpsc::UnboundedReceiver<Life>, started: bool, what: &str) -> Instant {
    let (was_start, at) = within(DEADLINE, what, life.recv())
        .await
        .unwrap_or_else(|| panic!("routine gone: {what}"));
    assert_eq!(
        was_start, started,
        "{what}: the routine must have started={started}"
    );
    at
}

/// Starts a routine, applies `fault` to its server (blocking: the tests run on a
/// multi-thread runtime so that the runner goes on meanwhile), and checks that the routine stops
/// within one TTL of the fault (before its lease can have expired on the server, where
/// another runner could take it), then that it runs again once `heal` has run.
async fn stops_within_the_ttl_and_runs_again(
    redis: &RedisContainer,
    fault: impl FnOnce(&RedisContainer),
    heal: impl FnOnce(&RedisContainer),
) {
    let (runner, mut life) = keep_running(redis).await;
    next(&mut life, true, "first start").await;
    fault(redis);
    let fault_at = Instant::now();
    let stopped_at = next(&mut life, false, "stop after the fault").await;
    assert!(
        stopped_at < fault_at + TTL,
        "the routine ran {:?} past the fault, longer than the TTL {TTL:?}",
        stopped_at - fault_at
    );
    // The fault outlasts the lease on the server.
    tokio::time::sleep_until(fault_at + TTL + Duration::from_millis(200)).await;
    heal(redis);
    next(&mut life, true, "start again once Redis answers").await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_container_stops_the_routine_within_the_ttl() {
    let redis = require_server!(RedisContainer::start());
    stops_within_the_ttl_and_runs_again(&redis, |r| r.pause(), |r| r.unpause()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_redis_container_stops_the_routine_and_it_runs_again() {
    let redis = require_server!(RedisContainer::start());
    // `docker restart -t 0` is a crash and a start; the data is gone with the server.
    stops_within_the_ttl_and_runs_again(&redis, |r| r.restart(), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_container_cut_off_the_network_stops_the_routine_within_the_ttl() {
    let redis = require_server!(RedisContainer::start());
    stops_within_the_ttl_and_runs_again(
        &redis,
        |r| r.disconnect_network(),
        |r| r.connect_network(),
    )
    .await;
}
