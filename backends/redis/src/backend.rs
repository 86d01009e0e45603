//! `RedisBackend`: connecting, and `LockBackend`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{
    BatchRefresh, BatchRefreshExt, Capabilities, Error, FencingToken, Lease, LeaseInfo,
    LockBackend, LockKey, RecordWrite, RefreshStart, Result,
};

use crate::RedisBackendBuilder;
use crate::abandon::Attempt;
use crate::client::{CAPABILITIES, Client, Releases, ttl_millis};
use crate::config::cluster::ClusterSettings;
use crate::config::{self, Settings};
use crate::connection::Connection;
use crate::durability;
use crate::error::{self, NAME};
use crate::eval::Eval;
use crate::eviction;
use crate::handshake;
use crate::lease::RedisLease;
use crate::notify::{self, Notifier};
use crate::operator;
use crate::scripts::{self, Claim, Extended, Keys};
use crate::sentinel::{SentinelTarget, Target};
use crate::sharded::ShardedNotifier;
use crate::value;
use redis::Value;

/// A lease backend on one Redis server, compatible with the Go original's locks.
///
/// See the [crate documentation](crate) for the key layout, connections, timeouts and
/// configuration. Cloning is cheap and clones share the connections.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_core::{LockBackend, LockKey};
/// use leasehold_redis::RedisBackend;
///
/// # async fn run() -> leasehold_core::Result<()> {
/// let backend = RedisBackend::from_url("redis://127.0.0.1:6379/0").await?;
/// let key = LockKey::new("nightly-report")?;
/// if let Some(mut lease) = backend.try_acquire(&key, Duration::from_secs(5)).await? {
///     println!("ours, fencing token {}", lease.fencing_token());
///     lease.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Client>,
}

