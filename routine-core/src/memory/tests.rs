//! Unit tests of `MemoryBackend` on paused tokio time.

use super::*;
use futures::FutureExt;

const TTL: Duration = Duration::from_secs(5);

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

#[tokio::test(start_paused = true)]
async fn lease_expires_after_ttl_without_refresh() {
    let backend = MemoryBackend::new();
    let k = key("a");
    let _lease = backend.try_acquire(&k, TTL).await.unwrap().unwrap();
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    assert!(
        backend.try_acquire(&k, TTL).await.unwrap().is_none(),
        "key must stay held until its TTL runs out"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(
        backend.try_acquire(&k, TTL).await.unwrap().is_some(),
        "key must be free once its TTL ran out"
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_after_takeover_reports_lost() {
    let backend = MemoryBackend::new();
    let k = key("a");
    let mut first = backend.try_acquire(&k, TTL).await.unwrap().unwrap();
    tokio::time::advance(TTL).await;
    let second = backend.try_acquire(&k, TTL).await.unwrap().unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    let err = first.refresh(TTL).await.unwrap_err();
    assert!(
        err.is_lost(),
        "refresh of a taken-over lease must be Lost: {err:?}"
    );
    first.release().await.unwrap();
    assert_eq!(
        backend.holder(&k),
        Some(second.fencing_token()),
        "releasing a stale lease must not free the new holder's key"
    );
}

#[tokio::test(start_paused = true)]
async fn release_wakes_a_registered_waiter() {
    let backend = MemoryBackend::new();
    let k = key("a");
    let mut lease = backend.try_acquire(&k, TTL).await.unwrap().unwrap();
    let mut waiter = Box::pin(backend.released(&k));
    assert!(
        (&mut waiter).now_or_never().is_none(),
        "nothing released yet"
    );
    lease.release().await.unwrap();
    assert!(
        waiter.now_or_never().is_some(),
        "a waiter polled once before the release must be woken by it"
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_makes_refresh_lost_and_switches_fail_operations() {
    let backend = MemoryBackend::new();
    let k = key("a");
    let mut lease = backend.try_acquire(&k, TTL).await.unwrap().unwrap();
    backend.revoke(&k);
    assert!(lease.refresh(TTL).await.unwrap_err().is_lost());

    backend.set_unavailable(true);
    let err = backend.try_acquire(&k, TTL).await.unwrap_err();
    assert!(err.is_transient(), "unavailable must be transient: {err:?}");
    backend.set_unavailable(false);

    backend.set_hanging(true);
    assert!(
        backend.try_acquire(&k, TTL).now_or_never().is_none(),
        "a hanging backend must not answer"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_ttl_is_rejected() {
    let backend = MemoryBackend::new();
    let err = backend
        .try_acquire(&key("a"), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "got {err:?}");
}

#[tokio::test(start_paused = true)]
async fn expires_in_reports_remaining_ttl() {
    let backend = MemoryBackend::new();
    let k = key("a");
    assert_eq!(backend.expires_in(&k).await.unwrap(), None);
    let _lease = backend.try_acquire(&k, TTL).await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        backend.expires_in(&k).await.unwrap(),
        Some(Duration::from_secs(3))
    );
}

#[tokio::test(start_paused = true)]
async fn ttls_it_cannot_represent_are_invalid_not_a_panic() {
    let backend = MemoryBackend::new();
    let k = key("job");
    for ttl in [Duration::ZERO, Duration::MAX] {
        let err = backend.try_acquire(&k, ttl).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { .. }),
            "{ttl:?} must be InvalidTtl, got {err:?}"
        );
    }
    let mut lease = backend
        .try_acquire(&k, Duration::from_secs(1))
        .await
        .unwrap()
        .expect("free");
    let err = lease.refresh(Duration::MAX).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "got {err:?}");
}

#[tokio::test(start_paused = true)]
async fn routines_with_ever_new_names_leave_no_state_behind() {
    let backend = MemoryBackend::new();
    let ttl = Duration::from_secs(1);
    for round in 0..10 {
        for n in 0..1_000 {
            let k = key(&format!("job-{round}-{n}"));
            // A lease left to expire, and a waiter that gives up.
            let lease = backend.try_acquire(&k, ttl).await.unwrap().expect("free");
            drop(lease);
            let waiter = backend.released(&k);
            futures::pin_mut!(waiter);
            assert!(waiter.as_mut().now_or_never().is_none(), "nobody released");
        }
        tokio::time::advance(ttl * 2).await;
    }
    let state = backend.state();
    assert!(
        state.holders.len() <= 2_000 + MIN_SWEEP,
        "expired holders must be swept: {} kept",
        state.holders.len()
    );
    assert!(
        state.waiters.is_empty(),
        "waiters that gave up must leave nothing: {} kept",
        state.waiters.len()
    );
}
