//! TTL bounds and expiry reports against a real etcd: the longest TTL etcd grants, and
//! what `expires_in` says about a key that is still there but whose lease has run out
//! or never existed.

mod common;

use std::time::Duration;

use common::{Deadline, TTL, backend, key_info, raw, unique_key};
use etcd_client::PutOptions;
use futures::StreamExt as _;
use leasehold_conformance::servers::EtcdServer;
use leasehold_core::{Error, LockBackend};
use tokio::time::Instant;

/// etcd's `MaxLeaseTTL`: the longest lease TTL its lessor grants.
const ETCD_MAX_LEASE_TTL: Duration = Duration::from_secs(9_000_000_000);

fn assert_invalid_ttl(result: leasehold_core::Result<()>, what: &str) {
    let err = result.expect_err(what);
    assert!(
        matches!(err, Error::InvalidTtl { .. }),
        "{what} must be InvalidTtl, not a server error: {err:?}"
    );
}

#[tokio::test]
async fn ttls_longer_than_etcd_grants_are_invalid_ttl_errors() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let key = unique_key("too-long");
    for ttl in [ETCD_MAX_LEASE_TTL + Duration::from_millis(1), Duration::MAX] {
        let acquired = a.try_acquire(&key, ttl).await.map(|_| ());
        assert_invalid_ttl(acquired, &format!("an acquire for {ttl:?}"));
    }

    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let too_long = ETCD_MAX_LEASE_TTL + Duration::from_secs(1);
    assert_invalid_ttl(lease.refresh(too_long).await, "a refresh too long");
    let mut batch = vec![lease];
    let mut results = a.refresh_many(&mut batch, too_long).await;
    assert_eq!(results.len(), 1, "one result per lease");
    assert_invalid_ttl(results.remove(0), "a batched refresh too long");
    let mut lease = batch.remove(0);
    lease
        .refresh(TTL)
        .await
        .expect("a refused TTL must leave the lease alone");
    lease.release().await.unwrap();
    assert_eq!(
        a.capabilities().max_ttl,
        ETCD_MAX_LEASE_TTL,
        "the backend must declare the longest TTL etcd grants"
    );
}

#[tokio::test]
async fn the_longest_ttl_etcd_grants_is_accepted() {
    // A server of its own: the lease granted here outlives the test.
    let server = leasehold_conformance::require_server!(EtcdServer::start());
    let a = backend(&server).await;
    let key = unique_key("longest");
    let mut lease = a
        .try_acquire(&key, ETCD_MAX_LEASE_TTL)
        .await
        .expect("etcd grants a lease of its maximum TTL")
        .expect("free");
    let mut raw = raw(&server).await;
    let (_, lease_id) = key_info(&mut raw, &a.etcd_key(&key)).await.unwrap();
    let granted = raw.lease_time_to_live(lease_id, None).await.unwrap();
    assert_eq!(
        u64::try_from(granted.granted_ttl()).unwrap(),
        ETCD_MAX_LEASE_TTL.as_secs(),
        "the key must live on a lease of the whole TTL"
    );
    lease.refresh(ETCD_MAX_LEASE_TTL).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test]
async fn expires_in_of_a_key_without_a_lease_is_not_none() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let key = unique_key("no-lease");
    let etcd_key = a.etcd_key(&key);
    let mut raw = raw(server).await;
    raw.put(etcd_key.clone(), "written by hand", None)
        .await
        .unwrap();
    // Such a key is held until someone deletes it: "free or unknown" would have the
    // waiter try again at once, and again, for as long as it is there.
    let left = a.expires_in(&key).await.unwrap();
    assert!(
        left.is_some_and(|left| left >= TTL),
        "a key that never expires must not be reported free: {left:?}"
    );
    raw.delete(etcd_key, None).await.unwrap();
}

/// How many leases expire together just before the key's lease. etcd revokes expired
/// leases at most 1,000 a second, so the key's lease outlives its TTL by seconds.
const BACKLOG: usize = 5_000;

/// How many grants are timed first, to plan when the backlog expires.
const PROBE: usize = 500;

/// How many grants are in flight at once.
const CONCURRENT_GRANTS: usize = 256;

/// Grants a lease that expires at `end`, give or take a second (etcd counts whole
/// seconds, from when it receives the grant), and at least the minimum TTL from now.
async fn grant_until(mut lease: etcd_client::LeaseClient, end: Instant) -> i64 {
    let secs = end.saturating_duration_since(Instant::now()).as_secs() + 1;
    let secs = i64::try_from(secs).unwrap().max(2);
    lease
        .grant(secs, None)
        .await
        .expect("etcd grants the lease")
        .id()
}

#[tokio::test]
async fn expires_in_of_a_key_whose_lease_expired_but_is_not_revoked_yet_is_not_none() {
    // A server of its own: its revocations lag behind on purpose.
    let server = leasehold_conformance::require_server!(EtcdServer::start());
    let a = backend(&server).await;
    let mut raw = raw(&server).await;
    // The backlog must expire within a second or so, however long granting it takes,
    // so that etcd cannot revoke it as fast as it expires: time some grants (whose
    // leases end long after the test), then let the backlog's leases all end a while
    // after the grants are expected to be done.
    let probe_started = Instant::now();
    let far = probe_started + Duration::from_secs(60);
    let grants = (0..PROBE).map(|_| grant_until(raw.lease_client(), far));
    futures::stream::iter(grants)
        .buffer_unordered(CONCURRENT_GRANTS)
        .collect::<Vec<_>>()
        .await;
    let expected = probe_started.elapsed() * u32::try_from(BACKLOG / PROBE).unwrap();
    let end = Instant::now() + expected * 3 / 2 + Duration::from_secs(1);
    // Bounded concurrency, so each lease's TTL is worked out just before it is sent.
    let grants = (0..BACKLOG).map(|_| grant_until(raw.lease_client(), end));
    futures::stream::iter(grants)
        .buffer_unordered(CONCURRENT_GRANTS)
        .collect::<Vec<_>>()
        .await;
    let key = unique_key("revoke-lag");
    let etcd_key = a.etcd_key(&key);
    // The key's lease ends a second after the backlog's, and is revoked after it.
    let lease = grant_until(raw.lease_client(), end + Duration::from_secs(1)).await;
    raw.put(
        etcd_key.clone(),
        "a crashed holder",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();

    let deadline = Deadline::new(
        end.saturating_duration_since(Instant::now()) + TTL * 10,
        "the key must go with its lease",
    );
    let mut lagging = 0;
    while key_info(&mut raw, &etcd_key).await.is_some() {
        let reported = raw.lease_time_to_live(lease, None).await.unwrap().ttl();
        let left = a.expires_in(&key).await.unwrap();
        // Only a key that was there before and after the question was held throughout.
        let held = key_info(&mut raw, &etcd_key).await.is_some();
        if held && reported < 0 {
            lagging += 1;
            assert!(
                left.is_some_and(|left| left > Duration::ZERO),
                "a key whose lease etcd reports at {reported} s is still held, so it \
                 must not be reported free: {left:?}"
            );
        }
        deadline.tick().await;
    }
    assert!(
        lagging > 0,
        "the test must see the lease past its TTL while the key is still there"
    );
}
