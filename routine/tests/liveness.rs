//! A waiting routine never spins, whatever its backend answers, and shutdown is never
//! held up by a request in flight.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    Capabilities, Error, Lease, LockBackend, LockKey, MemoryBackend, Outcome, Result, RunOptions,
    Runner,
};

use common::TTL;

/// A `MemoryBackend` whose release notifications fail at once (as a Redis user without
/// channel permissions, a PostgreSQL listener refused for too many clients) or whose
/// `expires_in` says "free" for a key that stays held, counting the requests.
#[derive(Debug, Clone, Default)]
struct Odd {
    inner: MemoryBackend,
    failing_notifications: bool,
    says_free: bool,
    /// `expires_in` never answers (a request lost on its way), after saying it was asked.
    hanging_expiry: bool,
    acquires: Arc<AtomicUsize>,
    subscriptions: Arc<AtomicUsize>,
    expiry_asked: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl LockBackend for Odd {
    fn name(&self) -> &'static str {
        "odd"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        self.acquires.fetch_add(1, Ordering::Relaxed);
        self.inner.try_acquire_as(key, ttl, holder).await
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        if self.failing_notifications {
            // Pending at first, as a subscription on its way to the server is, then
            // refused.
            tokio::task::yield_now().await;
            return Err(Error::PermissionDenied {
                backend: "odd",
                operation: "subscribe to release notifications",
                source: "NOPERM this user has no permissions to access one of the channels".into(),
            });
        }
        self.inner.released(key).await
    }

    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        if self.hanging_expiry {
            self.expiry_asked.notify_one();
            return std::future::pending().await;
        }
        if self.says_free {
            return Ok(None);
        }
        self.inner.expires_in(key).await
    }
}

/// Holds `name` on `backend` for good from another "process".
async fn held_elsewhere(backend: &MemoryBackend, name: &str) -> Box<dyn Lease> {
    backend
        .try_acquire(&LockKey::new(name).unwrap(), Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("free")
}

/// Lets a waiter wait `for_` of real time and returns how many acquires and
/// subscriptions it made.
async fn waiter_requests(odd: &Odd, for_: Duration) -> (usize, usize) {
    let runner = Runner::builder()
        .with_backend(odd.clone())
        .with_lease_ttl(Duration::from_secs(1))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    tokio::time::sleep(for_).await;
    handle.cancel();
    runner.shutdown().await;
    (
        odd.acquires.load(Ordering::Relaxed),
        odd.subscriptions.load(Ordering::Relaxed),
    )
}

// Real time: a spinning waiter never lets paused time advance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_release_notifications_fall_back_to_polling_without_spinning() {
    let odd = Odd {
        failing_notifications: true,
        ..Odd::default()
    };
    let _holder = held_elsewhere(&odd.inner, "job").await;
    // The runner's tasks run on the runtime's worker threads, where a thread-local
    // subscriber does not reach: count the warning process-wide. Only this test's backend
    // fails its notifications, so only its waiter logs it.
    let warnings = WarningCounter::install();
    // TTL 1 s: a retry every 200 ms, so about 5 acquires in a second.
    let (acquires, subscriptions) = waiter_requests(&odd, Duration::from_secs(1)).await;
    assert!(
        subscriptions >= 2,
        "the notifications must have failed more than once for the test to mean anything: \
         {subscriptions}"
    );
    assert_eq!(
        warnings.count(),
        1,
        "failing release notifications must be warned about once, not at every retry"
    );
    assert!(
        acquires <= 12,
        "a waiter whose notifications fail must poll at the retry interval, made {acquires} \
         acquires in 1 s"
    );
    assert!(
        subscriptions <= 12,
        "failing subscriptions must be retried with backoff, made {subscriptions} in 1 s"
    );
}

/// Counts the warning the runner logs when release notifications fail, in every thread
/// (the global subscriber; set once per test binary).
#[derive(Clone, Default)]
struct WarningCounter(Arc<AtomicUsize>);

