//! `MemoryBackend`: the process-local reference backend.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    Capabilities, Error, FencingToken, Lease, LeaseInfo, LockBackend, LockKey, RecordWrite, Result,
};

const NAME: &str = "memory";

/// A lease backend that lives in this process: every clone shares the same keys.
///
/// It implements the whole contract (TTLs, fencing tokens, release notifications, expiry
/// reports) and is the reference the conformance suite is written against. Use it for
/// tests, for single-process applications that want `keep_running_one_instance` semantics
/// between tasks, and as a model when writing a backend.
///
/// Time is tokio's clock ([`tokio::time::Instant`]), so tests with paused time
/// (`#[tokio::test(start_paused = true)]`) control expiry.
///
/// It also has fault-injection switches for tests: [`MemoryBackend::set_unavailable`],
/// [`MemoryBackend::set_hanging`] and [`MemoryBackend::revoke`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leasehold_core::{LockBackend, LockKey, MemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> leasehold_core::Result<()> {
/// let backend = MemoryBackend::new();
/// let key = LockKey::new("report")?;
/// let mut lease = backend.try_acquire(&key, Duration::from_secs(5)).await?.expect("free");
/// assert!(backend.try_acquire(&key, Duration::from_secs(5)).await?.is_none(), "held");
/// lease.release().await?;
/// assert!(backend.try_acquire(&key, Duration::from_secs(5)).await?.is_some(), "free again");
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Lease ids tell our own lease apart from a later holder of the same key.
    next_lease_id: AtomicU64,
}

#[derive(Default)]
struct State {
    holders: HashMap<LockKey, Holder>,
    /// Keys with waiters; an entry goes when its last waiter is woken or gives up.
    waiters: HashMap<LockKey, Arc<Notify>>,
    /// Expired holders are swept out when `holders` grows past this, so that routines
    /// with ever new names do not grow the map for good (amortized: the next sweep
    /// waits until the map has doubled).
    sweep_at: usize,
    /// One counter for all keys: strictly increasing per key is all the contract asks,
    /// and one counter needs no per-key state that outlives the holder.
    last_token: u64,
    /// Records by key ([`LockBackend::write_record`]); kept like a server keeps them.
    records: HashMap<LockKey, Vec<u8>>,
    unavailable: bool,
    hanging: bool,
}

struct Holder {
    lease_id: u64,
    token: FencingToken,
    expires_at: Instant,
    identity: Arc<str>,
    acquired_at: SystemTime,
}

impl Holder {
    fn info(&self, key: &LockKey, now: Instant) -> LeaseInfo {
        LeaseInfo::new(key.clone())
            .with_holder(&*self.identity)
            .with_fencing_token(self.token)
            .with_acquired_at(self.acquired_at)
            .with_expires_in(self.expires_at - now)
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Test switch: while `true`, every operation fails with
    /// [`Error::Unavailable`], as if the server were down. Leases keep expiring.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// Test switch: while `true`, every operation waits forever, as if the server were
    /// paused. Requests already waiting stay stuck; leases keep expiring.
    pub fn set_hanging(&self, hanging: bool) {
        self.state().hanging = hanging;
    }

    /// Test switch: deletes the lease on `key` behind its holder's back, without waking
    /// waiters. The holder's next refresh reports [`Error::Lost`].
    pub fn revoke(&self, key: &LockKey) {
        self.state().holders.remove(key);
    }

    /// The fencing token of the live lease on `key`, if any.
    pub fn holder(&self, key: &LockKey) -> Option<FencingToken> {
        let now = Instant::now();
        self.state()
            .holders
            .get(key)
            .filter(|h| h.expires_at > now)
            .map(|h| h.token)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single insert or remove), so poisoning is ignored.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the fault switches; hangs forever while `hanging` is set.
    async fn gate(&self, operation: &'static str) -> Result<()> {
        let (unavailable, hanging) = {
            let state = self.state();
            (state.unavailable, state.hanging)
        };
        if hanging {
            std::future::pending::<()>().await;
        }
        if unavailable {
            return Err(Error::unavailable(
                NAME,
                operation,
                "memory backend switched to unavailable",
            ));
        }
        Ok(())
    }

    fn wake_waiters(state: &mut State, key: &LockKey) {
        if let Some(notify) = state.waiters.remove(key) {
            notify.notify_waiters();
        }
    }
}

/// What the memory backend declares. TTLs are added to tokio's `Instant`, which cannot
/// go arbitrarily far into the future: a century is the longest.
const CAPABILITIES: Capabilities = Capabilities::new()
    .with_release_notifications(true)
    .with_reports_expiry(true)
    .with_ttl_granularity(Duration::from_nanos(1))
    .with_min_ttl(Duration::from_nanos(1))
    .with_max_ttl(Duration::from_secs(100 * 365 * 24 * 60 * 60))
    .with_records(true);

fn check_ttl(ttl: Duration) -> Result<()> {
    CAPABILITIES.check_ttl(NAME, ttl)
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.state().holders.len();
        f.debug_struct("MemoryBackend")
            .field("held_keys", &held)
            .finish()
    }
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        check_ttl(ttl)?;
        crate::check_holder_identity(holder)?;
        let sent = Instant::now();
        self.gate("acquire").await?;
        let mut state = self.state();
        let now = Instant::now();
        if state
            .holders
            .get(key)
            .is_some_and(|holder| holder.expires_at > now)
        {
            return Ok(None);
        }
        if state.holders.len() >= state.sweep_at {
            state.holders.retain(|_, holder| holder.expires_at > now);
            state.sweep_at = (state.holders.len() * 2).max(MIN_SWEEP);
        }
        state.last_token += 1;
        let token = FencingToken::new(state.last_token);
        let lease_id = self.shared.next_lease_id.fetch_add(1, Ordering::Relaxed);
        state.holders.insert(
            key.clone(),
            Holder {
                lease_id,
                token,
                expires_at: sent + ttl,
                identity: Arc::from(holder),
                acquired_at: SystemTime::now(),
            },
        );
        Ok(Some(Box::new(MemoryLease {
            backend: self.clone(),
            key: key.clone(),
            lease_id,
            token,
            released: false,
        })))
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        self.gate("wait for release").await?;
        let notify = Arc::clone(self.state().waiters.entry(key.clone()).or_default());
        // Takes the key's entry out when the last waiter on it goes, woken or not.
        let _waiter = Waiter {
            backend: self,
            key,
            notify: &notify,
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registers this waiter now, on the first poll, so a release between this poll and
        // the caller's next `try_acquire` is not missed.
        notified.as_mut().enable();
        notified.await;
        Ok(())
    }

    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        self.gate("expires_in").await?;
        let now = Instant::now();
        Ok(self
            .state()
            .holders
            .get(key)
            .filter(|h| h.expires_at > now)
            .map(|h| h.expires_at - now))
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        self.gate("describe").await?;
        let now = Instant::now();
        Ok(self
            .state()
            .holders
            .get(key)
            .filter(|h| h.expires_at > now)
            .map(|h| h.info(key, now)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        self.gate("list").await?;
        let now = Instant::now();
        let mut held: Vec<LeaseInfo> = self
            .state()
            .holders
            .iter()
            .filter(|(key, h)| key.as_str().starts_with(prefix) && h.expires_at > now)
            .map(|(key, h)| h.info(key, now))
            .collect();
        held.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        Ok(held)
    }

    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        self.gate("read_record").await?;
        Ok(self.state().records.get(key).cloned())
    }

