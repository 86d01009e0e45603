//! Records: a small value kept per key beside its lease, written only by the key's
//! current holder ([`LockBackend::write_record`](crate::LockBackend::write_record)).
//!
//! The scheduler keeps each scheduled routine's last fire in one, so that a fire runs
//! once across the cluster whatever the members' clocks say.

use crate::{Error, LockKey, Result};

/// The longest record value a backend must store, in bytes.
pub const MAX_RECORD_LEN: usize = 1024;

/// How a [`LockBackend::write_record`](crate::LockBackend::write_record) went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordWrite {
    /// The record now holds the new value.
    Written,
    /// The record did not hold the expected value; nothing was written. `current` is what
    /// it held when the write was refused (`None`: no record).
    Conflict {
        /// The record's value when the write was refused.
        current: Option<Vec<u8>>,
    },
    /// The key was acquired again since the lease with the given fencing token (or, on
    /// backends that can tell, that lease is no longer held): the writer is not the
    /// key's holder any more, and nothing was written.
    Fenced,
}

impl RecordWrite {
    /// Whether the value was written.
    pub fn is_written(&self) -> bool {
        matches!(self, RecordWrite::Written)
    }
}

/// Checks a record value's length: at most [`MAX_RECORD_LEN`] bytes.
///
/// # Errors
///
/// [`Error::Config`] naming the key if the value is longer.
pub fn check_record(key: &LockKey, value: &[u8]) -> Result<()> {
    if value.len() > MAX_RECORD_LEN {
        return Err(Error::config(
            "record",
            format!(
                "the record of {key} is {} bytes; at most {MAX_RECORD_LEN} are stored",
                value.len()
            ),
        ));
    }
    Ok(())
}
