//! Release notifications, heard on the lock session itself and dispatched to per-key
//! waiters.
//!
//! A release runs `pg_notify('routine_lock_released', '<lock key>')` in the statement that
//! unlocks. The lock session `LISTEN`s on that channel (see `connect`), so a process needs
//! one connection, not two: the session task (see the `session` module) reads
//! notifications whenever no statement runs, and those that arrive during a statement
//! are buffered by the client and read right after it. It hands each to
//! [`Dispatch::released`], which wakes the waiters of that key.
//!
//! When the session is dropped (lost, ended by the server, abandoned), notifications may
//! have been missed, so every waiter is woken (spurious wake-ups are allowed) and the
//! dispatch is marked down; a waiter that then asks to wait sends the session task
//! [`Command::Listen`], which opens a new session (no retry timer of its own: the runner
//! sets the pace). When a new session opens, for whatever request, every waiter is woken
//! again, since a release may have been missed in between.
//!
//! A release that finds a waiter registered for its key in the waiter table wakes that
//! waiter's session alone, on the session's own channel (see the `waiters` module), with
//! the same payload; the session task hands it to [`Dispatch::released`] as well. So only
//! one process wakes, and every local waiter of the key in it.
//!
//! The same session hears `force_release` announce the lock session it ended
//! (`routine_lock_session_ended`, payload the session id): the session task drops that
//! session if it is its own, so its holders are revoked at once instead of at their next
//! refresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leasehold_core::{Error, Result};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::CHANNEL;
use crate::error::{Message, NAME, with_timeout};
use crate::message::Command;

const OPERATION: &str = "wait for release";

type Waiters = Mutex<HashMap<i64, Arc<Notify>>>;

/// The waiters of one backend and whether its lock session listens, shared by the
/// backend (which registers waiters) and the session task (which wakes them).
#[derive(Debug)]
pub(crate) struct Dispatch {
    waiters: Waiters,
    /// The keys for which the lock session has a row in the waiter table (see the
    /// `waiters` module), as far as the session task knows: a waiter that stops waiting
    /// without being woken has the row deleted, and nobody else sends the session task
    /// a message for it.
    registered: Mutex<HashSet<i64>>,
    /// Whether a lock session listens now.
    listening: watch::Sender<bool>,
}

impl Dispatch {
    /// A dispatch for a session that listens from the start.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            waiters: Waiters::default(),
            registered: Mutex::default(),
            listening: watch::channel(true).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Arc<Notify>>> {
        // Every critical section is one insert, remove or drain: nothing is left half done.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A notification on the release channel: wakes the waiters of the key it names.
    pub(crate) fn released(&self, payload: &str) {
        let Ok(hash) = payload.parse::<i64>() else {
            tracing::debug!(payload, "ignoring a foreign notification on {CHANNEL}");
            return;
        };
        if let Some(notify) = self.lock().remove(&hash) {
            notify.notify_waiters();
        }
    }

    /// Whether a waiter of `hash` in this process waits for its release now (registered
    /// on its first poll, until woken or dropped): only then does `expires_in` register
    /// the session as a waiter for the key (see the `waiters` module).
    pub(crate) fn is_waiting(&self, hash: i64) -> bool {
        self.lock().contains_key(&hash)
    }

    /// The registrations of the lock session (see [`registered`](Self::registered)).
    fn registrations(&self) -> MutexGuard<'_, HashSet<i64>> {
        // One insert, remove or clear per critical section.
        self.registered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the lock session is registered as a waiter for any key.
    pub(crate) fn has_registrations(&self) -> bool {
        !self.registrations().is_empty()
    }

    /// The lock session registered as a waiter for `hash`.
    pub(crate) fn registered(&self, hash: i64) {
        self.registrations().insert(hash);
    }

    /// The lock session's row for `hash` is gone (a release that woke it or its own
    /// release deleted it, or the session task deletes it now): whether it was there.
    pub(crate) fn unregistered(&self, hash: i64) -> bool {
        self.registrations().remove(&hash)
    }

    /// A new session listens: wakes every waiter, since a release may have been missed.
    pub(crate) fn up(&self) {
        self.listening.send_replace(true);
        self.wake_all();
    }

    /// The session was dropped, or could not be opened: wakes every waiter. Its
    /// registrations are the next session's to delete.
    pub(crate) fn down(&self, reason: String) {
        tracing::debug!("release notifications are down: {reason}");
        self.listening.send_replace(false);
        self.registrations().clear();
        self.wake_all();
    }

    fn wake_all(&self) {
        for (_, notify) in self.lock().drain() {
            notify.notify_waiters();
        }
    }
}

/// Drops the waiters' entry of `hash` with the last waiter (see `Notifier::released`),
/// and then the lock session's registration for the key, if it has one.
struct Sweep<'a> {
    dispatch: &'a Dispatch,
    session: &'a mpsc::UnboundedSender<Command>,
    hash: i64,
    notify: Arc<Notify>,
}

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        let mut waiters = self.dispatch.lock();
        // Counts only change under this lock: the two references are the map's and
        // ours. A wake-up removes the entry, and a later waiter may have put a new one
        // in its place: that one is not ours to remove.
        if waiters.get(&self.hash).is_some_and(|notify| {
            Arc::ptr_eq(notify, &self.notify) && Arc::strong_count(notify) == 2
        }) {
            waiters.remove(&self.hash);
            drop(waiters);
            // Nobody here waits for the key any more, and no release woke us: a release
            // that picked this session would wake nobody. Only registered keys cost a
            // message, so a holder's acquires (which drop the runner's wait) cost none.
            // If the task is gone, so is the session.
            if self.dispatch.registrations().contains(&self.hash) {
                let _ = self.session.send(Command::Unwait { hash: self.hash });
            }
        }
    }
}

