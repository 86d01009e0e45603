//! Release notifications: one pub/sub connection per backend, dispatching to local waiters.
//!
//! The release script publishes on `<namespace>:released:<name>`, or, when it picked a
//! waiting backend, on that backend's own wake channel `<namespace>:wake:<waiter id>`
//! with the release channel's name as the message. The backend keeps a single
//! connection subscribed with `SUBSCRIBE <namespace>:wake:<its waiter id>` and, while
//! someone here waits, `PSUBSCRIBE <namespace>:released:*` (not one per key, however
//! many routines wait; see the `pattern` submodule for when the pattern is dropped and
//! taken up again), and a task that reads it and wakes the waiters of the named key.
//! Both subscriptions are made on every connection attempt, so a resubscription after a
//! lost connection hears the wake channel too. The pattern escapes the namespace's glob
//! characters; the wake channel is a plain name. A waiter registers on the first poll of
//! [`Notifier::released`], so a release published after that poll wakes it.
//!
//! Notifications are an optimisation: the runner polls at its retry interval anyway. So a
//! failed pub/sub connection never affects acquire, refresh or release. When it fails,
//! current waiters get an error (the runner falls back to polling) and the next wait
//! connects again, once, with the connect timeout: the backend keeps no timers of its own.
//! Each attempt opens a new connection with the configured credentials, so unlike a
//! `ConnectionManager` it keeps no failure of its own: a refused password is tried again
//! by the next wait, and works once it is fixed on the server.
//! Waiters that were registered while the subscription was down wake spuriously once it
//! is back, since a release published in between was missed.
//!
//! # One waiting process woken per release
//!
//! With W processes waiting for one name, waking all of them on every release makes all
//! W try at once, and all but one try for nothing: requests per handover grow with W.
//! So a release wakes one backend (the etcd backend does the same with its waiting
//! line). Each backend has a random waiter id ([`new_waiter_id`]). A backend that found
//! the name held registers in the name's waiters, the sorted set
//! `<namespace>:waiters:<name>`, with a deadline as score: the runner calls
//! `expires_in` after every failed attempt while it waits, and that request is the
//! [`REGISTER`](crate::scripts::REGISTER) script, the lock's `PTTL` and the `ZADD` in
//! one, so registering costs no request. It registers only while this backend has a
//! local waiter on the name ([`Notifier::waits_on`]) whose notifications are up: a wait
//! without them, or one the runner paused, would take a release nobody hears. The
//! release script drops the entries past their deadline, takes out the one with the
//! highest deadline (registered last, or against the longest lease left), and publishes
//! the release channel's name on that backend's wake channel: only the picked process
//! receives anything, so the others neither wake nor even read a message (with W
//! processes waiting, a release used to reach all W pub/sub connections). With none
//! left it publishes [`WAKE_ALL`], the empty message releases always published, on the
//! release channel, which every process receives. Taking the lock removes the taker's
//! own entry (in the acquire script), and a release never picks the releasing backend.
//!
//! The release channel keeps its filter: a backend that registered during its current
//! waits on the name ([`Channel`]) wakes them on a message there only if it is its own
//! id or is not a waiter id at all ([`wakes`]). Releases of this version publish only
//! [`WAKE_ALL`] there; ids come from cluster mode's scripts (see `crate::sharded`, which
//! shares the filter) and from processes that publish the picked id on the release
//! channel.
//!
//! Mixed versions keep working: a process of an older version never registers, wakes
//! on any message of the release channel, and its releases publish the empty message,
//! which wakes everyone; it is not woken by a release that picked a waiter, and learns
//! of it by polling, as an observer does (below).
//!
//! What this costs: a picked waiter that died, or stopped waiting, without leaving the
//! set (nothing removes an entry but a pick, an acquire, or its deadline: now + max(10
//! s, 2 × the lock's PTTL) when it registered) hears nothing, and the others then learn
//! that the name is free at their next `expires_in`, which the runner sends when the
//! released lease would have run out: within that lease's TTL. A caller of `released`
//! that never calls `expires_in` (such as the runner's observers) never registers and
//! is never picked: it is woken by a release that picked nobody, and learns of one that
//! picked a waiter at its next poll. A backend whose waits on a name are of both kinds
//! is woken as registered (the waits of a name share one entry): when it is picked its
//! observer wakes too.
//!
//! Behind Sentinel each attempt subscribes on the master the sentinels name at that
//! moment, so after a failover that closed the old master's connection the next wait
//! follows the master. A subscription left on a demoted master still hears releases and
//! its wake channel: replicas pass on what their master publishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use leasehold_core::{Error, Result};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::error::{self, NAME, SharedError};
use crate::scripts::WAKE_ALL;
use crate::sentinel::Target;

