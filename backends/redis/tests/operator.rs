//! Operator queries on a real redis-server, beyond the conformance cases: where the holder
//! identity is stored, which fencing token and clock `describe` reports, `list` with glob
//! characters and more keys than one `SCAN` batch, and `force_release` waking waiters.

mod common;

use std::time::{Duration, SystemTime};

use common::{backend, get, raw, unique_key, within};
use futures::FutureExt;
use leasehold_core::{Error, LockBackend, LockKey, process_identity};
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(10);

/// The server's clock, by `TIME`.
async fn server_time(conn: &mut redis::aio::MultiplexedConnection) -> SystemTime {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros)
}

#[tokio::test]
async fn the_holder_identity_and_token_are_stored_in_the_lock_value() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("identity");
    let lease = backend
        .try_acquire_as(&key, TTL, "pod-7:42")
        .await
        .unwrap()
        .unwrap();
    let value = get(&mut conn, &backend.lock_key(&key))
        .await
        .expect("the lock key is set");
    assert!(
        value.starts_with("leasehold:v1:"),
        "the value is tagged as ours: {value:?}"
    );
    let token = lease.fencing_token();
    assert!(
        value.contains(&format!(":{token}:")),
        "the value holds the fencing token {token}: {value:?}"
    );
    assert!(
        value.ends_with(":pod-7:42"),
        "the value ends with the holder identity, colons and all: {value:?}"
    );
    let kind: String = redis::cmd("TYPE")
        .arg(backend.lock_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "string", "still one plain string key, as Go expects");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{key}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        vec![backend.fence_key(&key), backend.lock_key(&key)],
        "no side key: the lock and its fence counter only"
    );
}

#[tokio::test]
async fn try_acquire_stores_the_process_identity() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let (holder, operator) = (backend(server).await, backend(server).await);
    let key = unique_key("process-identity");
    let _lease = holder.try_acquire(&key, TTL).await.unwrap().unwrap();
    let info = operator.describe(&key).await.unwrap().expect("held");
    assert_eq!(info.holder.as_deref(), Some(process_identity()));
}

#[tokio::test]
async fn an_invalid_holder_identity_is_a_config_error_and_takes_nothing() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("bad-identity");
    for holder in ["", "line\nbreak", &"x".repeat(257)] {
        let outcome = backend.try_acquire_as(&key, TTL, holder).await;
        assert!(
            matches!(&outcome, Err(Error::Config { .. })),
            "{holder:?} must be refused as configuration: {outcome:?}"
        );
    }
    let exists: (bool, bool) = redis::pipe()
        .cmd("EXISTS")
        .arg(backend.lock_key(&key))
        .cmd("EXISTS")
        .arg(backend.fence_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        exists,
        (false, false),
        "a refused identity neither takes the lock nor counts a token"
    );
}

#[tokio::test]
async fn describe_reports_the_holders_token_and_the_servers_clock() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let (holder, other, operator) = (
        backend(server).await,
        backend(server).await,
        backend(server).await,
    );
    let mut conn = raw(server).await;
    let key = unique_key("describe");
    let before = server_time(&mut conn).await;
    let lease = holder
        .try_acquire_as(&key, TTL, "replica-a")
        .await
        .unwrap()
        .unwrap();
    let after = server_time(&mut conn).await;
    // Others' attempts, and anything else that moves the counter on, do not change
    // which token the holder's lease has.
    assert!(other.try_acquire(&key, TTL).await.unwrap().is_none());
    let _: i64 = redis::cmd("INCRBY")
        .arg(holder.fence_key(&key))
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();

    let info = operator.describe(&key).await.unwrap().expect("held");
    assert_eq!(info.key, key);
    assert_eq!(info.holder.as_deref(), Some("replica-a"));
    assert_eq!(
        info.fencing_token,
        Some(lease.fencing_token()),
        "the token of the holder's acquisition, not the counter's current value"
    );
    let at = info.acquired_at.expect("the server's acquire time");
    assert!(
        before <= at && at <= after,
        "acquired_at {at:?} must be the server's clock between {before:?} and {after:?}"
    );
    let left = info.expires_in.expect("remaining TTL");
    assert!(left > TTL / 2 && left <= TTL, "remaining TTL {left:?}");
}

/// The names `list(base + prefix)` returns, without `base`.
async fn listed(operator: &RedisBackend, base: &str, prefix: &str) -> Vec<String> {
    operator
        .list(&format!("{base}{prefix}"))
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.key.as_str()[base.len()..].to_owned())
        .collect()
}

