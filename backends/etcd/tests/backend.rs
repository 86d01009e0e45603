//! Backend-level behaviour against a real etcd: acquire, contention, refresh, release,
//! fencing tokens, TTL handling and the shared session lease.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Deadline, TTL, backend, key_info, raw, shared_server, unique_key, within};
use leasehold_core::{Error, LockBackend};

#[tokio::test]
async fn acquire_takes_a_free_key_and_a_second_acquire_is_contended() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("contended");
    let mut lease = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("key is free");
    assert!(
        b.try_acquire(&key, TTL).await.unwrap().is_none(),
        "a held key must be contended for another client"
    );
    assert!(
        a.try_acquire(&key, TTL).await.unwrap().is_none(),
        "a held key must be contended for the same client too"
    );
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
async fn refresh_keeps_the_key_past_its_first_ttl() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("refresh");
    let mut lease = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("key is free");
    let until = tokio::time::Instant::now() + TTL * 2;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(TTL / 4).await;
        lease
            .refresh(TTL)
            .await
            .expect("refresh of a held key must succeed");
    }
    assert!(
        b.try_acquire(&key, TTL).await.unwrap().is_none(),
        "a refreshed key must still be held after twice its TTL"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn release_frees_the_key_for_another_client() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("release");
    let mut lease = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("key is free");
    lease.release().await.unwrap();
    assert!(
        key_info(&mut raw(server).await, &a.etcd_key(&key))
            .await
            .is_none(),
        "release must delete the key"
    );
    let mut second = b.try_acquire(&key, TTL).await.unwrap();
    assert!(second.is_some(), "a released key must be free at once");
    second.as_mut().unwrap().release().await.unwrap();
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "refresh after release must report Lost: {err:?}"
    );
}

#[tokio::test]
async fn release_is_idempotent_and_never_touches_a_later_holder() {
    let Some(server) = shared_server() else {
        return;
    };
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
async fn fencing_tokens_increase_across_clients_and_takeovers() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("fencing");
    let mut raw = raw(server).await;
    let mut tokens = Vec::new();
    for round in 0..3 {
        let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
        tokens.push(lease.fencing_token());
        lease.release().await.unwrap();
        let mut lease = b.try_acquire(&key, TTL).await.unwrap().expect("free");
        tokens.push(lease.fencing_token());
        // A takeover: the key is deleted behind the holder's back and taken by another.
        raw.delete(a.etcd_key(&key), None).await.unwrap();
        raw.put(format!("unrelated-{round}"), "x", None)
            .await
            .unwrap();
        let mut taken = a.try_acquire(&key, TTL).await.unwrap().expect("free");
        tokens.push(taken.fencing_token());
        assert!(lease.refresh(TTL).await.unwrap_err().is_lost());
        taken.release().await.unwrap();
    }
    for pair in tokens.windows(2) {
        assert!(
            pair[1] > pair[0],
            "fencing tokens must strictly increase: {tokens:?}"
        );
    }
}

#[tokio::test]
async fn ttl_is_rounded_up_to_whole_seconds() {
    let Some(server) = shared_server() else {
        return;
    };
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
    lease.release().await.unwrap();
}

#[tokio::test]
async fn zero_ttl_and_ttl_below_the_minimum_are_invalid_ttl_errors() {
    let Some(server) = shared_server() else {
        return;
    };
    let a = backend(server).await;
    let key = unique_key("zero-ttl");
    for ttl in [Duration::ZERO, Duration::from_millis(1500)] {
        let err = a.try_acquire(&key, ttl).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { .. }),
            "acquire with {ttl:?} must be InvalidTtl: {err:?}"
        );
    }
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let err = lease.refresh(Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "{err:?}");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn one_session_lease_holds_many_keys() {
    let Some(server) = shared_server() else {
        return;
    };
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
    let Some(server) = shared_server() else {
        return;
    };
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
async fn lease_expires_without_refresh() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("expiry");
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let deadline = Deadline::new(TTL * 3, "the unrefreshed key must expire");
    let mut taken = loop {
        if let Some(taken) = b.try_acquire(&key, TTL).await.unwrap() {
            break taken;
        }
        deadline.tick().await;
    };
    assert!(taken.fencing_token() > lease.fencing_token());
    let err = lease.refresh(TTL).await.unwrap_err();
    assert!(err.is_lost(), "refresh after expiry must be Lost: {err:?}");
    taken.release().await.unwrap();
}

#[tokio::test]
async fn a_dropped_lease_is_deleted_in_the_background() {
    let Some(server) = shared_server() else {
        return;
    };
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

#[tokio::test]
async fn expires_in_reports_the_holders_remaining_ttl() {
    let Some(server) = shared_server() else {
        return;
    };
    let (a, b) = (backend(server).await, backend(server).await);
    let key = unique_key("expires-in");
    assert_eq!(
        b.expires_in(&key).await.unwrap(),
        None,
        "a free key has none"
    );
    let ttl = Duration::from_secs(5);
    let mut lease = a.try_acquire(&key, ttl).await.unwrap().expect("free");
    let left = b
        .expires_in(&key)
        .await
        .unwrap()
        .expect("a held key reports");
    assert!(
        left > Duration::ZERO && left <= ttl,
        "remaining time must be within the TTL: {left:?}"
    );
    lease.release().await.unwrap();
    assert_eq!(b.expires_in(&key).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_acquires_from_many_clients_have_one_winner() {
    let Some(server) = shared_server() else {
        return;
    };
    let key = unique_key("race");
    let mut backends = Vec::new();
    for _ in 0..8 {
        backends.push(backend(server).await);
    }
    let attempts = backends.iter().map(|b| b.try_acquire(&key, TTL));
    let results = within(
        TTL * 2,
        "racing acquires",
        futures::future::join_all(attempts),
    )
    .await;
    let mut winners: Vec<_> = results.into_iter().filter_map(|r| r.unwrap()).collect();
    assert_eq!(winners.len(), 1, "exactly one client must win the key");
    winners[0].release().await.unwrap();
}
