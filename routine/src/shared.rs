//! `Shared`: what a runner shares with the tasks of its routines: the settings, the lease
//! keeper, the turns for acquire requests, the events channel, and the stages of a
//! shutdown. Its fields are private: routines ask it (`is_aborted`, `emit`, `keep`)
//! rather than reach into it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use leasehold_core::{Lease, LockBackend};
use tokio::sync::{Semaphore, SemaphorePermit, broadcast};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::config::RunnerConfig;
use crate::events::{Event, EventKind};
use crate::health::Health;
use crate::keeper::{Keeper, KeptLease};

/// How many acquire requests one runner has in flight at once. A service starting
/// thousands of named routines would otherwise send thousands of requests in the same
/// instant: the server answers them no sooner, the late ones time out, and the client
/// buffers every one of them at once. A routine waits for a turn before its request is
/// sent, so the lease's deadline still counts from the send.
const MAX_CONCURRENT_ACQUIRES: usize = 64;

/// How many events a slow subscriber may fall behind before it loses the oldest.
const EVENT_CAPACITY: usize = 1024;

/// What a runner is given besides its timing.
pub(crate) struct Setup {
    /// Who the runner's leases are held as.
    pub(crate) holder_identity: String,
    /// The application's shutdown signal: the runner shuts down when it resolves.
    pub(crate) shutdown_signal: Option<BoxFuture<'static, ()>>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            holder_identity: leasehold_core::process_identity().to_owned(),
            shutdown_signal: None,
        }
    }
}

/// The state shared by a runner's clones and its routines' tasks.
pub(crate) struct Shared {
    /// Shared with the tasks of routines without settings of their own.
    config: Arc<RunnerConfig>,
    /// Cancelled when shutdown begins: every routine's context is a child of it.
    shutdown: CancellationToken,
    /// Cancelled when the drain timeout has passed: routines still running are dropped
    /// (their leases are still released). Also cancelled by an abort (a child of
    /// `abort`).
    hard_stop: CancellationToken,
    /// Cancelled by an abort: routines are dropped and leases are not released.
    abort: CancellationToken,
    /// Cancelled when shutdown has finished.
    shut_down: CancellationToken,
    shutdown_started: AtomicBool,
    /// Cancelled when shutdown begins (or the runner is aborted), for
    /// `Runner::shutdown_started`; `shutdown` is cancelled a moment later, by the drain.
    started: CancellationToken,
    /// Who the runner's leases are held as.
    holder_identity: String,
    /// The application's shutdown signal, until a task on a runtime waits for it.
    shutdown_signal: Mutex<Option<BoxFuture<'static, ()>>>,
    signals_installed: AtomicBool,
    tracker: TaskTracker,
    /// Refreshes every lease the runner holds.
    keeper: Keeper,
    /// Bounds the acquire requests in flight at once (see [`MAX_CONCURRENT_ACQUIRES`]).
    acquires: Semaphore,
    events: broadcast::Sender<Event>,
}

impl Shared {
    /// The state of a new runner with `config`.
    pub(crate) fn new(config: RunnerConfig, setup: Setup) -> Self {
        let abort = CancellationToken::new();
        Self {
            started: CancellationToken::new(),
            holder_identity: setup.holder_identity,
            shutdown_signal: Mutex::new(setup.shutdown_signal),
            keeper: Keeper::new(&config, abort.clone()),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            // A child of `abort`: an abort drops routines too, so that a hold waits on
            // one future for both (see `dropping`).
            hard_stop: abort.child_token(),
            abort,
            shut_down: CancellationToken::new(),
            shutdown_started: AtomicBool::new(false),
            signals_installed: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            acquires: Semaphore::new(MAX_CONCURRENT_ACQUIRES),
            events: broadcast::channel(EVENT_CAPACITY).0,
        }
    }

    /// The runner's settings.
    pub(crate) fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// The runner's settings, to share with a routine without settings of its own.
    pub(crate) fn shared_config(&self) -> Arc<RunnerConfig> {
        Arc::clone(&self.config)
    }

    /// Who the runner's leases are held as.
    pub(crate) fn holder_identity(&self) -> &str {
        &self.holder_identity
    }

    /// The held leases whose refresh is late.
    pub(crate) fn health(&self) -> Health {
        Health {
            late: self.keeper.late(Instant::now()),
        }
    }

    /// Starts a task on `runtime` that waits for the application's shutdown signal, if
    /// one was given and nobody waits for it yet. The task holds the runner weakly: a
    /// dropped runner is not kept alive by it.
    pub(crate) fn arm_shutdown_signal(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let signal = self
            .shutdown_signal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(signal) = signal else {
            return;
        };
        let shared = Arc::downgrade(self);
        let started = self.started.clone();
        runtime.spawn(async move {
            tokio::select! {
                // Shutting down anyway: the signal has nothing left to do.
                _ = started.cancelled() => {}
                () = signal => {
                    if let Some(shared) = shared.upgrade() {
                        tracing::info!("shutdown signal received; shutting down routines");
                        shared.begin_shutdown();
                    }
                }
            }
        });
    }

