//! `Client`: what a backend and its leases share, and the request path every call takes.
//!
//! A leaf under `backend`, `lease` and `abandon`, so that none of them needs another to
//! send a request.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leasehold_core::{Capabilities, Result};

use crate::cluster::SlotMap;
use crate::config::Settings;
use crate::conn::Conn;
use crate::connection::Connection;
use crate::durability::Wait;
use crate::error::NAME;
use crate::notify::{Notifier, Status};
use crate::scripts::Keys;
use crate::sharded::ShardedNotifier;

/// What this backend declares. The shortest TTL is Redis's expiry precision, one
/// millisecond; the longest is what `PX` and `PEXPIRE` accept with room to spare (the
/// server adds its clock to it and refuses a sum beyond a signed 64-bit millisecond
/// count): about 146 million years. Records are stored (see the crate documentation).
pub(crate) const CAPABILITIES: Capabilities = Capabilities::new()
    .with_release_notifications(true)
    .with_reports_expiry(true)
    .with_min_ttl(Duration::from_millis(1))
    .with_max_ttl(Duration::from_millis(i64::MAX.unsigned_abs() / 2))
    .with_ttl_granularity(Duration::from_millis(1))
    .with_records(true);

/// What a backend and its leases share: the settings, the key layout and the two
/// connections.
pub(crate) struct Client {
    pub(crate) settings: Settings,
    pub(crate) keys: Keys,
    pub(crate) conn: Connection,
    pub(crate) notifier: Releases,
    /// This backend's random waiter id: what it registers in a name's waiters, and what
    /// a release that picked it publishes (see the `notify` module).
    pub(crate) waiter_id: String,
    /// In cluster mode, which master serves each slot, as last read: the batched refresh
    /// sends the scripts of one master together. Dropped when found stale.
    pub(crate) slot_map: Mutex<Option<Arc<SlotMap>>>,
}

/// Where release notifications come from: one pattern subscription on the server, or
/// sharded subscriptions per name in cluster mode.
pub(crate) enum Releases {
    Pattern(Notifier),
    Sharded(ShardedNotifier),
}

impl Releases {
    /// `subscribed`, `connecting` or `down`, for `Debug`.
    pub(crate) fn state(&self) -> &'static str {
        match self {
            Releases::Pattern(notifier) => match notifier.status() {
                Status::Connecting => "connecting",
                Status::Subscribed => "subscribed",
                Status::Failed(_) => "down",
            },
            Releases::Sharded(notifier) if notifier.is_active() => "subscribed",
            Releases::Sharded(_) => "down",
        }
    }

    /// Whether a waiter here would hear a release on `channel` (see
    /// [`Notifier::waits_on`]).
    pub(crate) fn waits_on(&self, channel: &str) -> bool {
        match self {
            Releases::Pattern(notifier) => notifier.waits_on(channel),
            Releases::Sharded(notifier) => notifier.waits_on(channel),
        }
    }

    /// This backend registered in the waiters of `channel`'s name: a release that picks
    /// another backend no longer wakes its waiters here (see the `notify` module).
    pub(crate) fn registered(&self, channel: &str) {
        match self {
            Releases::Pattern(notifier) => notifier.registered(channel),
            Releases::Sharded(notifier) => notifier.registered(channel),
        }
    }
}

impl Client {
    /// Runs a request bounded by `limit` (see [`Client::lease_limit`]).
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
        self.conn.request(operation, limit, send).await
    }

    /// [`Client::request`], with the epoch of the master it goes to (see
    /// [`Connection::request_at`]).
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
        self.conn.request_at(operation, limit, send).await
    }

    /// The slot map (see [`SlotMap`]), read now if none is cached; `None` if it cannot be.
    pub(crate) async fn slot_map(&self, limit: Duration) -> Option<Arc<SlotMap>> {
        if let Some(map) = self.cached_slot_map().clone() {
            return Some(map);
        }
        let read = self
            .request("read the slot map", limit, |mut conn| async move {
                crate::cluster::slot_map(&mut conn).await
            })
            .await;
        let map = Arc::new(read.ok().flatten()?);
        *self.cached_slot_map() = Some(Arc::clone(&map));
        Some(map)
    }

    /// Drops the cached slot map: it sent a script to a master that does not serve it.
    pub(crate) fn forget_slot_map(&self) {
        *self.cached_slot_map() = None;
    }

    fn cached_slot_map(&self) -> MutexGuard<'_, Option<Arc<SlotMap>>> {
        // Each critical section is a single assignment or clone.
        self.slot_map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `WAIT` that must follow a write bounded by `limit`, in durable mode.
    pub(crate) fn wait(&self, limit: Duration) -> Option<Wait> {
        crate::durability::wait(self.settings.durability(), limit)
    }

    /// Checks how many replicas confirmed a write of `operation` (`None`: not asked).
    /// Too few marks the connection suspect: behind Sentinel, a master that lost its
    /// replicas may have been replaced.
    pub(crate) fn confirmed(
        &self,
        operation: &'static str,
        wait: Option<Wait>,
        acked: Option<i64>,
    ) -> Result<()> {
        let (Some(wait), Some(acked)) = (wait, acked) else {
            return Ok(());
        };
        let checked = wait.check(operation, acked);
        if checked.is_err() {
            self.conn.suspect();
        }
        checked
    }

    /// The bound on a request made for a lease of `ttl`: the request timeout, but at most
    /// two fifths of the TTL. A reply that comes later than that leaves the runner too
    /// little of the lease to act on it, and a hung server must not hold a call for
    /// seconds. It is strictly shorter than the runner's own bound on an acquire (half
    /// the TTL by default), so that the backend, not the runner, gives up first and
    /// hands the uncertain lock back (see the `abandon` module).
    pub(crate) fn lease_limit(&self, ttl: Duration) -> Duration {
        self.settings.request_timeout.min(ttl / 5 * 2)
    }
}

/// A TTL in whole milliseconds, rounded up (Redis's `PX` granularity), after checking it
/// against [`CAPABILITIES`].
pub(crate) fn ttl_millis(ttl: Duration) -> Result<u64> {
    CAPABILITIES.check_ttl(NAME, ttl)?;
    // Within the bounds, whole milliseconds fit in 63 bits.
    Ok(u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}
