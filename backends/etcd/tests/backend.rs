//! What the conformance suite (`tests/conformance.rs`) cannot show about `EtcdBackend` on
//! a real etcd: tokens as create revisions, stale releases while the old session lives,
//! TTL rounding, the shared session lease and background deletes of dropped leases.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Deadline, TTL, backend, key_info, raw, unique_key};
use leasehold_core::LockBackend;

#[tokio::test]
async fn the_fencing_token_is_the_keys_create_revision_on_a_lease() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let key = unique_key("revision");
    let mut lease = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("key is free");
    let (revision, lease_id) = key_info(&mut raw(server).await, &a.etcd_key(&key))
        .await
        .expect("the key must exist in etcd");
    assert_eq!(
        u64::try_from(revision).unwrap(),
        lease.fencing_token().get(),
        "the fencing token must be the key's create revision"
    );
    assert_ne!(lease_id, 0, "the key must be attached to a lease");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn release_is_idempotent_and_never_touches_a_later_holder() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("idempotent");
    let etcd_key = a.etcd_key(&key);
    let mut raw = raw(server).await;
    let mut first = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("key is free");
    raw.delete(etcd_key.clone(), None).await.unwrap();
    let mut second = b
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("deleted key is free");
    first
        .release()
        .await
        .expect("release of a lost lease is Ok");
    first.release().await.expect("a second release is Ok");
    let (revision, _) = key_info(&mut raw, &etcd_key)
        .await
        .expect("the later holder's key must survive the stale release");
    assert_eq!(
        u64::try_from(revision).unwrap(),
        second.fencing_token().get()
    );
    second
        .refresh(TTL)
        .await
        .expect("the later holder still holds the key");
    second.release().await.unwrap();
    second.release().await.expect("releasing twice is Ok");
}

#[tokio::test]
async fn ttl_is_rounded_up_to_whole_seconds() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let key = unique_key("rounding");
    let mut lease = a
        .try_acquire(&key, Duration::from_millis(2500))
        .await
        .unwrap()
        .expect("free");
    let mut raw = raw(server).await;
    let (_, lease_id) = key_info(&mut raw, &a.etcd_key(&key)).await.unwrap();
    let ttl = raw.lease_time_to_live(lease_id, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3, "2.5 s must be granted as 3 s");
    let caps = a.capabilities();
    assert_eq!(caps.ttl_granularity, Duration::from_secs(1));
    assert_eq!(
        caps.min_ttl,
        Duration::from_secs(2),
        "etcd's default minimum TTL is 2 s"
    );
    assert_eq!(a.min_ttl(), caps.min_ttl);
    assert!(
        caps.release_notifications && caps.reports_expiry,
        "etcd declares both, so the suite's notification and expiry cases run"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn one_session_lease_holds_many_keys() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let mut leases = Vec::new();
    for _ in 0..100 {
        let key = unique_key("many");
        leases.push(a.try_acquire(&key, TTL).await.unwrap().expect("free"));
    }
    let mut raw = raw(server).await;
    let mut lease_ids = HashSet::new();
    for lease in &leases {
        let (_, id) = key_info(&mut raw, &a.etcd_key(lease.key())).await.unwrap();
        lease_ids.insert(id);
    }
    assert_eq!(lease_ids.len(), 1, "all keys must share one session lease");
    let refreshes = leases.iter_mut().map(|lease| lease.refresh(TTL));
    for result in futures::future::join_all(refreshes).await {
        result.expect("concurrent refreshes must all succeed");
    }
    for mut lease in leases {
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn refresh_with_a_longer_ttl_keeps_the_token_and_extends_the_lease() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let key = unique_key("longer");
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let token = lease.fencing_token();
    lease.refresh(Duration::from_secs(4)).await.unwrap();
    let mut raw = raw(server).await;
    let (revision, lease_id) = key_info(&mut raw, &a.etcd_key(&key)).await.unwrap();
    assert_eq!(
        u64::try_from(revision).unwrap(),
        token.get(),
        "same acquisition"
    );
    let ttl = raw.lease_time_to_live(lease_id, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 4, "the key must now live on a 4 s lease");
    lease.refresh(Duration::from_secs(4)).await.unwrap();
    assert_eq!(lease.fencing_token(), token);
    lease.release().await.unwrap();
}

#[tokio::test]
async fn a_dropped_lease_is_deleted_in_the_background() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let a = backend(server).await;
    let key = unique_key("dropped");
    let mut other = a
        .try_acquire(&unique_key("kept"), TTL)
        .await
        .unwrap()
        .unwrap();
    drop(a.try_acquire(&key, TTL).await.unwrap().expect("free"));
    let mut raw = raw(server).await;
    let deadline = Deadline::new(TTL, "a dropped lease's key must be deleted");
    while key_info(&mut raw, &a.etcd_key(&key)).await.is_some() {
        deadline.tick().await;
    }
    other.release().await.unwrap();
}
