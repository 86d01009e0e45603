//! Release notifications in cluster mode: sharded pub/sub (`SSUBSCRIBE`, Redis 7).
//!
//! A pattern subscription (`PSUBSCRIBE`) sees only what is published on its own node,
//! and plain `PUBLISH` in a cluster is broadcast to every node. Instead the release
//! scripts `SPUBLISH` on the name's channel `<namespace>:released:{<name>}`, which shares
//! the lock's hash tag and so lives on the name's shard, and the backend `SSUBSCRIBE`s to
//! the channel of each name someone waits for, on one cluster connection (RESP3, its
//! pushed messages handed to [`push`]), and unsubscribes once nobody waits for it.
//!
//! The `redis` crate's cluster connection keeps track of the subscriptions and makes
//! them again on the slot's new master after a failover or a slot migration (and after
//! it reconnects to a node). A release published while a subscription is being moved is
//! missed, so every waiter is woken (spuriously) when a node's connection drops, and a
//! waiter whose channel the server unsubscribed (`sunsubscribe` pushed after the slot
//! moved) is woken too: the runner then tries to acquire again and waits anew.
//!
//! [`ShardedNotifier::is_active`] follows the same events: a dropped node connection
//! makes it `false`, and a subscription made again (the client's own, pushed as
//! `ssubscribe` once it reconnected the node) or a new one makes it `true` again.
//!
//! A subscription is made when a wait starts, so a release between the caller's failed
//! acquire and the subscription would be missed: once subscribed, the wait checks that
//! the lock is still held (see [`ShardedNotifier::released`]) and returns at once if not.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leasehold_core::{Error, Result};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};

use crate::cluster;
use crate::config::Settings;
use crate::config::cluster::ClusterSettings;
use crate::error::{self, NAME};
use crate::notify::Channel;

const OPERATION: &str = "wait for release";

/// The sharded pub/sub side of a backend in cluster mode.
pub(crate) struct ShardedNotifier {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Release channel -> its waiters. An entry lives while someone waits on it.
    waiters: Waiters,
    /// The connection and its subscriptions; locked while one is made or undone.
    link: tokio::sync::Mutex<Link>,
    /// Whether the connection is up (as far as we know): shared with the push handler.
    active: Arc<AtomicBool>,
}

type Waiters = Arc<Mutex<HashMap<String, Arc<Channel>>>>;

fn lock(waiters: &Waiters) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
    // Each critical section leaves the map whole: a poisoned lock holds no half-updated
    // state.
    waiters
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pushed message: a release wakes its channel's waiters if it is for this backend
/// (`waiter_id`, see [`wakes`](crate::notify::wakes)); a dropped node connection wakes
/// every waiter and clears `active`, a subscription the server ended wakes its own, and a
/// subscription made (again, after the client reconnected a node) sets `active`.
fn push(waiters: &Waiters, active: &AtomicBool, waiter_id: &str, info: &PushInfo) {
    match info.kind {
        PushKind::SSubscribe => active.store(true, Ordering::Relaxed),
        PushKind::SMessage | PushKind::SUnsubscribe => {
            if let Some(Value::BulkString(channel)) = info.data.first()
                && let Ok(channel) = std::str::from_utf8(channel)
                && let Some(entry) = lock(waiters).get(channel)
            {
                match (&info.kind, info.data.get(1)) {
                    (PushKind::SMessage, Some(Value::BulkString(payload))) => {
                        entry.deliver(payload, waiter_id);
                    }
                    _ => entry.notify.notify_waiters(),
                }
            }
        }
        PushKind::Disconnection => {
            active.store(false, Ordering::Relaxed);
            for entry in lock(waiters).values() {
                entry.notify.notify_waiters();
            }
        }
        _ => {}
    }
}

#[derive(Default)]
struct Link {
    conn: Option<ClusterConnection>,
    subscribed: HashSet<String>,
}

