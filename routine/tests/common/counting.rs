//! `Counting`: a memory backend that counts the requests a runner sends, can refuse
//! `describe`, and can declare release notifications missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    Capabilities, Error, Lease, LeaseInfo, LockBackend, LockKey, MemoryBackend, Result,
};

/// [`MemoryBackend`] with counts of acquire attempts, `expires_in` and `describe` calls;
/// `describe` answers [`Error::Unsupported`] while `unsupported` is set, and while
/// `no_notifications` is set the backend declares no release notifications (`released`
/// then never resolves, as the trait asks).
#[derive(Debug, Clone, Default)]
pub struct Counting {
    pub inner: MemoryBackend,
    pub attempts: Arc<AtomicUsize>,
    pub expiries: Arc<AtomicUsize>,
    pub describes: Arc<AtomicUsize>,
    pub unsupported: Arc<AtomicBool>,
    pub no_notifications: Arc<AtomicBool>,
}

#[allow(dead_code)] // each test file uses some of these
impl Counting {
    /// A counting view of `inner`, with or without release notifications.
    pub fn on(inner: &MemoryBackend, notifications: bool) -> Self {
        Self {
            inner: inner.clone(),
            no_notifications: Arc::new(AtomicBool::new(!notifications)),
            ..Self::default()
        }
    }

    pub fn describes(&self) -> usize {
        self.describes.load(Ordering::SeqCst)
    }

    /// Attempts, `expires_in` and `describe` calls so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.attempts.load(Ordering::SeqCst),
            self.expiries.load(Ordering::SeqCst),
            self.describes.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl LockBackend for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .with_release_notifications(!self.no_notifications.load(Ordering::SeqCst))
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.try_acquire_as(key, ttl, holder).await
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        self.describes.fetch_add(1, Ordering::SeqCst);
        if self.unsupported.load(Ordering::SeqCst) {
            return Err(Error::unsupported("counting", "describe"));
        }
        self.inner.describe(key).await
    }

    async fn released(&self, key: &LockKey) -> Result<()> {
        if self.no_notifications.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        self.inner.released(key).await
    }

    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        self.expiries.fetch_add(1, Ordering::SeqCst);
        self.inner.expires_in(key).await
    }
}
