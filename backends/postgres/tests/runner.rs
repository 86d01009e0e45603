//! Runner-level faults: a `routine::Runner` keeping one routine on `PostgresBackend` while
//! the lock session is killed or the server restarts.

mod common;

use std::time::Duration;

use routine::{EventKind, RunOptions, Runner};
use routine_conformance::servers::PostgresServer;
use routine_conformance::wait::{self, acquired};

use common::{backend, holder_pid, key};

const WITHIN: Duration = Duration::from_secs(20);

fn runner(backend: routine_postgres::PostgresBackend) -> Runner {
    Runner::builder()
        .backend(backend)
        .lease_ttl(Duration::from_secs(2))
        .handle_signals(false)
        .build()
        .expect("runner builds")
}

fn token_of(event: &routine::Event) -> u64 {
    match &event.kind {
        EventKind::Acquired { token } => token.get(),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_is_cancelled_when_its_session_is_terminated_and_runs_again() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let backend = backend(&server.url(), "runner-terminate").await;
    let lock_key = backend.lock_key(&key("job"));
    let runner = runner(backend);
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    let first = token_of(&wait::event(&mut events, WITHIN, "acquired", acquired).await);
    let pid = holder_pid(&server, lock_key).expect("the routine's lock is held");
    server.psql(&format!("SELECT pg_terminate_backend({pid})"));
    wait::event(&mut events, WITHIN, "lease lost", |e| {
        matches!(e.kind, EventKind::LeaseLost { .. })
    })
    .await;
    let second = token_of(&wait::event(&mut events, WITHIN, "acquired again", acquired).await);
    assert!(
        second > first,
        "token {second} after the loss must exceed {first}"
    );
    let new_pid = holder_pid(&server, lock_key).expect("held again");
    assert_ne!(new_pid, pid, "a new lock session holds the routine's lock");
    handle.cancel();
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_survives_a_server_restart_on_a_new_session() {
    let Some(mut server) = PostgresServer::start() else {
        return;
    };
    let backend = backend(&server.url(), "runner-restart").await;
    let runner = runner(backend);
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    let first = token_of(&wait::event(&mut events, WITHIN, "acquired", acquired).await);
    server.restart();
    wait::event(&mut events, WITHIN, "lease lost", |e| {
        matches!(e.kind, EventKind::LeaseLost { .. })
    })
    .await;
    let second = token_of(&wait::event(&mut events, WITHIN, "acquired again", acquired).await);
    assert!(
        second > first,
        "token {second} after the restart must exceed {first}"
    );
    handle.cancel();
    runner.shutdown().await;
}
