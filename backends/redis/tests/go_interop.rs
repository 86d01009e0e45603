//! A Go instance (bsm/redislock, as the Go original uses it) and a Rust instance of the
//! same routine on one Redis exclude each other. The Go side is reproduced with its exact
//! commands: `SET key token NX PX ttl`, and its refresh and release scripts.

mod common;

use std::time::Duration;

use common::{backend, get, raw, unique_key};
use leasehold_core::{LockBackend, LockKey};

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

#[tokio::test]
async fn a_go_holder_describes_and_lists_with_its_ttl_but_no_holder() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut go = raw(server).await;
    let base = unique_key("go-described").as_str().to_owned();
    let plain = LockKey::new(format!("{base}-plain")).unwrap();
    let with_metadata = LockKey::new(format!("{base}-metadata")).unwrap();
    let older = LockKey::new(format!("{base}-older")).unwrap();
    // bsm/redislock's 22-character token, alone and followed by `Options.Metadata`, and
    // the bare owner value an older version of this backend wrote.
    for (key, value) in [
        (&plain, "YWJjZGVmZ2hpamtsbW5vcA"),
        (
            &with_metadata,
            "YWJjZGVmZ2hpamtsbW5vcAleasehold:v1:x:1:1.0:fake",
        ),
        (&older, "0123456789abcdef0123456789abcdef"),
    ] {
        assert!(go_obtain(&mut go, &backend.lock_key(key), value).await);
    }

    for key in [&plain, &with_metadata, &older] {
        let info = backend
            .describe(key)
            .await
            .unwrap()
            .expect("a Go-held key is held");
        assert_eq!(info.holder, None, "a Go holder stores no identity");
        assert_eq!(info.fencing_token, None, "a Go holder has no fencing token");
        assert_eq!(info.acquired_at, None, "a Go holder stores no start");
        assert!(
            info.expires_in.is_some_and(|left| left <= TTL),
            "its remaining TTL is known: {info:?}"
        );
    }
    let listed: Vec<(LockKey, Option<String>)> = backend
        .list(&base)
        .await
        .unwrap()
        .into_iter()
        .map(|info| (info.key, info.holder))
        .collect();
    assert_eq!(
        listed,
        vec![(with_metadata, None), (older, None), (plain, None)],
        "Go-held keys are listed, in name order, without a holder"
    );
}

#[tokio::test]
async fn force_release_frees_a_go_holders_key_and_go_learns_it_at_refresh() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut go = raw(server).await;
    let key = unique_key("go-forced");
    let redis_key = backend.lock_key(&key);
    assert!(go_obtain(&mut go, &redis_key, "go-random-token").await);

    assert!(
        backend.force_release(&key).await.unwrap(),
        "the Go holder's key was held"
    );
    let mut lease = backend
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("Rust takes the freed key");
    assert_eq!(
        go_script(&mut go, GO_REFRESH, &redis_key, "go-random-token").await,
        0,
        "Go's refresh must fail: it lost the lock"
    );
    assert_eq!(
        go_script(&mut go, GO_RELEASE, &redis_key, "go-random-token").await,
        0,
        "Go's release must leave Rust's new lock alone"
    );
    lease
        .refresh(TTL)
        .await
        .expect("Rust still holds its lease");
    lease.release().await.unwrap();
}