    /// Written only while the lease with `token` is the key's live lease (tokens come from
    /// one counter, so a later lease has another token).
    async fn write_record(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        crate::check_record(key, value)?;
        self.gate("write_record").await?;
        let mut state = self.state();
        let now = Instant::now();
        let holds = state
            .holders
            .get(key)
            .is_some_and(|h| h.token == token && h.expires_at > now);
        if !holds {
            return Ok(RecordWrite::Fenced);
        }
        let current = state.records.get(key);
        if current.map(Vec::as_slice) != expected {
            return Ok(RecordWrite::Conflict {
                current: current.cloned(),
            });
        }
        state.records.insert(key.clone(), value.to_vec());
        Ok(RecordWrite::Written)
    }

    /// Removes the holder and wakes the waiters; the holder's next refresh reports
    /// [`Error::Lost`].
    async fn force_release(&self, key: &LockKey) -> Result<bool> {
        self.gate("force_release").await?;
        let mut state = self.state();
        let now = Instant::now();
        let held = state
            .holders
            .remove(key)
            .is_some_and(|h| h.expires_at > now);
        MemoryBackend::wake_waiters(&mut state, key);
        Ok(held)
    }
}

/// The fewest holders worth sweeping for expired ones.
const MIN_SWEEP: usize = 64;

/// One waiter in [`LockBackend::released`]: when the last waiter on a key goes, the key's
/// entry in `waiters` goes with it.
struct Waiter<'a> {
    backend: &'a MemoryBackend,
    key: &'a LockKey,
    notify: &'a Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut state = self.backend.state();
        // The map's reference and ours: nobody else waits on this entry.
        if Arc::strong_count(self.notify) == 2
            && state
                .waiters
                .get(self.key)
                .is_some_and(|entry| Arc::ptr_eq(entry, self.notify))
        {
            state.waiters.remove(self.key);
        }
    }
}

/// A lease handed out by [`MemoryBackend`].
struct MemoryLease {
    backend: MemoryBackend,
    key: LockKey,
    lease_id: u64,
    token: FencingToken,
    released: bool,
}

impl fmt::Debug for MemoryLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("released", &self.released)
            .finish()
    }
}

#[async_trait]
impl Lease for MemoryLease {
    fn key(&self) -> &LockKey {
        &self.key
    }

    fn fencing_token(&self) -> FencingToken {
        self.token
    }

    async fn refresh(&mut self, ttl: Duration) -> Result<()> {
        check_ttl(ttl)?;
        let sent = Instant::now();
        let lost = || Error::lost(&self.key);
        if self.released {
            return Err(lost());
        }
        self.backend.gate("refresh").await?;
        let mut state = self.backend.state();
        match state.holders.get_mut(&self.key) {
            Some(h) if h.lease_id == self.lease_id && h.expires_at > Instant::now() => {
                h.expires_at = sent + ttl;
                Ok(())
            }
            _ => Err(lost()),
        }
    }

    async fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.backend.gate("release").await?;
        let mut state = self.backend.state();
        if state
            .holders
            .get(&self.key)
            .is_some_and(|h| h.lease_id == self.lease_id)
        {
            state.holders.remove(&self.key);
            MemoryBackend::wake_waiters(&mut state, &self.key);
        }
        self.released = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
