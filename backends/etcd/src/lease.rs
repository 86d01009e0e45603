//! `EtcdLease`: one held key, attached to a session lease.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use leasehold_core::{Error, FencingToken, Lease, LockKey, RefreshStart, Result};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::EtcdBackend;
use crate::error::{Failure, timed};
use crate::orphan::Orphan;
use crate::session::{Answer, KeepAlive, Session};
use crate::value::Stamp;

/// A key held through a session lease. Its fencing token is the key's create revision,
/// which etcd raises with every write in the cluster, so a later acquisition always has a
/// larger one.
pub(crate) struct EtcdLease {
    backend: EtcdBackend,
    key: LockKey,
    etcd_key: Vec<u8>,
    create_revision: i64,
    session: Arc<Session>,
    /// Who acquired the key and when, kept in its value when it moves to another session.
    stamp: Stamp,
    released: bool,
}

impl EtcdLease {
    pub(crate) fn new(
        backend: EtcdBackend,
        key: LockKey,
        etcd_key: Vec<u8>,
        create_revision: i64,
        session: Arc<Session>,
        stamp: Stamp,
    ) -> Self {
        Self {
            backend,
            key,
            etcd_key,
            create_revision,
            session,
            stamp,
            released: false,
        }
    }

    /// Moves the key to the session for `secs` seconds, keeping its create revision (a
    /// put on an existing key does): a lease's TTL cannot change, so a refresh asking for
    /// more than the current session gives must use another session.
    async fn move_to(&mut self, secs: i64, started: Instant) -> Result<(), Moved> {
        let target = self.backend.session(secs).await?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(
                    self.etcd_key.clone(),
                    CompareOp::Equal,
                    self.create_revision,
                ),
                Compare::lease(self.etcd_key.clone(), CompareOp::Equal, self.session.id()),
            ])
            .and_then([TxnOp::put(
                self.etcd_key.clone(),
                self.backend.moved_value(&self.stamp),
                Some(PutOptions::new().with_lease(target.id())),
            )]);
        let mut kv = self.backend.kv();
        let (moved, kept) = if target.granted_since(started) {
            (kv.txn(txn).await, KeepAlive::Alive)
        } else {
            tokio::join!(kv.txn(txn), target.keep_alive())
        };
        let moved = moved.map_err(Failure::from)?;
        if !moved.succeeded() {
            return Err(Moved::Lost);
        }
        self.session = target;
        match kept {
            KeepAlive::Alive => Ok(()),
            KeepAlive::Gone => Err(Moved::Lost),
            KeepAlive::Failed(failure) => Err(Moved::Failed(failure)),
        }
    }

    /// One keep-alive of the session and a check of the key, in the same round of the
    /// session task (see the `check` module).
    async fn confirm(&self) -> Result<(), Moved> {
        let (kept, ours) = self
            .session
            .confirm(self.etcd_key.clone(), self.create_revision)
            .await;
        if let KeepAlive::Gone = kept {
            return Err(Moved::Lost);
        }
        if !ours? {
            return Err(Moved::Lost);
        }
        match kept {
            KeepAlive::Failed(failure) => Err(Moved::Failed(failure)),
            KeepAlive::Alive | KeepAlive::Gone => Ok(()),
        }
    }
}

impl EtcdLease {
    /// Whether this lease came from `backend`.
    pub(crate) fn belongs_to(&self, backend: &EtcdBackend) -> bool {
        self.backend.same_as(backend)
    }

    /// The first half of a batched refresh (see `EtcdBackend::refresh_many`): queues the
    /// keep-alive and key check of a refresh to `ttl` with the session task without
    /// waiting. A key that must move to a session with a longer TTL is left
    /// [`RefreshStart::Alone`], to be refreshed on its own.
    pub(crate) fn start_refresh(&self, ttl: Duration) -> RefreshStart<oneshot::Receiver<Answer>> {
        let secs = match self.backend.lease_seconds(ttl) {
            Ok(secs) => secs,
            Err(error) => return RefreshStart::Done(Err(error)),
        };
        if self.released || self.session.is_lost() {
            return RefreshStart::Done(Err(Error::lost(&self.key)));
        }
        if Duration::from_secs(secs.unsigned_abs()) > self.session.ttl() {
            return RefreshStart::Alone;
        }
        match self
            .session
            .send_confirm(self.etcd_key.clone(), self.create_revision)
        {
            Ok(answer) => RefreshStart::Queued(answer),
            Err(answer) => RefreshStart::Done(self.finish_refresh(Ok(answer), Duration::ZERO)),
        }
    }

