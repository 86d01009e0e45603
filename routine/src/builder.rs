//! `RunnerBuilder`: the runner's timing policy, with defaults derived from the lease TTL.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use leasehold_core::{Error, LockBackend, Result, check_holder_identity};
use tokio_util::sync::CancellationToken;

use crate::backend_slot::BackendSlot;
use crate::config::{DEFAULT_TTL, RunnerConfig};
use crate::runner::Runner;
use crate::shared::Setup;

/// Settings of a [`Runner`], built with [`Runner::builder`].
///
/// Every duration left unset is derived from the lease TTL, so that one setting scales the
/// whole timing. The TTL, refresh, retry and backoff defaults are the Go original's, so
/// that Go and Rust replicas of one service keep the same timing side by side:
///
/// | setting | default |
/// |---|---|
/// | `lease_ttl` | 5 s (raised to the backend's minimum) |
/// | `refresh_interval` | TTL / 5 |
/// | `retry_interval` | TTL / 5 |
/// | `safety_margin` | TTL / 10 |
/// | `grace_period` | TTL / 5 |
/// | `backoff_min` / `backoff_max` | TTL / 5 / 10 min |
/// | `request_timeout` | TTL / 2 |
/// | `release_timeout` | 2 s |
/// | `drain_timeout` | 10 s |
/// | `handle_signals` | `false` (the process-wide default runner: `true`) |
/// | `holder_identity` | [`process_identity`](leasehold_core::process_identity) |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leasehold::{MemoryBackend, Runner};
///
/// let runner = Runner::builder()
///     .with_backend(MemoryBackend::new())
///     .with_lease_ttl(Duration::from_secs(10))
///     .with_signal_handling(false)
///     .build()
///     .unwrap();
/// assert_eq!(runner.config().retry_interval, Duration::from_secs(2));
/// ```
#[derive(Debug, Default)]
pub struct RunnerBuilder {
    backend: Option<BackendSlot>,
    /// A setter's error, reported by `build`.
    error: Option<Error>,
    lease_ttl: Option<Duration>,
    refresh_interval: Option<Duration>,
    retry_interval: Option<Duration>,
    safety_margin: Option<Duration>,
    grace_period: Option<Duration>,
    backoff_min: Option<Duration>,
    backoff_max: Option<Duration>,
    request_timeout: Option<Duration>,
    release_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    handle_signals: Option<bool>,
    holder_identity: Option<String>,
    shutdown_signals: ShutdownSignals,
}

/// The application's shutdown signals given to the builder; the first to resolve shuts
/// the runner down.
#[derive(Default)]
struct ShutdownSignals(Vec<BoxFuture<'static, ()>>);

impl fmt::Debug for ShutdownSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} shutdown signal(s)", self.0.len())
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $setter:ident => $field:ident;)*) => {$(
        $(#[$doc])*
        pub fn $setter(mut self, value: Duration) -> Self {
            self.$field = Some(value);
            self
        }
    )*};
}

impl RunnerBuilder {
    /// The lease backend shared by the runner's named routines.
    pub fn with_backend(mut self, backend: impl LockBackend) -> Self {
        self.backend = Some(BackendSlot::Ready(Arc::new(backend)));
        self
    }

    /// Like [`RunnerBuilder::with_backend`], for a backend already behind an `Arc`.
    pub fn with_shared_backend(mut self, backend: Arc<dyn LockBackend>) -> Self {
        self.backend = Some(BackendSlot::Ready(backend));
        self
    }