mod pattern;

use pattern::Pattern;

const OPERATION: &str = "wait for release";

/// How many hex digits a waiter id has.
const WAITER_ID_LEN: usize = 16;

/// A new random waiter id: 16 lowercase hex digits, one per backend.
pub(crate) fn new_waiter_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether a release message on a channel wakes this backend's waiters of it: the
/// message is `own` (this backend was picked) or is not a waiter id at all (the empty
/// [`WAKE_ALL`], or anything another version publishes), or this backend did not
/// register in the name's waiters while they wait (`registered` false: no release
/// would pick it, so every message of the release channel wakes it, as before).
pub(crate) fn wakes(payload: &[u8], own: &str, registered: bool) -> bool {
    let waiter_id = payload.len() == WAITER_ID_LEN
        && payload
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    !registered || payload == WAKE_ALL.as_bytes() || !waiter_id || payload == own.as_bytes()
}

/// The local waiters of one release channel: an entry of a notifier's map, which lives
/// while someone waits on the channel.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    /// Wakes the waiters.
    pub(crate) notify: Notify,
    /// Whether this backend registered in the name's waiters since the entry was made
    /// (see [`wakes`]).
    registered: AtomicBool,
}

impl Channel {
    /// Wakes the waiters if a release message `payload` is for this backend (`own`).
    pub(crate) fn deliver(&self, payload: &[u8], own: &str) {
        if wakes(payload, own, self.registered.load(Ordering::Relaxed)) {
            self.notify.notify_waiters();
        }
    }

    /// This backend registered in the name's waiters: from now on a release that picks
    /// another backend does not wake these waiters.
    pub(crate) fn registered(&self) {
        self.registered.store(true, Ordering::Relaxed);
    }
}

/// The state of the pub/sub connection, watched by every waiter.
#[derive(Debug, Clone)]
pub(crate) enum Status {
    /// A connection attempt is under way.
    Connecting,
    /// Subscribed: releases are being delivered.
    Subscribed,
    /// Not subscribed since this failure; the next wait starts a new attempt.
    Failed(Arc<Error>),
}

/// The pub/sub side of one backend. Dropping it stops its listener task.
#[derive(Debug)]
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    target: Arc<Target>,
    /// The release channels' pattern, subscribed while someone here waits (see the
    /// `pattern` module).
    pattern: Pattern,
    /// This backend's own channel, `<namespace>:wake:<waiter id>`: a release that picked
    /// it publishes the release channel's name there.
    wake_channel: String,
    connect_timeout: Duration,
    /// This backend's waiter id: a release message naming another id is not for us.
    waiter_id: String,
    /// Release channel -> its waiters. An entry lives while someone waits on it.
    waiters: Mutex<HashMap<String, Arc<Channel>>>,
    status: watch::Sender<Status>,
    listener: Mutex<Option<AbortHandle>>,
}

impl Notifier {
    /// Starts subscribing to `pattern` and to `wake_channel` and waits for the first attempt's outcome, so that
    /// waiters registered once the backend is built are not missed. A failure is logged,
    /// not returned: the backend works without notifications, and the next wait retries.
    /// Messages naming a waiter id other than `waiter_id` wake nobody (see [`wakes`]).
    pub(crate) async fn start(
        target: Arc<Target>,
        pattern: String,
        wake_channel: String,
        connect_timeout: Duration,
        waiter_id: String,
    ) -> Self {
        let (status, _) = watch::channel(Status::Failed(Arc::new(Error::unavailable(
            NAME,
            OPERATION,
            "not connected yet",
        ))));
        let notifier = Self {
            shared: Arc::new(Shared {
                target,
                pattern: Pattern::new(pattern, connect_timeout),
                wake_channel,
                connect_timeout,
                waiter_id,
                waiters: Mutex::new(HashMap::new()),
                status,
                listener: Mutex::new(None),
            }),
        };
        let mut status = notifier.shared.status.subscribe();
        notifier.shared.connect_if_down();
        // `wait_for` only errs if the sender is gone, and `shared` holds it.
        let outcome = status
            .wait_for(|s| !matches!(s, Status::Connecting))
            .await
            .map(|s| s.clone());
        if let Ok(Status::Failed(err)) = outcome {
            tracing::warn!(
                error = %err.chain(),
                "redis release notifications unavailable; waiters fall back to polling"
            );
        }
        notifier
    }

