//! `Task`: one started routine's task: span, Sentry hub, panic catching, outcome.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use leasehold_core::{FencingToken, LockKey};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::Context;
use crate::events::EventKind;
use crate::guard::Guard;
use crate::handle::{Outcome, RoutineHandle};
use crate::options::Mode;
use crate::runner::{BackendSlot, Runner};

/// A routine as the runner calls it: once for `run`, once per restart for `run_named`.
pub(crate) type RoutineFn = Box<dyn FnMut(Context) -> BoxFuture<'static, ()> + Send>;

/// What a started routine's task carries.
pub(crate) struct Task {
    pub(crate) runner: Runner,
    pub(crate) number: u64,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) mode: Mode,
    /// Cancelled by the handle; a child of the runner's shutdown token.
    pub(crate) token: CancellationToken,
    outcome: oneshot::Sender<Outcome>,
}

/// How one run of the routine's future ended.
pub(crate) enum RunEnd {
    Returned,
    Panicked(String),
}

impl Task {
    /// A task and the handle that controls it.
    pub(crate) fn new(
        runner: Runner,
        number: u64,
        name: Option<Arc<str>>,
        mode: Mode,
    ) -> (Self, RoutineHandle) {
        let token = runner.inner.shutdown.child_token();
        let (tx, rx) = oneshot::channel();
        let handle = RoutineHandle {
            number,
            name: name.clone(),
            token: token.clone(),
            outcome: std::sync::Mutex::new(rx.into()),
        };
        let task = Self {
            runner,
            number,
            name,
            mode,
            token,
            outcome: tx,
        };
        (task, handle)
    }

    /// The task's whole life: run the routine (under a lease or not), report the outcome.
    ///
    /// Not `async fn`: the span and the Sentry hub must be taken from the *caller's*
    /// context, now, not from whatever thread first polls the task.
    pub(crate) fn run(
        self,
        routine: RoutineFn,
        lease: Option<(LockKey, BackendSlot)>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let span = tracing::info_span!(
            "routine",
            number = self.number,
            name = self.name.as_deref().unwrap_or_default()
        );
        let task = async move {
            let outcome = match lease {
                None => self.run_plain(routine).await,
                Some((key, backend)) => {
                    crate::instance::Instance::new(&self, key, backend)
                        .run(routine)
                        .await
                }
            };
            tracing::debug!(?outcome, "routine stopped");
            self.emit(EventKind::Stopped);
            // The handle may have been dropped: nobody waits for the outcome.
            let _ = self.outcome.send(outcome);
        }
        .instrument(span);
        crate::report::bind_caller_hub(task)
    }

    async fn run_plain(&self, mut routine: RoutineFn) -> Outcome {
        let guard = Guard::new(self.token.child_token(), None);
        let _end = EndOnDrop(&guard);
        let ctx = self.context(&guard, None);
        let inner = &self.runner.inner;
        let outcome = tokio::select! {
            biased;
            _ = inner.abort.cancelled() => Outcome::Aborted,
            end = self.run_routine(&mut routine, ctx) => match end {
                RunEnd::Returned if self.token.is_cancelled() => Outcome::Cancelled,
                RunEnd::Returned => Outcome::Returned,
                RunEnd::Panicked(message) => Outcome::Panicked(message),
            },
            _ = inner.hard_stop.cancelled() => {
                self.emit(EventKind::Dropped);
                Outcome::Cancelled
            }
        };
        self.end_instance(&guard).await;
        outcome
    }

    /// Ends an instance whose routine has returned or been dropped: cancels its context
    /// and drops the work it spawned through it, waiting for that unless the runner was
    /// aborted (a crash stops nothing gracefully).
    pub(crate) async fn end_instance(&self, guard: &Guard) {
        guard.end();
        let inner = &self.runner.inner;
        tokio::select! {
            biased;
            _ = inner.abort.cancelled() => {}
            _ = guard.spawned_gone() => {}
        }
    }

    /// Runs the routine's future once, catching a panic.
    pub(crate) async fn run_routine(&self, routine: &mut RoutineFn, ctx: Context) -> RunEnd {
        self.emit(EventKind::Started);
        // Calling `routine` may itself panic (before it returns a future).
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| routine(ctx))) {
            Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
            Err(payload) => Err(payload),
        };
        match future {
            Ok(()) => {
                self.emit(EventKind::Returned);
                RunEnd::Returned
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.report_panic(&message);
                self.emit(EventKind::Panicked {
                    message: message.clone(),
                });
                RunEnd::Panicked(message)
            }
        }
    }

    fn report_panic(&self, message: &str) {
        crate::report::panic(self.number, self.name.as_deref(), message);
    }

    /// The context of the instance that `guard` guards.
    pub(crate) fn context(&self, guard: &Guard, fencing: Option<FencingToken>) -> Context {
        Context {
            number: self.number,
            name: self.name.clone(),
            token: guard.cancellation_token().clone(),
            handle_token: self.token.clone(),
            shutdown_token: self.runner.inner.shutdown.clone(),
            fencing_token: fencing,
            guard: guard.clone(),
        }
    }

    pub(crate) fn emit(&self, kind: EventKind) {
        self.runner.emit(self.number, &self.name, kind);
    }
}

/// Ends an instance whose future was dropped before it could end it (its task dropped
/// with the runtime): the work it spawned must not outlive it.
pub(crate) struct EndOnDrop<'a>(pub(crate) &'a Guard);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
