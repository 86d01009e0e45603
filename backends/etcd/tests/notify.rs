//! Release notifications: one watch on the key prefix per backend, dispatched by key.

mod common;

use std::pin::pin;
use std::time::Duration;

use common::{TTL, backend, unique_key, within};
use futures::FutureExt;
use leasehold_core::LockBackend;

#[tokio::test]
async fn a_waiter_registered_on_a_running_watch_is_woken_by_release() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (holder, waiter) = (backend(server).await, backend(server).await);
    // Starts the watch with another key, so this waiter joins a running watch.
    let warm_up = unique_key("warm-up");
    within(TTL, "released() of a free key", waiter.released(&warm_up))
        .await
        .expect("a free key's waiter is woken when the watch starts");
    let key = unique_key("running");
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let mut released = pin!(waiter.released(&key));
    assert!(
        released.as_mut().now_or_never().is_none(),
        "the key is held"
    );
    lease.release().await.unwrap();
    within(TTL, "released() after a release", released)
        .await
        .unwrap();
}

#[tokio::test]
async fn released_of_one_key_is_not_woken_by_another_keys_release() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (holder, waiter) = (backend(server).await, backend(server).await);
    let (first, second) = (unique_key("first"), unique_key("second"));
    let mut first_lease = holder.try_acquire(&first, TTL).await.unwrap().unwrap();
    let mut second_lease = holder.try_acquire(&second, TTL).await.unwrap().unwrap();
    let mut first_released = pin!(waiter.released(&first));
    let mut second_released = pin!(waiter.released(&second));
    assert!(first_released.as_mut().now_or_never().is_none());
    assert!(second_released.as_mut().now_or_never().is_none());
    second_lease.release().await.unwrap();
    within(TTL, "released() of the released key", second_released)
        .await
        .unwrap();
    // Events arrive in order and the second key's delete has been dispatched, so a wake
    // of the first key would have happened by now.
    assert!(
        first_released.as_mut().now_or_never().is_none(),
        "another key's release must not wake this waiter"
    );
    first_lease.release().await.unwrap();
    within(TTL, "released() of the first key", first_released)
        .await
        .unwrap();
}

#[tokio::test]
async fn expiry_of_a_crashed_holder_wakes_a_waiter() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (holder, waiter) = (backend(server).await, backend(server).await);
    let key = unique_key("expiry");
    // Never refreshed: the session lease runs out after its TTL, and etcd deletes the key.
    let lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let mut released = pin!(waiter.released(&key));
    assert!(
        released.as_mut().now_or_never().is_none(),
        "the key is held"
    );
    within(TTL * 3, "released() after expiry", released)
        .await
        .unwrap();
    assert!(waiter.try_acquire(&key, TTL).await.unwrap().is_some());
    drop(lease);
}

#[tokio::test]
async fn many_waiters_on_many_keys_share_one_watch() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (holder, waiter) = (backend(server).await, backend(server).await);
    let mut leases = Vec::new();
    for _ in 0..50 {
        leases.push(
            holder
                .try_acquire(&unique_key("many"), TTL)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let keys: Vec<_> = leases.iter().map(|lease| lease.key().clone()).collect();
    let waits: Vec<_> = keys
        .iter()
        .map(|key| waiter.released(key).boxed())
        .collect();
    let mut all = pin!(futures::future::join_all(waits));
    assert!(all.as_mut().now_or_never().is_none(), "every key is held");
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
    for result in within(Duration::from_secs(5), "50 notifications", all).await {
        result.unwrap();
    }
}