    /// The second half: what the answer means for this lease; `timeout` is the bound
    /// the batch waited under, for the error.
    pub(crate) fn finish_refresh(
        &self,
        answer: Result<Answer, oneshot::error::RecvError>,
        timeout: Duration,
    ) -> Result<()> {
        let (kept, ours) = self.session.confirmed(answer);
        match (kept, ours) {
            (KeepAlive::Gone, _) | (_, Ok(false)) => Err(Error::lost(&self.key)),
            (_, Err(failure)) | (KeepAlive::Failed(failure), Ok(true)) => {
                Err(failure.into_error("refresh", timeout))
            }
            (KeepAlive::Alive, Ok(true)) => Ok(()),
        }
    }
}

/// Why a refresh step did not confirm the lease.
enum Moved {
    Lost,
    Failed(Failure),
}

impl From<Failure> for Moved {
    fn from(failure: Failure) -> Self {
        Moved::Failed(failure)
    }
}

impl fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLease")
            .field("key", &self.key)
            .field("create_revision", &self.create_revision)
            .field("session_lease", &self.session.id())
            .field("released", &self.released)
            .finish()
    }
}

#[async_trait]
impl Lease for EtcdLease {
    fn key(&self) -> &LockKey {
        &self.key
    }

    fn fencing_token(&self) -> FencingToken {
        FencingToken::new(u64::try_from(self.create_revision).unwrap_or(0))
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    async fn refresh(&mut self, ttl: Duration) -> Result<()> {
        let secs = self.backend.lease_seconds(ttl)?;
        let started = Instant::now();
        if self.released || self.session.is_lost() {
            return Err(Error::lost(&self.key));
        }
        let timeout = self.backend.operation_timeout(ttl);
        let outcome = timed(timeout, async {
            let step = if Duration::from_secs(secs.unsigned_abs()) > self.session.ttl() {
                // Boxed: the move's transaction future is kilobytes, and every refresh
                // future would otherwise be that large, while the runner keeps one per
                // held lease in flight at each refresh tick. Moves are rare.
                Box::pin(self.move_to(secs, started)).await
            } else {
                self.confirm().await
            };
            Ok(step)
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Moved::Lost)) => Err(Error::lost(&self.key)),
            Ok(Err(Moved::Failed(failure))) | Err(failure) => {
                Err(failure.into_error("refresh", timeout))
            }
        }
    }

    async fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        let timeout = self.backend.request_timeout();
        let mut kv = self.backend.kv();
        // Deletes the key only if it is still this acquisition's: after a takeover it
        // belongs to someone else and is left alone.
        let txn = release_txn(&self.etcd_key, self.create_revision);
        timed(timeout, async { kv.txn(txn).await.map_err(Failure::from) })
            .await
            .map_err(|failure| failure.into_error("release", timeout))?;
        self.released = true;
        Ok(())
    }
}

impl Drop for EtcdLease {
    /// A lease dropped without release stays attached to the session lease, which other
    /// keys' refreshes keep alive: it would never expire. It is deleted in the background.
    fn drop(&mut self) {
        if !self.released && !self.session.is_lost() {
            let key = std::mem::take(&mut self.etcd_key);
            let orphan = Orphan::revision(key, self.create_revision);
            self.session.delete_in_background(
                self.backend.kv(),
                orphan,
                self.backend.request_timeout(),
            );
        }
    }
}

fn release_txn(key: &[u8], create_revision: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(
            key,
            CompareOp::Equal,
            create_revision,
        )])
        .and_then([TxnOp::delete(key, None)])
}
