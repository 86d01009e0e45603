//! Runner-level faults: `leasehold::Runner` on the etcd backend while etcd is paused,
//! wiped, or the session lease is revoked behind its back.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TTL, backend, key_info, raw, unique_key};
use leasehold::{Event, EventKind, RunOptions, Runner};
use leasehold_conformance::servers::EtcdServer;
use leasehold_etcd::EtcdBackend;
use tokio::sync::broadcast;

fn runner(backend: EtcdBackend) -> Runner {
    Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap()
}

/// Runs `name` as a kept-running singleton that works until cancelled.
fn run_forever(runner: &Runner, name: &str) -> leasehold::RoutineHandle {
    runner.run_named(
        name,
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    )
}

/// Waits for the next event of `name` matching `want`, failing after `limit`.
async fn next_event(
    events: &mut broadcast::Receiver<Event>,
    name: &str,
    limit: Duration,
    want: impl Fn(&EventKind) -> bool,
) -> Event {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if event.name.as_deref() == Some(name) && want(&event.kind) => {
                    return event;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("no matching event for {name} within {limit:?}"))
}

/// Waits until every routine in `names` had an event matching `want`, in any order.
async fn each_event(
    events: &mut broadcast::Receiver<Event>,
    names: &[String],
    limit: Duration,
    want: impl Fn(&EventKind) -> bool,
) {
    let mut missing: HashSet<&str> = names.iter().map(String::as_str).collect();
    let wait = async {
        while !missing.is_empty() {
            match events.recv().await {
                Ok(event) if want(&event.kind) => {
                    if let Some(name) = event.name.as_deref() {
                        missing.remove(name);
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    if tokio::time::timeout(limit, wait).await.is_err() {
        panic!("no matching event for {missing:?} within {limit:?}");
    }
}

fn acquired(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Acquired { .. })
}

/// The routine stopped running: its lease was lost, or it was cancelled before the
/// local deadline and returned.
fn lost(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::LeaseLost { .. } | EventKind::Dropped | EventKind::Returned
    )
}

fn token(event: &Event) -> u64 {
    match &event.kind {
        EventKind::Acquired { token } => token.get(),
        other => panic!("not an acquisition: {other:?}"),
    }
}

#[tokio::test]
async fn paused_etcd_stops_the_routine_and_it_runs_again_after_resume() {
    let server = leasehold_conformance::require_server!(EtcdServer::start());
    let runner = runner(backend(&server).await);
    let mut events = runner.subscribe();
    let name = unique_key("paused").to_string();
    let handle = run_forever(&runner, &name);
    let first = next_event(&mut events, &name, TTL * 2, acquired).await;
    server.process().pause().unwrap();
    next_event(&mut events, &name, TTL * 3, lost).await;
    server.process().resume().unwrap();
    let second = next_event(&mut events, &name, TTL * 5, acquired).await;
    assert!(
        token(&second) > token(&first),
        "the new acquisition must carry a larger fencing token"
    );
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
}

#[tokio::test]
async fn wiped_etcd_loses_the_routine_and_it_is_acquired_again() {
    let mut server = leasehold_conformance::require_server!(EtcdServer::start());
    let runner = runner(backend(&server).await);
    let mut events = runner.subscribe();
    let name = unique_key("wiped").to_string();
    let handle = run_forever(&runner, &name);
    next_event(&mut events, &name, TTL * 2, acquired).await;
    server.restart_wiped();
    next_event(&mut events, &name, TTL * 5, lost).await;
    // Revisions start over on a wiped etcd, so the new token is not compared.
    next_event(&mut events, &name, TTL * 5, acquired).await;
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
}

#[tokio::test]
async fn revoked_session_stops_every_routine_of_the_runner_and_they_come_back() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let backend = backend(server).await;
    let runner = runner(backend.clone());
    let mut events = runner.subscribe();
    let names: Vec<String> = (0..3).map(|_| unique_key("revoked").to_string()).collect();
    let handles: Vec<_> = names
        .iter()
        .map(|name| run_forever(&runner, name))
        .collect();
    each_event(&mut events, &names, TTL * 2, acquired).await;
    let mut raw = raw(server).await;
    let key = leasehold_core::LockKey::new(&names[0]).unwrap();
    let (_, session) = key_info(&mut raw, &backend.etcd_key(&key)).await.unwrap();
    // Separate receivers, so that a routine's new acquisition is not consumed while
    // waiting for another's loss.
    let mut after_revoke = runner.subscribe();
    raw.lease_revoke(session).await.unwrap();
    each_event(&mut events, &names, TTL * 3, lost).await;
    each_event(&mut after_revoke, &names, TTL * 5, acquired).await;
    let mut sessions = HashSet::new();
    for name in &names {
        let key = leasehold_core::LockKey::new(name).unwrap();
        sessions.insert(key_info(&mut raw, &backend.etcd_key(&key)).await.unwrap().1);
    }
    assert_eq!(sessions.len(), 1, "the routines share one new session");
    assert!(
        !sessions.contains(&session),
        "the revoked session is not reused"
    );
    for handle in handles {
        handle.cancel();
        handle.join().await;
    }
    runner.shutdown().await;
}
