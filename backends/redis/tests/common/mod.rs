//! Helpers shared by the integration tests: throwaway servers, backends and raw clients.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use routine_conformance::servers::RedisServer;
use routine_core::LockKey;
use routine_redis::RedisBackend;

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

/// A deadline for polling a condition: `tick` waits 10 ms, or panics once it has passed.
pub struct Deadline {
    until: tokio::time::Instant,
    limit: Duration,
    what: String,
}

impl Deadline {
    pub fn new(limit: Duration, what: impl Into<String>) -> Self {
        Self {
            until: tokio::time::Instant::now() + limit,
            limit,
            what: what.into(),
        }
    }

    pub async fn tick(&self) {
        assert!(
            tokio::time::Instant::now() < self.until,
            "not within {:?}: {}",
            self.limit,
            self.what
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, panicking if it takes longer than `deadline` (a hang, not slowness).
pub async fn within<T>(deadline: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not complete within {deadline:?}"))
}
