//! Runner-level faults: what happens to a routine kept running on the Redis backend when
//! Redis misbehaves or a Go instance holds the lock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Deadline, get, raw, unique_key};
use leasehold::{Event, EventKind, RoutineHandle, RunOptions, Runner};
use leasehold_conformance::servers::RedisServer;
use leasehold_redis::RedisBackend;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(15);

/// What the routine reports: each start, and each stop with when it happened.
#[derive(Debug)]
enum Life {
    Started,
    Stopped(Instant),
}

/// Reports `Stopped` when the routine returns or is dropped by the runner.
struct StopGuard(Arc<mpsc::UnboundedSender<Life>>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let _ = self.0.send(Life::Stopped(Instant::now()));
    }
}

struct Setup {
    runner: Runner,
    events: broadcast::Receiver<Event>,
    life: mpsc::UnboundedReceiver<Life>,
    handle: RoutineHandle,
}

async fn quick_backend(url: &str) -> RedisBackend {
    RedisBackend::builder()
        .with_url(url)
        .with_connect_timeout(Duration::from_millis(300))
        .with_request_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap()
}

/// A runner with a 1 s TTL keeping `name` running: the routine reports its life and
/// waits for cancellation (or is dropped by the runner, which also counts as a stop).
async fn keep_running(server: &RedisServer, name: &str) -> Setup {
    let runner = Runner::builder()
        .with_backend(quick_backend(&server.url()).await)
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .unwrap();
    let events = runner.subscribe();
    let (tx, life) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    let handle = runner.run_named(
        name,
        move |ctx| {
            let tx = Arc::clone(&tx);
            async move {
                let _ = tx.send(Life::Started);
                let _stopped = StopGuard(tx);
                ctx.cancelled().await;
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    Setup {
        runner,
        events,
        life,
        handle,
    }
}

/// The next event matching `want`, skipping others.
async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    want: impl Fn(&EventKind) -> bool,
) -> Event {
    common::within(DEADLINE, what, async {
        loop {
            match events.recv().await {
                Ok(event) if want(&event.kind) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("runner gone: {what}"),
            }
        }
    })
    .await
}

async fn next_life(life: &mut mpsc::UnboundedReceiver<Life>, what: &str) -> Life {
    common::within(DEADLINE, what, life.recv())
        .await
        .unwrap_or_else(|| panic!("routine gone: {what}"))
}

async fn stop(setup: Setup) {
    setup.handle.cancel();
    setup.runner.shutdown().await;
}

#[tokio::test]
async fn a_go_holder_keeps_a_rust_runner_waiting_until_it_releases() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let name = unique_key("go-runner");
    let redis_key = format!("routine:lock:{name}");
    let mut go = raw(&server).await;
    let ok: Option<String> = redis::cmd("SET")
        .arg(&redis_key)
        .arg("go-random-token")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut go)
        .await
        .unwrap();
    assert_eq!(ok.as_deref(), Some("OK"), "Go takes the key first");

    let mut setup = keep_running(&server, name.as_str()).await;
    wait_event(&mut setup.events, "the runner sees contention", |k| {
        matches!(k, EventKind::Contended { .. })
    })
    .await;
    assert!(
        setup.life.try_recv().is_err(),
        "the routine must not start while the Go instance holds the lock"
    );

    // The Go instance releases with bsm/redislock's compare-and-delete.
    let deleted: i64 = redis::cmd("EVAL")
        .arg(r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#)
        .arg(1)
        .arg(&redis_key)
        .arg("go-random-token")
        .query_async(&mut go)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let started = next_life(&mut setup.life, "the routine starts once Go released").await;
    assert!(matches!(started, Life::Started));
    let token = get(&mut go, &redis_key).await;
    assert!(
        token.is_some_and(|t| t != "go-random-token"),
        "the lock now holds the Rust instance's token"
    );
    stop(setup).await;
}

#[tokio::test]
async fn a_routine_stops_before_its_lease_ends_on_a_paused_server_and_runs_again_after() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let name = unique_key("paused-runner");
    let mut setup = keep_running(&server, name.as_str()).await;
    assert!(matches!(
        next_life(&mut setup.life, "first start").await,
        Life::Started
    ));

    server.process().pause().unwrap();
    let paused_at = Instant::now();
    // The last refresh reached the server before the pause, so the server's lease ends
    // by `paused_at + TTL` at the latest: the routine must have stopped before then.
    let Life::Stopped(stopped_at) = next_life(&mut setup.life, "stop while paused").await else {
        panic!("expected the routine to stop");
    };
    assert!(
        stopped_at < paused_at + TTL,
        "the routine ran {:?} past the pause, longer than the TTL {TTL:?}",
        stopped_at - paused_at
    );
    // The fault itself: the server stays stopped past the lease's end.
    let resume_at = paused_at + TTL + Duration::from_millis(200);
    tokio::time::sleep_until(resume_at).await;
    server.process().resume().unwrap();

    assert!(
        matches!(
            next_life(&mut setup.life, "restart after resume").await,
            Life::Started
        ),
        "the routine runs again once Redis answers"
    );
    stop(setup).await;
}

