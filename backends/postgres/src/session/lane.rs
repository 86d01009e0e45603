//! The lane: the slot the lock session's state lives in, so that a caller can take it
//! while the session task is idle and run its statement on its own task.
//!
//! Through the session task, every statement cost two task hand-offs, the command to the
//! task and its answer back, often each a wake-up of the other worker thread. An acquire
//! plus a release paid four. Measured against a plain connection running the library's
//! own two statements from the caller's task, that was 95 to 100 µs of a p50 of about
//! 700 µs on this project's (busy) benchmark machine; the rest of the gap to a bare
//! `pg_try_advisory_lock` + `pg_advisory_unlock` is the statements themselves (the
//! fencing and heartbeat row writes).
//!
//! The session's state (its connection, the locks it holds, the generation and serials)
//! is in one [`Lane`] slot. The session task takes it out to run a command or handle a
//! notification and puts it back; while it is back, the task waits on the command channel
//! and on the connection's socket, polling a fresh `PgListener::try_recv` on each wake
//! (it is cancel-safe: a message is consumed only once whole). A caller finding the
//! state in the slot, with no command queued before it, takes it, runs its acquire or
//! release on its own task, puts it back and wakes the task, which then listens again.
//! Otherwise (the task is busy, commands are queued) the caller sends its command as
//! before, so requests keep their order and never wait for one another on the lane.
//!
//! Invariants:
//!
//! - Whoever holds the state is the only one on the connection, and runs the same
//!   methods the task runs: the held locks, the generation and serials, revocation on a
//!   failed session and the refresh batching (refreshes always go through the task) are
//!   kept the same way on either path.
//! - A notification that arrives during a statement on the lane is buffered by the
//!   listener and handed out by the task's next `try_recv`.
//! - A caller that gives up mid-statement (dropped, timed out) hands its unfinished
//!   statement, state and all, to the task ([`Slot::Orphan`]), which runs it to its end
//!   before anything else: its answer is read off the connection, the state is put back,
//!   and the answer is dropped, as an undeliverable reply is on the task's path. A lock
//!   the statement took is in a dropped lease link, which sends its release to the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;

/// Where the session's state is (see the module docs).
enum Slot<S> {
    /// Idle: the task listens; a caller may take it.
    Here(Box<S>),
    /// Taken, by the task or by a caller.
    Out,
    /// A caller gave up mid-statement: the task finishes the statement, which gives the
    /// state back.
    Orphan(BoxFuture<'static, Box<S>>),
    /// The task has ended.
    Closed,
}

struct Inner<S> {
    slot: Slot<S>,
    /// The session task's waker, woken when the slot changes under it.
    task: Option<Waker>,
}

/// The slot of one session's state (see the module docs).
pub(crate) struct Lane<S> {
    inner: Mutex<Inner<S>>,
    /// How many requests ran on the lane, for the tests.
    lent: AtomicU64,
}

/// What the session task took out of the slot.
pub(crate) enum Taken<S, E> {
    /// The state and the event that woke the task.
    Event(Box<S>, E),
    /// A statement a caller gave up on, to finish first: it yields the state.
    Orphan(BoxFuture<'static, Box<S>>),
    /// The slot was closed.
    Closed,
}

impl<S: Send + 'static> Lane<S> {
    pub(crate) fn new(state: S) -> Self {
        Self {
            inner: Mutex::new(Inner {
                slot: Slot::Here(Box::new(state)),
                task: None,
            }),
            lent: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock leaves a consistent slot (every change is one
        // assignment), so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many requests ran on the lane.
    #[cfg(test)]
    pub(crate) fn lent(&self) -> u64 {
        self.lent.load(Ordering::Relaxed)
    }

    /// Runs `run` on the state on the caller's task if the state is idle and `ready`
    /// says so; `None` otherwise. The state goes back when the future ends, or to the
    /// task to finish if the future is dropped first.
    pub(crate) fn try_run<T: Send + 'static>(
        self: &Arc<Self>,
        ready: impl FnOnce(&S) -> bool,
        run: impl FnOnce(Box<S>) -> BoxFuture<'static, (Box<S>, T)>,
    ) -> Option<LaneCall<S, T>> {
        let state = {
            let mut inner = self.lock();
            match &inner.slot {
                Slot::Here(state) if ready(state) => {}
                _ => return None,
            }
            match std::mem::replace(&mut inner.slot, Slot::Out) {
                Slot::Here(state) => state,
                _ => return None,
            }
        };
        self.lent.fetch_add(1, Ordering::Relaxed);
        Some(LaneCall {
            lane: Arc::clone(self),
            run: Some(run(state)),
        })
    }

    /// Puts the state back and wakes the task, which listens on it again.
    pub(crate) fn put_back(&self, state: Box<S>) {
        let task = {
            let mut inner = self.lock();
            inner.slot = Slot::Here(state);
            inner.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Hands a statement a caller gave up on to the task.
    fn orphan(&self, run: BoxFuture<'static, Box<S>>) {
        let task = {
            let mut inner = self.lock();
            inner.slot = Slot::Orphan(run);
            inner.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Marks the task ended: callers use the command channel, which fails.
    pub(crate) fn close(&self) {
        self.lock().slot = Slot::Closed;
    }

    /// For the session task: waits until `event` reports something on the idle state
    /// (polled with the slot locked, so it must not block), or until a statement is
    /// orphaned, and takes the state (or the orphan) out of the slot.
    pub(crate) fn poll_task<E>(
        &self,
        cx: &mut Context<'_>,
        event: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<E>,
    ) -> Poll<Taken<S, E>> {
        let mut inner = self.lock();
        let taken = match &mut inner.slot {
            Slot::Here(state) => match event(state, cx) {
                Poll::Ready(event) => match std::mem::replace(&mut inner.slot, Slot::Out) {
                    Slot::Here(state) => Taken::Event(state, event),
                    _ => Taken::Closed,
                },
                Poll::Pending => {
                    inner.task = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            },
            Slot::Orphan(_) => match std::mem::replace(&mut inner.slot, Slot::Out) {
                Slot::Orphan(run) => Taken::Orphan(run),
                _ => Taken::Closed,
            },
            Slot::Out => {
                inner.task = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Slot::Closed => Taken::Closed,
        };
        Poll::Ready(taken)
    }
}

/// A request running on the lane (see [`Lane::try_run`]).
pub(crate) struct LaneCall<S: Send + 'static, T: Send + 'static> {
    lane: Arc<Lane<S>>,
    run: Option<BoxFuture<'static, (Box<S>, T)>>,
}

impl<S: Send + 'static, T: Send + 'static> Future for LaneCall<S, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(run) = self.run.as_mut() else {
            // Polled after completion: nothing more to give.
            return Poll::Pending;
        };
        match run.as_mut().poll(cx) {
            Poll::Ready((state, answer)) => {
                self.run = None;
                self.lane.put_back(state);
                Poll::Ready(answer)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: Send + 'static, T: Send + 'static> Drop for LaneCall<S, T> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            // The answer is dropped when the task has finished the statement: a lease in
            // it gives its lock back through its link, as an undeliverable reply does.
            self.lane.orphan(Box::pin(async move { run.await.0 }));
        }
    }
}
