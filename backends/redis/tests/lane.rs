//! The direct lane (`src/lane.rs`): single commands are written and read on a plain
//! connection of their own by the task that sends them; a lane that fails never fails a
//! request, and a request dropped on it never leaves its answer to be read as the next
//! request's, nor its acquire held after its undo.
//!
//! The lane is told apart from the `ConnectionManager`'s connection in `CLIENT LIST` by
//! its name, `leasehold-lane`.

mod common;

use std::time::Duration;

use common::{raw, unique_key, within};
use leasehold_conformance::servers::RedisServer;
use leasehold_conformance::wait;
use leasehold_core::{Error, LockBackend};
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(10);
/// The name the lane gives its connection.
const LANE: &str = "leasehold-lane";

/// One `CLIENT LIST` line, as field → value.
struct Client {
    id: String,
    cmd: String,
    name: String,
}

async fn clients(admin: &mut redis::aio::MultiplexedConnection) -> Vec<Client> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_default()
                    .to_owned()
            };
            Client {
                id: field("id"),
                cmd: field("cmd"),
                name: field("name"),
            }
        })
        .collect()
}

/// The lane's connection, once it is open.
async fn lane(admin: &mut redis::aio::MultiplexedConnection) -> Client {
    wait::until(DEADLINE, "the lane is connected", || {
        let mut admin = admin.clone();
        async move {
            let mut lanes: Vec<Client> = clients(&mut admin)
                .await
                .into_iter()
                .filter(|c| c.name == LANE)
                .collect();
            (lanes.len() == 1).then(|| lanes.remove(0))
        }
    })
    .await
}

async fn quick_backend(server: &RedisServer, request_timeout: Duration) -> RedisBackend {
    RedisBackend::builder()
        .with_url(server.url())
        .with_connect_timeout(Duration::from_secs(2))
        .with_request_timeout(request_timeout)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn acquire_and_release_are_sent_on_the_lane_not_through_the_manager() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = quick_backend(&server, Duration::from_secs(2)).await;
    let mut admin = raw(&server).await;
    let before = lane(&mut admin).await;
    assert_ne!(before.cmd, "evalsha", "nothing was sent yet");

    let key = unique_key("lane");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    lease.release().await.unwrap();

    let after = lane(&mut admin).await;
    assert_eq!(after.id, before.id, "the same lane connection served both");
    assert_eq!(
        after.cmd, "evalsha",
        "the release script was sent on the lane"
    );
    let manager_sent_scripts = clients(&mut admin)
        .await
        .into_iter()
        .any(|c| c.name != LANE && c.cmd == "evalsha");
    assert!(!manager_sent_scripts, "the manager sent no script");
}

#[tokio::test]
async fn a_lane_killed_between_requests_costs_no_request_and_is_opened_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = quick_backend(&server, Duration::from_secs(2)).await;
    let mut admin = raw(&server).await;
    let key = unique_key("lane-killed");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let killed = lane(&mut admin).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&killed.id)
        .query_async(&mut admin)
        .await
        .unwrap();

    // The lane's connection is gone: the release is sent on the manager instead.
    within(DEADLINE, "release", lease.release())
        .await
        .expect("a dead lane must not fail the release");
    let mut again = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    again.release().await.unwrap();

    let reopened = wait::until(DEADLINE, "a new lane connection", || {
        let mut admin = admin.clone();
        let killed = killed.id.clone();
        async move {
            clients(&mut admin)
                .await
                .into_iter()
                .find(|c| c.name == LANE && c.id != killed)
        }
    })
    .await;
    let mut third = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    third.release().await.unwrap();
    assert_eq!(
        lane(&mut admin).await.id,
        reopened.id,
        "requests use the reopened lane"
    );
}

#[tokio::test]
async fn a_request_dropped_on_the_lane_leaves_no_answer_for_the_next() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = quick_backend(&server, Duration::from_millis(300)).await;
    let mut admin = raw(&server).await;
    let first = lane(&mut admin).await;

    // Writes wait for a second: the acquire runs out of time with its script sent and
    // unanswered on the lane.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let paused = unique_key("lane-paused");
    let outcome = backend.try_acquire(&paused, TTL).await;
    assert!(
        matches!(outcome, Err(Error::Timeout { .. })),
        "the acquire times out while writes are paused: {outcome:?}"
    );

    // Once writes run again, the paused script's answer (a taken lock) must not be read
    // as the answer to the next request: a different key, free, is taken, and released.
    let other = unique_key("lane-after");
    let mut lease = wait::until(DEADLINE, "an acquire after the pause", || {
        let backend = &backend;
        let other = other.clone();
        async move { backend.try_acquire(&other, TTL).await.ok() }
    })
    .await
    .expect("the other key is free");
    assert_eq!(lease.key(), &other);
    let info = backend.describe(&other).await.unwrap().unwrap();
    assert_eq!(info.fencing_token, Some(lease.fencing_token()));
    lease.release().await.unwrap();
    assert!(backend.describe(&other).await.unwrap().is_none());
    assert_eq!(
        lane(&mut admin).await.id,
        first.id,
        "the connection with an answer pending was drained, not closed"
    );
    // The timed-out acquire did take its key once writes ran again; its undo, sent after
    // it, gave the key back.
    // Well within the TTL, which would free it otherwise.
    wait::until(
        Duration::from_secs(5),
        "the paused acquire is undone",
        || {
            let backend = &backend;
            let paused = paused.clone();
            async move {
                backend
                    .describe(&paused)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}