#[tokio::test]
async fn a_routine_stops_when_redis_dies_and_runs_again_after_restart() {
    let mut server = leasehold_conformance::require_server!(RedisServer::start());
    let name = unique_key("killed-runner");
    let mut setup = keep_running(&server, name.as_str()).await;
    assert!(matches!(
        next_life(&mut setup.life, "first start").await,
        Life::Started
    ));

    server.kill();
    let killed_at = Instant::now();
    let Life::Stopped(stopped_at) = next_life(&mut setup.life, "stop after kill").await else {
        panic!("expected the routine to stop");
    };
    assert!(
        stopped_at < killed_at + TTL,
        "the routine outlived its lease by {:?}",
        stopped_at - killed_at
    );

    server.restart();
    assert!(
        matches!(
            next_life(&mut setup.life, "restart after Redis is back").await,
            Life::Started
        ),
        "the routine runs again once Redis is back"
    );
    stop(setup).await;
}

#[tokio::test]
async fn a_routine_whose_lock_is_overwritten_is_cancelled_and_the_foreign_lock_kept() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let name = unique_key("overwritten-runner");
    let redis_key = format!("routine:lock:{name}");
    let mut setup = keep_running(&server, name.as_str()).await;
    assert!(matches!(
        next_life(&mut setup.life, "first start").await,
        Life::Started
    ));

    let mut admin = raw(&server).await;
    let _: () = redis::cmd("SET")
        .arg(&redis_key)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    wait_event(&mut setup.events, "lease lost", |k| {
        matches!(k, EventKind::LeaseLost { .. })
    })
    .await;
    assert!(matches!(
        next_life(&mut setup.life, "stop after takeover").await,
        Life::Stopped(_)
    ));
    wait_event(&mut setup.events, "contended by the foreign holder", |k| {
        matches!(k, EventKind::Contended { .. })
    })
    .await;
    assert_eq!(
        get(&mut admin, &redis_key).await.as_deref(),
        Some("someone-else"),
        "the runner must leave the foreign lock alone"
    );
    stop(setup).await;
}

#[tokio::test]
async fn a_routine_keeps_its_lease_when_its_connection_is_cut() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let name = unique_key("cut-runner");
    let redis_key = format!("routine:lock:{name}");
    let mut setup = keep_running(&server, name.as_str()).await;
    assert!(matches!(
        next_life(&mut setup.life, "first start").await,
        Life::Started
    ));

    let mut admin = raw(&server).await;
    let token_before = get(&mut admin, &redis_key).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        killed, 2,
        "the runner's command connection and direct lane were cut"
    );
    let pttl = |admin: &mut redis::aio::MultiplexedConnection| {
        let mut admin = admin.clone();
        let key = redis_key.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<i64>(&mut admin)
                .await
                .unwrap()
        }
    };
    // PTTL only goes down between refreshes, so a reading above the one before shows a
    // refresh after that reading, hence after the cut. (Comparing with the first reading
    // alone misses it when a refresh lands between the cut and that reading.)
    let mut previous = pttl(&mut admin).await;
    let deadline = Deadline::new(DEADLINE, "a refresh goes through after the cut");
    loop {
        let now = pttl(&mut admin).await;
        if now > previous {
            break;
        }
        previous = now;
        deadline.tick().await;
    }
    assert_eq!(
        get(&mut admin, &redis_key).await,
        token_before,
        "the same lease was refreshed"
    );
    assert!(
        setup.life.try_recv().is_err(),
        "the routine must keep running across the reconnection"
    );
    stop(setup).await;
}

