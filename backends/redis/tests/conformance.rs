//! The whole conformance suite against a throwaway redis-server. Every client is a new
//! `RedisBackend` (its own command and pub/sub connections), as separate processes would
//! be.

use leasehold_conformance::servers::RedisServer;
use leasehold_redis::RedisBackend;

leasehold_conformance::conformance_tests!(|| async {
    let Some(server) = RedisServer::shared() else {
        leasehold_conformance::skip("redis-server is not installed");
    };
    RedisBackend::from_url(&server.url())
        .await
        .unwrap_or_else(|err| panic!("redis backend must connect: {err:?}"))
});
