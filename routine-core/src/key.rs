//! `LockKey`: the validated name of a routine, as backends see it.

use std::fmt;
use std::sync::Arc;

use crate::Error;

/// The name of a lock: a routine's name, validated once so that every backend can use it
/// in keys, SQL parameters and log lines without further checks.
///
/// A valid name is non-empty, at most [`LockKey::MAX_LEN`] bytes of UTF-8, and contains
/// no control characters (no newlines, tabs or NULs). Backends add their own prefix or
/// namespace (Redis uses `routine:lock:<name>`, as the Go original does).
///
/// Cloning is cheap (a reference count).
///
/// # Examples
///
/// ```
/// use leasehold_core::LockKey;
///
/// let key = LockKey::new("billing-sync").unwrap();
/// assert_eq!(key.as_str(), "billing-sync");
/// assert!(LockKey::new("").is_err());
/// assert!(LockKey::new("bad\nname").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey(Arc<str>);

impl LockKey {
    /// The longest accepted name, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validates `name` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] if `name` is empty, longer than [`LockKey::MAX_LEN`] bytes,
    /// or contains a control character; the error says which.
    pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
        let name = name.as_ref();
        let reason = if name.is_empty() {
            Some("name is empty".to_owned())
        } else if name.len() > Self::MAX_LEN {
            Some(format!(
                "name is {} bytes long, the limit is {}",
                name.len(),
                Self::MAX_LEN
            ))
        } else {
            name.char_indices()
                .find(|(_, c)| c.is_control())
                .map(|(at, c)| format!("name contains control character {c:?} at byte {at}"))
        };
        match reason {
            Some(reason) => Err(Error::InvalidName {
                name: truncate_for_error(name),
                reason,
            }),
            None => Ok(Self(Arc::from(name))),
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keeps error messages readable when someone passes a megabyte as a name.
fn truncate_for_error(name: &str) -> String {
    const SHOWN: usize = 64;
    if name.len() <= SHOWN {
        return name.to_owned();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for LockKey {
    type Error = Error;
    fn try_from(name: &str) -> Result<Self, Error> {
        Self::new(name)
    }
}

impl TryFrom<String> for LockKey {
    type Error = Error;
    fn try_from(name: String) -> Result<Self, Error> {
        Self::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_unicode_names() {
        for name in [
            "task",
            "a:b/c d",
            "ünïcödé-任务",
            &"x".repeat(LockKey::MAX_LEN),
        ] {
            let key = LockKey::new(name).unwrap();
            assert_eq!(key.as_str(), name, "a valid name must round-trip unchanged");
        }
    }

    #[test]
    fn rejects_empty_oversized_and_control_characters() {
        let too_long = "x".repeat(LockKey::MAX_LEN + 1);
        for (name, needle) in [
            ("", "empty"),
            (too_long.as_str(), "201 bytes"),
            ("a\nb", "control character '\\n' at byte 1"),
            ("nul\0", "control character '\\0'"),
        ] {
            let err = LockKey::new(name).unwrap_err();
            assert!(
                matches!(err, Error::InvalidName { .. }),
                "invalid name {name:?} must give InvalidName, got {err:?}"
            );
            assert!(
                err.to_string().contains(needle),
                "error for {name:?} must say {needle:?}: {err}"
            );
        }
    }

    #[test]
    fn error_for_huge_name_is_truncated() {
        let huge = "é".repeat(10_000);
        let err = LockKey::new(&huge).unwrap_err().to_string();
        assert!(
            err.len() < 300,
            "error message must stay short: {} bytes",
            err.len()
        );
    }
}
