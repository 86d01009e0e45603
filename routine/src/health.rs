//! `Health`: whether a runner keeps its leases refreshed, for a liveness probe.

use std::fmt;
use std::time::Duration;

use leasehold_core::{FencingToken, LockKey};
use tokio::time::Instant;

/// What [`Runner::health`](crate::Runner::health) found: every held lease whose refresh
/// is late.
///
/// A lease is late when its last successful acquire or refresh was sent longer ago than
/// the refresh interval plus half a refresh interval (the keeper batches leases due
/// within half an interval, so an on-time lease is never older than that). A late lease
/// is still held until its local deadline; it shows a backend that does not answer, or a
/// runtime too busy to refresh, while there is still time to act. This is the check of
/// client-go's leader-election health adaptor, per lease.
///
/// Healthy means nothing is late, including when nothing is held.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Health {
    /// The late leases, most late first.
    pub late: Vec<LateLease>,
}

/// A held lease whose refresh is late; see [`Health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LateLease {
    /// The routine's name (the lease's key).
    pub name: LockKey,
    /// The lease's fencing token.
    pub fencing_token: FencingToken,
    /// When the last successful acquire or refresh of it was sent (tokio's clock).
    pub confirmed_at: Instant,
    /// How much later than expected the refresh is: the time since `confirmed_at`
    /// beyond the refresh interval and its tolerance.
    pub late_by: Duration,
}

impl Health {
    /// Whether no held lease is late.
    pub fn is_healthy(&self) -> bool {
        self.late.is_empty()
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.late.is_empty() {
            return f.write_str("ok");
        }
        f.write_str("lease refresh late:")?;
        for lease in &self.late {
            write!(
                f,
                " {} (fencing token {}, late by {:?});",
                lease.name,
                lease.fencing_token.get(),
                lease.late_by
            )?;
        }
        Ok(())
    }
}
