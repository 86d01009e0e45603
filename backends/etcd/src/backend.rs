//! `EtcdBackend`: the `LockBackend` implementation on etcd v3.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions};
use leasehold_core::{
    BatchRefresh, BatchRefreshExt, Capabilities, FencingToken, Lease, LeaseInfo, LockBackend,
    LockKey, RecordWrite, RefreshStart, Result, check_holder_identity,
};
use tokio::sync::oneshot;

use crate::channel::FailoverBuilder;
use crate::config::EtcdBackendBuilder;
use crate::error::{Failure, NAME, timed};
use crate::expiry::MAX_TTL;
use crate::holder::{self, Holder};
use crate::lease::EtcdLease;
use crate::session::{Answer, Session};
use crate::settings::Settings;
use crate::value::Stamp;
use crate::watch::WatchHub;
use crate::{key, operator, parse, record, tls};

/// A lease backend on an etcd v3 cluster.
///
/// See the [crate docs](crate) for how keys, sessions, fencing tokens and release
/// notifications map onto etcd. Cloning is cheap and clones share the connection and the
/// session leases.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_core::{LockBackend, LockKey};
/// use leasehold_etcd::EtcdBackend;
///
/// # async fn f() -> leasehold_core::Result<()> {
/// let backend = EtcdBackend::from_url("etcd://127.0.0.1:2379").await?;
/// let key = LockKey::new("report")?;
/// if let Some(mut lease) = backend.try_acquire(&key, Duration::from_secs(10)).await? {
///     println!("holding {key} with token {}", lease.fencing_token());
///     lease.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    /// The shortest TTL the cluster grants, asked at connect time.
    min_ttl: Duration,
    /// Session leases by TTL in seconds. Usually one: a runner uses one TTL. The async
    /// lock is held while a session is granted, so concurrent acquires share it.
    sessions: tokio::sync::Mutex<HashMap<i64, Arc<Session>>>,
    watch: WatchHub,
    /// What goes into every key's value: which process and backend holds it, and for
    /// which acquire attempt.
    holder: Holder,
}

impl EtcdBackend {
    /// A builder with default settings; see [`EtcdBackendBuilder`].
    pub fn builder() -> EtcdBackendBuilder {
        EtcdBackendBuilder::new()
    }

    /// Connects with settings from `ROUTINE_ETCD_*` environment variables (unset ones
    /// keep their defaults; empty counts as unset):
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `ROUTINE_ETCD_ENDPOINTS` | comma-separated `host:port`, `http(s)://host:port` | `127.0.0.1:2379` |
    /// | `ROUTINE_ETCD_USER`, `ROUTINE_ETCD_PASSWORD` | credentials (both or neither) | none |
    /// | `ROUTINE_ETCD_TLS` | `true`/`false` | `false` |
    /// | `ROUTINE_ETCD_CA_FILE` | PEM CA to trust (turns TLS on) | system roots |
    /// | `ROUTINE_ETCD_CERT_FILE`, `ROUTINE_ETCD_KEY_FILE` | PEM client certificate and key | none |
    /// | `ROUTINE_ETCD_TLS_DOMAIN` | name to check server certificates against | endpoint host |
    /// | `ROUTINE_ETCD_KEY_PREFIX` | prefix of every key, ending in `/` | `routine/lock/` |
    /// | `ROUTINE_ETCD_REQUEST_TIMEOUT`, `ROUTINE_ETCD_CONNECT_TIMEOUT` | durations (`2s`, `500ms`) | `5s` |
    ///
    /// # Errors
    ///
    /// [`Error::Config`](leasehold_core::Error::Config) naming the variable if a value is malformed; otherwise as for
    /// [`EtcdBackendBuilder::build`].
    ///
    /// # Cancel safety
    ///
    /// As for [`EtcdBackendBuilder::build`].
    pub async fn from_env() -> Result<Self> {
        Self::builder().with_env().build().await
    }

