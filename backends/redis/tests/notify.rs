//! Release notifications wake one waiting backend per release: the one the release picks
//! from the name's waiters (registered by `expires_in` while a `released` wait is
//! pending), or every waiter if none is registered.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use common::{backend, raw, unique_key, within};
use futures::FutureExt;
use leasehold_core::{LockBackend, LockKey, Result};
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(10);

type Wait = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A pending `released(key)` of `backend`, polled once (so it is registered locally).
fn wait(backend: &RedisBackend, key: &LockKey) -> Wait {
    let (backend, key) = (backend.clone(), key.clone());
    let mut wait: Wait = async move { backend.released(&key).await }.boxed();
    assert!(wait.as_mut().now_or_never().is_none(), "the key is held");
    wait
}

/// How many waiters `key` has registered.
async fn registered(conn: &mut redis::aio::MultiplexedConnection, waiters: &str) -> usize {
    redis::cmd("ZCARD")
        .arg(waiters)
        .query_async(conn)
        .await
        .unwrap()
}

/// One waiting backend: its wait on the name, and one on a marker name it never holds.
struct Waiter {
    backend: RedisBackend,
    wait: Option<Wait>,
    marker: Wait,
}

/// Publishes the legacy "wake everyone" message on `marker`'s channel and waits until
/// every waiter heard it. Each backend receives its messages in order on one
/// connection, so a waiter not woken by now was not woken by what was published before.
async fn barrier(
    conn: &mut redis::aio::MultiplexedConnection,
    waiters: &mut [Waiter],
    marker: &LockKey,
) {
    let () = redis::cmd("PUBLISH")
        .arg(format!("routine:released:{marker}"))
        .arg("")
        .query_async(conn)
        .await
        .unwrap();
    for waiter in waiters.iter_mut() {
        within(DEADLINE, "the marker's message", waiter.marker.as_mut())
            .await
            .unwrap();
        waiter.marker = wait(&waiter.backend, marker);
    }
}

/// The places of the waiters whose wait has resolved (each is taken out).
fn woken(waiters: &mut [Waiter]) -> Vec<usize> {
    let mut woken = Vec::new();
    for (place, waiter) in waiters.iter_mut().enumerate() {
        if let Some(wait) = &mut waiter.wait
            && let Some(result) = wait.as_mut().now_or_never()
        {
            result.unwrap();
            waiter.wait = None;
            woken.push(place);
        }
    }
    woken
}

/// `count` backends waiting for `key`, each with a pending wait; registered (with
/// `expires_in`, as the runner does after contention) if `register`.
async fn waiting(
    server: &leasehold_conformance::servers::RedisServer,
    key: &LockKey,
    marker: &LockKey,
    count: usize,
    register: bool,
) -> Vec<Waiter> {
    let mut waiters = Vec::new();
    for _ in 0..count {
        let backend = backend(server).await;
        let waiting = wait(&backend, key);
        if register {
            assert!(backend.expires_in(key).await.unwrap().is_some(), "held");
        }
        let marker = wait(&backend, marker);
        waiters.push(Waiter {
            backend,
            wait: Some(waiting),
            marker,
        });
    }
    waiters
}

#[tokio::test]
async fn a_release_wakes_one_of_five_registered_waiters_and_the_next_release_another() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let mut conn = raw(server).await;
    let (key, marker) = (unique_key("wake-one"), unique_key("wake-one-marker"));
    let holder = backend(server).await;
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let mut waiters = waiting(server, &key, &marker, 5, true).await;
    let waiters_key = holder.waiters_key(&key);
    assert_eq!(registered(&mut conn, &waiters_key).await, 5);
    let mut order = Vec::new();
    for turn in 0..5 {
        lease.release().await.unwrap();
        barrier(&mut conn, &mut waiters, &marker).await;
        let woken = woken(&mut waiters);
        assert_eq!(
            woken.len(),
            1,
            "turn {turn}: one release wakes one waiter: {woken:?}"
        );
        order.push(woken[0]);
        // The woken waiter takes the name, which takes it out of the waiters: the next
        // release must wake another one.
        lease = waiters[woken[0]]
            .backend
            .try_acquire(&key, TTL)
            .await
            .unwrap()
            .expect("the woken waiter takes the name");
        assert_eq!(registered(&mut conn, &waiters_key).await, 4 - turn);
    }
    order.sort_unstable();
    assert_eq!(order, [0, 1, 2, 3, 4], "each waiter woken once, in turn");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn a_release_with_no_registered_waiter_wakes_every_waiter() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let mut conn = raw(server).await;
    let (key, marker) = (unique_key("wake-all"), unique_key("wake-all-marker"));
    let holder = backend(server).await;
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    // Waiting without `expires_in` (as an observer does): nobody is registered.
    let mut waiters = waiting(server, &key, &marker, 5, false).await;
    assert_eq!(registered(&mut conn, &holder.waiters_key(&key)).await, 0);
    lease.release().await.unwrap();
    barrier(&mut conn, &mut waiters, &marker).await;
    assert_eq!(woken(&mut waiters), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_backend_registers_only_while_it_waits_on_the_name() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let mut conn = raw(server).await;
    let key = unique_key("register");
    let holder = backend(server).await;
    let _lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let waiter = backend(server).await;
    let waiters_key = holder.waiters_key(&key);
    waiter.expires_in(&key).await.unwrap();
    assert_eq!(
        registered(&mut conn, &waiters_key).await,
        0,
        "no wait pending"
    );
    let pending = wait(&waiter, &key);
    let left = waiter.expires_in(&key).await.unwrap().expect("held");
    assert_eq!(registered(&mut conn, &waiters_key).await, 1, "waiting");
    // The deadline is at least 10 s away, and twice the lock's TTL if that is longer.
    let (score, now): (f64, (u64, u64)) = redis::pipe()
        .cmd("ZRANGE")
        .arg(&waiters_key)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .cmd("TIME")
        .query_async::<(Vec<(String, f64)>, (u64, u64))>(&mut conn)
        .await
        .map(|(entries, now)| (entries[0].1, now))
        .unwrap();
    let now_ms = now.0 * 1000 + now.1 / 1000;
    let span = Duration::from_millis(score as u64 - now_ms);
    assert!(
        span <= left * 2 && span + Duration::from_secs(1) >= left * 2,
        "registered for about twice the TTL left ({left:?}): {span:?}"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&waiters_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0, "the waiters key expires by itself: {pttl}");
    drop(pending);
    // A wait given up: the next `expires_in` does not register again (the entry stays
    // until its deadline, a pick or an acquire).
    let _ = waiter.expires_in(&key).await.unwrap();
    assert_eq!(registered(&mut conn, &waiters_key).await, 1);
}

