//! The whole conformance suite against etcd in a container (`leasehold-conformance`'s
//! `containers` feature: the official etcd v3.5 image, or the image built from Debian's
//! package with `LEASEHOLD_CONTAINER_IMAGES=local`). Every client is a new `EtcdBackend`,
//! as separate processes would be.
//!
//! etcd's minimum lease TTL is 2 s, twice the suite's base runner TTL, so its timing is
//! scaled by 2 (as in `conformance.rs`).

use leasehold_conformance::containers::EtcdContainer;
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
