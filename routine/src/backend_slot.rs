//! `BackendSlot`: where a runner's named routines get their backend: given, connected on
//! first use, or a configuration error to report.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leasehold_core::{Error, LockBackend, Result};
use tokio::sync::OnceCell;

/// Where named routines get their backend: given, or connected on first use (the
/// process-wide default runner, configured from the environment).
#[derive(Clone)]
pub(crate) enum BackendSlot {
    Ready(Arc<dyn LockBackend>),
    Lazy(Arc<LazyBackend>),
    /// The configuration was rejected; leased routines fail with this error.
    Invalid(Arc<Error>),
}

/// Connects a lazily connected backend.
type Connect = Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn LockBackend>>> + Send + Sync>;

/// A backend connected on first use, and again after a failed attempt.
pub(crate) struct LazyBackend {
    /// What it connects to, for `Debug` while it is not connected (no password in it).
    description: String,
    cell: OnceCell<Arc<dyn LockBackend>>,
    connect: Connect,
}

impl BackendSlot {
    /// A slot that calls `connect` when a routine first needs the backend; `description`
    /// names it in `Debug` until then.
    pub(crate) fn lazy<F>(description: String, connect: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<Arc<dyn LockBackend>>> + Send + Sync + 'static,
    {
        BackendSlot::Lazy(Arc::new(LazyBackend {
            description,
            cell: OnceCell::new(),
            connect: Box::new(connect),
        }))
    }

    /// The backend if it is there already, without connecting.
    pub(crate) fn ready(&self) -> Option<&Arc<dyn LockBackend>> {
        match self {
            BackendSlot::Ready(backend) => Some(backend),
            _ => None,
        }
    }

    /// The backend, connecting it first if needed. A failed connection is tried again
    /// on the next call. A backend connected here is checked against the lease `ttl` (the
    /// routine's, which is the runner's unless the routine sets its own), which the
    /// builder could not do before it existed.
    pub(crate) async fn get(&self, ttl: Duration) -> Result<Arc<dyn LockBackend>> {
        match self {
            BackendSlot::Ready(backend) => Ok(Arc::clone(backend)),
            BackendSlot::Lazy(lazy) => {
                let backend = lazy.cell.get_or_try_init(|| (lazy.connect)()).await?;
                backend.capabilities().check_ttl(backend.name(), ttl)?;
                Ok(Arc::clone(backend))
            }
            BackendSlot::Invalid(error) => Err(Error::config("backend", error.to_string())),
        }
    }
}

impl fmt::Debug for BackendSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSlot::Ready(backend) => fmt::Debug::fmt(backend, f),
            BackendSlot::Lazy(lazy) => match lazy.cell.get() {
                Some(backend) => fmt::Debug::fmt(backend, f),
                None => write!(f, "{} (not connected yet)", lazy.description),
            },
            BackendSlot::Invalid(error) => write!(f, "invalid backend configuration: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use futures::FutureExt;
    use leasehold_core::{Capabilities, Lease, LockKey, MemoryBackend};

    use super::*;

    /// A backend that needs a TTL of at least a second and would accept any TTL it is
    /// asked for, so only the slot's own check can refuse one.
    #[derive(Debug)]
    struct SecondAtLeast(MemoryBackend);

    #[async_trait]
    impl LockBackend for SecondAtLeast {
        fn name(&self) -> &'static str {
            "second-at-least"
        }

        fn capabilities(&self) -> Capabilities {
            self.0.capabilities().with_min_ttl(Duration::from_secs(1))
        }

        async fn try_acquire_as(
            &self,
            key: &LockKey,
            ttl: Duration,
            holder: &str,
        ) -> Result<Option<Box<dyn Lease>>> {
            self.0.try_acquire_as(key, ttl, holder).await
        }

        async fn released(&self, key: &LockKey) -> Result<()> {
            self.0.released(key).await
        }
    }

    #[tokio::test]
    async fn a_lazily_connected_backend_is_checked_against_the_runners_ttl() {
        let slot = BackendSlot::lazy("test".into(), || {
            async { Ok(Arc::new(SecondAtLeast(MemoryBackend::new())) as Arc<dyn LockBackend>) }
                .boxed()
        });
        let err = slot.get(Duration::from_millis(500)).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { .. }),
            "a TTL below the connected backend's minimum must be refused: {err:?}"
        );
        slot.get(Duration::from_secs(1))
            .await
            .expect("a TTL within the backend's bounds is accepted");
    }
}
