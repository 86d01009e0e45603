//! `Harness`: what a conformance case gets: fresh clients, isolated keys, scaled time.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use leasehold::{Capabilities, LockBackend, LockKey, Runner};

type Factory = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn LockBackend>> + Send + Sync>;

/// The context of one conformance case.
///
/// Every key a case uses comes from [`Harness::key`], under a prefix unique to the case
/// and the run, so cases can run in parallel on one server and never touch keys they
/// did not create. Durations come from [`Harness::ttl`] and [`Harness::scaled`], which
/// apply the time scale and the backend's minimum TTL.
#[derive(Clone)]
pub struct Harness {
    factory: Factory,
    prefix: String,
    scale: f64,
    capabilities: Capabilities,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("prefix", &self.prefix)
            .field("scale", &self.scale)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

/// Why a case was skipped; see [`skip`].
#[derive(Debug)]
pub struct Skipped(pub String);

/// Skips the current case (or every case, when called from the backend factory), for
/// example because the server binary is missing outside CI. The test passes with a
/// notice on stderr.
pub fn skip(reason: impl Into<String>) -> ! {
    std::panic::panic_any(Skipped(reason.into()))
}

impl Harness {
    /// A harness around `factory`, which must return a new client of the backend under
    /// test each time it is called (several clients take part in most cases).
    pub async fn new<F, Fut, B>(case: &str, scale: f64, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = B> + Send + 'static,
        B: LockBackend,
    {
        let factory: Factory = Arc::new(move || {
            let client = factory();
            Box::pin(async move { Arc::new(client.await) as Arc<dyn LockBackend> })
        });
        let capabilities = factory().await.capabilities();
        Self {
            factory,
            prefix: format!("conformance-{case}-{:08x}-", rand::random::<u32>()),
            scale: if scale.is_finite() && scale > 0.0 {
                scale
            } else {
                1.0
            },
            capabilities,
        }
    }

    /// A new client of the backend under test.
    pub async fn backend(&self) -> Arc<dyn LockBackend> {
        (self.factory)().await
    }

    /// What the backend declared.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// A key unique to this case and run.
    pub fn key(&self, name: &str) -> LockKey {
        LockKey::new(format!("{}{name}", self.prefix))
            .unwrap_or_else(|err| panic!("conformance key for {name:?} must be valid: {err}"))
    }

    /// `base` times the time scale.
    pub fn scaled(&self, base: Duration) -> Duration {
        base.mul_f64(self.scale)
    }

    /// A lease TTL: `base` scaled, then raised and rounded to what the backend grants.
    pub fn ttl(&self, base: Duration) -> Duration {
        self.capabilities.effective_ttl(self.scaled(base))
    }

    /// The lease TTL runner-level cases use (one second, scaled).
    pub fn runner_ttl(&self) -> Duration {
        self.ttl(Duration::from_secs(1))
    }

    /// A runner on a new client with [`Harness::runner_ttl`] and no signal handlers.
    pub async fn runner(&self) -> Runner {
        self.runner_on(self.backend().await)
    }

    /// A runner on `backend` with [`Harness::runner_ttl`] and no signal handlers.
    pub fn runner_on(&self, backend: Arc<dyn LockBackend>) -> Runner {
        Runner::builder()
            .with_shared_backend(backend)
            .with_lease_ttl(self.runner_ttl())
            .with_signal_handling(false)
            .build()
            .unwrap_or_else(|err| panic!("runner for conformance must build: {err}"))
    }
}

/// Runs one case on its own multi-thread runtime; used by [`conformance_tests!`].
///
/// [`conformance_tests!`]: crate::conformance_tests
#[doc(hidden)]
pub fn run_case<F, Fut, B>(
    case: &'static str,
    scale: f64,
    factory: F,
    body: impl FnOnce(Harness) -> BoxFuture<'static, ()>,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = B> + Send + 'static,
    B: LockBackend,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("tokio runtime: {err}"));
    let result = runtime.block_on(
        AssertUnwindSafe(async move {
            let harness = Harness::new(case, scale, factory).await;
            body(harness).await;
        })
        .catch_unwind(),
    );
    // Leases left by a failed case expire on their own; do not wait for them.
    runtime.shutdown_background();
    if let Err(payload) = result {
        match payload.downcast::<Skipped>() {
            Ok(skipped) => eprintln!("skipped {case}: {}", skipped.0),
            Err(payload) => resume(payload),
        }
    }
}

fn resume(payload: Box<dyn Any + Send>) -> ! {
    std::panic::resume_unwind(payload)
}
