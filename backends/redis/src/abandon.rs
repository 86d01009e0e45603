//! Acquires whose outcome the caller never learns: their lock is given back.
//!
//! An acquire may take the lock and still not hand a lease out: its request failed or
//! timed out after it was sent, or the caller dropped the future (the runner does when
//! its own request timeout passes first). The lock would then stay held, by nobody, for
//! its whole TTL. So an [`Attempt`] that ends without an answer releases its lock in the
//! background.
//!
//! The release runs on the server after the acquire: even an acquire still waiting in a
//! paused server is undone after it runs. It is sent on the connection the acquire went
//! on (recorded in a [`Route`]), queued behind it: the multiplexed connection, or the
//! direct lane (see [`crate::lane`]), where it waits behind the dropped acquire's answer
//! and is sent even if its own request gives up first. The release compares the start of the lock's value with the random owner
//! prefix this attempt wrote (the server completed the rest, see
//! [`ABANDON`](scripts::ABANDON)), which no other attempt of any process writes, so a lock
//! held by anyone else is left alone; and it announces the release as a release does,
//! waking one waiter, which tries at once.

use std::sync::Arc;

use leasehold_core::{LockKey, Result};

use crate::client::Client;
use crate::conn::Route;
use crate::scripts;
use crate::value;

/// One acquire of a key with a fresh owner value. Dropped without [`Attempt::answered`], it
/// releases the lock if its value starts with the attempt's owner prefix.
pub(crate) struct Attempt {
    inner: Arc<Client>,
    key: LockKey,
    /// The lock key, `<namespace>:lock:<name>`.
    lock: String,
    /// What the value this attempt writes starts with (see
    /// [`new_owner_prefix`](value::new_owner_prefix)).
    owner_prefix: String,
    /// Which connection the acquire went on, so that its undo follows it there.
    route: Arc<Route>,
    answered: bool,
}

impl Attempt {
    /// An attempt on `key` with a fresh owner prefix.
    pub(crate) fn new(inner: &Arc<Client>, key: &LockKey) -> Self {
        Self {
            inner: Arc::clone(inner),
            key: key.clone(),
            lock: inner.keys.lock(key),
            owner_prefix: value::new_owner_prefix(),
            route: Arc::default(),
            answered: false,
        }
    }

    /// The lock key this attempt takes.
    pub(crate) fn lock(&self) -> &str {
        &self.lock
    }

    /// What the value this attempt writes starts with.
    pub(crate) fn owner_prefix(&self) -> &str {
        &self.owner_prefix
    }

    /// Where the acquire's request goes: to pass to [`Conn::recording`](crate::conn::Conn::recording).
    pub(crate) fn route(&self) -> Arc<Route> {
        Arc::clone(&self.route)
    }

    /// The server answered: the lock is ours (now a lease's) or someone else's. Returns
    /// the lock key.
    pub(crate) fn answered(mut self) -> String {
        self.answered = true;
        std::mem::take(&mut self.lock)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Without a runtime (it is shutting down) the TTL ends the lock.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let channel = inner.keys.channel(&self.key);
        let waiters = inner.keys.waiters(&self.key);
        let lock = std::mem::take(&mut self.lock);
        let owner_prefix = std::mem::take(&mut self.owner_prefix);
        let route = Arc::clone(&self.route);
        runtime.spawn(async move {
            let route = &*route;
            let mut invocation = scripts::ABANDON.key(&lock);
            invocation
                .key(&waiters)
                .arg(&owner_prefix)
                .arg(&channel)
                .arg(inner.keys.publish())
                .arg(&inner.waiter_id)
                .arg(inner.keys.wake_prefix());
            let invocation = &invocation;
            let timeout = inner.settings.request_timeout;
            let outcome: Result<i64> = inner
                .request("release", timeout, |conn| {
                    // After the acquire, on whichever connection it went.
                    let mut conn = conn.following(route);
                    async move { invocation.invoke_async(&mut conn).await }
                })
                .await;
            match outcome {
                Ok(1) => {
                    tracing::debug!(key = %lock, "gave back the lock of an unanswered acquire")
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(
                    key = %lock,
                    error = %err.chain(),
                    "could not undo an unanswered acquire; its TTL ends it"
                ),
            }
        });
    }
}
