//! Operator queries on etcd, beyond the shared suite: holder identities of any printable
//! characters read back verbatim, keys in the older value format (or written by anything
//! else) are described without a holder rather than failing, `list` over many keys that
//! share a session lease, and a key moved to a longer-TTL session keeps its holder.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TTL, key_info, raw, unique_key};
use etcd_client::PutOptions;
use futures::StreamExt as _;
use leasehold_core::{Error, LockBackend, LockKey, MAX_HOLDER_IDENTITY_LEN, process_identity};
use leasehold_etcd::EtcdBackend;

/// A name under `prefix`.
fn named(prefix: &LockKey, rest: &str) -> LockKey {
    LockKey::new(format!("{}{rest}", prefix.as_str())).unwrap()
}

#[tokio::test]
async fn holder_identities_of_any_printable_characters_read_back_verbatim() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (a, b) = (common::backend(server).await, common::backend(server).await);
    let prefix = unique_key("odd-");
    let longest = "é".repeat(MAX_HOLDER_IDENTITY_LEN / 2);
    let identities = [
        "pod 7: blue",
        "a:b:c",
        " leading and trailing ",
        "holder x acquired_ms 1 holder y",
        "ünïcødé ✓",
        longest.as_str(),
    ];
    let mut leases = Vec::new();
    for (n, identity) in identities.iter().enumerate() {
        let key = named(&prefix, &n.to_string());
        let lease = a
            .try_acquire_as(&key, TTL, identity)
            .await
            .unwrap()
            .expect("the key is free");
        let info = b.describe(&key).await.unwrap().expect("the key is held");
        assert_eq!(
            info.holder.as_deref(),
            Some(*identity),
            "describe must read the identity back verbatim"
        );
        assert_eq!(info.fencing_token, Some(lease.fencing_token()));
        leases.push(lease);
    }
    let listed = b.list(prefix.as_str()).await.unwrap();
    let holders: Vec<Option<&str>> = listed.iter().map(|info| info.holder.as_deref()).collect();
    let expected: Vec<Option<&str>> = identities.iter().copied().map(Some).collect();
    assert_eq!(
        holders, expected,
        "list must read every identity back verbatim"
    );

    for bad in ["", "line\nbreak", &"x".repeat(MAX_HOLDER_IDENTITY_LEN + 1)] {
        let result = a.try_acquire_as(&named(&prefix, "bad"), TTL, bad).await;
        assert!(
            matches!(result, Err(Error::Config { .. })),
            "identity {bad:?} must be a Config error: {:?}",
            result.map(|lease| lease.is_some())
        );
    }
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn try_acquire_names_the_process_and_acquired_at_is_the_holders_clock() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    // A holder whose clock is far off: etcd keeps no time, so the holder's is reported.
    let at = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let a = EtcdBackend::builder()
        .with_endpoints([server.endpoint()])
        .with_holder_clock_for_tests(at)
        .build()
        .await
        .unwrap();
    let b = common::backend(server).await;
    let key = unique_key("process");
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let info = b.describe(&key).await.unwrap().expect("held");
    assert_eq!(info.holder.as_deref(), Some(process_identity()));
    assert_eq!(info.acquired_at, Some(at), "the holder's clock at acquire");
    lease.release().await.unwrap();

    let mut lease = b.try_acquire(&key, TTL).await.unwrap().expect("free");
    let acquired_at = b.describe(&key).await.unwrap().and_then(|i| i.acquired_at);
    let ago = acquired_at
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .expect("acquired_at is known and not in the future");
    assert!(ago < Duration::from_secs(5), "acquired {ago:?} ago");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn keys_in_an_older_or_foreign_value_format_are_described_without_a_holder() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let backend = common::backend(server).await;
    let mut raw = raw(server).await;
    let prefix = unique_key("older-");
    let granted = raw.lease_grant(30, None).await.unwrap();
    let values: [(&str, &[u8], Option<i64>); 4] = [
        (
            "attempt",
            b"leasehold-etcd pid 1 backend 00000000000000ab attempt 3",
            Some(granted.id()),
        ),
        (
            "moved",
            b"leasehold-etcd pid 1 backend 00000000000000ab",
            Some(granted.id()),
        ),
        ("binary", b"\xff\x00\xfe", Some(granted.id())),
        ("unleased", b"locked by hand", None),
    ];
    for (name, value, lease) in values {
        let key = named(&prefix, name);
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        raw.put(backend.etcd_key(&key), value, options)
            .await
            .unwrap();
        let info = backend
            .describe(&key)
            .await
            .unwrap_or_else(|err| panic!("{name}: describe must not fail: {err:?}"))
            .unwrap_or_else(|| panic!("{name}: the key is held"));
        let (revision, _) = key_info(&mut raw, &backend.etcd_key(&key)).await.unwrap();
        assert_eq!(info.holder, None, "{name}: no holder is named");
        assert_eq!(info.acquired_at, None, "{name}: no acquire time is known");
        assert_eq!(
            info.fencing_token.map(|token| token.get()),
            u64::try_from(revision).ok(),
            "{name}: the fencing token is the create revision"
        );
        let left = info
            .expires_in
            .expect("a held key's remaining time is known");
        match lease {
            Some(_) => assert!(
                left > Duration::ZERO && left <= Duration::from_secs(30),
                "{name}: {left:?}"
            ),
            None => assert!(left > Duration::from_secs(3600), "{name}: never expires"),
        }
    }
    let listed = backend.list(prefix.as_str()).await.unwrap();
    assert_eq!(listed.len(), 4, "list must not fail on them: {listed:?}");
    assert!(listed.iter().all(|info| info.holder.is_none()));
    let unleased = named(&prefix, "unleased");
    assert!(backend.force_release(&unleased).await.unwrap());
    assert_eq!(backend.describe(&unleased).await.unwrap(), None);
    raw.lease_revoke(granted.id()).await.unwrap();
}

