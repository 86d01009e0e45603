//! `Faulty`: wraps a real backend and makes its refreshes fail on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{Capabilities, Error, FencingToken, Lease, LockBackend, LockKey, Result};

/// A backend that passes everything through to a real one, except that while
/// [`Faulty::fail_refreshes`] is on, refreshes fail with a transient error without
/// reaching the server, as if this client were cut off. The real lease then expires on
/// the server, which is what the runner must anticipate.
#[derive(Debug, Clone)]
pub struct Faulty {
    inner: Arc<dyn LockBackend>,
    failing: Arc<AtomicBool>,
}

impl Faulty {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LockBackend>) -> Self {
        Self {
            inner,
            failing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Turns refresh failures on or off.
    pub fn fail_refreshes(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

#[async_trait]
impl LockBackend for Faulty {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, key: &LockKey, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        Ok(self.inner.try_acquire(key, ttl).await?.map(|lease| {
            Box::new(FaultyLease {
                inner: lease,
                failing: Arc::clone(&self.failing),
            }) as Box<dyn Lease>
        }))
    }
    async fn released(&self, key: &LockKey) -> Result<()> {
        self.inner.released(key).await
    }
    async fn expires_in(&self, key: &LockKey) -> Result<Option<Duration>> {
        self.inner.expires_in(key).await
    }
}

#[derive(Debug)]
struct FaultyLease {
    inner: Box<dyn Lease>,
    failing: Arc<AtomicBool>,
}

#[async_trait]
impl Lease for FaultyLease {
    fn key(&self) -> &LockKey {
        self.inner.key()
    }
    fn fencing_token(&self) -> FencingToken {
        self.inner.fencing_token()
    }
    async fn refresh(&mut self, ttl: Duration) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::unavailable(
                "faulty",
                "refresh",
                "refresh failures injected by the conformance suite",
            ));
        }
        self.inner.refresh(ttl).await
    }
    async fn release(&mut self) -> Result<()> {
        self.inner.release().await
    }
}