impl ShardedNotifier {
    /// Makes the pub/sub cluster connection. A failure is logged, not returned: the
    /// backend works without notifications, and the next wait connects again. Messages
    /// naming a waiter id other than `waiter_id` wake nobody once registered (see
    /// [`wakes`](crate::notify::wakes)).
    pub(crate) async fn start(
        settings: &Settings,
        cluster: &ClusterSettings,
        waiter_id: String,
    ) -> Result<Self> {
        let waiters = Waiters::default();
        let active = Arc::new(AtomicBool::new(false));
        let push = {
            let waiters = Arc::clone(&waiters);
            let active = Arc::clone(&active);
            move |info: PushInfo| -> std::result::Result<(), ()> {
                push(&waiters, &active, &waiter_id, &info);
                Ok(())
            }
        };
        let shared = Arc::new(Shared {
            client: cluster::client(settings, cluster, Some(push))?,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            waiters,
            link: tokio::sync::Mutex::new(Link::default()),
            active,
        });
        if let Err(err) = shared.connect(&mut *shared.link.lock().await).await {
            tracing::warn!(
                error = %err.chain(),
                "redis release notifications unavailable; waiters fall back to polling"
            );
        }
        Ok(Self { shared })
    }

    /// Whether the pub/sub connection is up: `false` from a node connection's drop until
    /// a subscription is made again (by the client after it reconnects the node, or by
    /// the next wait).
    pub(crate) fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Whether someone here waits on `channel` while the connection is up: what makes
    /// `expires_in` register in the name's waiters (see the `notify` module). The
    /// channel's own subscription may still be under way: a release picking this
    /// backend before it is made is missed, as one before any subscription is, and the
    /// wait's check that the lock is still held covers both.
    pub(crate) fn waits_on(&self, channel: &str) -> bool {
        self.is_active() && self.shared.waiters().contains_key(channel)
    }

    /// This backend registered in the waiters of `channel`'s name (see
    /// [`Channel::registered`]); nothing if nobody waits on it any more.
    pub(crate) fn registered(&self, channel: &str) {
        if let Some(entry) = self.shared.waiters().get(channel) {
            entry.registered();
        }
    }

    /// Resolves when `channel` announces a release, or spuriously (a node's connection
    /// dropped, the slot moved, or `still_held` says the lock is free already); fails if
    /// the subscription cannot be made.
    pub(crate) async fn released(
        &self,
        channel: &str,
        still_held: impl Future<Output = Result<bool>>,
    ) -> Result<()> {
        let waiter = Waiter::register(&self.shared, channel);
        let notified = waiter.entry.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The first poll only registers: the runner polls a wait once before it tries to
        // acquire and drops it if the acquire succeeds, which then costs no subscription.
        // The check below covers a release before the subscription.
        tokio::task::yield_now().await;
        self.shared.subscribe(channel).await?;
        if !still_held.await? {
            return Ok(());
        }
        notified.await;
        Ok(())
    }
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        lock(&self.waiters)
    }

    async fn connect(&self, link: &mut Link) -> Result<ClusterConnection> {
        if let Some(conn) = &link.conn {
            return Ok(conn.clone());
        }
        let connected =
            tokio::time::timeout(self.connect_timeout, self.client.get_async_connection()).await;
        let conn = match connected {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Err(error::from_redis(err, "subscribe", self.connect_timeout)),
            Err(_) => return Err(Error::timeout(NAME, "subscribe", self.connect_timeout)),
        };
        link.conn = Some(conn.clone());
        link.subscribed.clear();
        self.active.store(true, Ordering::Relaxed);
        tracing::debug!("redis cluster release notifications connected");
        Ok(conn)
    }

    /// Subscribes to `channel` unless it is already.
    async fn subscribe(&self, channel: &str) -> Result<()> {
        let mut link = self.link.lock().await;
        let mut conn = match self.connect(&mut link).await {
            Ok(conn) => conn,
            Err(err) => {
                self.active.store(false, Ordering::Relaxed);
                return Err(Error::unavailable(NAME, OPERATION, err));
            }
        };
        // Recorded before it is sent: a wait dropped while the subscription is under way
        // leaves it recorded, so that the unsubscription its waiter starts undoes it.
        if !link.subscribed.insert(channel.to_owned()) {
            return Ok(());
        }
        let subscribed = tokio::time::timeout(self.request_timeout, conn.ssubscribe(channel)).await;
        let err = match subscribed {
            Ok(Ok(())) => {
                self.active.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Err(err)) => error::from_redis(err, "subscribe", self.request_timeout),
            Err(_) => Error::timeout(NAME, "subscribe", self.request_timeout),
        };
        // The next wait tries again. The connection stays: the other channels'
        // subscriptions are on it, and the client reconnects its nodes by itself (this
        // one may be a master that just failed, its replica not promoted yet).
        link.subscribed.remove(channel);
        Err(Error::unavailable(NAME, OPERATION, err))
    }

    /// Unsubscribes from `channel` if nobody waits for it any more.
    async fn unsubscribe(&self, channel: String) {
        let mut link = self.link.lock().await;
        if self.waiters().contains_key(&channel) || !link.subscribed.remove(&channel) {
            return;
        }
        let Some(mut conn) = link.conn.clone() else {
            return;
        };
        let done = tokio::time::timeout(self.request_timeout, conn.sunsubscribe(&channel)).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::debug!(%channel, "could not unsubscribe from a release channel");
        }
    }
}