/// The backend's side: registers waiters, and asks the session task to listen again
/// when its session is down.
#[derive(Debug)]
pub(crate) struct Notifier {
    dispatch: Arc<Dispatch>,
    session: mpsc::UnboundedSender<Command>,
    timeout: Duration,
}

impl Notifier {
    pub(crate) fn new(
        dispatch: Arc<Dispatch>,
        session: mpsc::UnboundedSender<Command>,
        timeout: Duration,
    ) -> Self {
        Self {
            dispatch,
            session,
            timeout,
        }
    }

    /// Resolves when a release of `hash` is announced, or when the session listening for
    /// it changes (a notification may have been missed). Interest is registered on the
    /// first poll.
    pub(crate) async fn released(&self, hash: i64) -> Result<()> {
        // Removes the entry when the last waiter of `hash` is gone (a waiter that
        // acquired the key instead), so a process holding many keys keeps none per key.
        let sweep = Sweep {
            dispatch: &self.dispatch,
            session: &self.session,
            hash,
            notify: Arc::clone(self.dispatch.lock().entry(hash).or_default()),
        };
        let notified = sweep.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let listening = *self.dispatch.listening.borrow();
        if !listening {
            // Opening a session wakes every waiter, this one included: the caller tries
            // at once, on the new session.
            let (reply, answer) = oneshot::channel();
            self.session
                .send(Command::Listen { reply })
                .map_err(|_| listener_error("the lock session task has stopped".into()))?;
            with_timeout(OPERATION, self.timeout, async {
                answer
                    .await
                    .map_err(|_| listener_error("the lock session task has stopped".into()))?
            })
            .await?;
        }
        notified.await;
        Ok(())
    }
}

/// The error of a wait whose session could not listen.
pub(crate) fn listener_error(reason: String) -> Error {
    Error::unavailable(NAME, OPERATION, Message(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_release_wakes_only_the_waiters_of_its_key() {
        let dispatch = Dispatch::new();
        let (tx, _rx) = mpsc::unbounded_channel();
        let notifier = Notifier::new(Arc::clone(&dispatch), tx, Duration::from_secs(1));
        let mut one = Box::pin(notifier.released(1));
        let mut two = Box::pin(notifier.released(2));
        assert!(futures::poll!(one.as_mut()).is_pending());
        assert!(futures::poll!(two.as_mut()).is_pending());
        dispatch.released("1");
        assert!(
            futures::poll!(one.as_mut()).is_ready(),
            "key 1 was released"
        );
        assert!(futures::poll!(two.as_mut()).is_pending(), "key 2 was not");
        dispatch.down("lost".into());
        assert!(
            futures::poll!(two.as_mut()).is_ready(),
            "a lost session wakes every waiter"
        );
    }
}
