//! Names no other test uses: for keys, namespaces and prefixes of tests that share a
//! server.

use std::sync::atomic::{AtomicU64, Ordering};

use leasehold::LockKey;

/// `"{prefix}-{pid}-{n}-{random}"`: unique to this process and call, and (by the random
/// part) to this run, so tests sharing a server, or a server that outlives a run, never
/// meet each other's names.
///
/// # Examples
///
/// ```
/// let (a, b) = (leasehold_conformance::unique("job"), leasehold_conformance::unique("job"));
/// assert!(a.starts_with("job-") && a != b);
/// ```
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// A [`LockKey`] named by [`unique`].
///
/// # Panics
///
/// If `prefix` makes an invalid key (for example, it holds a character keys refuse).
pub fn unique_key(prefix: &str) -> LockKey {
    let name = unique(prefix);
    LockKey::new(name.as_str())
        .unwrap_or_else(|err| panic!("test key {name:?} must be valid: {err}"))
}
