//! The command connection and the request path every command takes.
//!
//! The `redis` crate's `ConnectionManager` reconnects after I/O errors only. When its
//! reconnection fails otherwise (the server refused the credentials) it keeps that
//! failure and returns it to every later request, and a connection left on a server
//! demoted to a replica (a failover behind a fixed address) answers `READONLY` for as
//! long as it lives. Neither heals by waiting, so a request that fails that way replaces
//! the manager with a new one and is sent once more on it. Replacements happen only
//! within requests, which the runner paces with its backoff, and at most once per
//! [`RENEW_INTERVAL`]: the backend keeps no timers of its own.
//!
//! In cluster mode the connection is the `redis` crate's cluster connection (see
//! [`crate::conn`]), which follows the slots' masters by itself; it is replaced only after
//! a refused password, as a manager is.
//!
//! Behind Sentinel the master itself moves. A request that fails in a way a failover
//! explains (the connection refused, reset or timed out, or `READONLY` from a demoted
//! master) asks the sentinels where the master is now, and moves to it if it moved (see
//! [`Target`]); a request bounded by its own limit before any such answer marks the
//! connection suspect, so that the next request asks first.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use leasehold_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::error::{self, NAME};
use crate::lane::Lane;
use crate::sentinel::{Located, Target};

/// The shortest time between two replacements of the manager, so that requests failing
/// together (every lease of a runner) open one new connection, not one each.
const RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// The multiplexed command connection of one backend, replaced when it cannot recover.
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

/// What a replacement needs: it runs in a task of its own (see [`Connection::renew`]).
struct Shared {
    target: Arc<Target>,
    config: ConnectionManagerConfig,
    connect_timeout: Duration,
    current: RwLock<Current>,
    /// When the last replacement started; locked while one is under way.
    renewed: tokio::sync::Mutex<Option<Instant>>,
    /// A request ran out of time without an answer: the master may have moved, so the
    /// next request asks the sentinels first.
    suspect: AtomicBool,
}

/// The manager in use, where it goes, and how many replacements came before it.
#[derive(Clone)]
struct Current {
    generation: u64,
    manager: Conn,
    address: String,
    /// The master's epoch (see [`crate::sentinel`]); 0 without Sentinel.
    epoch: u64,
}

impl Connection {
    /// Opens the first connection, bounded by `connect_timeout`.
    ///
    /// No retries inside the client: a request that finds the connection broken fails at
    /// once (a transient error) and starts one reconnection attempt that the next request
    /// awaits. The runner's backoff paces reconnection, not the client's sleeps.
    pub(crate) async fn open(
        client: redis::Client,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        Self::open_target(
            Arc::new(Target::Fixed(client)),
            connect_timeout,
            request_timeout,
        )
        .await
    }

