//! A Go instance (bsm/redislock, as the Go original uses it) and a Rust instance of the
//! same routine on one Redis exclude each other. The Go side is reproduced with its exact
//! commands: `SET key token NX PX ttl`, and its refresh and release scripts.

mod common;

use std::time::Duration;

use common::{backend, get, raw, unique_key};
use leasehold_core::LockBackend;

const TTL: Duration = Duration::from_secs(10);

/// bsm/redislock's release script.
const GO_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;

/// bsm/redislock's refresh script.
const GO_REFRESH: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

/// What bsm/redislock's `Obtain` sends: a random token, `SET NX PX`.
async fn go_obtain(conn: &mut redis::aio::MultiplexedConnection, key: &str, token: &str) -> bool {
    let reply: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .unwrap();
    reply.as_deref() == Some("OK")
}

async fn go_script(
    conn: &mut redis::aio::MultiplexedConnection,
    script: &str,
    key: &str,
    token: &str,
) -> i64 {
    redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(key)
        .arg(token)
        .arg(TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_go_holder_keeps_the_rust_backend_waiting_until_it_releases() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut go = raw(server).await;
    let key = unique_key("go-holds");
    let redis_key = backend.lock_key(&key);
    assert!(
        go_obtain(&mut go, &redis_key, "go-random-token").await,
        "Go takes the free key"
    );

    assert!(
        backend.try_acquire(&key, TTL).await.unwrap().is_none(),
        "Rust must see the Go holder as contention"
    );
    let left = backend.expires_in(&key).await.unwrap();
    assert!(
        left.is_some_and(|left| left <= TTL),
        "Rust must report the Go holder's remaining TTL, got {left:?}"
    );

    assert_eq!(
        go_script(&mut go, GO_RELEASE, &redis_key, "go-random-token").await,
        1
    );
    assert!(
        backend.try_acquire(&key, TTL).await.unwrap().is_some(),
        "Rust must take the key once Go released it"
    );
}

#[tokio::test]
async fn a_rust_holder_excludes_go_style_clients() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut go = raw(server).await;
    let key = unique_key("rust-holds");
    let redis_key = backend.lock_key(&key);
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let ours = get(&mut go, &redis_key).await.expect("the lock key is set");

    assert!(
        !go_obtain(&mut go, &redis_key, "go-random-token").await,
        "Go's SET NX must fail while Rust holds the key"
    );
    assert_eq!(
        go_script(&mut go, GO_RELEASE, &redis_key, "go-random-token").await,
        0,
        "Go's compare-and-delete with its own token must not delete Rust's lock"
    );
    assert_eq!(
        go_script(&mut go, GO_REFRESH, &redis_key, "go-random-token").await,
        0,
        "Go's compare-and-refresh with its own token must not extend Rust's lock"
    );
    assert_eq!(
        get(&mut go, &redis_key).await.as_deref(),
        Some(ours.as_str()),
        "the lock must still hold Rust's token"
    );
    lease
        .refresh(TTL)
        .await
        .expect("Rust still holds its lease");
    lease.release().await.unwrap();
    assert!(
        go_obtain(&mut go, &redis_key, "go-random-token").await,
        "Go must take the key once Rust released it"
    );
}
