//! `LockBackend` and `Lease`: the two traits every backend implements.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Capabilities, Error, FencingToken, LeaseInfo, LockKey, RecordWrite, Result};

/// A store of leases on named keys: Redis, etcd, PostgreSQL, memory, or yours.
///
/// The trait is object-safe and meant to be used as `Arc<dyn LockBackend>`; it is minimal
/// on purpose. A backend does I/O only: it never sleeps, retries or keeps its own timers
/// for the runner's sake. Timing policy (when to refresh, when to give up, backoff) lives
/// in the runner, so every backend behaves the same way under it.
///
/// # The lease contract
///
/// If [`try_acquire`](LockBackend::try_acquire) or [`Lease::refresh`] is *called* at
/// instant `t` (on the caller's monotonic clock) with a TTL `ttl` and returns `Ok`, then no
/// other client can acquire the key before `t + ttl` as measured by the backend, unless
/// the holder releases it first. A backend whose server measures time from when it
/// *received* the request satisfies this. The runner adds its own safety margin for clock
/// rate differences.
///
/// Implementations must be checked with the `leasehold-conformance` suite.
#[async_trait]
pub trait LockBackend: fmt::Debug + Send + Sync + 'static {
    /// A short lowercase name for logs and errors: `redis`, `etcd`, `postgres`, `memory`.
    fn name(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Tries once to take `key` for `ttl`, as the holder named `holder`.
    ///
    /// Returns `Ok(Some(lease))` if the key was free and is now ours, and `Ok(None)` if
    /// someone else holds it. Contention is never an error. Every successful acquisition
    /// carries a [`FencingToken`] greater than that of every earlier acquisition of `key`.
    ///
    /// A backend stores `holder` with the lease, so that [`describe`](LockBackend::describe)
    /// and [`list`](LockBackend::list) can say who holds it (one that cannot may ignore
    /// it). The runner acquires with its identity; a backend that wraps another passes
    /// `holder` on. `holder` must pass
    /// [`check_holder_identity`](crate::check_holder_identity), or the call fails with
    /// [`Error::Config`](crate::Error::Config) and takes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`](crate::Error::InvalidTtl) if `ttl` is zero or below
    /// [`Capabilities::min_ttl`]; [`Error::Unavailable`](crate::Error::Unavailable) or
    /// [`Error::Timeout`](crate::Error::Timeout) if the server could not be asked; any
    /// other variant for configuration or permission problems. On error the key is not
    /// held by us.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the key may have been taken on the
    /// server; it is then released by its TTL. Callers should not cancel needlessly.
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>>;

    /// [`try_acquire_as`](LockBackend::try_acquire_as) as this process
    /// ([`process_identity`](crate::process_identity)).
    ///
    /// # Errors
    ///
    /// As for [`try_acquire_as`](LockBackend::try_acquire_as).
    ///
    /// # Cancel safety
    ///
    /// As for [`try_acquire_as`](LockBackend::try_acquire_as).
    async fn try_acquire(&self, key: &LockKey, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        self.try_acquire_as(key, ttl, crate::process_identity())
            .await
    }

    /// Who holds `key` now: `Ok(None)` if nobody does.
    ///
    /// For operators and tools: it reads, takes nothing and wakes nobody. The answer may
    /// be stale by the time it arrives. The default knows only what
    /// [`expires_in`](LockBackend::expires_in) tells, and reports
    /// [`Error::Unsupported`] for a backend that does not report expiry.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the backend cannot tell; otherwise as for
    /// [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        if !self.capabilities().reports_expiry {
            return Err(Error::unsupported(self.name(), "describe"));
        }
        Ok(self
            .expires_in(key)
            .await?
            .map(|left| LeaseInfo::new(key.clone()).with_expires_in(left)))
    }

    /// Every held lease whose name starts with `prefix` (all of them for `""`), in name
    /// order.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] by default; otherwise as for
    /// [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let _ = prefix;
        Err(Error::unsupported(self.name(), "list"))
    }

    /// Frees `key` whoever holds it, for an operator unsticking a lock. Returns whether it
    /// was held.
    ///
    /// Unsafe for the guarantee: the holder keeps running until it next refreshes and
    /// learns of the loss ([`Error::Lost`]; a backend may tell it sooner), while a waiter
    /// may take the key at once, so two instances can overlap for up to a refresh interval.
    /// Fencing tokens still order their writes. Each backend documents what it does
    /// (PostgreSQL ends the holder's lock session, which frees every lease of that
    /// process).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] by default; otherwise as for
    /// [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// If dropped, the key may or may not have been freed.
    async fn force_release(&self, key: &LockKey) -> Result<bool> {
        let _ = key;
        Err(Error::unsupported(self.name(), "force_release"))
    }

    /// The record kept beside `key`'s lease (see [`write_record`](LockBackend::write_record)),
    /// `None` if none was written. Records outlive leases: releasing or losing the key
    /// keeps its record.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] by default (a backend that stores records declares
    /// [`Capabilities::records`]); otherwise as for
    /// [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        let _ = key;
        Err(Error::unsupported(self.name(), "read_record"))
    }

    /// Replaces `key`'s record with `value` if it holds `expected` (`None`: no record),
    /// as the holder of the lease on `key` with fencing token `token`, in one atomic step
    /// on the server.
    ///
    /// The write is refused with [`RecordWrite::Fenced`] once the key has been acquired
    /// again after that lease (a later token exists), so a holder that lost its lease
    /// without knowing cannot overwrite what the next holder wrote; backends that can tell
    /// also refuse it once that lease is no longer held. A record whose value differs from
    /// `expected` is left alone and reported as [`RecordWrite::Conflict`] with its value.
    /// Values are at most [`MAX_RECORD_LEN`](crate::MAX_RECORD_LEN) bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] by default; [`Error::Config`] for a value longer than
    /// [`MAX_RECORD_LEN`](crate::MAX_RECORD_LEN); otherwise as for
    /// [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// If dropped, the record may or may not have been written: read it again.
    async fn write_record(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        let _ = (key, token, expected, value);
        Err(Error::unsupported(self.name(), "write_record"))
    }

    /// Resolves when `key` may have become free: its holder released it.
    ///
    /// A backend without release notifications returns a future that never resolves
    /// (the runner then wakes at its retry interval) and declares
    /// [`Capabilities::release_notifications`] `false`. Spurious wake-ups are allowed: the
    /// caller always tries to acquire afterwards.
    ///
    /// The runner polls this future once *before* each `try_acquire` and awaits it after
    /// contention, so a backend should register its interest on the first poll: a release
    /// that happens after that first poll must wake the future.
    ///
    /// A backend may wake only one of the processes waiting on `key` per release, to
    /// spare the others an attempt that would fail (the etcd, Redis and PostgreSQL backends
    /// do; see their documentation for whom they pick). A picked process that died meanwhile
    /// wakes nobody: the others learn of the release by polling, which a caller must
    /// keep doing (the runner asks [`expires_in`](LockBackend::expires_in) about once
    /// per TTL while it waits). A backend may count on those calls to know who contends
    /// for `key` (Redis and PostgreSQL register a waiter there; a caller that never calls
    /// it is woken only by a release that finds no registered waiter, or on a Redis
    /// Cluster by every release, and otherwise learns of a release by polling).
    ///
    /// # Errors
    ///
    /// An error if the notification channel failed; the runner falls back to polling.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future only gives up the wait.
    async fn released(&self, key: &LockKey) -> Result<()>;

    /// How long the current holder's lease on `key` has left, if the backend can tell
    /// (see [`Capabilities::reports_expiry`]). `Ok(None)` means unknown or not held.
    ///
    /// The runner asks after contention, to retry right when a crashed holder's lease runs
    /// out rather than up to a retry interval later. The default returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As for [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        let _ = key;
        Ok(None)
    }

    /// Refreshes every lease in `leases` to `ttl`, as [`Lease::refresh`] would one by one,
    /// and returns one result per lease, in the same order.
    ///
    /// The runner refreshes all the leases it holds on one shared tick and hands them over
    /// here together, so a backend can send them in one request (a script over many keys,
    /// one keep-alive, one statement) instead of one request each. The lease contract
    /// applies to each lease: if this method is *called* at `t` and a lease's result is
    /// `Ok`, no other client can take that key before `t + ttl`.
    ///
    /// The leases normally came from this backend, but a backend must not assume it: one
    /// it does not recognise (see [`Lease::as_any_mut`]) is refreshed with its own
    /// [`Lease::refresh`]. The default refreshes every lease that way, concurrently, which
    /// is correct for every backend and as cheap as refreshing them one at a time. A
    /// backend that can batch implements [`BatchRefresh`](crate::BatchRefresh) and
    /// overrides this with [`refresh_batched`](crate::BatchRefreshExt::refresh_batched),
    /// which does the bookkeeping: picking out its own leases, one timeout for the batch,
    /// a result per lease in order, and the other leases refreshed on their own.
    ///
    /// # Errors
    ///
    /// Per lease, as for [`Lease::refresh`]: [`Error::Lost`](crate::Error::Lost) for a lease
    /// that is no longer ours (the others are unaffected), a transient error when the
    /// outcome for that lease is unknown.
    ///
    /// # Cancel safety
    ///
    /// As for [`Lease::refresh`]: if dropped, each lease may or may not have been extended,
    /// and its previous deadline still bounds it.
    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        futures::future::join_all(leases.iter_mut().map(|lease| lease.refresh(ttl))).await
    }
}

