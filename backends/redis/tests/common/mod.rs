//! Redis helpers of the integration tests: backends and raw clients. Servers, unique
//! names and deadlines come from `leasehold-conformance`, shared with the other backends.
#![allow(dead_code, unreachable_pub)]

use leasehold_conformance::servers::RedisServer;
use leasehold_redis::RedisBackend;

/// A backend on `server`'s URL.
pub async fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::from_url(&server.url())
        .await
        .unwrap_or_else(|err| panic!("backend must connect to {}: {err:?}", server.port()))
}

/// A plain multiplexed connection for looking at and tampering with Redis directly.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// What `GET key` returns.
pub async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

// Not every test binary that includes this module uses all of them.
#[allow(unused_imports)]
pub use leasehold_conformance::unique_key;
#[allow(unused_imports)]
pub use leasehold_conformance::wait::{Deadline, within};