impl WarningCounter {
    fn install() -> Self {
        use tracing_subscriber::layer::SubscriberExt;
        let counter = WarningCounter::default();
        let subscriber = tracing_subscriber::registry().with(counter.clone());
        tracing::subscriber::set_global_default(subscriber)
            .expect("only this test installs a global subscriber");
        counter
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(Option<String>);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut message = Message(None);
        event.record(&mut message);
        if message
            .0
            .is_some_and(|m| m.starts_with("release notifications failed"))
        {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_says_free_while_the_key_stays_held_does_not_make_the_waiter_spin() {
    let odd = Odd {
        says_free: true,
        ..Odd::default()
    };
    let _holder = held_elsewhere(&odd.inner, "job").await;
    let (acquires, _) = waiter_requests(&odd, Duration::from_secs(1)).await;
    assert!(
        acquires <= 12,
        "at most one immediate retry per retry interval, made {acquires} acquires in 1 s"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_not_held_up_by_an_acquire_in_flight() {
    let backend = MemoryBackend::new();
    let runner = Runner::builder()
        .with_backend(backend.clone())
        // A request timeout of 30 s, far beyond the drain timeout.
        .with_lease_ttl(Duration::from_secs(60))
        .with_drain_timeout(Duration::from_secs(1))
        .with_signal_handling(false)
        .build()
        .unwrap();
    backend.set_hanging(true);
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    runner.shutdown().await;
    assert!(
        started.elapsed() <= Duration::from_secs(1),
        "shutdown must not wait for the hung acquire's 30 s timeout: took {:?}",
        started.elapsed()
    );
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_not_held_up_by_an_expiry_query_in_flight_during_a_contended_wait() {
    let odd = Odd {
        hanging_expiry: true,
        ..Odd::default()
    };
    assert!(
        odd.capabilities().reports_expiry,
        "the waiter asks a backend for the holder's expiry only if it reports it"
    );
    let _holder = held_elsewhere(&odd.inner, "job").await;
    let runner = Runner::builder()
        .with_backend(odd.clone())
        // A request timeout of 30 s, far beyond the drain timeout.
        .with_lease_ttl(Duration::from_secs(60))
        .with_drain_timeout(Duration::from_secs(1))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    // The waiter found the key held and is now asking when it expires.
    odd.expiry_asked.notified().await;
    let started = tokio::time::Instant::now();
    runner.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown must neither wait for the hung expires_in's 30 s timeout nor run into \
         the 1 s drain timeout: took {:?}",
        started.elapsed()
    );
    assert!(matches!(handle.join().await, Outcome::Cancelled));
    assert_eq!(odd.acquires.load(Ordering::Relaxed), 1);
}

/// Accepts connections on a local port and never answers on them, as a server behind a
/// black-holing firewall or a hung process would; says when the first one came in.
#[cfg(feature = "redis")]
async fn silent_server() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
            if let Some(tx) = connected_tx.take() {
                let _ = tx.send(());
            }
        }
    });
    (address, connected_rx)
}

// Real time and a real socket: the Redis client's connect and PING timeouts (5 s and
// 3 s) are what a shutdown must not wait for.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_a_lazily_connected_backend_whose_connect_hangs() {
    let (address, connected) = silent_server().await;
    let runner = Runner::builder()
        .with_backend_url(format!("redis://{address}"))
        .with_drain_timeout(Duration::from_secs(600))
        .with_signal_handling(false)
        .build()
        .unwrap();
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .expect("the routine starts connecting its backend")
        .unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), runner.shutdown())
        .await
        .expect("shutdown ends");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown must not wait for the hung connection's 5 s timeout: took {:?}",
        started.elapsed()
    );
    assert!(matches!(handle.join().await, Outcome::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn logged_backend_errors_carry_their_cause() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let backend = MemoryBackend::new();
    backend.set_unavailable(true);
    let runner = common::runner(&backend);
    let mut events = runner.subscribe();
    let handle = common::idle_singleton(&runner, "job");
    common::wait_for(&mut events, TTL, "a backend error", |e| {
        matches!(e.kind, leasehold::EventKind::BackendError { .. })
    })
    .await;
    handle.cancel();
    runner.shutdown().await;
    let logs =
        String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        logs.contains("memory backend switched to unavailable"),
        "the log line must carry the error's cause, not only its summary:\n{logs}"
    );
}
