//! Release notifications: one pub/sub connection per backend, dispatching to local waiters.
//!
//! The release script publishes on `<namespace>:released:<name>`. The backend keeps a
//! single connection subscribed with `PSUBSCRIBE <namespace>:released:*` (not one per key,
//! however many routines wait) and a task that reads it and wakes the waiters of the named
//! key. A waiter registers on the first poll of [`Notifier::released`], so a release
//! published after that poll wakes it.
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
//! Behind Sentinel each attempt subscribes on the master the sentinels name at that
//! moment, so after a failover that closed the old master's connection the next wait
//! follows the master. A subscription left on a demoted master still hears releases:
//! replicas pass on what their master publishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use leasehold_core::{Error, Result};
use redis::aio::PubSub;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::error::{self, NAME, SharedError};
use crate::sentinel::Target;

const OPERATION: &str = "wait for release";

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
    pattern: String,
    connect_timeout: Duration,
    /// Release channel -> its waiters. An entry lives while someone waits on it.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    status: watch::Sender<Status>,
    listener: Mutex<Option<AbortHandle>>,
}

impl Notifier {
    /// Starts subscribing to `pattern` and waits for the first attempt's outcome, so that
    /// waiters registered once the backend is built are not missed. A failure is logged,
    /// not returned: the backend works without notifications, and the next wait retries.
    pub(crate) async fn start(
        target: Arc<Target>,
        pattern: String,
        connect_timeout: Duration,
    ) -> Self {
        let (status, _) = watch::channel(Status::Failed(Arc::new(Error::unavailable(
            NAME,
            OPERATION,
            "not connected yet",
        ))));
        let notifier = Self {
            shared: Arc::new(Shared {
                target,
                pattern,
                connect_timeout,
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

    /// Resolves when `channel` announces a release, or spuriously after the subscription
    /// was re-established; fails if the subscription is lost or cannot be established.
    pub(crate) async fn released(&self, channel: &str) -> Result<()> {
        let waiter = Waiter::register(&self.shared, channel);
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        // Register now, on the first poll: a release published after this point must
        // wake us even if the caller polls us again only after its next `try_acquire`.
        notified.as_mut().enable();
        let mut status = self.shared.status.subscribe();
        self.shared.connect_if_down();
        loop {
            tokio::select! {
                () = &mut notified => return Ok(()),
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

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
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
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => return self.fail(err),
            Err(_) => return self.fail(Error::timeout(NAME, "subscribe", self.connect_timeout)),
        };
        self.status.send_replace(Status::Subscribed);
        tracing::debug!(pattern = %self.pattern, "redis release notifications subscribed");
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            self.wake(message.get_channel_name());
        }
        self.fail(Error::unavailable(
            NAME,
            OPERATION,
            "the pub/sub connection closed",
        ));
    }

    async fn subscribe(&self) -> Result<PubSub> {
        let client = self.target.locate().await?.client;
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(&self.pattern).await?;
            Ok(pubsub)
        };
        subscribed
            .await
            .map_err(|err| error::from_redis(err, "subscribe", self.connect_timeout))
    }

    fn fail(&self, err: Error) {
        tracing::debug!(error = %err.chain(), "redis release notifications down");
        self.status.send_replace(Status::Failed(Arc::new(err)));
    }

    fn wake(&self, channel: &str) {
        // Notified under the lock so that no clone of the entry is alive outside it, which
        // would keep `Waiter::drop` from removing the entry.
        if let Some(notify) = self.waiters().get(channel) {
            notify.notify_waiters();
        }
    }
}

/// One waiter's entry in the map, removed when the last waiter on its channel leaves.
struct Waiter<'a> {
    shared: &'a Shared,
    channel: &'a str,
    notify: Arc<Notify>,
}

impl<'a> Waiter<'a> {
    fn register(shared: &'a Shared, channel: &'a str) -> Self {
        let notify = Arc::clone(shared.waiters().entry(channel.to_owned()).or_default());
        Self {
            shared,
            channel,
            notify,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.shared.waiters();
        // Counts only change under this lock: two references are the map's and ours.
        if waiters
            .get(self.channel)
            .is_some_and(|notify| Arc::strong_count(notify) == 2)
        {
            waiters.remove(self.channel);
        }
    }
}
