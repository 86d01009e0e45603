//! Recovery from server-side changes that no reconnection of the `redis` crate's own
//! heals: the server demoted to a replica and promoted back (a failover behind a fixed
//! address), and credentials changed and restored while the backend runs. Each test
//! shows the routine or the backend working again once the server is fixed, with nothing
//! done on the client side.

mod common;

use std::time::Duration;

use common::{Deadline, raw, unique_key, within};
use futures::FutureExt;
use leasehold::{EventKind, RunOptions, Runner};
use leasehold_conformance::servers::RedisServer;
use leasehold_conformance::wait;
use leasehold_core::{Error, LockBackend};
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(1);
/// Generous bound for "recovered": far above the rebuild interval and every timeout here.
const DEADLINE: Duration = Duration::from_secs(15);

async fn quick_backend(url: &str) -> RedisBackend {
    RedisBackend::builder()
        .with_url(url)
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

async fn replicaof(server: &RedisServer, primary: Option<u16>) {
    let mut admin = raw(server).await;
    let mut cmd = redis::cmd("REPLICAOF");
    match primary {
        Some(port) => cmd.arg("127.0.0.1").arg(port),
        None => cmd.arg("NO").arg("ONE"),
    };
    let _: () = cmd.query_async(&mut admin).await.unwrap();
}

#[tokio::test]
async fn a_singleton_on_a_demoted_server_retries_and_runs_once_it_is_promoted_again() {
    let (Some(server), Some(primary)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let backend = quick_backend(&server.url()).await;
    // The failover: the address the backend uses now serves a read-only replica.
    replicaof(&server, Some(primary.port())).await;

    let runner = Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        unique_key("demoted").as_str(),
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    for attempt in 1..=2 {
        let event = wait::event(&mut events, DEADLINE, "backend error on a replica", |e| {
            matches!(e.kind, EventKind::BackendError { .. })
        })
        .await;
        let EventKind::BackendError { error } = event.kind else {
            unreachable!("matched above")
        };
        assert!(
            error.contains("replica"),
            "attempt {attempt}: the error must say the server is a replica: {error}"
        );
    }
    assert!(
        !handle.is_finished(),
        "a demoted server is transient: the routine must keep trying, not fail"
    );

    replicaof(&server, None).await;
    wait::event(
        &mut events,
        DEADLINE,
        "acquired once promoted",
        wait::acquired,
    )
    .await;
    handle.cancel();
    runner.shutdown().await;
}

/// The error and its sources, rendered.
fn chain(err: &dyn std::error::Error) -> String {
    let mut rendered = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        rendered.push_str(&format!(": {err}"));
        source = err.source();
    }
    rendered
}

/// Sets the server's password (`requirepass`) through `admin`, whose connection stays
/// authenticated.
async fn set_password(admin: &mut redis::aio::MultiplexedConnection, password: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", password])
        .query_async(admin)
        .await
        .unwrap();
}

/// Cuts every connection of `kind` (`normal`, `pubsub`) but `admin`'s own.
async fn kill_clients(admin: &mut redis::aio::MultiplexedConnection, kind: &str) -> i64 {
    redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", kind, "SKIPME", "yes"])
        .query_async(admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn commands_work_again_once_a_changed_password_is_restored() {
    let server =
        leasehold_conformance::require_server!(RedisServer::start_with_password(Some("right-pw")));
    let backend = quick_backend(&server.url()).await;
    let mut admin = raw(&server).await;
    set_password(&mut admin, "changed-pw").await;
    assert_eq!(
        kill_clients(&mut admin, "normal").await,
        2,
        "the backend's command connection and direct lane were cut"
    );

    // The reconnection is refused, and stays refused while the password is wrong.
    let key = unique_key("password");
    for _ in 0..3 {
        let err = within(DEADLINE, "acquire", backend.try_acquire(&key, TTL))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Auth { .. }),
            "a wrong password is an Auth error: {err:?}"
        );
    }

    set_password(&mut admin, "right-pw").await;
    let deadline = Deadline::new(DEADLINE, "acquire works once the password is restored");
    loop {
        match backend.try_acquire(&key, TTL).await {
            Ok(Some(mut lease)) => {
                lease.release().await.unwrap();
                break;
            }
            Ok(None) => panic!("nobody else holds {key}"),
            Err(err) => assert!(
                matches!(err, Error::Auth { .. }),
                "until it recovers, only the credentials are refused: {err:?}"
            ),
        }
        deadline.tick().await;
    }
}

#[tokio::test]
async fn notifications_resume_once_a_changed_password_is_restored() {
    let server =
        leasehold_conformance::require_server!(RedisServer::start_with_password(Some("right-pw")));
    let backend = quick_backend(&server.url()).await;
    assert!(backend.notifications_active(), "subscribed at build");
    let mut admin = raw(&server).await;
    set_password(&mut admin, "changed-pw").await;
    assert_eq!(
        kill_clients(&mut admin, "pubsub").await,
        1,
        "the backend's pub/sub connection was cut"
    );
    let key = unique_key("password-pubsub");
    let deadline = Deadline::new(DEADLINE, "the cut subscription is noticed");
    while backend.notifications_active() {
        deadline.tick().await;
    }
    let err = within(
        DEADLINE,
        "wait with the wrong password",
        backend.released(&key),
    )
    .await
    .unwrap_err();
    let chain = chain(&err);
    assert!(
        chain.contains("credentials"),
        "the wait says why it failed: {chain}"
    );

    set_password(&mut admin, "right-pw").await;
    let deadline = Deadline::new(DEADLINE, "subscribed again once the password is restored");
    while !backend.notifications_active() {
        // Every wait starts a subscription attempt if none is live.
        let _ = backend.released(&key).now_or_never();
        deadline.tick().await;
    }
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let released = backend.released(&key);
    tokio::pin!(released);
    assert!(released.as_mut().now_or_never().is_none());
    lease.release().await.unwrap();
    within(DEADLINE, "woken by the release", released)
        .await
        .unwrap();
}
