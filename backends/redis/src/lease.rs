//! `RedisLease`: a held lock key, refreshed and released by comparing its value.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{Error, FencingToken, Lease, LockKey, Result};

use crate::client::{Client, ttl_millis};
use crate::durability;
use crate::error;
use crate::eval::Eval;
use crate::scripts::{self, Claim};

/// A lease handed out by [`RedisBackend`](crate::RedisBackend): the lock key holds
/// its value until the TTL runs out.
pub(crate) struct RedisLease {
    inner: Arc<Client>,
    key: LockKey,
    /// Shared with the batched refreshes it is in: a count to raise, not a copy.
    claim: Claim,
    fence: FencingToken,
    /// The TTL of the last successful acquire or refresh, to bound `release`.
    ttl: Duration,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Released,
    /// A refresh found the key gone or someone else's. Our value starts with a random
    /// owner value, never reused, so the lock cannot become ours again.
    Lost,
}

impl RedisLease {
    pub(crate) fn new(
        inner: Arc<Client>,
        key: LockKey,
        claim: Claim,
        fence: FencingToken,
        ttl: Duration,
    ) -> Self {
        Self {
            inner,
            key,
            claim,
            fence,
            ttl,
            state: State::Held,
        }
    }

    /// Whether this lease came from the backend sharing `inner`.
    pub(crate) fn belongs_to(&self, inner: &Arc<Client>) -> bool {
        Arc::ptr_eq(&self.inner, inner)
    }

    /// Whether the lease may still be ours (not released, not found lost).
    pub(crate) fn is_held(&self) -> bool {
        self.state == State::Held
    }

    /// The lock key and our value in it, for a batched refresh.
    pub(crate) fn claim(&self) -> &Claim {
        &self.claim
    }

    /// Records a refresh's reply: 1 extended to `ttl`, 0 lost.
    pub(crate) fn refreshed(&mut self, reply: i64, ttl: Duration) -> Result<()> {
        match reply {
            1 => {
                self.ttl = ttl;
                Ok(())
            }
            0 => {
                self.state = State::Lost;
                Err(Error::lost(&self.key))
            }
            other => Err(error::unexpected_reply("refresh", other)),
        }
    }
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is left out: anyone who has it can release the lock.
        f.debug_struct("RedisLease")
            .field("key", &self.claim.lock())
            .field("fencing_token", &self.fence)
            .field("state", &self.state)
            .finish()
    }
}

#[async_trait]
impl Lease for RedisLease {
    fn key(&self) -> &LockKey {
        &self.key
    }

    fn fencing_token(&self) -> FencingToken {
        self.fence
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    async fn refresh(&mut self, ttl: Duration) -> Result<()> {
        let ttl_ms = ttl_millis(ttl)?;
        if self.state != State::Held {
            return Err(Error::lost(&self.key));
        }
        let mut eval = Eval::new(&scripts::REFRESH, std::iter::once(self.claim.lock()));
        eval.arg(self.claim.value()).arg(ttl_ms);
        let eval = &eval;
        let limit = self.inner.lease_limit(ttl);
        let wait = self.inner.wait(limit);
        let (extended, acked): (i64, _) = self
            .inner
            .request("refresh", limit, |conn| async move {
                durability::invoke(conn, eval, wait).await
            })
            .await?;
        if extended == 1 {
            // Not confirmed: the deadline stays where the last confirmed refresh left it.
            self.inner.confirmed("refresh", wait, acked)?;
        }
        self.refreshed(extended, ttl)
    }

    async fn release(&mut self) -> Result<()> {
        if self.state != State::Held {
            return Ok(());
        }
        let channel = self.inner.keys.channel(&self.key);
        let waiters = self.inner.keys.waiters(&self.key);
        let mut eval = Eval::new(
            &scripts::RELEASE,
            [self.claim.lock(), waiters.as_str()].into_iter(),
        );
        eval.arg(self.claim.value())
            .arg(&channel)
            .arg(self.inner.keys.publish())
            .arg(&self.inner.waiter_id)
            // Wake one waiter: the one that takes over.
            .arg("1")
            .arg(self.inner.keys.wake_prefix());
        let eval = &eval;
        // 1: deleted and announced; 0: already expired or someone else's, left alone.
        let deleted: i64 = self
            .inner
            .request(
                "release",
                self.inner.lease_limit(self.ttl),
                |mut conn| async move { eval.invoke(&mut conn).await },
            )
            .await?;
        if deleted != 0 && deleted != 1 {
            return Err(error::unexpected_reply("release", deleted));
        }
        self.state = State::Released;
        Ok(())
    }
}
