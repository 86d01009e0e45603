//! `Capabilities`: what a backend can do, so the runner and the conformance suite adapt.

use std::time::Duration;

/// What a backend supports, declared by [`LockBackend::capabilities`].
///
/// The runner uses it to choose between waiting for a release notification and polling,
/// and to round lease TTLs; the conformance suite uses it to skip cases a backend cannot
/// pass by design and to scale its timing.
///
/// Built with [`Capabilities::new`] and the `with_*` setters, so that fields can be added
/// without breaking backends.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leasehold_core::Capabilities;
///
/// let caps = Capabilities::new()
///     .with_release_notifications(true)
///     .with_min_ttl(Duration::from_secs(2))
///     .with_ttl_granularity(Duration::from_secs(1));
/// assert!(caps.release_notifications);
/// ```
///
/// [`LockBackend::capabilities`]: crate::LockBackend::capabilities
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`LockBackend::released`](crate::LockBackend::released) resolves when a key is
    /// released. Without it, waiters notice a release only at their next retry.
    pub release_notifications: bool,
    /// [`LockBackend::expires_in`](crate::LockBackend::expires_in) reports how long the
    /// current holder's lease has left, so a waiter can retry right when it runs out.
    pub reports_expiry: bool,
    /// The shortest TTL the backend can honour. Shorter requests are an
    /// [`Error::InvalidTtl`](crate::Error::InvalidTtl) (the runner checks this up front).
    pub min_ttl: Duration,
    /// The longest TTL the backend can represent. Longer requests are an
    /// [`Error::InvalidTtl`](crate::Error::InvalidTtl) (the runner checks this up front).
    pub max_ttl: Duration,
    /// TTLs are rounded up to a multiple of this (one second for etcd, one millisecond for
    /// Redis). The lease is then held at least as long as requested, never shorter.
    pub ttl_granularity: Duration,
    /// The backend can tell when a key was taken over by another holder while ours was
    /// live (a refresh reports [`Error::Lost`](crate::Error::Lost) instead of hanging).
    /// Every backend in this repository does.
    pub detects_takeover: bool,
    /// The backend stores a record per key ([`LockBackend::read_record`],
    /// [`LockBackend::write_record`]); scheduled routines need it.
    ///
    /// [`LockBackend::read_record`]: crate::LockBackend::read_record
    /// [`LockBackend::write_record`]: crate::LockBackend::write_record
    pub records: bool,
}

impl Capabilities {
    /// The most conservative set: no notifications, no expiry reports, a one millisecond
    /// minimum TTL and granularity.
    pub const fn new() -> Self {
        Self {
            release_notifications: false,
            reports_expiry: false,
            min_ttl: Duration::from_millis(1),
            max_ttl: Duration::MAX,
            ttl_granularity: Duration::from_millis(1),
            detects_takeover: true,
            records: false,
        }
    }

    /// Sets [`Capabilities::release_notifications`].
    pub const fn with_release_notifications(mut self, yes: bool) -> Self {
        self.release_notifications = yes;
        self
    }

    /// Sets [`Capabilities::reports_expiry`].
    pub const fn with_reports_expiry(mut self, yes: bool) -> Self {
        self.reports_expiry = yes;
        self
    }

    /// Sets [`Capabilities::min_ttl`].
    pub const fn with_min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl = ttl;
        self
    }

    /// Sets [`Capabilities::max_ttl`].
    pub const fn with_max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// Checks `ttl` against [`Capabilities::min_ttl`] and [`Capabilities::max_ttl`], for
    /// backends and runners alike.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`](crate::Error::InvalidTtl) naming `backend` and the bound, if
    /// `ttl` is zero or outside the bounds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasehold_core::Capabilities;
    ///
    /// let caps = Capabilities::new().with_min_ttl(Duration::from_secs(1));
    /// assert!(caps.check_ttl("postgres", Duration::from_millis(999)).is_err());
    /// assert!(caps.check_ttl("postgres", Duration::from_secs(5)).is_ok());
    /// ```
    pub fn check_ttl(&self, backend: &str, ttl: Duration) -> crate::Result<()> {
        let reason = if ttl.is_zero() {
            "the lease TTL must be greater than zero".to_owned()
        } else if ttl < self.min_ttl {
            format!(
                "the {backend} backend needs a TTL of at least {:?}",
                self.min_ttl
            )
        } else if ttl > self.max_ttl {
            format!(
                "the {backend} backend can represent a TTL of at most {:?}",
                self.max_ttl
            )
        } else {
            return Ok(());
        };
        Err(crate::Error::InvalidTtl { ttl, reason })
    }

    /// Sets [`Capabilities::ttl_granularity`].
    pub const fn with_ttl_granularity(mut self, granularity: Duration) -> Self {
        self.ttl_granularity = granularity;
        self
    }

    /// Sets [`Capabilities::records`].
    pub const fn with_records(mut self, yes: bool) -> Self {
        self.records = yes;
        self
    }

    /// Sets [`Capabilities::detects_takeover`].
    pub const fn with_detects_takeover(mut self, yes: bool) -> Self {
        self.detects_takeover = yes;
        self
    }

    /// The TTL the backend actually grants for a request of `ttl`: rounded up to
    /// [`Capabilities::ttl_granularity`] and raised to [`Capabilities::min_ttl`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasehold_core::Capabilities;
    ///
    /// let etcd_like = Capabilities::new()
    ///     .with_min_ttl(Duration::from_secs(2))
    ///     .with_ttl_granularity(Duration::from_secs(1));
    /// assert_eq!(etcd_like.effective_ttl(Duration::from_millis(2500)), Duration::from_secs(3));
    /// assert_eq!(etcd_like.effective_ttl(Duration::from_millis(100)), Duration::from_secs(2));
    /// ```
    pub fn effective_ttl(&self, ttl: Duration) -> Duration {
        let step = self.ttl_granularity.as_nanos().max(1);
        let steps = ttl.as_nanos().div_ceil(step);
        let rounded = u64::try_from(steps.saturating_mul(step)).unwrap_or(u64::MAX);
        Duration::from_nanos(rounded).max(self.min_ttl)
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}