    /// The current state of the subscription.
    pub(crate) fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// Whether someone here waits on `channel` and would hear its release: subscribed,
    /// with a waiter registered. What makes `expires_in` register in the name's waiters.
    pub(crate) fn waits_on(&self, channel: &str) -> bool {
        matches!(*self.shared.status.borrow(), Status::Subscribed)
            && self.shared.waiters().contains_key(channel)
    }

    /// This backend registered in the waiters of `channel`'s name (see
    /// [`Channel::registered`]); nothing if nobody waits on it any more.
    pub(crate) fn registered(&self, channel: &str) {
        if let Some(entry) = self.shared.waiters().get(channel) {
            entry.registered();
        }
    }

    /// Resolves when `channel` announces a release, or spuriously after the subscription
    /// was re-established; fails if the subscription is lost or cannot be established.
    pub(crate) async fn released(&self, channel: &str) -> Result<()> {
        let waiter = Waiter::register(&self.shared, channel);
        let notified = waiter.channel.notify.notified();
        tokio::pin!(notified);
        // Register now, on the first poll: a release published after this point must
        // wake us even if the caller polls us again only after its next `try_acquire`.
        notified.as_mut().enable();
        let mut status = self.shared.status.subscribe();
        let mut pattern = self.shared.pattern.watch();
        pattern.mark_unchanged();
        // Without the pattern, a release published before it is subscribed again would
        // be missed: this wait ends (spuriously) once it is. So does a wait that starts
        // while the pattern may be on its way off.
        let pattern_was_off = !self.shared.pattern.is_steady_on();
        self.shared.connect_if_down();
        if pattern_was_off {
            self.shared.settle_pattern();
        }
        loop {
            tokio::select! {
                () = &mut notified => return Ok(()),
                Ok(()) = pattern.changed(), if pattern_was_off => {
                    if *pattern.borrow_and_update() {
                        return Ok(());
                    }
                }
                changed = status.changed() => {
                    if changed.is_err() {
                        return Err(Error::unavailable(NAME, OPERATION, "backend dropped"));
                    }
                    match &*status.borrow_and_update() {
                        Status::Connecting => {}
                        Status::Subscribed => return Ok(()),
                        Status::Failed(err) => {
                            return Err(Error::unavailable(
                                NAME,
                                OPERATION,
                                SharedError(Arc::clone(err)),
                            ));
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(listener) = self.shared.listener().take() {
            listener.abort();
        }
    }
}

impl Shared {
    fn listener(&self) -> MutexGuard<'_, Option<AbortHandle>> {
        // Each critical section is a single assignment: a poisoned lock holds no
        // half-updated state.
        self.listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts one connection attempt unless subscribed or already connecting.
    fn connect_if_down(self: &Arc<Self>) {
        let start = self.status.send_if_modified(|status| match status {
            Status::Failed(_) => {
                *status = Status::Connecting;
                true
            }
            Status::Connecting | Status::Subscribed => false,
        });
        if start {
            let task = tokio::spawn(Arc::clone(self).listen());
            *self.listener() = Some(task.abort_handle());
        }
    }

    /// Connects, subscribes, then delivers messages until the connection ends.
    async fn listen(self: Arc<Self>) {
        let connected = tokio::time::timeout(self.connect_timeout, self.subscribe()).await;
        let (sink, mut messages) = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => return self.fail(err),
            Err(_) => return self.fail(Error::timeout(NAME, "subscribe", self.connect_timeout)),
        };
        self.pattern.connected(sink);
        self.status.send_replace(Status::Subscribed);
        tracing::debug!(
            pattern = %self.pattern.name(),
            wake_channel = %self.wake_channel,
            "redis release notifications subscribed"
        );
        while let Some(message) = messages.next().await {
            self.deliver(message.get_channel_name(), message.get_payload_bytes());
        }
        self.fail(Error::unavailable(
            NAME,
            OPERATION,
            "the pub/sub connection closed",
        ));
    }

    async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream)> {
        let client = self.target.locate().await?.client;
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            // Both on every attempt, so that a resubscription after a lost connection
            // hears its own wake channel too.
            pubsub.psubscribe(self.pattern.name()).await?;
            pubsub.subscribe(&self.wake_channel).await?;
            Ok(pubsub.split())
        };
        subscribed
            .await
            .map_err(|err| error::from_redis(err, "subscribe", self.connect_timeout))
    }

    fn fail(&self, err: Error) {
        tracing::debug!(error = %err.chain(), "redis release notifications down");
        self.pattern.down();
        self.status.send_replace(Status::Failed(Arc::new(err)));
    }

    /// Subscribes the release channels' pattern if someone here waits, unsubscribes it
    /// if nobody does (see the `pattern` module), in a task of its own: the caller is the
    /// listener, which must go on reading, or a wait that must not block on it. A
    /// refused or unanswered change drops the connection, as a failed subscription
    /// does: the waiters learn of it and poll, and the next wait connects again.
    fn settle_pattern(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let wanted = || !shared.waiters().is_empty();
            if let Err(err) = shared.pattern.settle(wanted).await {
                if let Some(listener) = shared.listener().take() {
                    listener.abort();
                }
                shared.fail(error::from_redis(
                    err,
                    "subscribe the release channels",
                    shared.connect_timeout,
                ));
            }
        });
    }

