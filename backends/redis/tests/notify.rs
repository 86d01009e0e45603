//! Release notifications wake one waiting backend per release: the one the release picks
//! from the name's waiters (registered by `expires_in` while a `released` wait is
//! pending), told on its own wake channel so that no other process receives anything,
//! or every waiter if none is registered.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use common::{Deadline, backend, raw, unique_key, within};
use futures::{FutureExt, Stream, StreamExt};
use leasehold_conformance::servers::RedisServer;
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

/// The ids registered in `waiters`, sorted.
async fn ids(conn: &mut redis::aio::MultiplexedConnection, waiters: &str) -> Vec<String> {
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(waiters)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    ids.sort_unstable();
    ids
}

/// A raw pub/sub connection that listens as every backend and more: the release
/// channels of the default namespace (what every backend `PSUBSCRIBE`s) and every wake
/// channel. Yields (channel, payload).
async fn eavesdrop(
    server: &leasehold_conformance::servers::RedisServer,
) -> impl Stream<Item = (String, String)> + Unpin {
    let mut pubsub = redis::Client::open(server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.psubscribe("routine:released:*").await.unwrap();
    pubsub.psubscribe("routine:wake:*").await.unwrap();
    pubsub.into_on_message().map(|message| {
        (
            message.get_channel_name().to_owned(),
            message.get_payload::<String>().unwrap(),
        )
    })
}

/// What `eavesdropper` received about `key` (on its release channel, or naming it on a
/// wake channel) up to the marker's message that [`barrier`] publishes (which follows
/// everything published before on one connection), left out. Messages about other names
/// are skipped: other tests share the server.
async fn heard(
    eavesdropper: &mut (impl Stream<Item = (String, String)> + Unpin),
    marker: &LockKey,
    key: &LockKey,
) -> Vec<(String, String)> {
    let marker = format!("routine:released:{marker}");
    let released = format!("routine:released:{key}");
    let mut heard = Vec::new();
    loop {
        let next = within(DEADLINE, "the marker's message", eavesdropper.next())
            .await
            .expect("the eavesdropper is subscribed");
        if next.0 == marker {
            return heard;
        }
        if next.0 == released || next.1 == released {
            heard.push(next);
        }
    }
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
    // A wait that began while its backend was renewing its pattern subscription (a
    // release to everyone from another test on this server made it drop the pattern)
    // ends spuriously once the subscription holds, as `released` allows. The marker's
    // message arrives after that: such waits are begun again, so that the tests count
    // only the wake-ups of releases.
    barrier(&mut raw(server).await, &mut waiters, marker).await;
    for waiter in &mut waiters {
        if let Some(wait) = &mut waiter.wait
            && wait.as_mut().now_or_never().is_some()
        {
            waiter.wait = Some(self::wait(&waiter.backend, key));
        }
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
    let mut eavesdropper = eavesdrop(server).await;
    let mut order = Vec::new();
    for turn in 0..5 {
        let before = ids(&mut conn, &waiters_key).await;
        lease.release().await.unwrap();
        barrier(&mut conn, &mut waiters, &marker).await;
        let woken = woken(&mut waiters);
        assert_eq!(
            woken.len(),
            1,
            "turn {turn}: one release wakes one waiter: {woken:?}"
        );
        // The release went to the picked waiter's own channel, and nowhere else: the
        // release channel, which every backend's connection listens to, heard nothing.
        let after = ids(&mut conn, &waiters_key).await;
        let picked: Vec<String> = before
            .into_iter()
            .filter(|id| !after.contains(id))
            .collect();
        assert_eq!(picked.len(), 1, "turn {turn}: the release took one out");
        assert_eq!(
            heard(&mut eavesdropper, &marker, &key).await,
            [(
                format!("routine:wake:{}", picked[0]),
                format!("routine:released:{key}")
            )],
            "turn {turn}: only the picked waiter's channel hears the release"
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
async fn a_backend_that_never_registers_is_not_woken_by_a_release_that_picked_a_waiter() {
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
    // The release is told to the picked contender alone; the observer learns of it by
    // polling (a release that picks nobody wakes it, see above).
    assert_eq!(woken.len(), 1, "one contender: {woken:?}");
    assert!(woken[0] < 2, "a contender, not the observer: {woken:?}");
}

#[tokio::test]
async fn a_picked_backend_hears_its_wake_channel_after_its_connection_was_lost() {
    // A server of its own: every pub/sub connection on it is cut.
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let mut conn = raw(&server).await;
    let (key, marker) = (
        unique_key("resubscribed"),
        unique_key("resubscribed-marker"),
    );
    let holder = backend(&server).await;
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().expect("free");
    let waiter = backend(&server).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 2, "both backends' pub/sub connections were cut");
    let down = Deadline::new(DEADLINE, "the waiter's subscription drops");
    while waiter.notifications_active() {
        down.tick().await;
    }
    // The next wait subscribes again (it may be woken spuriously by that), then
    // registers as the runner does.
    let _ = within(DEADLINE, "the resubscribing wait", waiter.released(&key)).await;
    assert!(waiter.notifications_active(), "subscribed again");
    let waiting = wait(&waiter, &key);
    assert!(waiter.expires_in(&key).await.unwrap().is_some(), "held");
    let mut waiters = vec![Waiter {
        marker: wait(&waiter, &marker),
        backend: waiter,
        wait: Some(waiting),
    }];
    assert_eq!(registered(&mut conn, &holder.waiters_key(&key)).await, 1);
    lease.release().await.unwrap();
    barrier(&mut conn, &mut waiters, &marker).await;
    assert_eq!(
        woken(&mut waiters),
        [0],
        "the resubscribed backend hears its wake channel"
    );
}

/// How many pattern subscriptions the server's clients hold, summed (`psub=` of
/// `CLIENT LIST`).
async fn patterns(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.split_whitespace()
        .filter_map(|field| field.strip_prefix("psub="))
        .map(|count| count.parse::<usize>().unwrap())
        .sum()
}

/// Publishes on a release channel what a release that picked nobody publishes: the
/// empty message, which wakes every waiter of the name.
async fn wake_everyone(conn: &mut redis::aio::MultiplexedConnection, channel: &str) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg("")
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_backend_hears_release_channels_only_while_it_waits() {
    // A server of its own: the test counts every pattern subscription on it.
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let mut conn = raw(&server).await;
    let backend = backend(&server).await;
    let key = unique_key("pattern-on-demand");
    let channel = format!("routine:released:{}", key.as_str());
    assert_eq!(
        patterns(&mut conn).await,
        1,
        "a new connection subscribes it"
    );

    // An uncontended acquire + release: its release wakes everyone (nobody is
    // registered), and the backend, with nobody waiting, drops the pattern on hearing it.
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().expect("free");
    lease.release().await.unwrap();
    let deadline = Deadline::new(DEADLINE, "the pattern dropped by an idle backend");
    while patterns(&mut conn).await != 0 {
        deadline.tick().await;
    }
    assert!(backend.notifications_active(), "the wake channel stays");

    // A wait takes it up again, and a release published right after the wait's first
    // poll (before the subscription took effect) still ends it.
    let held = backend.try_acquire(&key, TTL).await.unwrap().expect("free");
    let waiter = wait(&backend, &key);
    wake_everyone(&mut conn, &channel).await;
    within(DEADLINE, "the wait ends", waiter).await.unwrap();
    let deadline = Deadline::new(DEADLINE, "the pattern subscribed by a wait");
    while patterns(&mut conn).await != 1 {
        deadline.tick().await;
    }

    // Subscribed, a wait is woken by the release itself, not spuriously.
    let mut waiter = wait(&backend, &key);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        (&mut waiter).now_or_never().is_none(),
        "not woken before a release"
    );
    drop(held);
    wake_everyone(&mut conn, &channel).await;
    within(DEADLINE, "the release wakes the wait", waiter)
        .await
        .unwrap();
}
