//! The value one acquisition writes into its lock key, and reading it back for operators.
//!
//! The value is `leasehold:v1:<owner>:<fence>:<seconds>.<micros>:<holder>`: a fixed tag,
//! the acquisition's random owner value (32 hex digits), its fencing token, the server's
//! clock when it was taken (`TIME`) and the holder identity, last because it may contain
//! `:`. The acquire script writes it whole, so a lease's holder, token and start live and
//! expire with the lock key itself: there is no second key to keep in step.
//!
//! The Go original (bsm/redislock) never parses a lock value: it compares the whole value
//! with its own random token, which ours never equals, so it keeps excluding us and we it.
//! Our refresh and release compare the whole value too. Its tokens are 22 base64url
//! characters (optionally followed by metadata), which never contain the `:` at byte 9 of
//! our tag, so a Go value is never taken for ours and describes with no holder.

use std::time::{Duration, SystemTime};

use leasehold_core::FencingToken;

/// What every value this backend writes starts with; the version lets a later format
/// coexist with this one.
pub(crate) const TAG: &str = "leasehold:v1:";

/// The start of the value one acquisition writes: [`TAG`] and a fresh random owner value
/// (16 random bytes as bsm/redislock uses, hex-encoded), then `:`. The acquire script
/// appends the rest; the abandon script recognises the acquisition's lock by this start.
pub(crate) fn new_owner_prefix() -> String {
    format!("{TAG}{:032x}:", rand::random::<u128>())
}

/// What a lock value of ours says about its acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The fencing token the acquisition was given.
    pub(crate) fence: FencingToken,
    /// When it was acquired, by the server's clock.
    pub(crate) acquired_at: SystemTime,
    /// The holder identity given at acquire.
    pub(crate) holder: String,
}

/// Reads a lock value: `None` if it is not one this backend writes (a Go holder's, or
/// an older version's bare owner value).
pub(crate) fn parse(value: &[u8]) -> Option<Stored> {
    let value = std::str::from_utf8(value).ok()?.strip_prefix(TAG)?;
    let mut fields = value.splitn(4, ':');
    let owner = fields.next()?;
    let fence = fields.next()?;
    let time = fields.next()?;
    let holder = fields.next()?;
    if owner.len() != 32 || !owner.bytes().all(|b| b.is_ascii_hexdigit()) || holder.is_empty() {
        return None;
    }
    let fence = fence.parse::<u64>().ok().filter(|&fence| fence > 0)?;
    let (seconds, micros) = time.split_once('.')?;
    let seconds = seconds.parse::<u64>().ok()?;
    let micros = micros
        .parse::<u32>()
        .ok()
        .filter(|&micros| micros < 1_000_000)?;
    let acquired_at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds) + Duration::from_micros(micros.into()))?;
    Some(Stored {
        fence: FencingToken::new(fence),
        acquired_at,
        holder: holder.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_ours_gives_its_token_time_and_holder() {
        let prefix = new_owner_prefix();
        let value = format!("{prefix}42:1764614400.000250:pod-7:4711");
        let stored = parse(value.as_bytes()).expect("our own value must parse");
        assert_eq!(stored.fence, FencingToken::new(42));
        assert_eq!(
            stored.acquired_at,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_614_400_000_250)
        );
        assert_eq!(stored.holder, "pod-7:4711", "the holder keeps its colons");
    }

    #[test]
    fn owner_prefixes_are_fresh_and_tagged() {
        let (a, b) = (new_owner_prefix(), new_owner_prefix());
        assert_ne!(a, b, "every acquisition has its own owner value");
        assert!(a.starts_with(TAG) && a.ends_with(':'), "{a}");
        assert_eq!(a.len(), TAG.len() + 33);
    }

    #[test]
    fn foreign_values_are_not_ours() {
        for value in [
            // bsm/redislock's token, with and without metadata.
            "YWJjZGVmZ2hpamtsbW5vcA",
            "YWJjZGVmZ2hpamtsbW5vcAleasehold:v1:",
            // An older version of this backend: the bare owner value.
            "0123456789abcdef0123456789abcdef",
            "",
            "leasehold:v1:",
            "leasehold:v1:0123456789abcdef0123456789abcdef:0:1.0:h",
            "leasehold:v1:0123456789abcdef0123456789abcdef:1:1.1000000:h",
            "leasehold:v1:0123456789abcdef0123456789abcdef:1:1.0:",
            "leasehold:v1:nothex:1:1.0:h",
            "leasehold:v2:0123456789abcdef0123456789abcdef:1:1.0:h",
        ] {
            assert_eq!(parse(value.as_bytes()), None, "{value:?} is not ours");
        }
        assert_eq!(parse(b"leasehold:v1:\xff"), None, "not UTF-8");
    }
}