/// How many keys the `list` test holds: more than one range read of `list` returns
/// (1,000), so that it reads two pages.
const MANY: usize = 1_100;

/// Who holds key `n` of the `list` test: one in 22 (50 keys) `b`, the rest `a`.
fn holder_of(n: usize) -> &'static str {
    if n.is_multiple_of(22) { "b" } else { "a" }
}

#[tokio::test]
async fn list_covers_many_keys_sharing_session_leases_in_name_order() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (a, b, operator) = (
        common::backend(server).await,
        common::backend(server).await,
        common::backend(server).await,
    );
    let prefix = unique_key("many-");
    let name = |n: usize| named(&prefix, &format!("{n:04}"));
    // Every key of `a` on its one session lease, every key of `b` on its own; acquired
    // out of name order.
    let mut leases: Vec<_> = futures::stream::iter((0..MANY).rev())
        .map(|n| {
            let (backend, key) = (if holder_of(n) == "b" { &b } else { &a }, name(n));
            async move {
                backend
                    .try_acquire_as(&key, TTL * 5, holder_of(n))
                    .await
                    .unwrap()
                    .expect("free")
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    // A key under the prefix that names no routine of this prefix: a nested prefix's.
    let mut raw = raw(server).await;
    let nested = [operator.etcd_key(&prefix), b"/nested".to_vec()].concat();
    raw.put(nested.clone(), "x", None).await.unwrap();

    let listed = operator.list(prefix.as_str()).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|info| info.key.as_str()).collect();
    let expected: Vec<LockKey> = (0..MANY).map(name).collect();
    let expected: Vec<&str> = expected.iter().map(LockKey::as_str).collect();
    assert!(
        names == expected,
        "every held key, in name order, nothing else: {} listed, {} held",
        names.len(),
        expected.len()
    );
    for (n, info) in listed.iter().enumerate() {
        assert_eq!(info.holder.as_deref(), Some(holder_of(n)), "{}", info.key);
        let left = info.expires_in.expect("known");
        assert!(left > Duration::ZERO && left <= TTL * 5, "{left:?}");
        assert!(info.fencing_token.is_some() && info.acquired_at.is_some());
    }
    let narrower = operator.list(name(109).as_str()).await.unwrap();
    let narrower: Vec<&str> = narrower.iter().map(|info| info.key.as_str()).collect();
    assert_eq!(
        narrower,
        [name(109).as_str()],
        "a prefix that is a whole name"
    );
    raw.delete(nested, None).await.unwrap();
    futures::stream::iter(&mut leases)
        .for_each_concurrent(64, |lease| async move { lease.release().await.unwrap() })
        .await;
    assert!(operator.list(prefix.as_str()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_key_moved_to_a_longer_session_keeps_its_holder() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (a, b) = (common::backend(server).await, common::backend(server).await);
    let key = unique_key("moved");
    let mut lease = a
        .try_acquire_as(&key, TTL, "mover 1")
        .await
        .unwrap()
        .expect("free");
    let before = b.describe(&key).await.unwrap().expect("held");
    // A longer TTL than the session's moves the key to another session lease.
    lease.refresh(TTL * 5).await.unwrap();
    let after = b.describe(&key).await.unwrap().expect("held");
    assert_eq!(after.holder.as_deref(), Some("mover 1"));
    assert_eq!(
        after.acquired_at, before.acquired_at,
        "acquired once, moved since"
    );
    assert_eq!(after.fencing_token, before.fencing_token);
    assert!(
        after.expires_in.expect("known") > TTL,
        "the new session's TTL: {after:?}"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn force_release_wakes_waiters_and_the_holder_learns_it_is_lost() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (a, b, operator) = (
        common::backend(server).await,
        common::backend(server).await,
        common::backend(server).await,
    );
    let (key, other) = (unique_key("forced"), unique_key("kept"));
    let mut lease = a.try_acquire(&key, TTL * 5).await.unwrap().expect("free");
    let mut kept = a.try_acquire(&other, TTL * 5).await.unwrap().expect("free");
    assert!(b.try_acquire(&key, TTL).await.unwrap().is_none(), "held");
    let waiter = b.released(&key);
    tokio::pin!(waiter);
    // The first poll registers the waiter (see `LockBackend::released`).
    assert!(futures::poll!(waiter.as_mut()).is_pending());
    assert!(operator.force_release(&key).await.unwrap(), "it was held");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the delete must wake the waiter")
        .unwrap();
    match lease.refresh(TTL * 5).await {
        Err(Error::Lost { .. }) => {}
        other => panic!("the forced-out holder's refresh must be Lost: {other:?}"),
    }
    kept.refresh(TTL * 5)
        .await
        .expect("the holder's other keys on the same session stay held");
    assert!(!operator.force_release(&key).await.unwrap(), "already free");
    kept.release().await.unwrap();
}