/// A runner whose Redis is unreachable when the service starts: leased routines report a
/// clear error, back off and keep trying (no panic), and run as soon as Redis is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_is_retried_with_backoff_until_it_is_up() {
    let mut server = leasehold_conformance::require_server!(RedisServer::start());
    let url = server.url();
    server.kill();
    let runner = Runner::builder()
        .with_backend_url(url)
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()
        .expect("a well-formed URL builds a runner without connecting");
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        unique_key("unreachable").as_str(),
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    let mut errors = Vec::new();
    for _ in 0..3 {
        let event = wait_event(&mut events, "backend error", |kind| {
            matches!(kind, EventKind::BackendError { .. })
        })
        .await;
        let EventKind::BackendError { error } = event.kind else {
            unreachable!("matched above")
        };
        assert!(
            error.contains("redis backend unavailable"),
            "the error must say Redis is unavailable: {error}"
        );
        errors.push(event.at);
    }
    assert!(
        errors[2] - errors[1] > errors[1] - errors[0],
        "the runner must back off between attempts: {errors:?}"
    );
    assert!(!handle.is_finished(), "the routine keeps trying");
    server.restart();
    wait_event(&mut events, "acquired after Redis came up", |kind| {
        matches!(kind, EventKind::Acquired { .. })
    })
    .await;
    handle.cancel();
    runner.shutdown().await;
}

/// A Redis backend that counts its acquire attempts (shared by every clone).
#[derive(Debug, Clone)]
struct Counting {
    inner: RedisBackend,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl leasehold_core::LockBackend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> leasehold_core::Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire_as(
        &self,
        key: &leasehold_core::LockKey,
        ttl: Duration,
        holder: &str,
    ) -> leasehold_core::Result<Option<Box<dyn leasehold_core::Lease>>> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.try_acquire_as(key, ttl, holder).await
    }

    async fn released(&self, key: &leasehold_core::LockKey) -> leasehold_core::Result<()> {
        self.inner.released(key).await
    }

    async fn expires_in(
        &self,
        key: &leasehold_core::LockKey,
    ) -> leasehold_core::Result<Option<Duration>> {
        self.inner.expires_in(key).await
    }
}

/// Five processes wait for one name, each running the routine once under its lease
/// (`exclusive`): each release wakes the next one only, so the five handovers take
/// about one attempt each, where waking every waiter on every release took 5 + 4 + 3 +
/// 2 + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_waiting_runners_take_over_in_turn_with_about_one_attempt_each() {
    use leasehold_core::LockBackend;
    let server = leasehold_conformance::require_server!(RedisServer);
    let name = unique_key("wake-one-runners");
    let ttl = Duration::from_secs(10);
    let holder = common::backend(server).await;
    let mut lease = holder.try_acquire(&name, ttl).await.unwrap().expect("free");
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ran, mut runs) = mpsc::unbounded_channel();
    let mut runners = Vec::new();
    for place in 0..5 {
        let backend = Counting {
            inner: common::backend(server).await,
            attempts: Arc::clone(&attempts),
        };
        let runner = Runner::builder()
            .with_backend(backend)
            .with_lease_ttl(ttl)
            .with_signal_handling(false)
            .build()
            .unwrap();
        let mut events = runner.subscribe();
        let ran = ran.clone();
        let handle = runner.run_named(
            name.as_str(),
            move |_ctx| {
                let ran = ran.clone();
                async move {
                    let _ = ran.send(place);
                }
            },
            RunOptions::exclusive(),
        );
        wait_event(&mut events, "the runner waits for the name", |k| {
            matches!(k, EventKind::Contended { .. })
        })
        .await;
        runners.push((runner, handle));
    }
    // Each registers with the `expires_in` it sends after its failed attempt.
    let mut conn = raw(server).await;
    let deadline = Deadline::new(DEADLINE, "every waiting runner registered");
    loop {
        let registered: usize = redis::cmd("ZCARD")
            .arg(holder.waiters_key(&name))
            .query_async(&mut conn)
            .await
            .unwrap();
        if registered == 5 {
            break;
        }
        deadline.tick().await;
    }
    let before = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, 5, "one failed attempt each");
    lease.release().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(next_run(&mut runs).await);
    }
    order.sort_unstable();
    assert_eq!(order, [0, 1, 2, 3, 4], "each runner ran once");
    let handovers = attempts.load(std::sync::atomic::Ordering::SeqCst) - before;
    // One per handover; a waiter woken by a release while it was between its attempt
    // and its registration may add one. Waking everyone would take 15.
    assert!(
        (5..=8).contains(&handovers),
        "five handovers took {handovers} attempts"
    );
    for (runner, handle) in runners {
        handle.join().await;
        runner.shutdown().await;
    }
}

async fn next_run(runs: &mut mpsc::UnboundedReceiver<i32>) -> i32 {
    common::within(DEADLINE, "the next runner runs the routine", runs.recv())
        .await
        .expect("runners gone")
}