#[tokio::test]
async fn list_matches_glob_characters_in_the_prefix_literally() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let (holder, operator) = (backend(server).await, backend(server).await);
    let base = unique_key("glob").as_str().to_owned();
    let names = ["*a", "?b", "[c]", "\\d", "xe", "[^x]f", "[a-z]g"];
    let mut leases = Vec::new();
    for name in names {
        let key = LockKey::new(format!("{base}{name}")).unwrap();
        leases.push(holder.try_acquire(&key, TTL).await.unwrap().unwrap());
    }
    assert_eq!(
        listed(&operator, &base, "*").await,
        ["*a"],
        "`*` matches only itself"
    );
    assert_eq!(
        listed(&operator, &base, "?").await,
        ["?b"],
        "`?` matches only itself"
    );
    assert_eq!(
        listed(&operator, &base, "[c").await,
        ["[c]"],
        "`[` matches only itself"
    );
    assert_eq!(
        listed(&operator, &base, "\\").await,
        ["\\d"],
        "`\\` matches only itself"
    );
    assert_eq!(
        listed(&operator, &base, "[^").await,
        ["[^x]f"],
        "`[^` matches only itself"
    );
    assert_eq!(
        listed(&operator, &base, "[a-").await,
        ["[a-z]g"],
        "`[a-` matches only itself"
    );
    let mut all = names.map(str::to_owned).to_vec();
    all.sort();
    assert_eq!(
        listed(&operator, &base, "").await,
        all,
        "every name under the base, in name order"
    );
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
    assert!(
        listed(&operator, &base, "").await.is_empty(),
        "released keys are not listed"
    );
}

#[tokio::test]
async fn list_covers_more_keys_than_one_scan_or_describe_batch() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let (holder, operator) = (backend(server).await, backend(server).await);
    let base = unique_key("many").as_str().to_owned();
    // More than one `SCAN` call's 1000 and two `DESCRIBE` chunks of 500.
    let keys: Vec<LockKey> = (0..1234)
        .map(|i| LockKey::new(format!("{base}-{i:05}")).unwrap())
        .collect();
    let leases = futures::future::join_all(keys.iter().map(|key| {
        holder
            .try_acquire_as(key, TTL, "bulk")
            .map(|lease| lease.unwrap().expect("a fresh key is free"))
    }))
    .await;
    let listed = within(DEADLINE, "list", operator.list(&base))
        .await
        .unwrap();
    let names: Vec<&LockKey> = listed.iter().map(|info| &info.key).collect();
    assert_eq!(
        names,
        keys.iter().collect::<Vec<_>>(),
        "every key, once, in name order"
    );
    for (info, lease) in listed.iter().zip(&leases) {
        assert_eq!(info.holder.as_deref(), Some("bulk"));
        assert_eq!(info.fencing_token, Some(lease.fencing_token()));
    }
}

#[tokio::test]
async fn list_leaves_out_keys_that_are_not_lock_names() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let operator = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("not-a-name");
    // A control character makes no valid name: no client of ours wrote this key.
    let stray = format!("{}\n", operator.lock_key(&key));
    let _: () = redis::cmd("SET")
        .arg(&stray)
        .arg("x")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(operator.list(key.as_str()).await.unwrap(), vec![]);
}

#[tokio::test]
async fn force_release_wakes_waiters_at_once_and_the_holder_loses_its_lease() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let (holder, waiter, operator) = (
        backend(server).await,
        backend(server).await,
        backend(server).await,
    );
    let key = unique_key("force");
    let ttl = Duration::from_secs(60);
    let mut lease = holder.try_acquire(&key, ttl).await.unwrap().unwrap();
    let released = waiter.released(&key);
    tokio::pin!(released);
    // Registers the wait, as the runner does before it tries.
    assert!((&mut released).now_or_never().is_none());
    assert!(waiter.try_acquire(&key, ttl).await.unwrap().is_none());

    assert!(operator.force_release(&key).await.unwrap(), "it was held");
    within(DEADLINE, "the waiter's wake-up", released)
        .await
        .unwrap();
    let next = waiter
        .try_acquire(&key, ttl)
        .await
        .unwrap()
        .expect("free at once, long before the holder's TTL");
    assert!(next.fencing_token() > lease.fencing_token());
    assert!(
        matches!(lease.refresh(ttl).await, Err(Error::Lost { .. })),
        "the forced-out holder learns at its next refresh"
    );
    assert_eq!(
        operator
            .describe(&key)
            .await
            .unwrap()
            .and_then(|info| info.holder),
        Some(process_identity().to_owned()),
        "the new holder's lock was left alone"
    );
    assert!(!operator.force_release(&unique_key("free")).await.unwrap());
}
