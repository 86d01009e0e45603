//! The whole conformance suite against etcd in a container (`leasehold-conformance`'s
//! `containers` feature: the official etcd v3.5 image, or the image built from Debian's
//! package with `LEASEHOLD_CONTAINER_IMAGES=local`). Every client is a new `EtcdBackend`,
//! as separate processes would be.
//!
//! etcd's minimum lease TTL is 2 s, twice the suite's base runner TTL, so its timing is
//! scaled by 2 (as in `conformance.rs`).
//!
//! Then the faults containers make easy, while a runner holds a lease with etcd's 2 s
//! TTL (`leasehold_conformance::containers::faults`): the server frozen (`docker pause`)
//! and cut off the network (`docker network disconnect`); not crashed and restarted,
//! which by design need not stop the routine (see below).

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::containers::EtcdContainer;
use leasehold_conformance::containers::faults::stops_within_the_ttl_and_runs_again;
use leasehold_conformance::require_server;
use leasehold_core::LockBackend;
use leasehold_etcd::EtcdBackend;

leasehold_conformance::conformance_tests!(
    || async {
        let Some(etcd) = EtcdContainer::shared() else {
            leasehold_conformance::skip("docker is not usable");
        };
        EtcdBackend::builder()
            .with_endpoints([etcd.endpoint()])
            .build()
            .await
            .unwrap_or_else(|err| panic!("etcd backend must connect: {err:?}"))
    },
    time_scale = 2.0
);

/// etcd's minimum lease TTL, which the container runs with.
const TTL: Duration = Duration::from_secs(2);

/// A backend on `etcd` with timeouts short enough for a keep-alive to fail within the
/// TTL (as in `common::backend`).
async fn backend(etcd: &EtcdContainer) -> Arc<dyn LockBackend> {
    Arc::new(
        EtcdBackend::builder()
            .with_endpoints([etcd.endpoint()])
            .with_request_timeout(Duration::from_millis(800))
            .with_connect_timeout(Duration::from_millis(800))
            .build()
            .await
            .unwrap_or_else(|err| panic!("etcd backend must connect: {err:?}")),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_etcd_container_stops_the_routine_within_the_ttl() {
    let etcd = require_server!(EtcdContainer::start());
    stops_within_the_ttl_and_runs_again(
        backend(&etcd).await,
        TTL,
        &etcd,
        |e| e.pause(),
        |e| e.unpause(),
    )
    .await;
}

// No restart fault (`docker restart`), unlike Redis and PostgreSQL: it cannot pass by
// design. etcd keeps its data (and the session lease) in the container across the
// restart, and renews every lease's TTL when it comes back, so the lease is never lost:
// the routine stops only if the runner's refresh deadline passes while etcd is down
// (it did in some runs, with the 0.8 s timeouts), and otherwise rightly runs on under the
// same lease (it did not stop within 20 s in one run). `tests/faults.rs`
// (`restart_with_data_kept_keeps_the_lease_and_requests_fail_fast_while_down`) checks
// that the lease survives a restart with its data, and
// `restart_with_data_wiped_reports_lost_and_acquire_works_again` that it is lost when the
// data is not.

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_container_cut_off_the_network_stops_the_routine_within_the_ttl() {
    let etcd = require_server!(EtcdContainer::start());
    stops_within_the_ttl_and_runs_again(
        backend(&etcd).await,
        TTL,
        &etcd,
        |e| e.disconnect_network(),
        |e| e.connect_network(),
    )
    .await;
}
