//! `Runner`: starts routines, owns their backend, and shuts them down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::BoxFuture;
use leasehold_core::{Error, LockBackend, LockKey, Result};
use tokio::sync::{OnceCell, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DEFAULT_TTL, RunnerBuilder, RunnerConfig};
use crate::events::{Event, EventKind};
use crate::handle::{Outcome, RoutineHandle};
use crate::keeper::Keeper;
use crate::options::{Mode, RunOptions};
use crate::task::{RoutineFn, Task};

/// Process-wide routine numbers, shared by every runner, as in the Go original.
static NEXT_NUMBER: AtomicU64 = AtomicU64::new(1);

/// How many acquire requests one runner has in flight at once. A service starting
/// thousands of named routines would otherwise send thousands of requests in the same
/// instant: the server answers them no sooner, the late ones time out, and the client
/// buffers every one of them at once. A routine waits for a turn before its request is
/// sent, so the lease's deadline still counts from the send.
pub(crate) const MAX_CONCURRENT_ACQUIRES: usize = 64;

/// Starts background routines and keeps named ones running as one instance across every
/// runner that shares its backend.
///
/// A runner is cheap to clone (clones share everything). It needs a tokio runtime to
/// start routines. Named routines with a lease need a backend
/// ([`Runner::with_backend`], [`RunnerBuilder::backend`]); plain ones do not.
///
/// # Examples
///
/// ```
/// use leasehold::{MemoryBackend, RunOptions, Runner};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let runner = Runner::with_backend(MemoryBackend::new());
/// let handle = runner.run_named(
///     "report",
///     |ctx| async move { ctx.cancelled().await },
///     RunOptions::keep_running_one_instance(),
/// );
/// handle.cancel();
/// handle.join().await;
/// runner.shutdown().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Runner {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Option<BackendSlot>,
    pub(crate) config: RunnerConfig,
    /// Cancelled when shutdown begins: every routine's context is a child of it.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the drain timeout has passed: routines still running are dropped
    /// (their leases are still released).
    pub(crate) hard_stop: CancellationToken,
    /// Cancelled by [`Runner::abort`]: routines are dropped and leases are not released.
    pub(crate) abort: CancellationToken,
    /// Cancelled when shutdown has finished.
    pub(crate) done: CancellationToken,
    shutdown_started: AtomicBool,
    signals_installed: AtomicBool,
    pub(crate) tracker: TaskTracker,
    /// Refreshes every lease the runner holds.
    pub(crate) keeper: Keeper,
    /// Bounds the acquire requests in flight at once (see [`MAX_CONCURRENT_ACQUIRES`]).
    pub(crate) acquires: Semaphore,
    pub(crate) events: broadcast::Sender<Event>,
}

/// Where named routines get their backend: given, or connected on first use (the
/// process-wide default runner, configured from the environment).
#[derive(Clone)]
pub(crate) enum BackendSlot {
    Ready(Arc<dyn LockBackend>),
    Lazy(Arc<LazyBackend>),
    /// The configuration was rejected; leased routines fail with this error.
    Invalid(Arc<Error>),
}

type Connect = Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn LockBackend>>> + Send + Sync>;

pub(crate) struct LazyBackend {
    pub(crate) description: String,
    pub(crate) cell: OnceCell<Arc<dyn LockBackend>>,
    pub(crate) connect: Connect,
}

impl BackendSlot {
    /// The backend, connecting it first if needed. A failed connection is tried again
    /// on the next call. A backend connected here is checked against the runner's lease
    /// `ttl`, which the builder could not do before it existed.
    pub(crate) async fn get(&self, ttl: std::time::Duration) -> Result<Arc<dyn LockBackend>> {
        match self {
            BackendSlot::Ready(backend) => Ok(Arc::clone(backend)),
            BackendSlot::Lazy(lazy) => {
                let backend = lazy.cell.get_or_try_init(|| (lazy.connect)()).await?;
                backend.capabilities().check_ttl(backend.name(), ttl)?;
                Ok(Arc::clone(backend))
            }
            BackendSlot::Invalid(error) => Err(Error::config("backend", error.to_string())),
        }
    }
}

