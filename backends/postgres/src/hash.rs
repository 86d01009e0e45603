//! The advisory-lock key of a routine: FNV-1a 64 over its namespace and name.
//!
//! This is a storage format: every version of this crate must compute the same key for the
//! same namespace and name, or two processes running different versions would not exclude
//! each other. The tests pin known values; never change the function.

/// FNV-1a 64 offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime, 2^40 + 2^8 + 0xb3.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The 64-bit FNV-1a hash of `bytes` (Fowler, Noll, Vo; the `FNV-1a` variant: xor, then
/// multiply).
///
/// # Examples
///
/// ```
/// use leasehold_postgres::fnv1a_64;
///
/// assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
/// ```
pub const fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// The PostgreSQL advisory-lock key (`bigint`) that `PostgresBackend` uses for routine
/// `name` in key namespace `namespace`.
///
/// It is FNV-1a 64 ([`fnv1a_64`]) over the UTF-8 bytes of `namespace`, one zero byte, and
/// the UTF-8 bytes of `name` (neither can contain a zero byte, so the encoding is
/// unambiguous), read as a two's-complement `i64`. It is the same in every version of this
/// crate, so you can find a routine's lock in `pg_locks` (`classid` holds the high 32 bits,
/// `objid` the low 32 bits, `objsubid` is 1) or in the fencing table.
///
/// Distinct names can collide (about one pair in 2^32 for 2^16 names); the backend detects
/// a collision through the name stored in the fencing table and refuses to go on.
///
/// # Examples
///
/// ```
/// use leasehold_postgres::advisory_lock_key;
///
/// assert_eq!(advisory_lock_key("routine", "billing-sync"), -6_966_846_450_831_080_632);
/// ```
pub fn advisory_lock_key(namespace: &str, name: &str) -> i64 {
    let mut bytes = Vec::with_capacity(namespace.len() + 1 + name.len());
    bytes.extend_from_slice(namespace.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(name.as_bytes());
    i64::from_ne_bytes(fnv1a_64(&bytes).to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn lock_keys_are_pinned_forever() {
        // Changing any of these breaks mutual exclusion between crate versions.
        for (namespace, name, key) in [
            ("routine", "billing-sync", -6_966_846_450_831_080_632),
            ("routine", "a", -7_668_054_376_889_106_488),
            ("", "a", 590_647_783_936_702_426),
            ("tenant-7", "ünïcödé-任务", 1_431_469_315_514_386_287),
        ] {
            assert_eq!(
                advisory_lock_key(namespace, name),
                key,
                "key of {name:?} in namespace {namespace:?} must never change"
            );
        }
    }

    #[test]
    fn namespace_and_name_boundary_matters() {
        assert_ne!(
            advisory_lock_key("ab", "c"),
            advisory_lock_key("a", "bc"),
            "the separator must keep namespace and name apart"
        );
    }
}
