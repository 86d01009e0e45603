//! How a routine's name becomes an etcd key: the key prefix followed by the name.
//!
//! Applications sharing a cluster under different prefixes must never lock each other's
//! routines, so no two different (prefix, name) pairs may spell one key. With a prefix
//! that ends in `/` and a name without `/`, the prefix is the key up to its last `/` and
//! the name is the rest: the pair can be read back from the key. Neither rule does
//! without the other. Prefix `a` with name `/b` and prefix `a/` with name `b` share
//! `a/b`; prefix `a/` with name `b/c` and prefix `a/b/` with name `c` share `a/b/c`.
//!
//! A prefix without the final `/` is refused when the backend is built, and a name with
//! a `/` by every operation on it. Names are refused rather than escaped: every accepted
//! name keeps the plain `prefix + name` key that other versions of this backend use, while
//! an escaped name would live under a key of its own, and while a deployment rolls out,
//! an old and a new replica would both hold the routine, each under its own key.

use leasehold_core::{Error, LockKey, Result};

/// What a key prefix must end with, and a name must not contain.
const SEPARATOR: char = '/';

/// Why `prefix` cannot be a key prefix, if it cannot.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.ends_with(SEPARATOR) {
        return Ok(());
    }
    Err(format!(
        "`{prefix}` must end with `{SEPARATOR}`, which separates it from the routine name \
         (a prefix `a` would lock name `/b` in the same key as prefix `a/` locks `b`)"
    ))
}

/// The etcd key of `key` under `prefix`, which [`check_prefix`] accepted.
///
/// # Errors
///
/// [`Error::InvalidName`] if the name contains a `/` (see the module docs).
pub(crate) fn etcd_key(prefix: &str, key: &LockKey) -> Result<Vec<u8>> {
    let name = key.as_str();
    if name.contains(SEPARATOR) {
        return Err(Error::invalid_name(
            key,
            format!(
                "the etcd backend refuses names with `{SEPARATOR}`: the key prefix ends \
                 with one, and with one in names too, prefix `a/` with name `b/c` and \
                 prefix `a/b/` with name `c` would lock the same key"
            ),
        ));
    }
    Ok(unchecked(prefix, key))
}

/// The prefix followed by the name, whatever the name.
pub(crate) fn unchecked(prefix: &str, key: &LockKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(prefix.len() + key.as_str().len());
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(key.as_str().as_bytes());
    bytes
}

/// What the record keys of a backend with the key prefix `prefix` start with: a sibling
/// of the prefix, never under it, so that the release watch on the prefix never sees a
/// record and `list` never reads one.
///
/// The prefix's last segment is replaced: `lock` by `record` (the default
/// `routine/lock/` gives `routine/record/`), any other segment `s` by `s.record`
/// (`billing/locks/` gives `billing/locks.record/`, `/` gives `.record/`). Two different
/// prefixes give two different record prefixes, and a record prefix never starts with
/// the prefix it comes from.
pub(crate) fn record_prefix(prefix: &str) -> String {
    let trimmed = prefix.strip_suffix(SEPARATOR).unwrap_or(prefix);
    let (parent, last) = match trimmed.rfind(SEPARATOR) {
        Some(at) => trimmed.split_at(at + 1),
        None => ("", trimmed),
    };
    if last == "lock" {
        format!("{parent}record{SEPARATOR}")
    } else {
        format!("{parent}{last}.record{SEPARATOR}")
    }
}

/// The etcd key of `key`'s record under `record_prefix` (see [`record_prefix`]).
///
/// # Errors
///
/// [`Error::InvalidName`] if the name contains a `/`, as for [`etcd_key`].
pub(crate) fn record_key(prefix: &str, record_prefix: &str, key: &LockKey) -> Result<Vec<u8>> {
    etcd_key(prefix, key)?;
    Ok(unchecked(record_prefix, key))
}

