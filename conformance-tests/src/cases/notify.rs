//! Backend-level cases gated on capabilities: release notifications, expiry reports.

use std::time::Duration;

use futures::FutureExt;

use crate::Harness;

/// A waiter that registered (polled `released` once) before the holder released is
/// woken by the release, and then acquires the key. Skipped when the backend declares
/// no release notifications.
pub async fn release_notification_wakes_a_waiter(h: &Harness) {
    if !h.capabilities().release_notifications {
        eprintln!("skipped: the backend declares no release notifications");
        return;
    }
    let (a, b) = (h.backend().await, h.backend().await);
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(30));
    let mut lease = a
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("free key");
    let mut waiter = b.released(&key);
    assert!(
        (&mut waiter).now_or_never().is_none(),
        "nothing was released yet"
    );
    // No pause here: the trait asks backends to register on the first poll, and the
    // runner relies on it (it polls once, then tries to acquire).
    lease.release().await.expect("release");
    tokio::time::timeout(h.scaled(Duration::from_secs(5)), waiter)
        .await
        .expect("the release must wake the waiter")
        .expect("the notification must not fail");
    let mut next = b
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .unwrap_or_else(|| panic!("the woken waiter must acquire the released key"));
    next.release().await.expect("release");
}

/// `expires_in` reports a remaining TTL no longer than granted while the key is held,
/// and `None` once it is free. Skipped unless the backend declares `reports_expiry`.
pub async fn expires_in_reports_the_remaining_ttl(h: &Harness) {
    if !h.capabilities().reports_expiry {
        eprintln!("skipped: the backend declares no expiry reports");
        return;
    }
    let (a, b) = (h.backend().await, h.backend().await);
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(10));
    assert_eq!(
        b.expires_in(&key).await.expect("expires_in"),
        None,
        "a free key has no expiry"
    );
    let mut lease = a
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("free key");
    let left = b
        .expires_in(&key)
        .await
        .expect("expires_in")
        .expect("a held key has an expiry");
    assert!(
        left > Duration::ZERO && left <= ttl,
        "remaining {left:?} must be within (0, {ttl:?}]"
    );
    lease.release().await.expect("release");
    assert_eq!(
        b.expires_in(&key).await.expect("expires_in"),
        None,
        "a released key has no expiry"
    );
}