    fn deliver(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        // Notified under the lock so that no clone of the entry is alive outside it, which
        // would keep `Waiter::drop` from removing the entry.
        let waiters = self.waiters();
        if waiters.is_empty() && channel != self.wake_channel {
            // A release nobody here waits for: stop hearing them until someone does.
            drop(waiters);
            // Not again while one settle is under way: it asks again after each change.
            if self.pattern.is_steady_on() {
                self.settle_pattern();
            }
            return;
        }
        if channel == self.wake_channel {
            // This backend was picked: the message names the release channel, and wakes
            // its waiters of it whether or not they registered.
            let released = std::str::from_utf8(payload).ok();
            if let Some(entry) = released.and_then(|released| waiters.get(released)) {
                entry.notify.notify_waiters();
            }
        } else if let Some(entry) = waiters.get(channel) {
            entry.deliver(payload, &self.waiter_id);
        }
    }
}

/// One waiter's entry in the map, removed when the last waiter on its channel leaves.
struct Waiter<'a> {
    shared: &'a Shared,
    name: &'a str,
    channel: Arc<Channel>,
}

impl<'a> Waiter<'a> {
    fn register(shared: &'a Shared, name: &'a str) -> Self {
        let channel = Arc::clone(shared.waiters().entry(name.to_owned()).or_default());
        Self {
            shared,
            name,
            channel,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.shared.waiters();
        // Counts only change under this lock: two references are the map's and ours.
        if waiters
            .get(self.name)
            .is_some_and(|entry| Arc::strong_count(entry) == 2)
        {
            waiters.remove(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_wakes_the_picked_backend_or_everyone() {
        let own = new_waiter_id();
        assert_eq!(own.len(), WAITER_ID_LEN);
        assert!(wakes(own.as_bytes(), &own, true), "picked");
        assert!(
            wakes(b"", &own, true),
            "everyone (and older versions' releases)"
        );
        assert!(
            !wakes(b"0123456789abcdef", "fedcba9876543210", true),
            "someone else"
        );
        assert!(wakes(b"not a waiter id!", &own, true), "an unknown message");
        assert!(
            wakes(b"0123456789ABCDEF", &own, true),
            "upper case: not an id"
        );
        assert!(
            wakes(b"0123456789abcdef", "fedcba9876543210", false),
            "a backend that did not register is woken by every release"
        );
    }
}