/// The name whose key under `prefix` is `etcd_key`, if it is one this backend would lock:
/// the rest after the prefix, without a `/` (else it is a nested prefix's key), and a
/// valid [`LockKey`].
pub(crate) fn name_of(prefix: &str, etcd_key: &[u8]) -> Option<LockKey> {
    let name = std::str::from_utf8(etcd_key.strip_prefix(prefix.as_bytes())?).ok()?;
    if name.contains(SEPARATOR) {
        return None;
    }
    LockKey::new(name).ok()
}

/// What the waiter keys of a backend with the key prefix `prefix` start with (see the
/// `line` module): a sibling of the prefix like the record prefix, `lock` becoming
/// `wait` (`routine/wait/` for `routine/lock/`) and any other last segment `s` becoming
/// `s.wait`. A name's waiters live under `<waiter prefix><name>/`.
pub(crate) fn waiter_prefix(prefix: &str) -> String {
    let trimmed = prefix.strip_suffix(SEPARATOR).unwrap_or(prefix);
    let (parent, last) = match trimmed.rfind(SEPARATOR) {
        Some(at) => trimmed.split_at(at + 1),
        None => ("", trimmed),
    };
    if last == "lock" {
        format!("{parent}wait{SEPARATOR}")
    } else {
        format!("{parent}{last}.wait{SEPARATOR}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_from_their_keys_and_nested_keys_are_no_names() {
        let key = LockKey::new("nightly-report:eu.1").unwrap();
        assert_eq!(
            name_of("routine/lock/", &etcd_key("routine/lock/", &key).unwrap()),
            Some(key)
        );
        for other in [
            &b"routine/lock/billing/report"[..],
            b"routine/other",
            b"routine/lock/\xff",
        ] {
            assert_eq!(name_of("routine/lock/", other), None, "{other:?}");
        }
    }

    #[test]
    fn record_keys_are_siblings_of_the_lock_keys_never_under_them() {
        for (prefix, records) in [
            ("routine/lock/", "routine/record/"),
            ("lock/", "record/"),
            ("billing/locks/", "billing/locks.record/"),
            ("a/b/", "a/b.record/"),
            ("a/", "a.record/"),
            ("/", ".record/"),
            ("a//", "a/.record/"),
        ] {
            let got = record_prefix(prefix);
            assert_eq!(got, records, "{prefix:?}");
            assert!(!got.starts_with(prefix), "{prefix:?} watches {got:?}");
        }
        let key = LockKey::new("report").unwrap();
        assert_eq!(
            record_key("routine/lock/", "routine/record/", &key).unwrap(),
            b"routine/record/report"
        );
        assert!(record_key("a/", "a.record/", &LockKey::new("b/c").unwrap()).is_err());
    }

    #[test]
    fn ordinary_names_keep_their_keys() {
        let key = LockKey::new("nightly-report:eu.1").unwrap();
        assert_eq!(
            etcd_key("routine/lock/", &key).unwrap(),
            b"routine/lock/nightly-report:eu.1"
        );
    }

    #[test]
    fn no_two_accepted_pairs_share_a_key() {
        let prefixes = ["a/", "a/b/", "ab/", "/", "a//"];
        let names = ["b", "c", "bc", "b:c", "..", "%2F"];
        let mut seen = std::collections::HashMap::new();
        for prefix in prefixes {
            check_prefix(prefix).unwrap();
            for name in names {
                let key = etcd_key(prefix, &LockKey::new(name).unwrap()).unwrap();
                if let Some(other) = seen.insert(key.clone(), (prefix, name)) {
                    panic!("{:?} and {other:?} share {key:?}", (prefix, name));
                }
            }
        }
    }

    #[test]
    fn prefixes_without_the_separator_and_names_with_it_are_refused() {
        for prefix in ["a", "routine/lock", "locks-"] {
            assert!(check_prefix(prefix).is_err(), "{prefix:?}");
        }
        for name in ["/b", "b/c", "b/"] {
            let err = etcd_key("a/", &LockKey::new(name).unwrap()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidName { name: shown, .. } if shown == name),
                "{name:?}: {err:?}"
            );
        }
    }
}
