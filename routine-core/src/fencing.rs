//! `FencingToken`: a number that grows with every acquisition of a key.

use std::fmt;

/// A number handed out with every acquisition of a lock key, strictly greater than every
/// token handed out before for the same key, to any client of the same backend.
///
/// A lease can be lost without its holder noticing in time (a process paused by the
/// garbage collector, the kernel or a debugger, a network partition). Local deadlines make
/// this unlikely but cannot rule it out. If the routine passes its token along with every
/// write, and the system it writes to remembers the highest token seen and rejects smaller
/// ones, a stale holder's writes are refused. See Martin Kleppmann, "How to do distributed
/// locking" (2016).
///
/// Tokens of different keys, or of different backends, are not comparable.
///
/// # Examples
///
/// ```
/// use leasehold_core::FencingToken;
///
/// assert!(FencingToken::new(2) > FencingToken::new(1));
/// assert_eq!(FencingToken::new(7).get(), 7);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value, as read from a backend.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value, to store next to what the routine writes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> u64 {
        token.0
    }
}
