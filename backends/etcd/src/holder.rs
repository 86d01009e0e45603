//! `Holder`: who a backend is in the keys it takes (see the `value` module for the
//! format).
//!
//! Every acquire attempt writes a value no other attempt writes, in any process, so that
//! the clean-up of an attempt whose caller stopped waiting (see the `abandon` module)
//! can tell a key that attempt wrote from anyone else's. The process id is not enough
//! for that: replicas in containers often all run as PID 1 and start the same routines
//! in the same order, so their attempt counters line up too. Each backend therefore draws
//! a random nonce when it connects, and numbers its own attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::value::{self, Stamp};

/// The values a backend writes: `pid {pid} backend {nonce}`, then `attempt {n}` for each
/// acquire attempt or `attempt moved` for a key moved to another session, then the
/// holder's identity and acquire time.
#[derive(Debug)]
pub(crate) struct Holder {
    process: String,
    next_attempt: AtomicU64,
    /// The wall-clock time every acquire is stamped with instead of now; tests only.
    clock: Option<SystemTime>,
}

/// Replacements for the process id, the nonce, the first attempt number and the clock,
/// so that tests can make two backends write the same values (see
/// [`EtcdBackendBuilder::with_holder_values_for_tests`](crate::EtcdBackendBuilder::with_holder_values_for_tests)).
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) pid: Option<u32>,
    pub(crate) nonce: Option<u64>,
    pub(crate) first_attempt: Option<u64>,
    pub(crate) clock: Option<SystemTime>,
}

impl Holder {
    /// The holder of a backend connecting now: this process, a fresh nonce, attempts
    /// numbered from 1; or whatever `overrides` says instead.
    pub(crate) fn new(overrides: &Overrides) -> Self {
        let pid = overrides.pid.unwrap_or_else(std::process::id);
        let nonce = overrides.nonce.unwrap_or_else(random_nonce);
        Self {
            process: format!("pid {pid} backend {nonce:016x}"),
            next_attempt: AtomicU64::new(overrides.first_attempt.unwrap_or(1)),
            clock: overrides.clock,
        }
    }

    /// An acquisition by `identity` now, on the holder's wall clock.
    pub(crate) fn stamp(&self, identity: &str) -> Stamp {
        Stamp {
            identity: identity.to_owned(),
            acquired_at: self.clock.unwrap_or_else(SystemTime::now),
        }
    }

    /// The value of the next acquire attempt, for an acquisition `stamp`.
    pub(crate) fn attempt_value(&self, stamp: &Stamp) -> String {
        let attempt = self.next_attempt.fetch_add(1, Ordering::Relaxed);
        value::encode(&self.process, &attempt.to_string(), stamp)
    }

    /// The value of a key moved to another session: the acquisition `stamp` is kept, and
    /// no attempt's value is equal to it.
    pub(crate) fn moved_value(&self, stamp: &Stamp) -> String {
        value::encode(&self.process, "moved", stamp)
    }
}

/// 64 random bits, different for every call. `RandomState` keys come from the operating
/// system's random source once per thread and change with every `RandomState` made, so
/// hashes from two processes are unrelated; the counter keeps two backends of one
/// process apart even if they hashed the same time. (A random crate would do the same
/// with one more dependency.)
fn random_nonce() -> u64 {
    static BACKENDS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(BACKENDS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn two_backends_of_one_process_write_different_values() {
        let (a, b) = (
            Holder::new(&Overrides::default()),
            Holder::new(&Overrides::default()),
        );
        let stamp = a.stamp("replica");
        assert_ne!(a.process, b.process, "each backend draws its own nonce");
        assert_ne!(
            a.attempt_value(&stamp),
            b.attempt_value(&stamp),
            "the first attempts of two backends must differ"
        );
    }

    #[test]
    fn attempts_of_one_backend_are_numbered_from_the_first() {
        let holder = Holder::new(&Overrides {
            pid: Some(1),
            nonce: Some(0xab),
            first_attempt: Some(7),
            clock: Some(UNIX_EPOCH + Duration::from_millis(5)),
        });
        let stamp = holder.stamp("replica-a:17");
        let expected = |attempt: &str| {
            format!(
                "leasehold-etcd v2 pid 1 backend 00000000000000ab attempt {attempt} \
                 acquired_ms 5 holder replica-a:17"
            )
        };
        assert_eq!(holder.attempt_value(&stamp), expected("7"));
        assert_eq!(holder.attempt_value(&stamp), expected("8"));
        assert_eq!(
            holder.moved_value(&stamp),
            expected("moved"),
            "a moved key keeps its holder and acquire time"
        );
    }
}