    /// Connects to the backend that `url` names (see [`connect`](crate::connect)) when the
    /// first leased routine needs it, not now, so a service starts while its lock server
    /// is still down. Until a connection succeeds, leased routines log the error and try
    /// again with the error backoff; plain routines are unaffected.
    ///
    /// A malformed URL or an unknown scheme makes [`RunnerBuilder::build`] fail with
    /// [`Error::Config`] naming `ROUTINE_BACKEND_URL`.
    ///
    /// ```
    /// let runner = leasehold::Runner::builder().with_backend_url("memory://").build();
    /// assert!(runner.is_ok());
    /// assert!(leasehold::Runner::builder().with_backend_url("ftp://x").build().is_err());
    /// ```
    pub fn with_backend_url(mut self, url: impl Into<String>) -> Self {
        match crate::env::lazy_backend(url.into(), "backend_url") {
            Ok(slot) => self.backend = Some(slot),
            Err(error) => self.error = Some(error),
        }
        self
    }

    pub(crate) fn backend_slot(mut self, slot: BackendSlot) -> Self {
        self.backend = Some(slot);
        self
    }

    setters! {
        /// How long a lease lasts without refresh (default 5 s).
        with_lease_ttl => lease_ttl;
        /// How often a held lease is refreshed (default TTL / 5).
        with_refresh_interval => refresh_interval;
        /// Wait between attempts without a release notification, and before restarting a
        /// routine that returned (default TTL / 5).
        with_retry_interval => retry_interval;
        /// Margin subtracted from the lease's expiry for the local deadline (default TTL / 10).
        with_safety_margin => safety_margin;
        /// Time between cancelling the routine's context and dropping it when the lease
        /// cannot be refreshed (default TTL / 5).
        with_grace_period => grace_period;
        /// First wait after a panic or backend error (default TTL / 5).
        with_backoff_min => backoff_min;
        /// Longest wait after repeated panics or backend errors (default 10 min).
        with_backoff_max => backoff_max;
        /// Timeout of an acquire request (default TTL / 2).
        with_request_timeout => request_timeout;
        /// Timeout of a release request (default 2 s).
        with_release_timeout => release_timeout;
        /// How long shutdown waits for routines before dropping them (default 10 s).
        with_drain_timeout => drain_timeout;
    }

    /// Who the runner's leases are held as, as [`LockBackend::describe`] and the
    /// backends' operator tools show the holder (default
    /// [`process_identity`](leasehold_core::process_identity):
    /// `$ROUTINE_HOLDER_IDENTITY`, else `<host>:<pid>`). Use the pod or instance name.
    ///
    /// An identity that is empty, longer than
    /// [`MAX_HOLDER_IDENTITY_LEN`](leasehold_core::MAX_HOLDER_IDENTITY_LEN) bytes or
    /// contains control characters makes [`RunnerBuilder::build`] fail with
    /// [`Error::Config`] naming `holder_identity`.
    ///
    /// ```
    /// let runner = leasehold::Runner::builder().with_holder_identity("web-7").build().unwrap();
    /// assert_eq!(runner.holder_identity(), "web-7");
    /// assert!(leasehold::Runner::builder().with_holder_identity("").build().is_err());
    /// ```
    pub fn with_holder_identity(mut self, identity: impl Into<String>) -> Self {
        self.holder_identity = Some(identity.into());
        self
    }

    /// Shuts the runner down (drain, then release every lease) when `cancel` is
    /// cancelled: the application's own shutdown, so that the runner stops with
    /// everything else. See [`Runner::shutdown`] and [`Runner::wait_for_shutdown`].
    pub fn with_shutdown_token(self, cancel: CancellationToken) -> Self {
        self.with_shutdown_signal(cancel.cancelled_owned())
    }

    /// Shuts the runner down (drain, then release every lease) when `signal` resolves,
    /// e.g. the future an HTTP server's graceful shutdown waits for. It is awaited on a
    /// task of the runtime the runner is built in, or, built outside one, of the runtime
    /// of its first routine or wait. Given several signals, the first one counts.
    pub fn with_shutdown_signal(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown_signals.0.push(signal.boxed());
        self
    }

