//! Acquires whose outcome the caller never learns: their lock is given back.
//!
//! An acquire may take the lock and still not hand a lease out: its request failed or
//! timed out after it was sent, or the caller dropped the future (the runner does when
//! its own request timeout passes first). The lock would then stay held, by nobody, for
//! its whole TTL. So an [`Attempt`] that ends without an answer releases its owner value's
//! lock in the background.
//!
//! The release is sent on the same multiplexed connection as the acquire, so it is
//! queued behind it: even an acquire still waiting in a paused server is undone after
//! it runs. The release compares the random owner value this attempt wrote, which no other
//! attempt of any process writes, so a lock held by anyone else is left alone; and it
//! announces the release, so waiters try at once.

use std::sync::Arc;

use leasehold_core::{LockKey, Result};

use crate::client::Client;
use crate::scripts::{self, Claim};

/// One acquire of a key with a fresh owner value. Dropped without [`Attempt::answered`], it
/// releases the lock if it holds its owner value.
pub(crate) struct Attempt {
    inner: Arc<Client>,
    key: LockKey,
    claim: Claim,
    answered: bool,
}

impl Attempt {
    pub(crate) fn new(inner: &Arc<Client>, key: &LockKey, claim: Claim) -> Self {
        Self {
            inner: Arc::clone(inner),
            key: key.clone(),
            claim,
            answered: false,
        }
    }

    /// The lock key and the owner value this attempt writes into it.
    pub(crate) fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The server answered: the lock is ours (now a lease's) or someone else's.
    pub(crate) fn answered(mut self) -> Claim {
        self.answered = true;
        std::mem::take(&mut self.claim)
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
        let Claim { lock, owner } = std::mem::take(&mut self.claim);
        runtime.spawn(async move {
            let mut invocation = scripts::RELEASE.key(&lock);
            invocation.arg(&owner).arg(&channel);
            let invocation = &invocation;
            let timeout = inner.settings.request_timeout;
            let outcome: Result<i64> = inner
                .request("release", timeout, |mut conn| async move {
                    invocation.invoke_async(&mut conn).await
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