impl fmt::Debug for BackendSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSlot::Ready(backend) => fmt::Debug::fmt(backend, f),
            BackendSlot::Lazy(lazy) => match lazy.cell.get() {
                Some(backend) => fmt::Debug::fmt(backend, f),
                None => write!(f, "{} (not connected yet)", lazy.description),
            },
            BackendSlot::Invalid(error) => write!(f, "invalid backend configuration: {error}"),
        }
    }
}

impl Runner {
    /// A builder for a runner with custom timing.
    pub fn builder() -> RunnerBuilder {
        RunnerBuilder::default()
    }

    /// A runner on `backend` with the default settings (TTL 5 s, raised to the backend's
    /// minimum TTL; see [`RunnerBuilder`]).
    pub fn with_backend(backend: impl LockBackend) -> Self {
        let backend: Arc<dyn LockBackend> = Arc::new(backend);
        let ttl = DEFAULT_TTL.max(backend.capabilities().min_ttl);
        Self::from_parts(
            Some(BackendSlot::Ready(backend)),
            RunnerConfig::defaults(ttl),
        )
    }

    /// A runner without a backend: [`Runner::run`] works, named routines with a lease
    /// end with [`Outcome::Failed`].
    pub fn without_backend() -> Self {
        Self::from_parts(None, RunnerConfig::defaults(DEFAULT_TTL))
    }