    /// Whether SIGINT and SIGTERM shut the runner down (default `false`: the application
    /// usually owns its signals, and hands the runner its shutdown with
    /// [`RunnerBuilder::with_shutdown_token`] or [`RunnerBuilder::with_shutdown_signal`];
    /// the process-wide default runner behind [`run`](crate::run) does handle them).
    /// Needs the `signals` feature and Unix.
    ///
    /// The handlers are installed when the first routine starts. The first signal starts
    /// a shutdown (drain, then release) and does not end the process: the application
    /// decides when to exit, e.g. after [`Runner::wait_for_shutdown`] returns. A second
    /// signal during the drain ends the drain at once. Once the runner has shut down, a
    /// further signal has its default effect and ends the process.
    pub fn with_signal_handling(mut self, yes: bool) -> Self {
        self.handle_signals = Some(yes);
        self
    }

    /// Validates the settings and builds the runner.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] if the TTL is zero or below the backend's minimum, and
    /// [`Error::Config`] naming the setting if the timings cannot work together (the
    /// refresh interval must leave room for retries before the grace period starts).
    pub fn build(mut self) -> Result<Runner> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let config = self.resolve()?;
        let holder_identity = match self.holder_identity.take() {
            Some(identity) => {
                check_holder_identity(&identity)?;
                identity
            }
            None => leasehold_core::process_identity().to_owned(),
        };
        let mut signals = std::mem::take(&mut self.shutdown_signals.0);
        let shutdown_signal = match signals.len() {
            0 => None,
            1 => signals.pop(),
            _ => Some(futures::future::select_all(signals).map(|_| ()).boxed()),
        };
        let setup = Setup {
            holder_identity,
            shutdown_signal,
        };
        Ok(Runner::from_parts(self.backend, config, setup))
    }

    fn resolve(&self) -> Result<RunnerConfig> {
        let ready = self.backend.as_ref().and_then(BackendSlot::ready);
        let min_ttl = ready.map_or(Duration::ZERO, |backend| backend.capabilities().min_ttl);
        let ttl = match self.lease_ttl {
            Some(ttl) if ttl.is_zero() => {
                return Err(Error::InvalidTtl {
                    ttl,
                    reason: "the lease TTL must be greater than zero".into(),
                });
            }
            Some(ttl) => ttl,
            None => DEFAULT_TTL.max(min_ttl),
        };
        if let Some(backend) = ready {
            backend.capabilities().check_ttl(backend.name(), ttl)?;
        }
        let defaults = RunnerConfig::defaults(ttl);
        let config = RunnerConfig {
            lease_ttl: ttl,
            refresh_interval: self.refresh_interval.unwrap_or(defaults.refresh_interval),
            retry_interval: self.retry_interval.unwrap_or(defaults.retry_interval),
            safety_margin: self.safety_margin.unwrap_or(defaults.safety_margin),
            grace_period: self.grace_period.unwrap_or(defaults.grace_period),
            backoff_min: self.backoff_min.unwrap_or(defaults.backoff_min),
            backoff_max: self.backoff_max.unwrap_or(defaults.backoff_max),
            request_timeout: self.request_timeout.unwrap_or(defaults.request_timeout),
            release_timeout: self.release_timeout.unwrap_or(defaults.release_timeout),
            drain_timeout: self.drain_timeout.unwrap_or(defaults.drain_timeout),
            handle_signals: self.handle_signals.unwrap_or(defaults.handle_signals),
        };
        let explicit = |setting: &str| match setting {
            "refresh_interval" => self.refresh_interval.is_some(),
            "retry_interval" => self.retry_interval.is_some(),
            "safety_margin" => self.safety_margin.is_some(),
            "grace_period" => self.grace_period.is_some(),
            "backoff_min" => self.backoff_min.is_some(),
            "backoff_max" => self.backoff_max.is_some(),
            "request_timeout" => self.request_timeout.is_some(),
            "release_timeout" => self.release_timeout.is_some(),
            _ => false,
        };
        config.validate(explicit)?;
        Ok(config)
    }
}
