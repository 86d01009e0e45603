//! `PostgresBackend`: the `LockBackend` on PostgreSQL advisory locks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{
    BatchRefresh, BatchRefreshExt, Capabilities, FencingToken, Lease, LeaseInfo, LockBackend,
    LockKey, RecordWrite, RefreshStart, Result,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{PostgresBackendBuilder, Settings};
use crate::connect;
use crate::epoch::{self, EpochStatements};
use crate::error::{Context, NAME, with_timeout};
use crate::fencing;
use crate::lease::{PostgresLease, call, session_stopped};
use crate::message::{Acquired, Command};
use crate::notify::{Dispatch, Notifier};
use crate::operator::Operator;
use crate::record::Records;
use crate::session;
use crate::ttl::{CAPABILITIES, check_ttl};
use crate::waiters;

/// A lease backend on PostgreSQL session-level advisory locks.
///
/// All leases of one backend live on one dedicated connection (the lock session), which
/// also hears release notifications (`LISTEN`) and answers `expires_in` and `describe`:
/// holding a thousand routines, or waiting for them, takes one connection. The operator
/// queries (`list`, `force_release`) and records (`read_record`, `write_record`) open up to two more, on
/// first use, and close them when idle. See the
/// [crate docs](crate) for how TTLs, fencing tokens, collisions, poolers and operator
/// queries are handled.
///
/// Cloning is cheap and clones share the connections. The connections close when the last
/// clone and the last lease are dropped.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_core::{LockBackend, LockKey};
/// use leasehold_postgres::PostgresBackend;
///
/// # async fn run() -> leasehold_core::Result<()> {
/// let backend = PostgresBackend::from_url("postgres://app:secret@db.internal/app").await?;
/// let key = LockKey::new("billing-sync")?;
/// if let Some(mut lease) = backend.try_acquire(&key, Duration::from_secs(15)).await? {
///     println!("fencing token {}", lease.fencing_token());
///     lease.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    session: mpsc::UnboundedSender<Command>,
    notifier: Notifier,
    /// Connections for `list` and `force_release`, opened on first use.
    operator: Operator,
    /// The record statements, run on the operator connections.
    records: Records,
}

impl PostgresBackend {
    /// A builder; see [`PostgresBackendBuilder`].
    pub fn builder() -> PostgresBackendBuilder {
        PostgresBackendBuilder::new()
    }

    /// Builds a backend from environment variables; see
    /// [`PostgresBackendBuilder::from_env`] for the variables.
    ///
    /// # Errors
    ///
    /// As for [`PostgresBackendBuilder::from_env`] and [`PostgresBackendBuilder::build`].
    pub async fn from_env() -> Result<Self> {
        PostgresBackendBuilder::from_env()?.build().await
    }

    /// Builds a backend for a `postgres://` (or `postgresql://`) URL with default settings,
    /// as `ROUTINE_BACKEND_URL` does.
    ///
    /// # Errors
    ///
    /// As for [`PostgresBackendBuilder::build`].
    pub async fn from_url(url: &str) -> Result<Self> {
        PostgresBackendBuilder::new().with_url(url).build().await
    }

    /// The advisory-lock key of `key` under this backend's namespace (see
    /// [`advisory_lock_key`](crate::advisory_lock_key)), as found in `pg_locks` and the
    /// fencing table.
    pub fn lock_key(&self, key: &LockKey) -> i64 {
        crate::advisory_lock_key(&self.inner.settings.namespace, key.as_str())
    }