    /// Resolves when a shutdown has begun (or the runner was aborted).
    pub(crate) fn shutdown_begun(&self) -> WaitForCancellationFuture<'_> {
        self.started.cancelled()
    }

    /// The cancellation of a new routine: cancelled by its handle, and when shutdown
    /// begins.
    pub(crate) fn routine_cancel(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Cancelled when shutdown begins, for a context to tell that this is why it was
    /// cancelled.
    pub(crate) fn shutdown_cancel(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Whether new routines are refused: shutdown has begun.
    pub(crate) fn refuses_routines(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Whether the runner was aborted: routines are dropped, leases not released.
    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// Resolves when the runner is aborted.
    pub(crate) fn aborted(&self) -> WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// Resolves when routines still running must be dropped: the drain of a shutdown
    /// is over (its timeout passed, or a second signal ended it).
    pub(crate) fn hard_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.hard_stop.cancelled()
    }

    /// Resolves when running routines must be dropped: by an abort or at the end of a
    /// drain ([`is_aborted`](Shared::is_aborted) tells which). One future where a held
    /// routine's task kept two (`aborted` and `hard_stopped`, 72 bytes each, for as long
    /// as it runs).
    pub(crate) fn dropping(&self) -> WaitForCancellationFuture<'_> {
        self.hard_stop.cancelled()
    }

    /// Hands `lease`, acquired by a call made at `sent`, to the runner's keeper, to
    /// refresh on the timing of `config` (its routine's settings).
    pub(crate) fn keep(
        &self,
        backend: Arc<dyn LockBackend>,
        lease: Box<dyn Lease>,
        sent: Instant,
        config: &RunnerConfig,
    ) -> KeptLease {
        self.keeper.keep(backend, lease, sent, config)
    }

    /// Waits for a turn among the runner's acquire requests; the turn ends when the
    /// permit is dropped. `None` never happens in practice: the semaphore is never
    /// closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a turn not yet given is given to the next in line.
    pub(crate) async fn acquire_turn(&self) -> Option<SemaphorePermit<'_>> {
        self.acquires.acquire().await.ok()
    }

    /// Broadcasts an event of routine `number`.
    pub(crate) fn emit(&self, number: u64, name: &Option<Arc<str>>, kind: EventKind) {
        // No receiver is the normal case: nobody asked for events.
        let _ = self.events.send(Event {
            number,
            name: name.clone(),
            at: Instant::now(),
            kind,
        });
    }

    /// A receiver of the events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs a routine's task on `runtime`, tracked so that shutdown waits for it.
    pub(crate) fn spawn_routine<F>(&self, task: F, runtime: &tokio::runtime::Handle)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(task, runtime);
    }

    /// How many routines' tasks are running.
    pub(crate) fn routines(&self) -> usize {
        self.tracker.len()
    }

    /// `true` the first time only: the caller installs the signal handlers.
    pub(crate) fn claim_signal_handlers(&self) -> bool {
        !self.signals_installed.swap(true, Ordering::SeqCst)
    }

    /// Starts the shutdown on a task of its own, once; returns at once.
    pub(crate) fn begin_shutdown(self: &Arc<Self>) {
        if self.shutdown_started.swap(true, Ordering::SeqCst) {
            return;
        }
        self.started.cancel();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shared = Arc::clone(self);
                runtime.spawn(async move { shared.drain().await });
            }
            Err(_) => {
                // No runtime to drain on: routines cannot be running either (they need
                // one), so stop whatever is left at once.
                self.shutdown.cancel();
                self.hard_stop.cancel();
                self.tracker.close();
                self.shut_down.cancel();
            }
        }
    }

    /// The shutdown itself: cancel, drain up to the drain timeout, then drop the rest.
    async fn drain(&self) {
        tracing::info!(routines = self.tracker.len(), "shutting down routines");
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(self.config.drain_timeout, self.tracker.wait()).await;
        if drained.is_err() {
            tracing::warn!(
                still_running = self.tracker.len(),
                drain_timeout = ?self.config.drain_timeout,
                "routines did not return within the drain timeout; dropping them"
            );
            self.hard_stop.cancel();
            self.tracker.wait().await;
        }
        self.shut_down.cancel();
    }

    /// Ends a drain at once: routines still running are dropped (their leases are still
    /// released).
    pub(crate) fn stop_draining(&self) {
        self.hard_stop.cancel();
    }

    /// Whether a shutdown has begun (or finished).
    pub(crate) fn shutdown_started(&self) -> bool {
        self.shutdown_started.load(Ordering::SeqCst)
    }

    /// Whether a shutdown has finished.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.is_cancelled()
    }

    /// Resolves when a shutdown has finished.
    pub(crate) fn wait_for_shutdown(&self) -> WaitForCancellationFuture<'_> {
        self.shut_down.cancelled()
    }

    /// Stops every routine at once, without draining and without releasing leases.
    pub(crate) fn abort(&self) {
        self.shutdown_started.store(true, Ordering::SeqCst);
        self.started.cancel();
        self.abort.cancel();
        self.shutdown.cancel();
        self.tracker.close();
        self.shut_down.cancel();
    }
}
