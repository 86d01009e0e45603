//! `Faulty`: wraps a real backend and makes its refreshes fail on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    Capabilities, Error, FencingToken, Lease, LeaseInfo, LockBackend, LockKey, RecordWrite, Result,
};

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
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        Ok(self
            .inner
            .try_acquire_as(key, ttl, holder)
            .await?
            .map(|lease| {
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
    async fn describe(&self, key: &LockKey) -> Result<Option<LeaseInfo>> {
        self.inner.describe(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        self.inner.list(prefix).await
    }
    async fn force_release(&self, key: &LockKey) -> Result<bool> {
        self.inner.force_release(key).await
    }
    async fn read_record(&self, key: &LockKey) -> Result<Option<Vec<u8>>> {
        self.inner.read_record(key).await
    }
    async fn write_record(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        self.inner.write_record(key, token, expected, value).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::MemoryBackend;

    /// A wrapper passes the holder identity and the operator queries through: the runner
    /// acquiring through `Faulty` is described as itself, not as the process default.
    #[tokio::test]
    async fn the_holder_identity_and_operator_queries_pass_through() {
        let memory = MemoryBackend::new();
        let faulty = Faulty::new(Arc::new(memory.clone()));
        let key = LockKey::new("job").unwrap();
        let ttl = Duration::from_secs(10);
        let _lease = faulty
            .try_acquire_as(&key, ttl, "replica-7")
            .await
            .unwrap()
            .expect("free");
        let info = memory.describe(&key).await.unwrap().expect("held");
        assert_eq!(info.holder.as_deref(), Some("replica-7"));
        let listed = faulty.list("").await.unwrap();
        assert_eq!(listed.len(), 1, "list passes through: {listed:?}");
        assert!(
            faulty.force_release(&key).await.unwrap(),
            "force_release passes through"
        );
        assert_eq!(faulty.describe(&key).await.unwrap(), None);
    }
}