#[tokio::test]
async fn a_vanished_waiter_is_picked_until_its_deadline_then_skipped() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let mut conn = raw(server).await;
    let (key, marker) = (unique_key("vanished"), unique_key("vanished-marker"));
    let holder = backend(server).await;
    let waiters_key = holder.waiters_key(&key);
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let mut waiters = waiting(server, &key, &marker, 1, true).await;
    let far = "000000000000dead";
    // A waiter whose process died, heard from after everyone else (the highest
    // deadline): before its deadline a release picks it, and wakes nobody.
    let () = redis::cmd("ZADD")
        .arg(&waiters_key)
        .arg("+inf")
        .arg(far)
        .query_async(&mut conn)
        .await
        .unwrap();
    lease.release().await.unwrap();
    barrier(&mut conn, &mut waiters, &marker).await;
    assert!(
        woken(&mut waiters).is_empty(),
        "the release went to the dead waiter"
    );
    // The live one learns at its next `expires_in` (the runner's poll) that the name is
    // free, and registers again there.
    assert_eq!(waiters[0].backend.expires_in(&key).await.unwrap(), None);
    lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    // A dead waiter whose deadline has passed is dropped, and the live one is woken.
    let () = redis::cmd("ZADD")
        .arg(&waiters_key)
        .arg(1)
        .arg(far)
        .query_async(&mut conn)
        .await
        .unwrap();
    lease.release().await.unwrap();
    barrier(&mut conn, &mut waiters, &marker).await;
    assert_eq!(woken(&mut waiters), [0], "the live waiter is woken");
    assert_eq!(registered(&mut conn, &waiters_key).await, 0, "both gone");
}

#[tokio::test]
async fn taking_the_name_takes_the_taker_out_of_the_waiters() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let mut conn = raw(server).await;
    let key = unique_key("taken");
    let holder = backend(server).await;
    let waiters_key = holder.waiters_key(&key);
    let _lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let waiter = backend(server).await;
    let _pending = wait(&waiter, &key);
    waiter.expires_in(&key).await.unwrap();
    assert_eq!(registered(&mut conn, &waiters_key).await, 1);
    // The holder vanishes without a release (its lock expired, say): nobody is picked.
    let () = redis::cmd("DEL")
        .arg(holder.lock_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut lease = waiter.try_acquire(&key, TTL).await.unwrap().expect("free");
    assert_eq!(
        registered(&mut conn, &waiters_key).await,
        0,
        "a holder must not stay a waiter, or a release could pick it"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn a_backend_that_never_registers_is_woken_by_every_release() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let mut conn = raw(server).await;
    let (key, marker) = (unique_key("observer"), unique_key("observer-marker"));
    let holder = backend(server).await;
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    // Two contenders (registered, as the runner does) and an observer (never calls
    // `expires_in`).
    let mut waiters = waiting(server, &key, &marker, 2, true).await;
    waiters.extend(waiting(server, &key, &marker, 1, false).await);
    lease.release().await.unwrap();
    barrier(&mut conn, &mut waiters, &marker).await;
    let woken = woken(&mut waiters);
    assert_eq!(woken.len(), 2, "one contender and the observer: {woken:?}");
    assert_eq!(woken[1], 2, "the observer is woken");
}
