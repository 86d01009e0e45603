//! Runner-level faults: a `leasehold::Runner` keeping one routine on `PostgresBackend` while
//! the lock session is killed or the server restarts; and waiting runners registering as
//! waiters, so that a release wakes one of them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{EventKind, RunOptions, Runner};
use leasehold_conformance::servers::PostgresServer;
use leasehold_conformance::wait::{self, acquired};
use leasehold_core::LockBackend as _;

use common::{backend, holder_pid, key, unique, waiter_rows};

const WITHIN: Duration = Duration::from_secs(20);

fn runner(backend: leasehold_postgres::PostgresBackend) -> Runner {
    Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(Duration::from_secs(2))
        .with_signal_handling(false)
        .build()
        .expect("runner builds")
}

fn token_of(event: &leasehold::Event) -> u64 {
    match &event.kind {
        EventKind::Acquired { token } => token.get(),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Waits for the routine's next `Acquired` event and checks its token is above `first`,
/// the token it held before `what`.
async fn acquired_again(
    events: &mut tokio::sync::broadcast::Receiver<leasehold::Event>,
    first: u64,
    what: &str,
) {
    let second = token_of(&wait::event(events, WITHIN, "acquired again", acquired).await);
    assert!(
        second > first,
        "token {second} after {what} must exceed {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_is_cancelled_when_its_session_is_terminated_and_runs_again() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
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
    acquired_again(&mut events, first, "the loss").await;
    let new_pid = holder_pid(&server, lock_key).expect("held again");
    assert_ne!(new_pid, pid, "a new lock session holds the routine's lock");
    handle.cancel();
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_survives_a_server_restart_on_a_new_session() {
    let mut server = leasehold_conformance::require_server!(PostgresServer::start());
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
    acquired_again(&mut events, first, "the restart").await;
    handle.cancel();
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_waits_out_a_read_only_server_and_runs_again_when_it_is_writable() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    // The role's sessions become read-only, as on a standby or a demoted primary (25006),
    // while the superuser's psql stays writable to undo it.
    let url = server.create_role_with_password("app", "pw");
    let backend = common::builder(&url, "runner-read-only")
        .build()
        .await
        .expect("backend builds");
    let runner = runner(backend);
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    let first = token_of(&wait::event(&mut events, WITHIN, "acquired", acquired).await);
    server.psql(
        "ALTER ROLE app SET default_transaction_read_only = on;\n\
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app';",
    );
    for n in 1..=2 {
        wait::event(
            &mut events,
            WITHIN,
            &format!("backend error {n}"),
            |e| matches!(&e.kind, EventKind::BackendError { error } if error.contains("read-only")),
        )
        .await;
    }
    assert!(
        !handle.is_finished(),
        "a read-only server is transient: the routine must keep trying"
    );
    server.psql("ALTER ROLE app RESET default_transaction_read_only");
    acquired_again(&mut events, first, "the read-only spell").await;
    handle.cancel();
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_stops_as_soon_as_its_backend_drops_the_lock_session() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let backend = backend(&server.url(), "runner-revoke").await;
    // A refresh only every 40 s: a loss noticed by a refresh would come far too late
    // for the wait below.
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(Duration::from_secs(60))
        .with_refresh_interval(Duration::from_secs(40))
        .with_signal_handling(false)
        .build()
        .expect("runner builds");
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    wait::event(&mut events, WITHIN, "acquired", acquired).await;
    // An acquire of another key on the same backend blocks on a row lock until its
    // timeout, and the backend drops the whole lock session.
    let other = key("other");
    let mut blocker = common::block_acquires_of(&server.url(), &backend, &other).await;
    let err = backend
        .try_acquire(&other, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, leasehold::Error::Timeout { .. }),
        "the blocked acquire times out, got {err:?}"
    );
    wait::event(&mut events, WITHIN, "lease lost on revocation", |e| {
        matches!(e.kind, EventKind::LeaseLost { .. })
    })
    .await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    handle.cancel();
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_runners_register_and_a_release_wakes_the_one_it_picked() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let ns = unique("runner-wake");
    // The runners' indexes, in the order they started the routine.
    let holders = Arc::new(Mutex::new(Vec::<usize>::new()));
    let mut runners = Vec::new();
    let mut handles = Vec::new();
    let mut lock_key = 0;
    for index in 0..3 {
        let backend = backend(&server.url(), &ns).await;
        lock_key = backend.lock_key(&key("job"));
        let runner = runner(backend);
        let holders = Arc::clone(&holders);
        handles.push(runner.run_named(
            "job",
            move |ctx| {
                holders.lock().unwrap().push(index);
                async move { ctx.cancelled().await }
            },
            RunOptions::keep_running_one_instance(),
        ));
        runners.push(runner);
    }
    // The two runners that met contention registered with their `expires_in`.
    wait::eventually(WITHIN, "two waiters registered", || {
        waiter_rows(server, lock_key) == 2
    })
    .await;
    let first = holders.lock().unwrap()[0];
    handles[first].cancel();
    wait::eventually(WITHIN, "the next runner holds", || {
        holders.lock().unwrap().len() == 2
    })
    .await;
    // The release deleted the row of the waiter it woke; the other one stays registered.
    wait::eventually(WITHIN, "one waiter registered", || {
        waiter_rows(server, lock_key) == 1
    })
    .await;
    for handle in &handles {
        handle.cancel();
    }
    for runner in runners {
        runner.shutdown().await;
    }
}
