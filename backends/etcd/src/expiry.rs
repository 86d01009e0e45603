//! What [`expires_in`](leasehold_core::LockBackend::expires_in) reports for a held key,
//! from what etcd says about the key's lease.
//!
//! A key that exists is held, whatever its lease says, and is never reported as free
//! (`None`): the runner takes `None` for "free, try again now", and a key that stays
//! would have it try again and again without a pause. So every held key gets a time
//! greater than zero:
//!
//! - etcd truncates a lease's remaining time to whole seconds (`LeaseTimeToLive`), so a
//!   lease reported with `n` seconds left ends within `n + 1` seconds: that is reported,
//!   never more than the lease's granted TTL.
//! - A negative TTL is a lease that expired more than a second ago and is not revoked
//!   yet (or one revoked since the key was read: etcd reports unknown leases as `-1`).
//!   etcd's leader looks for expired leases every 500 ms and revokes at most 1,000 a
//!   second, so under a backlog such a key stays for seconds. [`REVOKE_INTERVAL`] is
//!   reported; the deletion itself wakes waiters through the release watch.
//! - A key without a lease (written by something other than this backend) never expires
//!   by itself: the longest lease etcd grants is reported, so that the runner waits for
//!   a release notification or its retry interval, whichever comes first.

use std::time::Duration;

/// The longest lease TTL etcd grants: its lessor's `MaxLeaseTTL`, 9,000,000,000 s (about
/// 285 years, the most whose expiry Go's nanosecond `time.Duration` can hold). etcd
/// refuses a longer grant ("too large lease TTL"); the TTL field itself, an int64 of
/// seconds, could say more.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// How often etcd's leader looks for expired leases to revoke (its lessor's revoke loop
/// runs every 500 ms).
pub(crate) const REVOKE_INTERVAL: Duration = Duration::from_millis(500);

/// The time left of a key held through a lease that etcd reports with `ttl` seconds
/// left of `granted_ttl`: always greater than zero (see the module docs).
pub(crate) fn lease_time_left(ttl: i64, granted_ttl: i64) -> Duration {
    let Ok(secs) = u64::try_from(ttl) else {
        return REVOKE_INTERVAL;
    };
    let granted = u64::try_from(granted_ttl).unwrap_or(0).max(1);
    Duration::from_secs(secs.saturating_add(1).min(granted))
}

/// The time left of a key held without a lease: it never expires by itself.
pub(crate) fn no_lease_time_left() -> Duration {
    MAX_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lease_ends_within_the_second_after_its_reported_ttl() {
        assert_eq!(lease_time_left(4, 10), Duration::from_secs(5));
        assert_eq!(
            lease_time_left(10, 10),
            Duration::from_secs(10),
            "never more than the granted TTL"
        );
    }

    #[test]
    fn a_lease_at_or_past_its_ttl_is_never_reported_as_zero_or_free() {
        // In its last second, or expired less than a second ago.
        assert_eq!(lease_time_left(0, 2), Duration::from_secs(1));
        // Expired more than a second ago and not revoked yet, or revoked just now.
        for ttl in [-1, -5, i64::MIN] {
            for granted in [0, 2] {
                assert_eq!(
                    lease_time_left(ttl, granted),
                    REVOKE_INTERVAL,
                    "TTL {ttl} of {granted}"
                );
            }
        }
        assert!(lease_time_left(0, 0) > Duration::ZERO);
    }
}
