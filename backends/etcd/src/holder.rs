//! `Holder`: what a backend writes into the keys it takes.
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

/// The values a backend writes: `leasehold-etcd pid {pid} backend {nonce}` for a key moved
/// to another session, and that followed by ` attempt {n}` for each acquire attempt.
#[derive(Debug)]
pub(crate) struct Holder {
    name: String,
    next_attempt: AtomicU64,
}

/// Replacements for the process id, the nonce and the first attempt number, so that
/// tests can make two backends write the same values (see
/// [`EtcdBackendBuilder::with_holder_values_for_tests`](crate::EtcdBackendBuilder::with_holder_values_for_tests)).
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) pid: Option<u32>,
    pub(crate) nonce: Option<u64>,
    pub(crate) first_attempt: Option<u64>,
}

impl Holder {
    /// The holder of a backend connecting now: this process, a fresh nonce, attempts
    /// numbered from 1; or whatever `overrides` says instead.
    pub(crate) fn new(overrides: &Overrides) -> Self {
        let pid = overrides.pid.unwrap_or_else(std::process::id);
        let nonce = overrides.nonce.unwrap_or_else(random_nonce);
        Self {
            name: format!("leasehold-etcd pid {pid} backend {nonce:016x}"),
            next_attempt: AtomicU64::new(overrides.first_attempt.unwrap_or(1)),
        }
    }

    /// The process and backend, without an attempt number.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The value of the next acquire attempt.
    pub(crate) fn attempt_value(&self) -> String {
        let attempt = self.next_attempt.fetch_add(1, Ordering::Relaxed);
        format!("{} attempt {attempt}", self.name)
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
    use super::*;

    #[test]
    fn two_backends_of_one_process_write_different_values() {
        let (a, b) = (
            Holder::new(&Overrides::default()),
            Holder::new(&Overrides::default()),
        );
        assert_ne!(a.name(), b.name(), "each backend draws its own nonce");
        assert_ne!(
            a.attempt_value(),
            b.attempt_value(),
            "the first attempts of two backends must differ"
        );
    }

    #[test]
    fn attempts_of_one_backend_are_numbered_from_the_first() {
        let holder = Holder::new(&Overrides {
            pid: Some(1),
            nonce: Some(0xab),
            first_attempt: Some(7),
        });
        assert_eq!(
            holder.name(),
            "leasehold-etcd pid 1 backend 00000000000000ab"
        );
        assert_eq!(
            holder.attempt_value(),
            "leasehold-etcd pid 1 backend 00000000000000ab attempt 7"
        );
        assert_eq!(
            holder.attempt_value(),
            "leasehold-etcd pid 1 backend 00000000000000ab attempt 8"
        );
    }
}
