//! Helpers shared by the integration tests: throwaway servers, backends and raw clients.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use leasehold_conformance::servers::RedisServer;
use leasehold_core::LockKey;
use leasehold_redis::RedisBackend;

/// One server shared by the tests of a binary that do not harm it.
pub fn shared_server() -> Option<&'static RedisServer> {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start).as_ref()
}

/// A backend on `server`'s URL.
pub async fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::from_url(&server.url())
        .await
        .unwrap_or_else(|err| panic!("backend must connect to {}: {err:?}", server.port()))
}

/// A lock name no other test uses.
pub fn unique_key(label: &str) -> LockKey {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    LockKey::new(format!("{label}-{}-{n}", std::process::id())).unwrap()
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

// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use leasehold_conformance::wait::{Deadline, within};
