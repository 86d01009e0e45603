//! Release notifications: one watch stream per backend, dispatched by key, and the
//! waiting line of each name, so that a release wakes the first waiter only.

mod common;

use std::pin::pin;
use std::time::Duration;

use common::{TTL, backend, raw, unique_key, within};
use etcd_client::{GetOptions, PutOptions};
use futures::FutureExt;
use leasehold_core::{LockBackend, LockKey};
use leasehold_etcd::EtcdBackend;

/// The waiter keys of `key`'s line (default key prefix `routine/lock/`).
fn line_prefix(key: &LockKey) -> String {
    format!("routine/wait/{key}/")
}

/// How many waiters stand in `key`'s line.
async fn line_length(raw: &mut etcd_client::Client, key: &LockKey) -> i64 {
    let options = GetOptions::new().with_prefix().with_count_only();
    raw.get(line_prefix(key), Some(options))
        .await
        .unwrap()
        .count()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_the_first_of_five_waiters_and_the_others_take_over_in_turn() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let etcd = raw(server).await;
    let key = unique_key("line");
    let holder = backend(server).await;
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    // Five waiting processes, lined up in this order.
    let mut waiters: Vec<EtcdBackend> = Vec::new();
    let mut waits = Vec::new();
    for place in 1..=5 {
        let waiter = backend(server).await;
        let mut wait = {
            let (waiter, key) = (waiter.clone(), key.clone());
            async move { waiter.released(&key).await }.boxed()
        };
        assert!(wait.as_mut().now_or_never().is_none(), "the key is held");
        leasehold_conformance::wait::until(TTL, "the waiter joins the line", || {
            let (mut etcd, key) = (etcd.clone(), key.clone());
            async move { (line_length(&mut etcd, &key).await == place).then_some(()) }
        })
        .await;
        waiters.push(waiter);
        waits.push(Some(wait));
    }
    let mut wake_ups = 0;
    for turn in 0..waiters.len() {
        // Every waiter not yet woken is still waiting before the release.
        for (place, wait) in waits.iter_mut().enumerate() {
            if let Some(wait) = wait {
                assert!(
                    wait.as_mut().now_or_never().is_none(),
                    "waiter {place} was woken before its turn ({turn})"
                );
            }
        }
        lease.release().await.unwrap();
        let pending: Vec<_> = waits
            .iter_mut()
            .enumerate()
            .filter_map(|(place, wait)| wait.as_mut().map(|wait| (place, wait)))
            .collect();
        let woken = within(
            TTL * 2,
            "a waiter woken by the release",
            futures::future::select_all(pending.into_iter().map(|(place, wait)| {
                async move {
                    wait.await.unwrap();
                    place
                }
                .boxed()
            })),
        )
        .await
        .0;
        wake_ups += 1;
        assert_eq!(woken, turn, "the release must wake the first in line");
        waits[woken] = None;
        lease = waiters[woken]
            .try_acquire(&key, TTL)
            .await
            .unwrap()
            .expect("the woken waiter takes the key");
    }
    lease.release().await.unwrap();
    assert_eq!(wake_ups, 5, "five releases, one wake-up each");
    leasehold_conformance::wait::until(TTL, "every waiter left the line", || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { (line_length(&mut etcd, &key).await == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_crashed_one_is_woken_once_the_crashed_ones_lease_expires() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let mut etcd = raw(server).await;
    let key = unique_key("crashed-waiter");
    let holder = backend(server).await;
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    // A waiter whose process died: its key is in the line under a lease nobody keeps
    // alive (the shortest etcd grants).
    let dead = etcd.lease_grant(1, None).await.unwrap();
    let dead_key = format!("{}dead", line_prefix(&key));
    etcd.put(
        dead_key.as_str(),
        "",
        Some(PutOptions::new().with_lease(dead.id())),
    )
    .await
    .unwrap();
    let waiter = backend(server).await;
    let mut wait = pin!(waiter.released(&key));
    assert!(wait.as_mut().now_or_never().is_none(), "the key is held");
    leasehold_conformance::wait::until(TTL, "the waiter joins behind the dead one", || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { (line_length(&mut etcd, &key).await == 2).then_some(()) }
    })
    .await;
    lease.release().await.unwrap();
    // The release goes to the dead waiter; its lease runs out within its TTL (etcd
    // revokes expired leases every 500 ms), and the live one is first then.
    within(
        Duration::from_secs(u64::try_from(dead.ttl()).unwrap()) + TTL * 2,
        "released() once the dead waiter's lease expired",
        wait,
    )
    .await
    .unwrap();
    assert!(
        common::key_info(&mut etcd, dead_key.as_bytes())
            .await
            .is_none(),
        "the dead waiter's key went with its lease"
    );
    let mut next = waiter.try_acquire(&key, TTL).await.unwrap().expect("free");
    next.release().await.unwrap();
}