    pub(crate) async fn connect(settings: Settings) -> Result<Self> {
        let settings = Arc::new(settings);
        let mut live = connect::open(&settings, settings.request_timeout).await?;
        let ctx = Context {
            operation: "create the fencing table",
            url_setting: settings.url_setting,
        };
        let waiters = with_timeout(ctx.operation, settings.request_timeout, async {
            let conn = sqlx::Acquire::acquire(&mut live.conn)
                .await
                .map_err(|err| ctx.map(err))?;
            fencing::ensure_table(&mut *conn, &settings).await?;
            epoch::ensure_table(&mut *conn, &settings).await?;
            waiters::ensure_table(conn, &settings).await
        })
        .await?;
        // The session hands out no token before it has an epoch of its own.
        let ctx = Context {
            operation: "begin a fencing epoch",
            ..ctx
        };
        with_timeout(
            ctx.operation,
            settings.request_timeout,
            EpochStatements::new(&settings.qualified_epochs).begin(&mut live, ctx),
        )
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let dispatch = Dispatch::new();
        let notifier = Notifier::new(Arc::clone(&dispatch), tx.clone(), settings.request_timeout);
        let session = session::spawn(Arc::clone(&settings), live, dispatch, waiters, (tx, rx));
        Ok(Self {
            inner: Arc::new(Inner {
                operator: Operator::new(Arc::clone(&settings)),
                records: Records::new(&settings.qualified_table, &settings.qualified_sessions),
                settings,
                session,
                notifier,
            }),
        })
    }
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl LockBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// Queues a refresh for every lease of this backend with the session task at once,
    /// so the task answers them all with one statement, then waits for the answers
    /// under one timeout; leases of other backends are refreshed one by one.
    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        Batched(self).refresh_batched(leases, ttl).await
    }

    /// Stores `holder` in the key's fencing row (`holder_identity`), written by the
    /// statement that takes the lock: no extra round trip.
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        check_ttl(ttl)?;
        leasehold_core::check_holder_identity(holder)?;
        let hash = self.lock_key(key);
        let timeout = self.inner.settings.timeout_for(ttl);
        let acquired = call(&self.inner.session, "acquire", timeout, |reply| {
            Command::Acquire {
                key: key.clone(),
                hash,
                ttl,
                holder: Arc::from(holder),
                reply,
            }
        })
        .await?;
        Ok(acquired.map(|Acquired { token, link }| {
            Box::new(PostgresLease::new(
                key.clone(),
                token,
                link,
                Arc::clone(&self.inner.settings),
            )) as Box<dyn Lease>
        }))
    }

    /// Resolves when a release of `key` wakes this process: the release picked this
    /// backend's lock session among the registered waiters (see
    /// [`expires_in`](LockBackend::expires_in)), or found none registered and woke every
    /// waiting process; or when the lock session changed (a release may have gone
    /// unheard).
    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.notifier.released(self.lock_key(key)).await
    }

    /// How long the heartbeat of the session recorded as the key's holder has left: a
    /// live holder's session keeps moving it on, an ended one's runs out, and the key can
    /// be taken then. `None` if no live session claims the key.
    ///
    /// While a [`released`](LockBackend::released) future of this backend waits for
    /// `key` (the runner's, after contention), the same statement registers this
    /// backend's lock session as a waiter for the key, so that the next release wakes
    /// this one process rather than every waiting one (see the [crate docs](crate),
    /// *Release notifications*). The registration lasts twice the time left (at least
    /// ten seconds): asking again when that runs out, as the runner does, keeps it.
    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        let hash = self.lock_key(key);
        let timeout = self.inner.settings.request_timeout;
        call(&self.inner.session, "expires_in", timeout, |reply| {
            Command::ExpiresIn {
                hash,
                timeout,
                reply,
            }
        })
        .await
    }

    /// The key's holder identity, fencing token and `acquired_at` (the server's clock at
    /// the acquire) from its fencing row, and `expires_in` from its session's heartbeat.
    ///
    /// A key is held when an acquire would meet contention now: its advisory lock is held
    /// (`pg_locks`), or its row names a session whose heartbeat still runs (a session that
    /// ended before its holders learned it guards the key until then). `expires_in` is
    /// `None` only for a lock whose session's heartbeat has run out while it still holds
    /// it (a paused holder on PostgreSQL 12 or 13). Runs on the lock session, like
    /// `expires_in` (one statement for one key), so a process that holds, waits and names
    /// the holder of a key it waits for keeps one connection; a refresh queued behind it
    /// waits for that statement.
    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        let hash = self.lock_key(key);
        let timeout = self.inner.settings.request_timeout;
        call(&self.inner.session, "describe", timeout, |reply| {
            Command::Describe {
                key: key.clone(),
                hash,
                timeout,
                reply,
            }
        })
        .await
    }

    /// The held keys of this backend's namespace (see
    /// [`describe`](LockBackend::describe) for what held means) whose name starts with
    /// `prefix`, in byte order of their names. It reads the whole fencing table and
    /// `pg_locks`: for operators and tools, not for a hot path.
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let operator = &self.inner.operator;
        let result = operator.list(prefix).await;
        operator.after(result).await
    }

    /// Frees `key` whoever holds it, on this backend's operator connections.
    ///
    /// The lock lives on its holder's lock session, so that session is ended with
    /// `pg_terminate_backend` (the pid holding the advisory lock in `pg_locks`; on
    /// PostgreSQL 14 and newer the server waits up to half the request timeout for it to
    /// exit). **That frees every lease of the holder's backend**, not only this key. This
    /// key's claim in the fencing table is then cleared, so that it can be taken at once,
    /// and its waiters are woken; the holder's other keys stay guarded by its session's
    /// heartbeat until it runs out (or their routines stop and release them), so no other
    /// instance overlaps with them. The holder learns fast: the ended session is
    /// announced on `NOTIFY` channel `routine_lock_session_ended`, and a backend hearing
    /// its own session drops it, which fires [`Lease::revoked`] for all its leases;
    /// failing that, its next refresh reports [`Error::Lost`](leasehold_core::Error::Lost).
    /// Until the holder stops, it may still overlap with the next holder of this key, as
    /// for every backend's `force_release`; fencing tokens order their writes.
    ///
    /// A key whose lock is free but whose row names an ended session with a running
    /// heartbeat is held too: its claim is cleared. Returns whether the key was held.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`](leasehold_core::Error::PermissionDenied) if this role
    /// may not end the holder's session: that needs membership in `pg_signal_backend` or
    /// in the holder's role (and a superuser's session, a superuser). Nothing is changed
    /// then. Otherwise as for [`try_acquire`](LockBackend::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// If dropped, the holder's session may have been ended without the key's claim
    /// being cleared: the key is then free once the heartbeat runs out.
    async fn force_release(&self, key: &LockKey) -> Result<bool> {
        let operator = &self.inner.operator;
        let result = operator.force_release(key, self.lock_key(key)).await;
        operator.after(result).await
    }

    /// The `record` column of the key's fencing row, read on this backend's operator
    /// connections. A key never acquired under this namespace (or whose row belongs to a
    /// colliding name) has no record.
    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        let inner = &self.inner;
        let result = inner
            .records
            .read(
                &inner.operator.pool(),
                &inner.settings,
                key,
                self.lock_key(key),
            )
            .await;
        inner.operator.after(result).await
    }

    /// Writes the `record` column of the key's fencing row in one statement on this
    /// backend's operator connections (not the lock session, so it never delays a
    /// refresh): the statement locks the row, and stores `value` only if the row's token
    /// is `token`, the row still names a lock session whose heartbeat runs, and the
    /// record is `expected`.
    ///
    /// [`RecordWrite::Fenced`] if the key was acquired again since (its token moved on),
    /// was released (the claim is cleared) or its holder's session heartbeat has run out,
    /// or if it was never acquired under this name; [`RecordWrite::Conflict`] with the
    /// stored record if that differs from `expected`.
    async fn write_record(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        let inner = &self.inner;
        let result = inner
            .records
            .write(
                &inner.operator.pool(),
                &inner.settings,
                (key, self.lock_key(key)),
                token,
                expected,
                value,
            )
            .await;
        inner.operator.after(result).await
    }
}

