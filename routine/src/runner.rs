//! `Runner`: starts routines, owns their backend, and shuts them down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use leasehold_core::{Error, LockBackend, LockKey};
use tokio::sync::broadcast;

use crate::backend_slot::BackendSlot;
use crate::builder::RunnerBuilder;
use crate::config::{DEFAULT_TTL, RunnerConfig};
use crate::context::Context;
use crate::events::Event;
use crate::handle::{Outcome, RoutineHandle};
use crate::launch::{LeasePlan, launch};
use crate::options::{Mode, RunOptions};
use crate::shared::Shared;
use crate::signals::{self, Response};
use crate::task::{RoutineFn, Task};

/// Process-wide routine numbers, shared by every runner, so that a number names one
/// routine in the process's logs whichever runner started it.
static NEXT_NUMBER: AtomicU64 = AtomicU64::new(1);

/// Starts background routines and keeps named ones running as one instance across every
/// runner that shares its backend.
///
/// A runner is cheap to clone (clones share everything). It needs a tokio runtime to
/// start routines. Named routines with a lease need a backend
/// ([`Runner::with_backend`], [`RunnerBuilder::with_backend`]); plain ones do not.
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
    /// Where named routines get their backend; `None` for a runner without one.
    backend: Option<BackendSlot>,
    shared: Arc<Shared>,
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

    /// A runner on `backend` (if any) with the resolved `config`.
    pub(crate) fn from_parts(backend: Option<BackendSlot>, config: RunnerConfig) -> Self {
        Self {
            backend,
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// The runner's settings.
    pub fn config(&self) -> &RunnerConfig {
        self.shared.config()
    }

    /// Events of every routine of this runner, for logs, metrics and tests. A slow
    /// receiver loses the oldest events (see [`broadcast`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.subscribe()
    }

    /// Starts `f` in the background and returns at once.
    ///
    /// `f` gets a [`Context`] that is cancelled by the returned handle, by
    /// [`Runner::shutdown`] and by SIGINT/SIGTERM. It runs in a tracing span
    /// `routine{number}` whose parent is the caller's current span, and in a Sentry hub
    /// derived from the caller's. A panic is caught, logged and sent to Sentry; the
    /// process and the runner go on.
    ///
    /// After shutdown has begun the routine is not started: the handle reports
    /// [`Outcome::Rejected`].
    pub fn run<F, Fut>(&self, f: F) -> RoutineHandle
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
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
        F: FnMut(Context) -> Fut + Send + 'static,
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
        if self.shared.refuses_routines() {
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
                let Some(backend) = self.backend.clone() else {
                    return fail(Error::config(
                        "backend",
                        "no lease backend configured: use Runner::builder().with_backend(..) \
                         or set ROUTINE_BACKEND_URL for the default runner",
                    ));
                };
                if let BackendSlot::Invalid(error) = backend {
                    tracing::error!(number, name, error = %error.chain(), "routine not started");
                    return RoutineHandle::finished(number, label, Outcome::Failed(error));
                }
                Some(LeasePlan { key, backend })
            }
        };
        self.install_signal_handlers(&runtime);
        let task = Task::new(Arc::clone(&self.shared), number, label, mode);
        launch(task, routine, lease, &runtime)
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
        self.shared.begin_shutdown();
        self.shared.wait_for_shutdown().await;
    }

    /// Resolves when a shutdown (by [`Runner::shutdown`], SIGINT or SIGTERM) has finished:
    /// every routine has ended and its lease was released. Use it in `main` to exit after
    /// a signal.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait_for_shutdown(&self) {
        self.shared.wait_for_shutdown().await;
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
        self.shared.abort();
    }

    /// Installs the SIGINT/SIGTERM handlers, once per runner, if the runner handles
    /// signals. They hold the runner's state weakly: a dropped runner is not kept alive
    /// by them, and a signal after it is gone has its default effect.
    fn install_signal_handlers(&self, runtime: &tokio::runtime::Handle) {
        if !self.shared.config().handle_signals || !self.shared.claim_signal_handlers() {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        signals::install(runtime, move || match shared.upgrade() {
            Some(shared) if !shared.is_shut_down() => {
                if shared.shutdown_started() {
                    shared.stop_draining();
                    Response::DrainEnded
                } else {
                    shared.begin_shutdown();
                    Response::ShutdownBegun
                }
            }
            _ => Response::Gone,
        });
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("backend", &self.backend)
            .field("config", self.shared.config())
            .field("routines", &self.shared.routines())
            .field("shutting_down", &self.shared.refuses_routines())
            .finish()
    }
}