/// A held lock on one key, returned by [`LockBackend::try_acquire`].
///
/// Dropping a lease without [`release`](Lease::release) leaves the key held until its TTL
/// runs out (a backend may give it up sooner in the background), which is what a crash
/// looks like to everyone else.
#[async_trait]
pub trait Lease: fmt::Debug + Send + Sync {
    /// The key this lease holds.
    fn key(&self) -> &LockKey;

    /// The fencing token of this acquisition.
    fn fencing_token(&self) -> FencingToken;

    /// This lease as [`Any`], so that the backend that made it can recognise it in
    /// [`LockBackend::refresh_many`] and batch its refresh with others. The default,
    /// `None`, means "refresh me with [`Lease::refresh`]"; a backend that batches
    /// (see [`BatchRefresh`](crate::BatchRefresh)) returns `Some(self)`.
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }

    /// A future that resolves when the backend learns, without being asked, that this
    /// lease is gone: for example the connection or session the lease lives on was closed,
    /// which frees every lock on it on the server. The runner stops the routine at once
    /// when it resolves, as if a refresh had returned [`Error::Lost`](crate::Error::Lost).
    ///
    /// The future is owned (it borrows nothing from the lease), so the runner can wait on
    /// it while the lease is being refreshed elsewhere. It may resolve spuriously late, but
    /// never for a lease that is still live. The default, `None`, means the backend has no
    /// such signal: losses are learned from refreshes.
    fn revoked(&self) -> Option<futures::future::BoxFuture<'static, ()>> {
        None
    }

    /// Extends the lease to `ttl` from now (see the lease contract on [`LockBackend`]).
    ///
    /// # Errors
    ///
    /// [`Error::Lost`](crate::Error::Lost) if the key is no longer ours: it expired,
    /// was deleted, was taken by another client, or this lease was released. Transient
    /// errors ([`Error::is_transient`](crate::Error::is_transient)) mean the outcome is
    /// unknown: the lease may or may not still be held until its previous deadline.
    ///
    /// # Cancel safety
    ///
    /// If dropped before completion the lease may or may not have been extended; the
    /// previous deadline still bounds it.
    async fn refresh(&mut self, ttl: Duration) -> Result<()>;

    /// Gives the key back so another client can take it at once, and wakes waiters.
    ///
    /// Idempotent: releasing a lease that was already released, expired or taken over
    /// returns `Ok(())` and never touches another holder's lease.
    ///
    /// # Errors
    ///
    /// Transient errors if the server could not be reached; the key then stays held until
    /// its TTL runs out.
    ///
    /// # Cancel safety
    ///
    /// If dropped before completion the key may still be held until its TTL runs out.
    async fn release(&mut self) -> Result<()>;
}
