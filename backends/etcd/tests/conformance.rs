//! The whole conformance suite against a throwaway etcd. Every client is a new
//! `EtcdBackend` (its own connection and session lease), as separate processes would be.
//!
//! etcd's minimum lease TTL is 2 s, twice the suite's base runner TTL, so its timing is
//! scaled by 2.

use std::sync::OnceLock;

use routine_conformance::servers::EtcdServer;
use routine_etcd::EtcdBackend;

fn server() -> Option<&'static EtcdServer> {
    static SERVER: OnceLock<Option<EtcdServer>> = OnceLock::new();
    SERVER.get_or_init(EtcdServer::start).as_ref()
}

routine_conformance::conformance_tests!(
    || async {
        let Some(server) = server() else {
            routine_conformance::skip("etcd is not installed");
        };
        EtcdBackend::builder()
            .with_endpoints([server.endpoint()])
            .build()
            .await
            .unwrap_or_else(|err| panic!("etcd backend must connect: {err:?}"))
    },
    time_scale = 2.0
);