    /// Connects with settings from a URL, as given in `ROUTINE_BACKEND_URL`:
    ///
    /// ```text
    /// etcd://[user:password@]host[:port][,host[:port]...][/key/prefix/][?param=value&...]
    /// etcds://...   (the same, with TLS)
    /// ```
    ///
    /// The port defaults to 2379. The path, without the `/` that ends the host list, is
    /// the key prefix (default `routine/lock/`; it must end with `/`). User and password
    /// are percent-decoded. Query parameters: `tls=true|false`, `ca_file`, `cert_file`,
    /// `key_file`, `tls_domain`, `request_timeout` and `connect_timeout` (durations such
    /// as `2s`).
    ///
    /// ```text
    /// etcd://10.0.0.1:2379,10.0.0.2:2379/billing/locks/?request_timeout=2s
    /// etcds://routine:s%40cret@etcd.internal?ca_file=/etc/etcd/ca.pem
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`](leasehold_core::Error::Config) (never quoting the URL, which may hold a password) if it is
    /// malformed; otherwise as for [`EtcdBackendBuilder::build`].
    ///
    /// # Cancel safety
    ///
    /// As for [`EtcdBackendBuilder::build`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::builder().with_url(url).build().await
    }

    pub(crate) async fn connect(settings: Settings, holder: &holder::Overrides) -> Result<Self> {
        let (endpoints, use_tls) = parse::endpoint_uris(&settings)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.connect_timeout)
            // HTTP/2 pings find a dead connection while streams (watch, keep-alive) are
            // open; etcd refuses pings more often than every 5 s or on idle connections.
            .with_keep_alive(Duration::from_secs(10), settings.request_timeout)
            .with_keep_alive_while_idle(false)
            // A member cut off from the others answers `Unavailable` ("no leader") at
            // once instead of holding requests until their deadline; the channel then
            // moves to the next member.
            .with_require_leader(true);
        if let Some(credentials) = &settings.user {
            options = options
                .with_user(credentials.user.clone(), credentials.password.clone())
                .with_auto_token_refresh(true);
        }
        if use_tls {
            options = tls::apply(options, &settings.tls)?;
        }
        let timeout = settings.connect_timeout + settings.request_timeout;
        let client = timed(timeout, async {
            Client::connect_with_balanced_channel(
                &endpoints,
                Some(options),
                FailoverBuilder::default(),
            )
            .await
            .map_err(Failure::from)
        })
        .await
        .map_err(|failure| failure.into_error("connect", timeout))?;
        let min_ttl = probe_min_ttl(&client, settings.request_timeout).await?;
        let watch = WatchHub::new(
            client.clone(),
            &settings.key_prefix,
            settings.request_timeout,
        );
        let holder = Holder::new(holder);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                settings,
                min_ttl,
                sessions: tokio::sync::Mutex::new(HashMap::new()),
                watch,
                holder,
            }),
        })
    }

    /// The smallest lease TTL the cluster grants (2 s with etcd's default timing: etcd
    /// raises shorter TTLs to 1.5 election timeouts, rounded up to whole seconds).
    pub fn min_ttl(&self) -> Duration {
        self.inner.min_ttl
    }

    /// The etcd key that holds `key`: the key prefix followed by the name.
    ///
    /// Names with a `/` are refused by every operation (see the crate docs); for them
    /// this is the key they would have.
    pub fn etcd_key(&self, key: &LockKey) -> Vec<u8> {
        key::unchecked(&self.inner.settings.key_prefix, key)
    }

    /// The etcd key that holds `key`'s [record](LockBackend::write_record): under a
    /// sibling of the key prefix, never under it (`routine/record/<name>` for the default
    /// prefix `routine/lock/`; see the [crate docs](crate#records)).
    ///
    /// Names with a `/` are refused by every operation; for them this is the key they
    /// would have.
    pub fn record_key(&self, key: &LockKey) -> Vec<u8> {
        key::unchecked(&key::record_prefix(&self.inner.settings.key_prefix), key)
    }

    /// The etcd key of `key`'s record, or
    /// [`Error::InvalidName`](leasehold_core::Error::InvalidName) if the name is one this
    /// backend refuses.
    fn checked_record_key(&self, key: &LockKey) -> Result<Vec<u8>> {
        let prefix = &self.inner.settings.key_prefix;
        key::record_key(prefix, &key::record_prefix(prefix), key)
    }

    /// The etcd key of `key`, or [`Error::InvalidName`](leasehold_core::Error::InvalidName)
    /// if the name is one this backend refuses.
    pub(crate) fn checked_key(&self, key: &LockKey) -> Result<Vec<u8>> {
        key::etcd_key(&self.inner.settings.key_prefix, key)
    }

    /// The TTL in whole seconds etcd is asked for, after checking `ttl` against the
    /// cluster's minimum and [`MAX_TTL`].
    pub(crate) fn lease_seconds(&self, ttl: Duration) -> Result<i64> {
        self.capabilities().check_ttl(NAME, ttl)?;
        let secs = ttl.as_nanos().div_ceil(1_000_000_000);
        Ok(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// The deadline for an acquire or refresh of `ttl`: the request timeout, or half the
    /// TTL if shorter, since an answer after that is of little use to the runner.
    pub(crate) fn operation_timeout(&self, ttl: Duration) -> Duration {
        self.inner.settings.request_timeout.min(ttl / 2)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.settings.request_timeout
    }

    /// Whether `other` shares this backend's client and sessions.
    pub(crate) fn same_as(&self, other: &EtcdBackend) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The value of a key of the acquisition `stamp` moved to another session.
    pub(crate) fn moved_value(&self, stamp: &Stamp) -> String {
        self.inner.holder.moved_value(stamp)
    }

    /// A value for an acquire attempt of `stamp` to write, which no other attempt writes.
    pub(crate) fn attempt_value(&self, stamp: &Stamp) -> String {
        self.inner.holder.attempt_value(stamp)
    }

    /// The live session for `secs`, granting one if there is none (or it was lost).
    pub(crate) async fn session(&self, secs: i64) -> Result<Arc<Session>, Failure> {
        let mut sessions = self.inner.sessions.lock().await;
        if let Some(session) = sessions.get(&secs).filter(|session| !session.is_lost()) {
            return Ok(Arc::clone(session));
        }
        let client = &self.inner.client;
        let session = Session::grant(
            client.lease_client(),
            client.kv_client(),
            secs,
            self.request_timeout(),
        )
        .await?;
        sessions.insert(secs, Arc::clone(&session));
        Ok(session)
    }

    /// This backend acquired the lock key `etcd_key`: it leaves the key's waiting line.
    pub(crate) fn left_line(&self, etcd_key: &[u8]) {
        self.inner.watch.acquired(etcd_key);
    }

    /// An acquisition by `identity` now, on this process's wall clock.
    pub(crate) fn stamp(&self, identity: &str) -> Stamp {
        self.inner.holder.stamp(identity)
    }

    pub(crate) fn kv(&self) -> etcd_client::KvClient {
        self.inner.client.kv_client()
    }

    /// Runs `query` on the client under the request timeout, as `operation` in errors.
    async fn query<'a, T, F>(
        &'a self,
        operation: &'static str,
        query: impl FnOnce(&'a Client) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T, Failure>>,
    {
        let timeout = self.request_timeout();
        timed(timeout, query(&self.inner.client))
            .await
            .map_err(|failure| failure.into_error(operation, timeout))
    }
}

/// Grants a 1 s lease and reads what etcd made of it: its minimum TTL.
async fn probe_min_ttl(client: &Client, timeout: Duration) -> Result<Duration> {
    let mut lease = client.lease_client();
    let granted = timed(timeout, async {
        lease.grant(1, None).await.map_err(Failure::from)
    })
    .await
    .map_err(|failure| failure.into_error("connect", timeout))?;
    // Not needed any more; if the revoke fails the lease just expires.
    let _ = timed(timeout, async {
        lease.revoke(granted.id()).await.map_err(Failure::from)
    })
    .await;
    let secs = u64::try_from(granted.ttl()).unwrap_or(1).max(1);
    Ok(Duration::from_secs(secs))
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("settings", &self.inner.settings)
            .field("min_ttl", &self.inner.min_ttl)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl LockBackend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_release_notifications(true)
            .with_reports_expiry(true)
            .with_min_ttl(self.inner.min_ttl)
            .with_max_ttl(MAX_TTL)
            .with_ttl_granularity(Duration::from_secs(1))
            .with_records(true)
    }

    /// Queues every lease's keep-alive and key check with its session task at once, so
    /// the task answers them with one keep-alive and one check transaction per 64 keys,
    /// then waits for the answers under one timeout. Leases that must move to a session
    /// with a longer TTL, and leases of other backends, are refreshed one by one.
    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        Batched(self).refresh_batched(leases, ttl).await
    }

    /// Stores `holder` in the key's value, with the holder's wall-clock time (see
    /// [`describe`](LockBackend::describe)); no request more than `try_acquire`.
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        check_holder_identity(holder)?;
        self.acquire(key, ttl, holder).await
    }

    /// One read of the key and one `LeaseTimeToLive` of its etcd lease. The holder and
    /// `acquired_at` come from the key's value: `acquired_at` is the *holder's* wall
    /// clock when it acquired the key, since etcd keeps no time with a key. A key written
    /// by an older version of this backend (or by anything else) is described without
    /// them. The fencing token is the key's create revision, as the holder's lease has
    /// it.
    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        let etcd_key = self.checked_key(key)?;
        self.query("describe", |client| {
            operator::describe(client, key, etcd_key)
        })
        .await
    }

    /// One range read of every key under the key prefix followed by `prefix` (one per
    /// 1,000 keys, all at one revision), then one `LeaseTimeToLive` per distinct etcd
    /// lease among them: a process's keys usually share one session lease. Keys under
    /// the key prefix that name no routine (a nested prefix's) are left out. Each entry
    /// is described as by [`describe`](LockBackend::describe).
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let key_prefix = &self.inner.settings.key_prefix;
        let mut range = key_prefix.as_bytes().to_vec();
        range.extend_from_slice(prefix.as_bytes());
        self.query("list", |client| operator::list(client, key_prefix, range))
            .await
    }

    /// Deletes the key, whoever holds it, in one request; `true` if it was there. The
    /// delete wakes the waiters of every backend through their release watch. The holder
    /// learns of it at its next refresh, which checks that its key is still there with
    /// its create revision and reports [`Error::Lost`](leasehold_core::Error::Lost);
    /// until then it runs on, while a waiter may already hold the key with a larger
    /// fencing token. Only this key is freed: the holder's session lease and its other
    /// keys are untouched.
    async fn force_release(&self, key: &LockKey) -> Result<bool> {
        let etcd_key = self.checked_key(key)?;
        self.query("force_release", |client| {
            operator::force_release(client, etcd_key)
        })
        .await
    }

    /// One read of the record key (see [`record_key`](EtcdBackend::record_key)).
    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        let record_key = self.checked_record_key(key)?;
        self.query("read_record", |client| record::read(client, record_key))
            .await
    }

    /// One transaction: the record is put (with no etcd lease, so it persists) if the
    /// lock key's create revision is `token`, which is the case only while the lease with
    /// that token holds it, and the record holds `expected` (does not exist, for `None`).
    /// When either comparison fails, the same transaction reads the lock key and the
    /// record to answer [`RecordWrite::Fenced`] or [`RecordWrite::Conflict`]. A record
    /// write never wakes a waiter: the record key is outside the watched key prefix.
    async fn write_record(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        leasehold_core::check_record(key, value)?;
        let lock_key = self.checked_key(key)?;
        // The name was checked with the lock key; the record key shares it.
        let record_key = self.record_key(key);
        self.query("write_record", |client| {
            record::write(client, lock_key, record_key, token, expected, value)
        })
        .await
    }

    /// Resolves when the key was deleted (released or expired) while this backend was
    /// first in the key's waiting line, or was found free when it joined or moved up:
    /// a release wakes one waiting backend, not all of them (see the
    /// [crate docs](crate)). The first poll joins the line (once the watch runs); the
    /// place is kept for a second after the last future of the key is dropped, so a
    /// waiter that was woken and waits again keeps it, and is left when this backend
    /// acquires the key.
    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.watch.released(self.checked_key(key)?).await
    }

    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        let etcd_key = self.checked_key(key)?;
        self.query("expires_in", |client| async move {
            let found = client
                .kv_client()
                .get(etcd_key, Some(GetOptions::new().with_keys_only()))
                .await?;
            let Some(lease) = found.kvs().first().map(|kv| kv.lease()) else {
                return Ok(None);
            };
            // The key is there, so it is held: never `None` from here on (see `expiry`).
            Ok(Some(
                operator::time_left(client.lease_client(), lease).await?,
            ))
        })
        .await
    }
}

/// The backend as the batched-refresh skeleton sees it: each lease queues its keep-alive
/// and key check with its session task (see [`EtcdLease::start_refresh`]), and the batch
/// waits for all the answers.
struct Batched<'a>(&'a EtcdBackend);

impl BatchRefresh for Batched<'_> {
    const BACKEND: &'static str = NAME;
    type Lease = EtcdLease;
    type Pending = oneshot::Receiver<Answer>;
    type Answer = Result<Answer, oneshot::error::RecvError>;

    fn owns(&self, lease: &EtcdLease) -> bool {
        lease.belongs_to(self.0)
    }

    fn refresh_timeout(&self, ttl: Duration) -> Duration {
        self.0.operation_timeout(ttl)
    }

    fn start_refresh(&self, lease: &mut EtcdLease, ttl: Duration) -> RefreshStart<Self::Pending> {
        lease.start_refresh(ttl)
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
        lease: &mut EtcdLease,
        answer: Self::Answer,
        ttl: Duration,
    ) -> Result<()> {
        lease.finish_refresh(answer, self.0.operation_timeout(ttl))
    }
}
