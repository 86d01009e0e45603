//! The whole conformance suite against PostgreSQL in a container
//! (`leasehold-conformance`'s `containers` feature: `postgres:15`, or the image built
//! from Debian's package with `LEASEHOLD_CONTAINER_IMAGES=local`). Every client is its
//! own backend (its own lock session and listener).
//!
//! Time scale 2, as in `conformance.rs`: a lock session idle for its longest lease TTL is
//! ended by the server, so one-second runner TTLs on a loaded two-core CI machine would
//! cost leases to scheduling delays rather than to the behaviour under test.
//!
//! Then the faults containers make easy, while a runner holds a lease with a 1 s TTL:
//! the server frozen (`docker pause`), crashed and started again (`docker restart`), and
//! cut off the network (`docker network disconnect`)
//! (`leasehold_conformance::containers::faults`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::containers::PostgresContainer;
use leasehold_conformance::containers::faults::stops_within_the_ttl_and_runs_again;
use leasehold_conformance::require_server;
use leasehold_core::LockBackend;

leasehold_conformance::conformance_tests!(
    || async {
        let Some(postgres) = PostgresContainer::shared() else {
            leasehold_conformance::skip("docker is not usable");
        };
        common::backend(&postgres.url(), "conformance").await
    },
    time_scale = 2.0
);

const TTL: Duration = Duration::from_secs(1);

/// A backend on `postgres` with a request timeout (which bounds connecting too) short
/// enough for a refresh to fail within the TTL.
async fn backend(postgres: &PostgresContainer) -> Arc<dyn LockBackend> {
    Arc::new(
        common::builder(&postgres.url(), "container-faults")
            .with_request_timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap_or_else(|err| panic!("postgres backend must connect: {err:?}")),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_postgres_container_stops_the_routine_within_the_ttl() {
    let postgres = require_server!(PostgresContainer::start());
    stops_within_the_ttl_and_runs_again(
        backend(&postgres).await,
        TTL,
        &postgres,
        |p| p.pause(),
        |p| p.unpause(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_postgres_container_stops_the_routine_and_it_runs_again() {
    let postgres = require_server!(PostgresContainer::start());
    // `docker restart -t 0` is a crash and a start: the lock session ends with the server.
    stops_within_the_ttl_and_runs_again(
        backend(&postgres).await,
        TTL,
        &postgres,
        |p| p.restart(),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_container_cut_off_the_network_stops_the_routine_within_the_ttl() {
    let postgres = require_server!(PostgresContainer::start());
    stops_within_the_ttl_and_runs_again(
        backend(&postgres).await,
        TTL,
        &postgres,
        |p| p.disconnect_network(),
        |p| p.connect_network(),
    )
    .await;
}
