//! `Counting`: a memory backend that counts `describe` calls and can refuse them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    Capabilities, Error, Lease, LeaseInfo, LockBackend, LockKey, MemoryBackend, Result,
};

/// [`MemoryBackend`] with a count of `describe` calls; `describe` answers
/// [`Error::Unsupported`] while `unsupported` is set.
#[derive(Debug, Clone, Default)]
pub struct Counting {
    pub inner: MemoryBackend,
    pub describes: Arc<AtomicUsize>,
    pub unsupported: Arc<AtomicBool>,
}

impl Counting {
    pub fn describes(&self) -> usize {
        self.describes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LockBackend for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
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
        self.inner.released(key).await
    }

    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        self.inner.expires_in(key).await
    }
}
