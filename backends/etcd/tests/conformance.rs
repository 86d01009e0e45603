//! The whole conformance suite against a throwaway etcd. Every client is a new
//! `EtcdBackend` (its own connection and session lease), as separate processes would be.
//!
//! etcd's minimum lease TTL is 2 s, twice the suite's base runner TTL, so its timing is
//! scaled by 2.

use leasehold_conformance::servers::EtcdServer;
use leasehold_etcd::EtcdBackend;

leasehold_conformance::conformance_tests!(
    || async {
        let Some(server) = EtcdServer::shared() else {
            leasehold_conformance::skip("etcd is not installed");
        };
        EtcdBackend::builder()
            .with_endpoints([server.endpoint()])
            .build()
            .await
            .unwrap_or_else(|err| panic!("etcd backend must connect: {err:?}"))
    },
    time_scale = 2.0
);