    pub(crate) fn from_parts(backend: Option<BackendSlot>, config: RunnerConfig) -> Self {
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let keeper = Keeper::new(&config, abort.clone());
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                hard_stop: CancellationToken::new(),
                abort,
                done: CancellationToken::new(),
                shutdown,
                shutdown_started: AtomicBool::new(false),
                signals_installed: AtomicBool::new(false),
                tracker: TaskTracker::new(),
                keeper,
                acquires: Semaphore::new(MAX_CONCURRENT_ACQUIRES),
                events: broadcast::channel(1024).0,
            }),
        }
    }

    /// The runner's settings.
    pub fn config(&self) -> &RunnerConfig {
        &self.inner.config
    }

    /// Events of every routine of this runner, for logs, metrics and tests. A slow
    /// receiver loses the oldest events (see [`broadcast`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Starts `f` in the background and returns at once.
    ///
    /// `f` gets a [`Context`](crate::Context) that is cancelled by the returned handle,
    /// by [`Runner::shutdown`] and by SIGINT/SIGTERM. It runs in a tracing span
    /// `routine{number}` whose parent is the caller's current span, and in a Sentry hub
    /// derived from the caller's. A panic is caught, logged and sent to Sentry; the
    /// process and the runner go on.
    ///
    /// After shutdown has begun the routine is not started: the handle reports
    /// [`Outcome::Rejected`].
    pub fn run<F, Fut>(&self, f: F) -> RoutineHandle
    where
        F: FnOnce(crate::Context) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut f = Some(f);
        let routine: RoutineFn = Box::new(move |ctx| match f.take() {
            Some(f) => Box::pin(f(ctx)),
            None => Box::pin(async {}),
        });
        self.start(None, Mode::Once, routine)
    }

    /// Starts `f` like [`Runner::run`], with a name and options.
    ///
    /// With [`RunOptions::keep_running_one_instance`] exactly one instance runs across
    /// every runner sharing the backend, restarted when it returns or panics and taken
    /// over by another caller when its holder stops or dies; see there. `f` is called
    /// again for every restart.
    ///
    /// A name that is empty, longer than [`LockKey::MAX_LEN`] or contains control
    /// characters, or a lease option on a runner without a backend, gives a handle that
    /// reports [`Outcome::Failed`] with the reason (and an error log).
    pub fn run_named<F, Fut>(&self, name: &str, f: F, options: RunOptions) -> RoutineHandle
    where
        F: FnMut(crate::Context) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut f = f;
        let routine: RoutineFn = Box::new(move |ctx| Box::pin(f(ctx)));
        self.start(Some(name), options.mode, routine)
    }

    fn start(&self, name: Option<&str>, mode: Mode, routine: RoutineFn) -> RoutineHandle {
        let number = NEXT_NUMBER.fetch_add(1, Ordering::Relaxed);
        let label: Option<Arc<str>> = name.map(Arc::from);
        let fail = |error: Error| {
            tracing::error!(number, name = name.unwrap_or(""), error = %error.chain(), "routine not started");
            RoutineHandle::finished(number, label.clone(), Outcome::Failed(Arc::new(error)))
        };
        if self.inner.shutdown.is_cancelled() {
            return RoutineHandle::finished(number, label, Outcome::Rejected);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return fail(Error::config(
                "tokio runtime",
                "routines must be started from within a tokio runtime",
            ));
        };
        let lease = match (mode, name) {
            (Mode::Once, _) => None,
            (_, None) => return fail(Error::config("name", "a leased routine needs a name")),
            (_, Some(name)) => {
                let key = match LockKey::new(name) {
                    Ok(key) => key,
                    Err(error) => return fail(error),
                };
                let Some(backend) = self.inner.backend.clone() else {
                    return fail(Error::config(
                        "backend",
                        "no lease backend configured: use Runner::builder().backend(..) \
                         or set ROUTINE_BACKEND_URL for the default runner",
                    ));
                };
                if let BackendSlot::Invalid(error) = backend {
                    tracing::error!(number, name, error = %error.chain(), "routine not started");
                    return RoutineHandle::finished(number, label, Outcome::Failed(error));
                }
                Some((key, backend))
            }
        };
        self.install_signal_handlers(&runtime);
        let (task, handle) = Task::new(self.clone(), number, label, mode);
        self.inner
            .tracker
            .spawn_on(task.run(routine, lease), &runtime);
        handle
    }

    /// Cancels every routine, waits for them to return (up to the drain timeout), drops
    /// those that do not, and releases their leases with a fresh timeout so that other
    /// instances take over at once. No new routine starts once this is called.
    ///
    /// Calling it again, or while a signal-triggered shutdown runs, waits for the same
    /// shutdown to finish.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the shutdown runs on a task of its own, so dropping this future only
    /// stops waiting for it; call again, or [`Runner::wait_for_shutdown`], to wait.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        self.inner.done.cancelled().await;
    }

    /// Starts the shutdown on a task of its own, once; returns at once.
    pub(crate) fn begin_shutdown(&self) {
        if self.inner.shutdown_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let runner = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { runner.drain().await });
            }
            Err(_) => {
                // No runtime to drain on: routines cannot be running either (they need
                // one), so stop whatever is left at once.
                self.inner.shutdown.cancel();
                self.inner.hard_stop.cancel();
                self.inner.tracker.close();
                self.inner.done.cancel();
            }
        }
    }

    /// Ends a drain at once: routines still running are dropped (their leases are still
    /// released). Used by a second signal during a shutdown.
    #[cfg(all(unix, feature = "signals"))]
    pub(crate) fn stop_draining(&self) {
        self.inner.hard_stop.cancel();
    }

    /// Whether a shutdown has begun (or finished).
    #[cfg(all(unix, feature = "signals"))]
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutdown_started.load(Ordering::SeqCst)
    }

    /// Whether a shutdown has finished.
    #[cfg(all(unix, feature = "signals"))]
    pub(crate) fn is_shut_down(&self) -> bool {
        self.inner.done.is_cancelled()
    }

    /// The shutdown itself: cancel, drain up to the drain timeout, then drop the rest.
    async fn drain(&self) {
        let inner = &self.inner;
        tracing::info!(routines = inner.tracker.len(), "shutting down routines");
        inner.shutdown.cancel();
        inner.tracker.close();
        let drained = tokio::time::timeout(inner.config.drain_timeout, inner.tracker.wait()).await;
        if drained.is_err() {
            tracing::warn!(
                still_running = inner.tracker.len(),
                drain_timeout = ?inner.config.drain_timeout,
                "routines did not return within the drain timeout; dropping them"
            );
            inner.hard_stop.cancel();
            inner.tracker.wait().await;
        }
        inner.done.cancel();
    }

    /// Resolves when a shutdown (by [`Runner::shutdown`], SIGINT or SIGTERM) has finished:
    /// every routine has ended and its lease was released. Use it in `main` to exit after
    /// a signal.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait_for_shutdown(&self) {
        self.inner.done.cancelled().await;
    }

    /// Stops every routine at once, without draining and without releasing their leases
    /// through the runner. For tests and drills. No new routine starts afterwards.
    ///
    /// What other instances see depends on the backend. Redis and memory leases are
    /// left to run out by their TTL, as after a crash. etcd and PostgreSQL give a lease
    /// that is dropped unreleased back in the background (an etcd delete, a PostgreSQL
    /// release), so others take over soon after, not a TTL later. To drill a real crash,
    /// kill the process.
    pub fn abort(&self) {
        self.inner.shutdown_started.store(true, Ordering::SeqCst);
        self.inner.abort.cancel();
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.done.cancel();
    }

    pub(crate) fn emit(&self, number: u64, name: &Option<Arc<str>>, kind: EventKind) {
        // No receiver is the normal case: nobody asked for events.
        let _ = self.inner.events.send(Event {
            number,
            name: name.clone(),
            at: tokio::time::Instant::now(),
            kind,
        });
    }

    fn install_signal_handlers(&self, runtime: &tokio::runtime::Handle) {
        if self.inner.config.handle_signals
            && !self.inner.signals_installed.swap(true, Ordering::SeqCst)
        {
            crate::signals::install(Arc::downgrade(&self.inner), runtime);
        }
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("backend", &self.inner.backend)
            .field("config", &self.inner.config)
            .field("routines", &self.inner.tracker.len())
            .field("shutting_down", &self.inner.shutdown.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use futures::FutureExt;
    use leasehold_core::{Capabilities, Lease, MemoryBackend};

    use super::*;

    /// A backend that needs a TTL of at least a second and would accept any TTL it is
    /// asked for, so only the slot's own check can refuse one.
    #[derive(Debug)]
    struct SecondAtLeast(MemoryBackend);

    #[async_trait]
    impl LockBackend for SecondAtLeast {
        fn name(&self) -> &'static str {
            "second-at-least"
        }

        fn capabilities(&self) -> Capabilities {
            self.0.capabilities().with_min_ttl(Duration::from_secs(1))
        }

        async fn try_acquire(
            &self,
            key: &LockKey,
            ttl: Duration,
        ) -> Result<Option<Box<dyn Lease>>> {
            self.0.try_acquire(key, ttl).await
        }

        async fn released(&self, key: &LockKey) -> Result<()> {
            self.0.released(key).await
        }
    }

    #[tokio::test]
    async fn a_lazily_connected_backend_is_checked_against_the_runners_ttl() {
        let slot = BackendSlot::Lazy(Arc::new(LazyBackend {
            description: "test".into(),
            cell: OnceCell::new(),
            connect: Box::new(|| {
                async { Ok(Arc::new(SecondAtLeast(MemoryBackend::new())) as Arc<dyn LockBackend>) }
                    .boxed()
            }),
        }));
        let err = slot.get(Duration::from_millis(500)).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { .. }),
            "a TTL below the connected backend's minimum must be refused: {err:?}"
        );
        slot.get(Duration::from_secs(1))
            .await
            .expect("a TTL within the backend's bounds is accepted");
    }
}
