//! `LeaseTiming`: what the keeper needs of a routine's settings to keep its lease (its
//! own TTL and refresh interval, see [`RunOptions::lease_ttl`](crate::RunOptions::lease_ttl)).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RunnerConfig;

/// What the keeper needs of a routine's settings to keep its lease.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseTiming {
    pub(super) ttl: Duration,
    pub(super) refresh_interval: Duration,
    safety_margin: Duration,
    pub(super) request_timeout: Duration,
}

impl LeaseTiming {
    /// The timing of a lease of a routine with settings `config`.
    pub(super) fn of(config: &RunnerConfig) -> Self {
        Self {
            ttl: config.lease_ttl,
            refresh_interval: config.refresh_interval,
            safety_margin: config.safety_margin,
            request_timeout: config.request_timeout,
        }
    }

    /// The local deadline of a lease confirmed by a call made at `sent`.
    pub(super) fn local_deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.safety_margin)
    }
}
