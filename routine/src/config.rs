//! `RunnerConfig`: a runner's resolved timing, its defaults and the rules that bind them.

use std::time::Duration;

use leasehold_core::{Error, Result};

/// The lease TTL when none is set: the Go original's, so that Go and Rust replicas of one
/// service refresh and retry on the same schedule.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The resolved settings of a runner; see [`RunnerBuilder`](crate::RunnerBuilder) for their
/// meaning and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// How long a lease lasts without refresh.
    pub lease_ttl: Duration,
    /// How often a held lease is refreshed.
    pub refresh_interval: Duration,
    /// How long a waiter waits before trying again when no release notification comes,
    /// and how long a routine that returned normally waits before it is restarted.
    pub retry_interval: Duration,
    /// Subtracted from the lease's expiry to get the local deadline, for clock-rate
    /// differences between this host and the server.
    pub safety_margin: Duration,
    /// How long before the local deadline the routine's context is cancelled, so it can
    /// finish cleanly before its future is dropped.
    pub grace_period: Duration,
    /// First wait after a panic or a backend error.
    pub backoff_min: Duration,
    /// Longest wait after repeated panics or backend errors.
    pub backoff_max: Duration,
    /// Timeout of an acquire request (refreshes are bounded by the local deadline).
    pub request_timeout: Duration,
    /// Timeout of a release request. It starts when the release starts, so a release
    /// is sent even when the routine's own context is already cancelled.
    pub release_timeout: Duration,
    /// How long [`Runner::shutdown`](crate::Runner::shutdown) waits for routines to return
    /// after cancelling them, before it drops them and releases their leases.
    pub drain_timeout: Duration,
    /// Whether SIGINT and SIGTERM shut the runner down (off unless asked for; on for the
    /// process-wide default runner).
    pub handle_signals: bool,
}

impl RunnerConfig {
    /// The local deadline of a lease whose acquire or refresh was sent at `sent`: the
    /// lease is certainly ours until then (`sent + lease_ttl - safety_margin`).
    pub(crate) fn local_deadline(&self, sent: tokio::time::Instant) -> tokio::time::Instant {
        sent + self.lease_ttl.saturating_sub(self.safety_margin)
    }

    /// The defaults for `ttl` (see [`RunnerBuilder`](crate::RunnerBuilder)); always valid
    /// for a non-zero TTL.
    pub(crate) fn defaults(ttl: Duration) -> Self {
        let fifth = ttl / 5;
        Self {
            lease_ttl: ttl,
            refresh_interval: fifth,
            retry_interval: fifth,
            safety_margin: ttl / 10,
            grace_period: fifth,
            backoff_min: fifth,
            backoff_max: Duration::from_secs(600).max(fifth),
            request_timeout: ttl / 2,
            release_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            handle_signals: false,
        }
    }

    /// The settings of one routine: these, with the routine's own lease TTL and backoff
    /// (see [`RunOptions::lease_ttl`](crate::RunOptions::lease_ttl)).
    ///
    /// A routine's TTL replaces every setting derived from a TTL (refresh and retry
    /// intervals, safety margin, grace period, request timeout) by its defaults for that
    /// TTL, also where the runner's were set explicitly: those were chosen against the
    /// runner's TTL, and kept for another they could be unsafe (a safety margin longer
    /// than a short TTL) or pointless (a refresh interval longer than a short TTL).
    /// Release and drain timeouts, and the backoff unless the routine sets one, stay the
    /// runner's: they do not follow from a lease's TTL.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `lease_ttl` or `backoff`, by the rules of
    /// [`RunnerConfig::validate`].
    pub(crate) fn for_routine(
        &self,
        ttl: Option<Duration>,
        backoff: Option<(Duration, Duration)>,
    ) -> Result<Self> {
        let mut config = self.clone();
        if let Some((min, max)) = backoff {
            if min.is_zero() {
                return Err(Error::config("backoff", "min must be greater than zero"));
            }
            if max < min {
                return Err(Error::config(
                    "backoff",
                    format!("max {max:?} is below min {min:?}"),
                ));
            }
            config.backoff_min = min;
            config.backoff_max = max;
        }
        if let Some(ttl) = ttl {
            if ttl.is_zero() {
                return Err(Error::config("lease_ttl", "must be greater than zero"));
            }
            let defaults = Self::defaults(ttl);
            config.lease_ttl = ttl;
            config.refresh_interval = defaults.refresh_interval;
            config.retry_interval = defaults.retry_interval;
            config.safety_margin = defaults.safety_margin;
            config.grace_period = defaults.grace_period;
            config.request_timeout = defaults.request_timeout;
            // Every setting left to check follows from the TTL: a problem is the TTL's.
            config.validate(|_| false).map_err(|error| match error {
                Error::InvalidTtl { reason, .. } => Error::config("lease_ttl", reason),
                other => Error::config("lease_ttl", other.to_string()),
            })?;
        }
        Ok(config)
    }

    /// Checks the settings together. `explicit` tells which settings the user set: a
    /// problem with settings that were all derived from the TTL is the TTL's (it is too
    /// short to derive them from), and is reported as such rather than naming a setting
    /// the user never set.
    pub(crate) fn validate(&self, explicit: impl Fn(&str) -> bool) -> Result<()> {
        let ttl_too_short = |derived: String| Error::InvalidTtl {
            ttl: self.lease_ttl,
            reason: format!("the lease TTL is too short to derive the runner's timing: {derived}"),
        };
        let positive = [
            ("refresh_interval", self.refresh_interval),
            ("retry_interval", self.retry_interval),
            ("backoff_min", self.backoff_min),
            ("request_timeout", self.request_timeout),
            ("release_timeout", self.release_timeout),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                if !explicit(setting) {
                    return Err(ttl_too_short(format!("{setting} would be zero")));
                }
                return Err(Error::config(setting, "must be greater than zero"));
            }
        }
        if self.backoff_max < self.backoff_min {
            return Err(Error::config(
                "backoff_max",
                format!(
                    "{:?} is below backoff_min {:?}",
                    self.backoff_max, self.backoff_min
                ),
            ));
        }
        let usable = self
            .lease_ttl
            .checked_sub(self.safety_margin + self.grace_period)
            .unwrap_or_default();
        if self.refresh_interval >= usable {
            if !["refresh_interval", "safety_margin", "grace_period"]
                .into_iter()
                .any(&explicit)
            {
                return Err(ttl_too_short(format!(
                    "a refresh every {:?} leaves no time to retry within {usable:?}",
                    self.refresh_interval
                )));
            }
            return Err(Error::config(
                "refresh_interval",
                format!(
                    "{:?} leaves no time to retry a failed refresh: it must be shorter than \
                     lease_ttl - safety_margin - grace_period = {usable:?}",
                    self.refresh_interval
                ),
            ));
        }
        Ok(())
    }
}
