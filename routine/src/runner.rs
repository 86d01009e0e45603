//! `Runner`: starts routines, owns their backend, and shuts them down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::BoxStream;
use leasehold_core::{Error, LeaseInfo, LockBackend, LockKey, Result};
use tokio::sync::broadcast;

use crate::backend_slot::BackendSlot;
use crate::builder::RunnerBuilder;
use crate::config::{DEFAULT_TTL, RunnerConfig};
use crate::context::Context;
use crate::events::Event;
use crate::handle::RoutineHandle;
use crate::health::Health;
use crate::launch::{LeasePlan, launch};
use crate::options::{Mode, RunOptions};
use crate::outcome::Outcome;
use crate::schedule;
use crate::shared::{Setup, Shared};
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
            Setup::default(),
        )
    }

    /// A runner without a backend: [`Runner::run`] works, named routines with a lease
    /// end with [`Outcome::Failed`].
    pub fn without_backend() -> Self {
        Self::from_parts(None, RunnerConfig::defaults(DEFAULT_TTL), Setup::default())
    }

    /// A runner on `backend` (if any) with the resolved `config` and `setup`.
    pub(crate) fn from_parts(
        backend: Option<BackendSlot>,
        config: RunnerConfig,
        setup: Setup,
    ) -> Self {
        let shared = Arc::new(Shared::new(config, setup));
        // Within a runtime the shutdown signal is watched from now on; otherwise from
        // the first routine or wait on the runner.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            shared.arm_shutdown_signal(&runtime);
        }
        Self { backend, shared }
    }

    /// Who this runner's leases are held as, as [`LockBackend::describe`] reports the
    /// holder: [`RunnerBuilder::with_holder_identity`], else
    /// [`process_identity`](leasehold_core::process_identity) (`$ROUTINE_HOLDER_IDENTITY`,
    /// else `<host>:<pid>`).
    pub fn holder_identity(&self) -> &str {
        self.shared.holder_identity()
    }

    /// Whether every lease this runner holds is refreshed on time; see [`Health`]. For a
    /// liveness probe: a late lease shows a backend that does not answer or a runtime too
    /// busy to refresh, before the lease is lost.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = leasehold::Runner::with_backend(leasehold::MemoryBackend::new());
    /// assert!(runner.health().is_healthy());
    /// # }
    /// ```
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// Who holds `name`'s lease now, from this runner's backend
    /// ([`LockBackend::describe`]): `Ok(None)` if nobody does. It takes nothing and
    /// wakes nobody; the answer may be stale by the time it arrives.
    ///
    /// # Errors
    ///
    /// An invalid name, a runner without a backend, a backend that cannot tell
    /// ([`Error::Unsupported`]), or one that fails or takes longer than the request
    /// timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn describe(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let key = LockKey::new(name)?;
        let Some(slot) = &self.backend else {
            return Err(Error::config("backend", "no lease backend configured"));
        };
        let config = self.config();
        let backend = slot.get(config.lease_ttl).await?;
        tokio::time::timeout(config.request_timeout, backend.describe(&key))
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    backend.name(),
                    "describe",
                    config.request_timeout,
                ))
            })
    }

    /// The holders of `name`'s lease as they change, seen from this runner's backend
    /// without competing for it; see [`observe`](crate::observe), polled at this runner's
    /// retry interval. A name that is not a valid key, or a runner without a backend,
    /// gives a stream of one error.
    pub fn observe(&self, name: &str) -> BoxStream<'static, Result<Option<LeaseInfo>>> {
        use futures::StreamExt;
        let key = match LockKey::new(name) {
            Ok(key) => key,
            Err(error) => return futures::stream::once(async move { Err(error) }).boxed(),
        };
        let Some(slot) = self.backend.clone() else {
            let error = Error::config("backend", "no lease backend configured");
            return futures::stream::once(async move { Err(error) }).boxed();
        };
        let ttl = self.config().lease_ttl;
        let poll = self.config().retry_interval;
        futures::stream::once(async move { slot.get(ttl).await })
            .flat_map(move |backend| match backend {
                Ok(backend) => crate::observe::observe(backend, key.clone(), poll).boxed(),
                Err(error) => futures::stream::once(async move { Err(error) }).boxed(),
            })
            .boxed()
    }

    /// The runner's settings. A routine started with its own
    /// [`lease_ttl`](RunOptions::lease_ttl) or [`backoff`](RunOptions::backoff) uses
    /// settings derived from those instead (see [`RunOptions::lease_ttl`]).
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
    /// [`Runner::shutdown`], by the application's shutdown signal given to the builder and,
    /// if the runner handles them, by SIGINT/SIGTERM. It runs in a tracing span
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
        self.start(None, RunOptions::new(), routine)
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
        self.start(Some(name), options, routine)
    }

    fn start(&self, name: Option<&str>, options: RunOptions, routine: RoutineFn) -> RoutineHandle {
        let RunOptions {
            mode,
            schedule,
            lease: own_lease,
        } = options;
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
        if mode != Mode::Scheduled && schedule.touched {
            return fail(Error::config(
                "schedule",
                "schedule settings given without RunOptions::every or RunOptions::cron",
            ));
        }
        if mode == Mode::Once
            && let Some(setting) = own_lease.given()
        {
            return fail(Error::config(
                setting,
                "only for routines with a lease: keep_running_one_instance, exclusive or a \
                 schedule",
            ));
        }
        let config = if own_lease.ttl.is_none() && own_lease.backoff.is_none() {
            self.shared.shared_config()
        } else {
            match self
                .shared
                .config()
                .for_routine(own_lease.ttl, own_lease.backoff)
            {
                Ok(config) => Arc::new(config),
                Err(error) => return fail(error),
            }
        };
        let lease = match (mode, name) {
            (Mode::Once, _) => None,
            (_, None) => return fail(Error::config("name", "a leased routine needs a name")),
            (_, Some(name)) => {
                let key = match LockKey::new(name) {
                    Ok(key) => key,
                    Err(error) => return fail(error),
                };
                let schedule = (mode == Mode::Scheduled).then(|| Box::new(schedule));
                if let Some(Err(error)) = schedule.as_ref().map(|s| schedule::check(&key, s)) {
                    return fail(error);
                }
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
                // A backend connected later checks the routine's TTL when it connects.
                if let (Some(ttl), Some(ready)) = (own_lease.ttl, backend.ready()) {
                    let checked = ready.capabilities().check_ttl(ready.name(), ttl);
                    if let Err(error) = checked {
                        return fail(Error::config_with_source(
                            "lease_ttl",
                            "outside the backend's TTL bounds",
                            error,
                        ));
                    }
                }
                Some(LeasePlan {
                    key,
                    backend,
                    schedule,
                })
            }
        };
        self.install_signal_handlers(&runtime);
        self.shared.arm_shutdown_signal(&runtime);
        let task = Task::new(Arc::clone(&self.shared), number, label, mode, config);
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

    /// Resolves when a shutdown (by [`Runner::shutdown`], the application's shutdown signal
    /// given to the builder, or SIGINT/SIGTERM if the runner handles them) has finished:
    /// every routine has ended and its lease was released. Use it in `main` to exit once
    /// the leases are given back.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait_for_shutdown(&self) {
        self.arm_shutdown_signal();
        self.shared.wait_for_shutdown().await;
    }

    /// Resolves when a shutdown has begun, by [`Runner::shutdown`], the application's
    /// shutdown signal ([`RunnerBuilder::with_shutdown_token`],
    /// [`RunnerBuilder::with_shutdown_signal`]), SIGINT/SIGTERM if the runner handles
    /// them, or [`Runner::abort`]; at once if it has. Routines still drain after it:
    /// wait for [`Runner::wait_for_shutdown`] before leaving.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn shutdown_started(&self) {
        self.arm_shutdown_signal();
        self.shared.shutdown_begun().await;
    }

    /// Whether a shutdown has begun (or finished); see [`Runner::shutdown_started`].
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown_started()
    }

    fn arm_shutdown_signal(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.shared.arm_shutdown_signal(&runtime);
        }
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
