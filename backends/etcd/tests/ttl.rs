//! TTL bounds against a real etcd: the longest TTL etcd grants.

mod common;

use std::time::Duration;

use common::{TTL, backend, key_info, raw, shared_server, unique_key};
use routine_conformance::servers::EtcdServer;
use routine_core::{Error, LockBackend};

/// etcd's `MaxLeaseTTL`: the longest lease TTL its lessor grants.
const ETCD_MAX_LEASE_TTL: Duration = Duration::from_secs(9_000_000_000);

fn assert_invalid_ttl(result: routine_core::Result<()>, what: &str) {
    let err = result.expect_err(what);
    assert!(
        matches!(err, Error::InvalidTtl { .. }),
        "{what} must be InvalidTtl, not a server error: {err:?}"
    );
}

#[tokio::test]
async fn ttls_longer_than_etcd_grants_are_invalid_ttl_errors() {
    let Some(server) = shared_server() else {
        return;
    };
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
    let Some(server) = EtcdServer::start() else {
        return;
    };
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