/// The backend as the batched-refresh skeleton sees it: each lease queues its refresh with
/// the session task (see [`PostgresLease::send_refresh`]), which answers every refresh
/// queued together with one statement, and the batch waits for all the answers.
struct Batched<'a>(&'a PostgresBackend);

impl BatchRefresh for Batched<'_> {
    const BACKEND: &'static str = NAME;
    type Lease = PostgresLease;
    type Pending = oneshot::Receiver<Result<()>>;
    type Answer = Result<Result<()>, oneshot::error::RecvError>;

    fn owns(&self, lease: &PostgresLease) -> bool {
        lease.belongs_to(&self.0.inner.session)
    }

    fn refresh_timeout(&self, ttl: Duration) -> Duration {
        self.0.inner.settings.timeout_for(ttl)
    }

    fn start_refresh(
        &self,
        lease: &mut PostgresLease,
        ttl: Duration,
    ) -> RefreshStart<Self::Pending> {
        match lease.send_refresh(ttl) {
            Ok(answer) => RefreshStart::Queued(answer),
            Err(error) => RefreshStart::Done(Err(error)),
        }
    }

    async fn send_refreshes(
        &self,
        pending: Vec<Self::Pending>,
        _ttl: Duration,
    ) -> Vec<Self::Answer> {
        futures::future::join_all(pending).await
    }

    fn finish_refresh(
        &self,
        _lease: &mut PostgresLease,
        answer: Self::Answer,
        _ttl: Duration,
    ) -> Result<()> {
        // A dropped reply means the session task is gone, and the session with it.
        answer.unwrap_or_else(|_| Err(session_stopped("refresh")))
    }
}