impl RedisBackend {
    /// A builder, starting from `redis://127.0.0.1:6379/0`, namespace `routine` and the
    /// go-redis default timeouts (connect 5 s, request 3 s).
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::new()
    }

    /// Connects as the Go original does, from `REDIS_HOSTS` (first host),
    /// `REDIS_PASSWORD`, `REDIS_DB`, `REDIS_DIAL_TIMEOUT`, `REDIS_READ_TIMEOUT` and
    /// `REDIS_WRITE_TIMEOUT`; see [`RedisBackendBuilder::from_env`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`](leasehold_core::Error::Config) naming the variable if one is
    /// malformed, then as for [`RedisBackendBuilder::build`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes whatever connection it opened.
    pub async fn from_env() -> Result<Self> {
        RedisBackendBuilder::from_env()?.build().await
    }

    /// Connects to `redis://[user[:password]@]host[:port][/db]`, `rediss://...` for TLS,
    /// or `redis+sentinel://[user[:password]@]host1:26379,host2:26379/<master name>[/db]`
    /// for the master the sentinels name; see [`RedisBackendBuilder::with_url`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`](leasehold_core::Error::Config) with setting `url` if the URL is
    /// malformed, then as for [`RedisBackendBuilder::build`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes whatever connection it opened.
    pub async fn from_url(url: &str) -> Result<Self> {
        RedisBackendBuilder::new().with_url(url).build().await
    }

    /// Connects with validated settings: the command connection (checked with a `PING`,
    /// so wrong credentials show up here), the eviction policy check, and the pub/sub
    /// connection.
    pub(crate) async fn connect(settings: Settings) -> Result<Self> {
        settings.validate()?;
        if settings.tls {
            config::install_crypto_provider();
        }
        let connect_timeout = settings.connect_timeout;
        if let Some(cluster) = &settings.cluster {
            return Self::connect_cluster(settings.clone(), cluster).await;
        }
        let (target, conn) = match &settings.sentinel {
            Some(sentinel) => {
                let target = Arc::new(Target::Sentinel(SentinelTarget::new(&settings, sentinel)?));
                let conn = Connection::open_target(
                    Arc::clone(&target),
                    connect_timeout,
                    settings.request_timeout,
                )
                .await?;
                (target, conn)
            }
            None => {
                let info = settings.connection_info()?;
                let client = match settings.tls_files.certificates()? {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates),
                    None => redis::Client::open(info),
                }
                .map_err(|err| error::from_redis(err, "connect", connect_timeout))?;
                let conn = handshake::open(client, &settings).await?;
                (Arc::clone(conn.target()), conn)
            }
        };
        // A server with `requirepass` accepts a connection without credentials and
        // refuses only its first command: find that out now, not at the first acquire.
        conn.request("connect", settings.request_timeout, |mut conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await
        })
        .await?;
        eviction::check(&conn, &settings).await?;
        durability::check_replicas(&conn, &settings).await;
        let keys = Keys::new(&settings.namespace, false);
        let waiter_id = notify::new_waiter_id();
        let notifier = Notifier::start(
            target,
            keys.channel_pattern(),
            keys.wake_channel(&waiter_id),
            connect_timeout,
            waiter_id.clone(),
        )
        .await;
        Ok(Self {
            inner: Arc::new(Client {
                settings,
                keys,
                conn,
                notifier: Releases::Pattern(notifier),
                waiter_id,
                slot_map: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Connects in cluster mode: the cluster connection (checked with a `PING` of every
    /// master, and for `SPUBLISH`, Redis 7), the eviction policy and replica checks (of every master), and the sharded pub/sub
    /// connection.
    async fn connect_cluster(settings: Settings, cluster: &ClusterSettings) -> Result<Self> {
        let client = crate::cluster::client(&settings, cluster, None::<fn(_) -> Result<(), ()>>)?;
        let conn =
            Connection::open_cluster(client, settings.connect_timeout, settings.request_timeout)
                .await
                .map_err(|err| unreachable_cluster(err, cluster))?;
        conn.request("connect", settings.request_timeout, |mut conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await
        })
        .await?;
        // The release scripts announce with `SPUBLISH`: without it no lock is released.
        let spublish: Vec<Value> = conn
            .request("connect", settings.request_timeout, |mut conn| async move {
                redis::cmd("COMMAND")
                    .arg("INFO")
                    .arg("SPUBLISH")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if matches!(spublish.first(), None | Some(Value::Nil)) {
            return Err(Error::misconfigured(
                NAME,
                "cluster mode needs Redis 7 or later (sharded pub/sub: the release script \
                 announces releases with SPUBLISH, which this server does not know)",
            ));
        }
        eviction::check(&conn, &settings).await?;
        durability::check_replicas(&conn, &settings).await;
        let keys = Keys::new(&settings.namespace, true);
        let waiter_id = notify::new_waiter_id();
        let notifier = ShardedNotifier::start(&settings, cluster, waiter_id.clone()).await?;
        Ok(Self {
            inner: Arc::new(Client {
                settings,
                keys,
                conn,
                notifier: Releases::Sharded(notifier),
                waiter_id,
                slot_map: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The namespace: keys are `<namespace>:lock:<name>`.
    pub fn namespace(&self) -> &str {
        &self.inner.settings.namespace
    }

    /// Whether release notifications are being received right now. After the pub/sub
    /// connection failed this is `false` until the next
    /// [`released`](LockBackend::released) call has subscribed again; waits in between
    /// fail and the runner polls instead. In cluster mode: whether the sharded pub/sub
    /// connection is up: `false` once one of its node connections drops, `true` again
    /// once a subscription is made on it (the `redis` crate reconnects the node and makes
    /// its subscriptions again by itself; with none there, the next wait subscribes).
    pub fn notifications_active(&self) -> bool {
        self.inner.notifier.state() == "subscribed"
    }

    /// The Redis key holding `key`'s lock, such as `routine:lock:<name>`
    /// (`routine:lock:{<name>}` in cluster mode): for operators and tests that look at
    /// Redis directly.
    pub fn lock_key(&self, key: &LockKey) -> String {
        self.inner.keys.lock(key)
    }

    /// The Redis key counting `key`'s fencing tokens, such as `routine:fence:<name>`
    /// (`routine:fence:{<name>}` in cluster mode).
    /// It never expires: see [`forget_fencing`](Self::forget_fencing).
    pub fn fence_key(&self, key: &LockKey) -> String {
        self.inner.keys.fence(key)
    }

    /// The Redis key holding `key`'s [record](LockBackend::write_record), such as
    /// `routine:record:<name>` (`routine:record:{<name>}` in cluster mode). It never expires: see [`forget_fencing`](Self::forget_fencing).
    pub fn record_key(&self, key: &LockKey) -> String {
        self.inner.keys.record(key)
    }

    /// The Redis key listing the backends waiting for `key`, such as
    /// `routine:waiters:<name>` (`routine:waiters:{<name>}` in cluster mode): a sorted
    /// set of waiter ids scored by their deadline in ms, from which a release picks the
    /// one it wakes (see the [crate documentation](crate)). It expires once nobody
    /// registers in it.
    pub fn waiters_key(&self, key: &LockKey) -> String {
        self.inner.keys.waiters(key)
    }

    /// Deletes `key`'s fencing counter, and its [record](LockBackend::write_record), if
    /// nobody holds `key` right now, and says whether there was a counter to delete.
    /// `false` if the name is held (nothing is touched then) or has no counter (its
    /// record, if any, is deleted all the same).
    ///
    /// Every name ever acquired keeps one counter on the server, a small integer key
    /// (under 100 bytes with Redis's overhead), so that its tokens keep increasing
    /// across leases, processes and restarts of this library. With names made up at run
    /// time (one per customer, per job id) they add up; this removes those of names that
    /// are done with.
    ///
    /// **The name's tokens start again from 1** at its next acquisition. Only forget a
    /// name that will not be used again, or whose tokens nothing compares with tokens
    /// handed out before. A Go instance of the original library keeps no counters.
    /// The record goes too, since the tokens guarding its writes start over.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`](leasehold_core::Error::Unavailable) or
    /// [`Error::Timeout`](leasehold_core::Error::Timeout) if the server cannot answer, as
    /// for every request; the counter may or may not have been deleted then.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not delete the counter, under the same condition.
    pub async fn forget_fencing(&self, key: &LockKey) -> Result<bool> {
        self.inner.keys.check(key)?;
        let mut invocation = scripts::FORGET.key(self.inner.keys.lock(key));
        invocation
            .key(self.inner.keys.fence(key))
            .key(self.inner.keys.record(key));
        let invocation = &invocation;
        let deleted: i64 = self
            .inner
            .request(
                "forget fencing",
                self.inner.settings.request_timeout,
                |mut conn| async move { invocation.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(deleted == 1)
    }
}

impl RedisBackend {
    /// The remaining TTL of `key`'s lock, registering this backend in the name's waiters
    /// if `register` (the [`REGISTER`](scripts::REGISTER) script).
    async fn pttl(&self, key: &LockKey, register: bool) -> Result<Option<Duration>> {
        self.inner.keys.check(key)?;
        let mut invocation = scripts::REGISTER.key(self.inner.keys.lock(key));
        invocation
            .key(self.inner.keys.waiters(key))
            .arg(if register {
                self.inner.waiter_id.as_str()
            } else {
                ""
            })
            .arg(scripts::REGISTRATION_MS);
        let invocation = &invocation;
        let pttl: i64 = self
            .inner
            .request(
                "expires_in",
                self.inner.settings.request_timeout,
                |mut conn| async move { invocation.invoke_async(&mut conn).await },
            )
            .await?;
        // -2: no such key; -1: a key without expiry, which no lock of ours or of
        // bsm/redislock is, so its end is unknown.
        Ok(u64::try_from(pttl).ok().map(Duration::from_millis))
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        let notifications = self.inner.notifier.state();
        let address = match (&s.sentinel, &s.cluster) {
            (Some(sentinel), _) => format!(
                "master `{}` of the sentinels {}",
                sentinel.master_name,
                sentinel.addresses()
            ),
            (None, Some(cluster)) => format!("the cluster of {}", cluster.addresses()),
            (None, None) => s.address(),
        };
        f.debug_struct("RedisBackend")
            .field("address", &address)
            .field("durability", &s.durability())
            .field("tls", &s.tls)
            .field("db", &s.db)
            .field("username", &s.username)
            .field("password", &s.password)
            .field("namespace", &s.namespace)
            .field("connect_timeout", &s.connect_timeout)
            .field("request_timeout", &s.request_timeout)
            .field("notifications", &notifications)
            .finish()
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// Stores `holder` in the lock's value, with the fencing token and the server's time
    /// of the acquisition (see the [crate documentation](crate)); still one script call.
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        let ttl_ms = ttl_millis(ttl)?;
        leasehold_core::check_holder_identity(holder)?;
        self.inner.keys.check(key)?;
        // From here on, a lock this call may take is given back unless it ends with the
        // server's answer: on an error, a timeout or when this future is dropped.
        let attempt = Attempt::new(&self.inner, key);
        let limit = self.inner.lease_limit(ttl);
        let wait = self.inner.wait(limit);
        let (lock, fence, waiters, owner) = (
            attempt.lock(),
            self.inner.keys.fence(key),
            self.inner.keys.waiters(key),
            attempt.owner_prefix(),
        );
        let (fence, waiters) = (&fence, &waiters);
        let route = attempt.route();
        let ((taken, written), acked): ((i64, Option<String>), _) = self
            .inner
            .request_at("acquire", limit, |conn, epoch| {
                // So that an undo of this acquire follows it (see `abandon`).
                let conn = conn.recording(Arc::clone(&route));
                let mut eval = Eval::new(
                    &scripts::ACQUIRE,
                    [lock, fence.as_str(), waiters.as_str()].into_iter(),
                );
                eval.arg(owner)
                    .arg(ttl_ms)
                    .arg(holder)
                    .arg(scripts::fence_floor(epoch))
                    .arg(&self.inner.waiter_id);
                async move { durability::invoke(conn, &eval, wait).await }
            })
            .await?;
        if taken == 1 {
            // Not confirmed: the attempt, dropped unanswered, gives the lock back.
            self.inner.confirmed("acquire", wait, acked)?;
        }
        match (taken, written) {
            (0, None) => {
                attempt.answered();
                Ok(None)
            }
            (1, Some(written)) if written.starts_with(attempt.owner_prefix()) => {
                // The value is left out of errors (anyone who has it can release the lock);
                // the attempt, dropped unanswered, gives the lock back.
                let Some(stored) = value::parse(written.as_bytes()) else {
                    return Err(error::unexpected_reply(
                        "acquire",
                        "a value that does not parse",
                    ));
                };
                let lock = attempt.answered();
                Ok(Some(Box::new(RedisLease::new(
                    Arc::clone(&self.inner),
                    key.clone(),
                    Claim::new(&lock, &written),
                    stored.fence,
                    ttl,
                ))))
            }
            (taken, written) => Err(error::unexpected_reply(
                "acquire",
                (taken, written.map(|_| "<a lock value>")),
            )),
        }
    }

    /// Refreshes this backend's leases with one Lua script call (the same compare and
    /// `PEXPIRE` as a single refresh, over many keys) per 500 leases, all pipelined on
    /// the command connection; leases of other backends are refreshed one by one. In
    /// cluster mode one call per slot (a script touches keys of one slot only), the
    /// calls of one master in one pipeline, all masters at once.
    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        Batched(self).refresh_batched(leases, ttl).await
    }

    /// A release wakes one of the backends registered in the name's waiters, which
    /// [`expires_in`](Self::expires_in) does while this wait is pending, or every waiter
    /// if none is registered (see the [crate documentation](crate)). A backend that did
    /// not register during its waits on the name is woken only by a release that picked
    /// nobody (by every release in cluster mode), and otherwise learns of it by polling.
    ///
    /// In cluster mode, subscribes to the name's sharded channel, then checks that the
    /// lock is still held (a release published before the subscription would be
    /// missed): if not, returns at once.
    async fn released(&self, key: &LockKey) -> Result<()> {
        let channel = self.inner.keys.channel(key);
        match &self.inner.notifier {
            Releases::Pattern(notifier) => notifier.released(&channel).await,
            Releases::Sharded(notifier) => {
                // Without registering: a wait alone is not a contender (see above).
                let held = async { Ok(self.pttl(key, false).await?.is_some()) };
                notifier.released(&channel, held).await
            }
        }
    }

    /// The lock's `PTTL`, and, while a [`released`](Self::released) wait of this backend
    /// on `key` is pending with its notifications up, this backend registered as one of
    /// the name's waiters, until now + max(10 s, 2 × the `PTTL`): one script call (see
    /// the [crate documentation](crate)). The runner asks after every failed attempt
    /// while it waits, which keeps it registered while it waits.
    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        let channel = self.inner.keys.channel(key);
        let register = self.inner.notifier.waits_on(&channel);
        let left = self.pttl(key, register).await?;
        if register {
            // Only now: until the server has it, a release that picks another backend
            // must still wake this one.
            self.inner.notifier.registered(&channel);
        }
        Ok(left)
    }

    /// One script call reads the lock's value and `PTTL`. A lease taken by a Go instance
    /// (or by an older version of this backend, which stored no holder) describes with its
    /// remaining TTL only: no holder, fencing token or start.
    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        let mut described = operator::describe(&self.inner, std::slice::from_ref(key)).await?;
        Ok(described.pop().flatten())
    }

    /// Finds the lock keys under `prefix` with `SCAN` (never `KEYS`, which blocks the
    /// server), a round trip per thousand keys the server looks at, then describes them
    /// with one script call per 500. A lock released in between is left out; the list is
    /// a snapshot of no single instant.
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        operator::list(&self.inner, prefix).await
    }

    /// Deletes the lock key whoever holds it, a Go instance included, and publishes the
    /// release, so waiters try at once. Two requests: one reads the lock's value, the other
    /// deletes the lock if it still holds that value, so that a request repeated after a
    /// dropped connection never deletes the lock of the holder that came next.
    ///
    /// The holder is not told: it learns at its next refresh, which finds its value gone
    /// and reports [`Error::Lost`](leasehold_core::Error::Lost) (its runner then stops the
    /// routine). Until then it keeps running while the next holder may already have
    /// started: fencing tokens order their writes. The fence counter is kept, so the next
    /// holder's token is greater.
    async fn force_release(&self, key: &LockKey) -> Result<bool> {
        operator::force_release(&self.inner, key).await
    }

    /// `GET <namespace>:record:<name>`.
    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        let record = &self.inner.keys.record(key);
        self.inner
            .request(
                "read_record",
                self.inner.settings.request_timeout,
                |mut conn| async move { redis::cmd("GET").arg(record).query_async(&mut conn).await },
            )
            .await
    }

    /// One script call (see the [crate documentation](crate)): fenced unless the lock is
    /// held by the acquisition with `token` (the fence counter equals `token` and the
    /// lock's value carries it, so a lock held by a Go instance fences every write), then
    /// compare and `SET` of `<namespace>:record:<name>`, with no expiry.
    ///
    /// Like every request, the call is sent once more if the connection dropped before
    /// its answer came; if the first one was written, the second reports
    /// [`RecordWrite::Conflict`] with `value` itself as the current value.
    async fn write_record(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        leasehold_core::check_record(key, value)?;
        self.inner.keys.check(key)?;
        let mut invocation = scripts::WRITE_RECORD.key(self.inner.keys.lock(key));
        invocation
            .key(self.inner.keys.fence(key))
            .key(self.inner.keys.record(key))
            .arg(token.get())
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value);
        let invocation = &invocation;
        let (outcome, current): (i64, Option<Vec<u8>>) = self
            .inner
            .request(
                "write_record",
                self.inner.settings.request_timeout,
                |mut conn| async move { invocation.invoke_async(&mut conn).await },
            )
            .await?;
        match outcome {
            scripts::RECORD_WRITTEN => Ok(RecordWrite::Written),
            scripts::RECORD_CONFLICT => Ok(RecordWrite::Conflict { current }),
            scripts::RECORD_FENCED => Ok(RecordWrite::Fenced),
            other => Err(error::unexpected_reply("write_record", other)),
        }
    }
}

/// The backend as the batched-refresh skeleton sees it: one
/// [`REFRESH_MANY`](scripts::REFRESH_MANY) call per
/// [`REFRESH_MANY_CHUNK`](scripts::REFRESH_MANY_CHUNK) leases, all pipelined.
struct Batched<'a>(&'a RedisBackend);

impl BatchRefresh for Batched<'_> {
    const BACKEND: &'static str = NAME;
    type Lease = RedisLease;
    /// Shared with the lease: cloning it raises a count.
    type Pending = Claim;
    /// The script's reply for the lease: 1 extended, 0 lost.
    type Answer = Result<i64>;

    fn owns(&self, lease: &RedisLease) -> bool {
        lease.belongs_to(&self.0.inner)
    }

    fn refresh_timeout(&self, ttl: Duration) -> Duration {
        self.0.inner.lease_limit(ttl)
    }

    fn start_refresh(&self, lease: &mut RedisLease, ttl: Duration) -> RefreshStart<Self::Pending> {
        if let Err(error) = ttl_millis(ttl) {
            return RefreshStart::Done(Err(error));
        }
        if !lease.is_held() {
            return RefreshStart::Done(Err(Error::lost(lease.key())));
        }
        RefreshStart::Queued(lease.claim().clone())
    }

    async fn send_refreshes(
        &self,
        pending: Vec<Self::Pending>,
        ttl: Duration,
    ) -> Vec<Self::Answer> {
        let ttl_ms = match ttl_millis(ttl) {
            Ok(ms) => ms,
            Err(error) => {
                return error::for_each(error, "refresh", pending.len())
                    .into_iter()
                    .map(Err)
                    .collect();
            }
        };
        // One script call per batch (per slot in cluster mode), all sent at once.
        let batches = crate::cluster::batches(
            &pending,
            Claim::lock,
            self.0.inner.keys.tagged(),
            scripts::REFRESH_MANY_CHUNK,
        );
        let invocations: Vec<Eval<'_>> = batches
            .iter()
            .map(|batch| {
                let keys = batch.iter().map(|&index| pending[index].lock());
                let mut eval = Eval::new(&scripts::REFRESH_MANY, keys);
                eval.arg(ttl_ms);
                for &index in batch {
                    eval.arg(pending[index].value());
                }
                eval
            })
            .collect();
        let inner = &self.0.inner;
        let limit = inner.lease_limit(ttl);
        let wait = inner.wait(limit);
        // In cluster mode, first the scripts of each master in one pipeline; what that
        // does not answer goes script by script, routed by its keys.
        let mut replies = if inner.keys.tagged() {
            let slots = batches.iter().map(|batch| {
                batch
                    .first()
                    .map_or(0, |&index| crate::cluster::slot_of(pending[index].lock()))
            });
            by_master(inner, &invocations, slots.collect(), limit, wait).await
        } else {
            invocations.iter().map(|_| None).collect()
        };
        let rest: Vec<usize> = (0..invocations.len())
            .filter(|&index| replies[index].is_none())
            .collect();
        let sent = futures::future::join_all(rest.iter().map(|&index| {
            let invocation = &invocations[index];
            inner.request("refresh", limit, move |conn| async move {
                durability::invoke::<Extended>(conn, invocation, wait).await
            })
        }))
        .await;
        for (index, reply) in rest.into_iter().zip(sent) {
            replies[index] = Some(reply);
        }
        let replies = replies.into_iter().map(|reply| {
            reply.unwrap_or_else(|| Err(error::unexpected_reply("refresh", "no reply")))
        });
        let mut answers: Vec<Option<Self::Answer>> = pending.iter().map(|_| None).collect();
        for (batch, reply) in batches.iter().zip(replies) {
            let count = batch.len();
            let batch_answers: Vec<Self::Answer> = match reply {
                Ok((extended, acked)) if extended.len() == count => {
                    let short = match (wait, acked) {
                        (Some(wait), Some(acked)) => inner
                            .confirmed("refresh", Some(wait), Some(acked))
                            .is_err()
                            .then_some((wait, acked)),
                        _ => None,
                    };
                    // A lock found gone is lost whatever the replicas say; an extension
                    // counts only once confirmed.
                    extended
                        .replies()
                        .map(|reply| match short {
                            Some((wait, acked)) if reply == 1 => {
                                Err(wait.unconfirmed("refresh", acked))
                            }
                            _ => Ok(reply),
                        })
                        .collect()
                }
                Ok((extended, _)) => {
                    let error = error::unexpected_reply("refresh", extended.len());
                    error::for_each(error, "refresh", count)
                        .into_iter()
                        .map(Err)
                        .collect()
                }
                Err(error) => error::for_each(error, "refresh", count)
                    .into_iter()
                    .map(Err)
                    .collect(),
            };
            for (&index, answer) in batch.iter().zip(batch_answers) {
                answers[index] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| Err(error::unexpected_reply("refresh", "no reply")))
            })
            .collect()
    }

    fn finish_refresh(
        &self,
        lease: &mut RedisLease,
        answer: Self::Answer,
        ttl: Duration,
    ) -> Result<()> {
        lease.refreshed(answer?, ttl)
    }
}

/// What one refresh script answered: the extensions, and how many replicas confirmed.
type Refreshed = Result<(Extended, Option<i64>)>;

/// Sends the refresh scripts of each master (by the cached slot map, `slots` being each
/// invocation's slot) in one pipeline, with the `WAIT` of durable mode after them, all
/// masters at once. Returns a reply per invocation, `None` for those to send on their
/// own: the map was stale (`MOVED`, `ASK`), the script not loaded (`NOSCRIPT`: it is
/// loaded now), or the master's pipeline failed other than by running out of time.
async fn by_master(
    inner: &Client,
    invocations: &[Eval<'_>],
    slots: Vec<u16>,
    limit: Duration,
    wait: Option<durability::Wait>,
) -> Vec<Option<Refreshed>> {
    let mut replies: Vec<Option<Refreshed>> = invocations.iter().map(|_| None).collect();
    let Some(map) = inner.slot_map(limit).await else {
        return replies;
    };
    let mut masters: Vec<(u16, Vec<usize>)> = Vec::new();
    for (index, slot) in slots.iter().enumerate() {
        let Some(master) = map.master_of(*slot) else {
            continue;
        };
        match masters.iter_mut().find(|(m, _)| *m == master) {
            Some((_, members)) => members.push(index),
            None => masters.push((master, vec![index])),
        }
    }
    let sent = futures::future::join_all(masters.iter().map(|(master, members)| {
        let mut pipeline = redis::pipe();
        for &index in members {
            pipeline.add_command(invocations[index].cmd().clone());
        }
        if let Some(wait) = wait {
            pipeline
                .cmd("WAIT")
                .arg(wait.count)
                .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
        }
        inner.request("refresh", limit, move |mut conn| {
            let pipeline = pipeline.clone();
            async move { crate::cluster::pipeline_to(&mut conn, pipeline, *master).await }
        })
    }))
    .await;
    let mut stale = false;
    let mut unloaded = false;
    for ((_, members), outcome) in masters.iter().zip(sent) {
        let mut values = match outcome {
            Ok(values) if values.len() == members.len() + usize::from(wait.is_some()) => values,
            // Out of time: sending again would be too.
            Err(error @ Error::Timeout { .. }) => {
                let errors = error::for_each(error, "refresh", members.len());
                for (&index, error) in members.iter().zip(errors) {
                    replies[index] = Some(Err(error));
                }
                continue;
            }
            _ => {
                stale = true;
                continue;
            }
        };
        let acked = match wait {
            Some(_) => match values.pop().map(redis::from_redis_value::<i64>) {
                Some(Ok(acked)) => Some(acked),
                _ => continue,
            },
            None => None,
        };
        for (&index, value) in members.iter().zip(values) {
            if let Value::ServerError(err) = &value {
                unloaded |= err.code() == "NOSCRIPT";
                stale |= err.code() != "NOSCRIPT";
                continue;
            }
            replies[index] = Some(
                redis::from_redis_value::<Extended>(value)
                    .map(|extended| (extended, acked))
                    .map_err(|err| error::unexpected_reply("refresh", err)),
            );
        }
    }
    if stale {
        inner.forget_slot_map();
    }
    if unloaded {
        // Loaded on every master (`SCRIPT LOAD` goes to all of them), once.
        let loaded = inner
            .request("refresh", limit, move |mut conn| async move {
                scripts::REFRESH_MANY
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
            })
            .await;
        if let Err(err) = loaded {
            tracing::debug!(error = %err.chain(), "could not load the refresh script");
        }
    }
    replies
}

/// A cluster connection that could not be opened: says which seed nodes were tried, and
/// that a server without cluster mode is not a cluster.
fn unreachable_cluster(err: Error, cluster: &ClusterSettings) -> Error {
    let nodes = cluster.addresses();
    if err.chain().contains("cluster support disabled") {
        return Error::misconfigured(
            NAME,
            format!(
                "cluster mode is on but the server at {nodes} has cluster support disabled \
                 (`cluster-enabled no`): connect with redis:// or point at a cluster's nodes"
            ),
        );
    }
    match err {
        Error::Unavailable { .. } => Error::unavailable(
            NAME,
            "connect",
            error::Context(
                format!(
                    "no node of the cluster answered with its slot layout (seed nodes {nodes})"
                ),
                Box::new(err),
            ),
        ),
        other => other,
    }
}