    /// Opens the first connection to where `target` says, bounded by `connect_timeout`
    /// (and, behind Sentinel, by the time to ask the sentinels).
    pub(crate) async fn open_target(
        target: Arc<Target>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        let config = manager_config(connect_timeout, request_timeout);
        let located = target.locate().await?;
        let manager = new_manager(&located.client, &config, connect_timeout)
            .await
            .map(|manager| Conn::single(manager, Lane::open(&located.client, connect_timeout)))
            .map_err(|err| err.into_error("connect", connect_timeout))?;
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                config,
                connect_timeout,
                current: RwLock::new(Current {
                    generation: 0,
                    manager,
                    address: located.address,
                    epoch: located.epoch,
                }),
                renewed: tokio::sync::Mutex::new(None),
                suspect: AtomicBool::new(false),
            }),
        })
    }

    /// Opens the first cluster connection: the client reads the slot layout from the
    /// first seed node that answers, bounded by `connect_timeout`.
    pub(crate) async fn open_cluster(
        client: ClusterClient,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        let config = manager_config(connect_timeout, request_timeout);
        let manager = new_cluster(&client, connect_timeout)
            .await
            .map_err(|err| err.into_error("connect", connect_timeout))?;
        Ok(Self {
            shared: Arc::new(Shared {
                target: Arc::new(Target::Cluster(client)),
                config,
                connect_timeout,
                current: RwLock::new(Current {
                    generation: 0,
                    manager,
                    address: "cluster".to_owned(),
                    epoch: 0,
                }),
                renewed: tokio::sync::Mutex::new(None),
                suspect: AtomicBool::new(false),
            }),
        })
    }

    /// Where commands go.
    pub(crate) fn target(&self) -> &Arc<Target> {
        &self.shared.target
    }

    /// Marks the connection suspect: behind Sentinel, the next request asks the
    /// sentinels whether the master moved before it is sent (a `WAIT` that found too few
    /// replicas may mean this master was replaced).
    pub(crate) fn suspect(&self) {
        if self.shared.target.follows_master() {
            self.shared.suspect.store(true, Ordering::Relaxed);
        }
    }

    /// Sends a request with `send`, bounded by `limit` in all (reconnecting and replacing
    /// the connection included), and maps the outcome.
    ///
    /// If the connection turns out to be dropped (the server closed it, or a reconnection
    /// is under way), the request is sent once more, which waits for the new connection.
    /// If it failed in a way the connection does not recover from (see the module docs),
    /// it is sent once more on a replacement. Every request this backend makes may be
    /// repeated: refresh and release compare our lock value, a repeated acquire recognises
    /// the lock it took (see [`crate::scripts::ACQUIRE`]), and a repeated record write
    /// whose first send was written answers a conflict carrying its own value.
    pub(crate) async fn request<T, F, Fut>(
        &self,
        operation: &'static str,
        limit: Duration,
        send: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.send(operation, limit, false, |manager, _| send(manager))
            .await
    }

    /// [`request`](Self::request), with the epoch of the master it is sent to (0
    /// without Sentinel) given to `send` along with the connection.
    ///
    /// Behind Sentinel the epoch must be the master's current one: while the sentinels
    /// could not be asked since a failure that a failover explains (the connection may
    /// have been re-established to the same address, now a master of a later epoch),
    /// the request is not sent and fails with [`Error::Unavailable`].
    pub(crate) async fn request_at<T, F, Fut>(
        &self,
        operation: &'static str,
        limit: Duration,
        send: F,
    ) -> Result<T>
    where
        F: Fn(Conn, u64) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.send(operation, limit, true, send).await
    }

    async fn send<T, F, Fut>(
        &self,
        operation: &'static str,
        limit: Duration,
        needs_epoch: bool,
        send: F,
    ) -> Result<T>
    where
        F: Fn(Conn, u64) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let follows = self.shared.target.follows_master();
        let attempt = async {
            if follows && self.shared.suspect.load(Ordering::Relaxed) {
                let generation = self.shared.read().generation;
                self.renew(generation, true).await;
                if needs_epoch && self.shared.suspect.load(Ordering::Relaxed) {
                    return Err(Attempt::Unlocated);
                }
            }
            let current = self.shared.current();
            let sent = match send_on(&current, operation, follows, &send).await {
                Err(err) if error::needs_new_connection(&err) => {
                    match self.renew(current.generation, false).await {
                        Some(fresh) => send_on(&fresh, operation, follows, &send).await,
                        None => Err(err),
                    }
                }
                // A dropped connection is re-established to the same address: behind
                // Sentinel, ask where the master is before sending again.
                Err(err) if follows && may_have_moved(&err) => {
                    match self.renew(current.generation, true).await {
                        Some(fresh) => send_on(&fresh, operation, follows, &send).await,
                        None => Err(err),
                    }
                }
                other => other,
            };
            sent.map_err(Attempt::Redis)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(Attempt::Redis(err))) => Err(error::from_redis(err, operation, limit)),
            Ok(Err(Attempt::Unlocated)) => Err(Error::unavailable(
                NAME,
                operation,
                "the master may have moved and the sentinels could not tell where yet \
                 (a failover may be under way); not sent",
            )),
            Err(_) => {
                self.suspect();
                Err(Error::timeout(NAME, operation, limit))
            }
        }
    }

    /// A manager to use instead of generation `failed`: one that replaced it meanwhile,
    /// or a new one. `None` if another request is replacing it right now, if the last
    /// replacement is less than [`RENEW_INTERVAL`] ago, or if a new one cannot connect;
    /// with `moved_only`, also if the target is where the failed one went (asking the
    /// sentinels again found the same master in the same epoch).
    ///
    /// The replacement runs in a task of its own: a request whose time runs out while
    /// the sentinels are asked (a request's bound may be as short as the response
    /// timeout that sent it here) gives up waiting, but the replacement still happens,
    /// for the requests that follow.
    ///
    /// With `moved_only`, a master that did not move is confirmed: the current manager is
    /// returned (to send again on it, re-established to the same address). Behind
    /// Sentinel, a failure to ask the sentinels marks the connection suspect and a
    /// successful answer clears it.
    async fn renew(&self, failed: u64, moved_only: bool) -> Option<Current> {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move { shared.renew(failed, moved_only).await })
            .await
            .ok()
            .flatten()
    }
}