/// One waiter's entry in the map, removed when the last waiter on its channel leaves
/// (and the channel then unsubscribed in the background).
struct Waiter {
    shared: Arc<Shared>,
    channel: String,
    entry: Arc<Channel>,
}

impl Waiter {
    fn register(shared: &Arc<Shared>, channel: &str) -> Self {
        let entry = Arc::clone(shared.waiters().entry(channel.to_owned()).or_default());
        Self {
            shared: Arc::clone(shared),
            channel: channel.to_owned(),
            entry,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.shared.waiters();
        // Counts only change under this lock: two references are the map's and ours.
        if waiters
            .get(&self.channel)
            .is_some_and(|entry| Arc::strong_count(entry) == 2)
        {
            waiters.remove(&self.channel);
            drop(waiters);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let shared = Arc::clone(&self.shared);
                let channel = std::mem::take(&mut self.channel);
                runtime.spawn(async move { shared.unsubscribe(channel).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "00000000000000aa";

    fn pushed(kind: PushKind, channel: &str) -> PushInfo {
        PushInfo {
            kind,
            data: vec![Value::BulkString(channel.as_bytes().to_vec())],
        }
    }

    #[test]
    fn a_dropped_node_turns_notifications_off_and_a_subscription_on_again() {
        let waiters = Waiters::default();
        let active = AtomicBool::new(true);
        let entry = Arc::clone(lock(&waiters).entry("ch".to_owned()).or_default());
        let woken = entry.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        push(&waiters, &active, OWN, &pushed(PushKind::Disconnection, ""));
        assert!(!active.load(Ordering::Relaxed), "a dropped node connection");
        assert!(
            futures::FutureExt::now_or_never(woken).is_some(),
            "the waiter is woken by the drop"
        );
        push(&waiters, &active, OWN, &pushed(PushKind::SMessage, "ch"));
        assert!(
            !active.load(Ordering::Relaxed),
            "a message on another node's connection does not say the dropped one is back"
        );
        push(&waiters, &active, OWN, &pushed(PushKind::SSubscribe, "ch"));
        assert!(
            active.load(Ordering::Relaxed),
            "the client subscribed again once it reconnected the node"
        );
    }

    #[test]
    fn a_release_wakes_only_the_picked_backend_or_everyone() {
        let waiters = Waiters::default();
        let active = AtomicBool::new(true);
        let entry = Arc::clone(lock(&waiters).entry("ch".to_owned()).or_default());
        let message = |payload: &str| PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                Value::BulkString(b"ch".to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ],
        };
        let woken_by = |payload: &str| {
            let waited = entry.notify.notified();
            tokio::pin!(waited);
            waited.as_mut().enable();
            push(&waiters, &active, OWN, &message(payload));
            futures::FutureExt::now_or_never(waited).is_some()
        };
        assert!(
            woken_by("00000000000000bb"),
            "not registered: every release wakes"
        );
        entry.registered();
        assert!(!woken_by("00000000000000bb"), "another backend was picked");
        assert!(woken_by(OWN), "this backend was picked");
        assert!(woken_by(""), "everyone");
        assert!(woken_by("legacy"), "not a waiter id");
    }
}
