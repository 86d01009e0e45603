//! `PostgresLease`: a held advisory lock, and how its requests reach the lock session.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{Error, FencingToken, Lease, LockKey, Result};
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::error::{Message, NAME, with_timeout};
use crate::message::{Command, LeaseLink, RefreshRequest};
use crate::ttl::check_ttl;

/// Sends a command built around a reply channel and waits for the answer within
/// `timeout`.
pub(crate) async fn call<T>(
    tx: &mpsc::UnboundedSender<Command>,
    operation: &'static str,
    timeout: Duration,
    command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    tx.send(command(reply))
        .map_err(|_| session_stopped(operation))?;
    with_timeout(operation, timeout, async {
        answer
            .await
            .unwrap_or_else(|_| Err(session_stopped(operation)))
    })
    .await
}

pub(crate) fn session_stopped(operation: &'static str) -> Error {
    Error::unavailable(
        NAME,
        operation,
        Message("the lock session task has stopped (is the tokio runtime shutting down?)".into()),
    )
}

/// A lease handed out by [`PostgresBackend`](crate::PostgresBackend): a session-level
/// advisory lock held by the backend's lock session.
pub(crate) struct PostgresLease {
    key: LockKey,
    token: FencingToken,
    link: LeaseLink,
    settings: Arc<Settings>,
    released: bool,
}

impl PostgresLease {
    pub(crate) fn new(
        key: LockKey,
        token: FencingToken,
        link: LeaseLink,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            key,
            token,
            link,
            settings,
            released: false,
        }
    }
}

impl PostgresLease {
    /// Whether this lease is held on the session behind `session`.
    pub(crate) fn belongs_to(&self, session: &mpsc::UnboundedSender<Command>) -> bool {
        self.link.tx.same_channel(session)
    }

    /// Queues a refresh with the session task without waiting for it: a batch of these,
    /// queued together, is answered by one statement (see the `session` module).
    pub(crate) fn send_refresh(&self, ttl: Duration) -> Result<oneshot::Receiver<Result<()>>> {
        check_ttl(ttl)?;
        if self.released {
            return Err(Error::lost(&self.key));
        }
        let (reply, answer) = oneshot::channel();
        self.link
            .tx
            .send(Command::Refresh(RefreshRequest {
                id: self.link.id,
                key: self.key.clone(),
                ttl,
                reply,
            }))
            .map_err(|_| session_stopped("refresh"))?;
        Ok(answer)
    }
}

impl fmt::Debug for PostgresLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("lock_key", &self.link.id.hash)
            .field("session_generation", &self.link.id.generation)
            .field("released", &self.released)
            .finish()
    }
}

#[async_trait]
impl Lease for PostgresLease {
    fn key(&self) -> &LockKey {
        &self.key
    }

    fn fencing_token(&self) -> FencingToken {
        self.token
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    /// Resolves when the backend drops the session this lease lives on (its locks are
    /// then freed on the server), or when the session task is gone.
    fn revoked(&self) -> Option<futures::future::BoxFuture<'static, ()>> {
        let mut revoked = self.link.revoked.clone();
        Some(Box::pin(async move {
            // An error means the session task is gone, and the session with it.
            let _ = revoked.wait_for(|revoked| *revoked).await;
        }))
    }

    async fn refresh(&mut self, ttl: Duration) -> Result<()> {
        check_ttl(ttl)?;
        if self.released {
            return Err(Error::lost(&self.key));
        }
        let timeout = self.settings.timeout_for(ttl);
        call(&self.link.tx, "refresh", timeout, |reply| {
            Command::Refresh(RefreshRequest {
                id: self.link.id,
                key: self.key.clone(),
                ttl,
                reply,
            })
        })
        .await
    }

    async fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        // Once asked, the session task gives the lock back (or drops the session) even if
        // this call times out, so the lease is done either way.
        self.released = true;
        self.link.finish();
        let timeout = self.settings.request_timeout;
        call(&self.link.tx, "release", timeout, |reply| {
            Command::Release {
                id: self.link.id,
                reply: Some(reply),
            }
        })
        .await
    }
}