impl Shared {
    fn current(&self) -> Current {
        self.read().clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, Current> {
        // Writers only assign a whole value: a poisoned lock holds no half-updated state.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`Connection::renew`].
    async fn renew(&self, failed: u64, moved_only: bool) -> Option<Current> {
        let replaced = |current: &Current| (current.generation != failed).then(|| current.clone());
        if let Some(current) = replaced(&self.read()) {
            return Some(current);
        }
        let mut renewed = self.renewed.try_lock().ok()?;
        if let Some(current) = replaced(&self.read()) {
            return Some(current);
        }
        if renewed.is_some_and(|at| at.elapsed() < RENEW_INTERVAL) {
            return None;
        }
        *renewed = Some(Instant::now());
        if let Target::Cluster(client) = &*self.target {
            return match new_cluster(client, self.connect_timeout).await {
                Ok(manager) => Some(self.install(failed, manager, "cluster".to_owned(), 0)),
                Err(err) => {
                    tracing::debug!(error = ?err, "could not replace the redis cluster connection");
                    None
                }
            };
        }
        let located = if moved_only {
            let (address, epoch) = {
                let current = self.read();
                (current.address.clone(), current.epoch)
            };
            self.target.locate_if_moved(&address, epoch).await
        } else {
            self.target.locate().await.map(Some)
        };
        let follows = self.target.follows_master();
        let Located {
            client,
            address,
            epoch,
        } = match located {
            Ok(Some(located)) => located,
            Ok(None) => {
                self.suspect.store(false, Ordering::Relaxed);
                return Some(self.current());
            }
            Err(err) => {
                tracing::debug!(error = %err.chain(), "could not locate the redis master");
                self.suspect.store(follows, Ordering::Relaxed);
                return None;
            }
        };
        match new_manager(&client, &self.config, self.connect_timeout).await {
            Ok(manager) => {
                let lane = Lane::open(&client, self.connect_timeout);
                Some(self.install(failed, Conn::single(manager, lane), address, epoch))
            }
            Err(err) => {
                tracing::debug!(error = ?err, "could not replace the redis command connection");
                None
            }
        }
    }
}

impl Shared {
    /// Makes `manager` the connection in use, replacing generation `failed`.
    fn install(&self, failed: u64, manager: Conn, address: String, epoch: u64) -> Current {
        tracing::info!(%address, epoch, "redis command connection replaced");
        let fresh = Current {
            generation: failed + 1,
            manager,
            address,
            epoch,
        };
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = fresh.clone();
        self.suspect.store(false, Ordering::Relaxed);
        fresh
    }
}

/// Whether `err` is one a failover explains: the server is gone, refuses, closed the
/// connection or does not answer.
fn may_have_moved(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

/// Sends once, and once more if the connection turned out to be dropped, unless the
/// master may move (`follows`): then the caller asks the sentinels first.
async fn send_on<T, F, Fut>(
    current: &Current,
    operation: &'static str,
    follows: bool,
    send: &F,
) -> redis::RedisResult<T>
where
    F: Fn(Conn, u64) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    match send(current.manager.clone(), current.epoch).await {
        Err(err) if err.is_connection_dropped() && !follows => {
            tracing::debug!(operation, error = %err, "redis connection dropped, sending again");
            send(current.manager.clone(), current.epoch).await
        }
        other => other,
    }
}

/// Why a request's attempt failed.
enum Attempt {
    Redis(redis::RedisError),
    /// The request needs the master's epoch, which is not known since the connection
    /// failed.
    Unlocated,
}

/// Why a new manager could not be made.
#[derive(Debug)]
enum Failure {
    Redis(redis::RedisError),
    TimedOut,
}

impl Failure {
    fn into_error(self, operation: &'static str, timeout: Duration) -> Error {
        match self {
            Failure::Redis(err) => error::from_redis(err, operation, timeout),
            Failure::TimedOut => Error::timeout(NAME, operation, timeout),
        }
    }
}

/// The managers' settings: no retries inside the client (see [`Connection::open`]).
fn manager_config(connect_timeout: Duration, request_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(request_timeout))
        .set_number_of_retries(0)
}

async fn new_manager(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
    connect_timeout: Duration,
) -> Result<ConnectionManager, Failure> {
    tokio::time::timeout(
        connect_timeout,
        ConnectionManager::new_with_config(client.clone(), config.clone()),
    )
    .await
    .map_err(|_| Failure::TimedOut)?
    .map_err(Failure::Redis)
}

async fn new_cluster(client: &ClusterClient, connect_timeout: Duration) -> Result<Conn, Failure> {
    tokio::time::timeout(connect_timeout, client.get_async_connection())
        .await
        .map_err(|_| Failure::TimedOut)?
        .map(Conn::Cluster)
        .map_err(Failure::Redis)
}
