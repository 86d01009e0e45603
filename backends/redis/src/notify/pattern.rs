//! The release channels' pattern, subscribed only while this backend has waiters.
//!
//! A release that picked no registered waiter publishes [`WAKE_ALL`](crate::scripts::WAKE_ALL)
//! on the name's release channel, and every connection subscribed to the pattern
//! `<namespace>:released:*` receives it, whatever name it is for. A process that only
//! holds leases has nothing to wake, yet used to receive every such release of every
//! name, its own included: on an uncontended acquire + release, reading back its own
//! release's message cost the process a wake-up of a runtime thread per release (about a
//! tenth of the round trip on the 2-core benchmark machine).
//!
//! So the pattern follows the local waiters: a new connection subscribes it (as it
//! always did, which also tells at once whether the server allows it), the first message
//! that arrives while nobody here waits unsubscribes it, and the first wait after that
//! subscribes it again. Only one message per idle spell is read for nothing, and no timer
//! is needed. The wake channel, where a release that picked this backend tells it, stays
//! subscribed throughout.
//!
//! A wait that starts while the pattern is off could miss a release published before the
//! new subscription took effect; such a wait is woken (spuriously) once it has, as after
//! a reconnection, so a release published after the wait's first poll is never lost.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use redis::RedisResult;
use redis::aio::PubSubSink;
use tokio::sync::watch;

/// The pattern's subscription on the current pub/sub connection.
#[derive(Debug)]
pub(super) struct Pattern {
    name: String,
    /// The current connection's sink (`None` while there is none), and how many
    /// connections there have been.
    current: Mutex<Current>,
    /// Whether the pattern is subscribed (confirmed by the server) on the current
    /// connection.
    on: watch::Sender<bool>,
    /// One (un)subscription at a time, so that they reach the server in the order their
    /// outcomes are recorded.
    turn: tokio::sync::Mutex<()>,
    /// How many [`Pattern::settle`] calls are under way: while one is, the pattern may be
    /// on its way off, and a wait that starts must not count on it (see
    /// [`Pattern::is_steady_on`]).
    settling: AtomicUsize,
    /// How long one (un)subscription may take.
    timeout: Duration,
}

impl Pattern {
    pub(super) fn new(name: String, timeout: Duration) -> Self {
        Self {
            name,
            current: Mutex::new(Current::default()),
            on: watch::channel(false).0,
            turn: tokio::sync::Mutex::new(()),
            settling: AtomicUsize::new(0),
            timeout,
        }
    }

    /// The pattern, `<namespace>:released:*` with the namespace's glob characters
    /// escaped.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// A new connection, on which the pattern was subscribed with the wake channel.
    pub(super) fn connected(&self, sink: PubSubSink) {
        let mut current = self.current();
        current.generation += 1;
        current.sink = Some(sink);
        self.on.send_replace(true);
    }

    /// The connection is gone: nothing is subscribed.
    pub(super) fn down(&self) {
        self.current().sink = None;
        self.on.send_replace(false);
    }

    /// Whether the pattern is subscribed now.
    pub(super) fn is_on(&self) -> bool {
        *self.on.borrow()
    }

    /// Whether the pattern is subscribed and no (un)subscription is under way: what a
    /// wait that has just registered its waiter may count on. A settle that started
    /// before the waiter registered may have found nobody waiting and be unsubscribing;
    /// one that starts after sees the waiter (the waiters' map is read under its lock
    /// after `settling` is raised), so it never unsubscribes under a wait that saw this
    /// `true`.
    pub(super) fn is_steady_on(&self) -> bool {
        self.is_on() && self.settling.load(AtomicOrdering::SeqCst) == 0
    }

    /// Follows whether the pattern is subscribed.
    pub(super) fn watch(&self) -> watch::Receiver<bool> {
        self.on.subscribe()
    }

    /// Subscribes or unsubscribes the pattern until its state is what `wanted` says
    /// (asked again after each change, since waiters come and go meanwhile). Nothing
    /// while there is no connection: the next one subscribes it. An error (refused, or
    /// no answer within the timeout) leaves the connection in an unknown state: the
    /// caller drops it.
    pub(super) async fn settle(&self, wanted: impl Fn() -> bool) -> RedisResult<()> {
        // Raised before `wanted` is first asked (see `is_steady_on`).
        self.settling.fetch_add(1, AtomicOrdering::SeqCst);
        let _settling = Settling(&self.settling);
        let _turn = self.turn.lock().await;
        loop {
            let want = wanted();
            if want == self.is_on() {
                return Ok(());
            }
            let (generation, mut sink) = {
                let current = self.current();
                let Some(sink) = current.sink.clone() else {
                    return Ok(());
                };
                (current.generation, sink)
            };
            let (command, change) = if want {
                ("PSUBSCRIBE", sink.psubscribe(&self.name).boxed())
            } else {
                ("PUNSUBSCRIBE", sink.punsubscribe(&self.name).boxed())
            };
            match tokio::time::timeout(self.timeout, change).await {
                Ok(Ok(())) => {
                    // Unless the connection was replaced meanwhile: a new one starts
                    // subscribed, whatever this one did.
                    let current = self.current();
                    if current.generation == generation && current.sink.is_some() {
                        self.on.send_replace(want);
                    }
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    return Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer to {command} within {:?}", self.timeout),
                    )));
                }
            }
        }
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        // Each critical section is a few assignments or a clone.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Lowers [`Pattern::settling`] when a settle ends, however it ends.
struct Settling<'a>(&'a AtomicUsize);

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}

/// The connection the pattern's state is about.
#[derive(Debug, Default)]
struct Current {
    generation: u64,
    sink: Option<PubSubSink>,
}
