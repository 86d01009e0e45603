//! The whole conformance suite against a throwaway redis-server. Every client is a new
//! `RedisBackend` (its own command and pub/sub connections), as separate processes would
//! be.

use std::sync::OnceLock;

use leasehold_conformance::servers::RedisServer;
use leasehold_redis::RedisBackend;

fn server() -> Option<&'static RedisServer> {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start).as_ref()
}

leasehold_conformance::conformance_tests!(|| async {
    let Some(server) = server() else {
        leasehold_conformance::skip("redis-server is not installed");
    };
    RedisBackend::from_url(&server.url())
        .await
        .unwrap_or_else(|err| panic!("redis backend must connect: {err:?}"))
});
