//! The value of a held key: which process and backend wrote it, for which acquire
//! attempt, who the holder is and when it acquired the key; and reading that back.
//!
//! ```text
//! leasehold-etcd v2 pid 42 backend 00000000000000ab attempt 7 acquired_ms 1764618145123 holder replica-a:17
//! leasehold-etcd v2 pid 42 backend 00000000000000ab attempt moved acquired_ms 1764618145123 holder pod 7: blue
//! ```
//!
//! After the `leasehold-etcd v2` tag come `name value` pairs, one space between every two
//! words. Every name and every value but the last is a word without spaces; the last
//! pair is `holder`, and its value is the rest of the key's value, verbatim. So the holder
//! identity may hold any printable character, spaces and `:` included, without escaping,
//! and the value still reads plainly in `etcdctl get`. A key moved to another session
//! (see `EtcdLease::move_to`) says `attempt moved`, which no acquire attempt writes.
//!
//! Readers skip pairs they do not know, so that later versions can add fields before
//! `holder`. A value without the tag (written by an older version of this backend, which
//! named only the process, backend and attempt, or by something else) is a held key
//! whose holder and acquire time are unknown, not an error.
//!
//! The acquire time is the holder's wall clock, in milliseconds since the Unix epoch:
//! etcd keeps no wall-clock time of its own with a key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What starts every value this version writes.
const TAG: &str = "leasehold-etcd v2";

/// The name of the last pair, whose value is the rest of the key's value.
const HOLDER: &str = "holder";

/// The name of the acquire time's pair.
const ACQUIRED: &str = "acquired_ms";

/// Who holds a key and since when, as written into its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The holder identity (checked by `check_holder_identity`).
    pub(crate) identity: String,
    /// The holder's wall-clock time at acquire.
    pub(crate) acquired_at: SystemTime,
}

/// What a key's value says about its holder: `None` where it does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) identity: Option<String>,
    pub(crate) acquired_at: Option<SystemTime>,
}

/// The value for `process` (`pid {pid} backend {nonce}`), `attempt` (a number, or
/// `moved`) and `stamp`.
pub(crate) fn encode(process: &str, attempt: &str, stamp: &Stamp) -> String {
    let millis = stamp
        .acquired_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    format!(
        "{TAG} {process} attempt {attempt} {ACQUIRED} {millis} {HOLDER} {}",
        stamp.identity
    )
}

/// Reads what `value` says about its holder; see the module docs for what is read and
/// what is skipped. Never fails: what cannot be read is `None`.
pub(crate) fn decode(value: &[u8]) -> Decoded {
    let mut decoded = Decoded::default();
    let Some(mut rest) = std::str::from_utf8(value)
        .ok()
        .and_then(|value| value.strip_prefix(TAG))
        .and_then(|rest| rest.strip_prefix(' '))
    else {
        return decoded;
    };
    while let Some((name, after)) = rest.split_once(' ') {
        if name == HOLDER {
            decoded.identity = Some(after.to_owned()).filter(|identity| !identity.is_empty());
            break;
        }
        let (field, after) = after.split_once(' ').unwrap_or((after, ""));
        if name == ACQUIRED {
            decoded.acquired_at = field
                .parse()
                .ok()
                .and_then(|millis| UNIX_EPOCH.checked_add(Duration::from_millis(millis)));
        }
        rest = after;
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(identity: &str) -> Stamp {
        Stamp {
            identity: identity.to_owned(),
            acquired_at: UNIX_EPOCH + Duration::from_millis(1_764_618_145_123),
        }
    }

    #[test]
    fn the_value_reads_plainly() {
        assert_eq!(
            encode(
                "pid 1 backend 00000000000000ab",
                "7",
                &stamp("replica-a:17")
            ),
            "leasehold-etcd v2 pid 1 backend 00000000000000ab attempt 7 \
             acquired_ms 1764618145123 holder replica-a:17"
        );
    }

    #[test]
    fn any_printable_identity_reads_back_verbatim() {
        for identity in [
            "replica-a:17",
            "pod 7: blue",
            " leading and trailing ",
            "holder acquired_ms 5 holder x",
            "a  b",
            "ünïcødé ✓",
            ":",
        ] {
            let written = stamp(identity);
            let value = encode("pid 1 backend 00000000000000ab", "moved", &written);
            assert_eq!(
                decode(value.as_bytes()),
                Decoded {
                    identity: Some(identity.to_owned()),
                    acquired_at: Some(written.acquired_at),
                },
                "{value:?} must read back as written"
            );
        }
    }

    #[test]
    fn values_without_the_tag_name_no_holder() {
        for value in [
            &b"leasehold-etcd pid 1 backend 00000000000000ab attempt 7"[..],
            b"leasehold-etcd pid 1 backend 00000000000000ab",
            b"",
            b"leasehold-etcd v2",
            b"something else holder x",
            b"\xff\xfe",
        ] {
            assert_eq!(decode(value), Decoded::default(), "{value:?}");
        }
    }

    #[test]
    fn unknown_and_malformed_fields_are_skipped() {
        let decoded = decode(b"leasehold-etcd v2 zone eu-1 acquired_ms 12 holder h");
        assert_eq!(decoded.identity.as_deref(), Some("h"));
        assert_eq!(
            decoded.acquired_at,
            Some(UNIX_EPOCH + Duration::from_millis(12))
        );
        let decoded = decode(b"leasehold-etcd v2 acquired_ms soon holder h");
        assert_eq!(decoded.identity.as_deref(), Some("h"));
        assert_eq!(decoded.acquired_at, None, "an unreadable time is unknown");
        assert_eq!(
            decode(b"leasehold-etcd v2 acquired_ms 12"),
            Decoded {
                identity: None,
                acquired_at: Some(UNIX_EPOCH + Duration::from_millis(12)),
            },
            "a value cut short names what it has"
        );
    }
}
