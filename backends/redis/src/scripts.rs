//! The Redis keys of a lock and the Lua scripts that acquire, refresh and release it.
//!
//! The lock key holds a random owner value as a plain string, exactly as bsm/redislock
//! (used by the Go original, which calls the value its "token") stores it: `SET key <owner>
//! NX PX ttl` to acquire, "if `GET` equals our owner value then `PEXPIRE`" to refresh, "if
//! `GET` equals our owner value then `DEL`" to release.
//! A Go instance and a Rust instance of the same routine on one Redis therefore exclude
//! each other. Each step is one script, so it is atomic on the server.

use std::fmt;
use std::sync::LazyLock;

use leasehold_core::LockKey;
use redis::Script;

/// Takes the lock if it is free and counts the acquisition on the fence key.
///
/// `KEYS[1]` lock key, `KEYS[2]` fence key; `ARGV[1]` owner value, `ARGV[2]` TTL in ms.
/// Returns `{1, fencing token}` if the lock is ours, `{0}` if someone else holds it.
///
/// If the lock already holds *our* owner value, an earlier attempt with the same owner value
/// took it but its reply was lost with the connection (the backend repeats a request once when the
/// connection dropped). The lock is ours; we count it again, as a skipped fencing token
/// still leaves every fencing token greater than the ones before.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('INCR', KEYS[2])}
end
return {0}
",
    )
});

/// Extends the lock if it still holds our owner value: bsm/redislock's refresh script.
///
/// `KEYS[1]` lock key; `ARGV[1]` owner value, `ARGV[2]` TTL in ms. Returns 1 if extended, 0 if
/// the lock is gone or someone else's.
pub(crate) static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// [`REFRESH`] for many locks in one call: what the runner's shared refresh tick sends.
///
/// `KEYS` lock keys; `ARGV[1]` TTL in ms, `ARGV[i + 1]` the owner value of `KEYS[i]`. Returns
/// one 1 (extended) or 0 (gone or someone else's) per key, in order.
pub(crate) static REFRESH_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local extended = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    extended[i] = redis.call('PEXPIRE', key, ARGV[1])
  else
    extended[i] = 0
  end
end
return extended
",
    )
});

/// How many locks one [`REFRESH_MANY`] call refreshes at most, so that one script never
/// blocks the server for long (Redis runs scripts one at a time): about a millisecond.
pub(crate) const REFRESH_MANY_CHUNK: usize = 500;

/// Deletes the lock if it still holds our owner value (bsm/redislock's release script) and
/// announces the release to waiters.
///
/// `KEYS[1]` lock key; `ARGV[1]` owner value, `ARGV[2]` release channel. Returns 1 if deleted,
/// 0 if the lock was already gone or someone else's (then nothing is touched).
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
",
    )
});

/// Deletes a name's fence counter unless its lock is held.
///
/// `KEYS[1]` lock key, `KEYS[2]` fence key. Returns 1 if the counter was deleted, 0 if
/// the lock is held (nothing is touched) or there was no counter.
pub(crate) static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
return redis.call('DEL', KEYS[2])
",
    )
});

/// A lock key and the random owner value one acquisition writes into it: what the
/// refresh and release scripts compare. `Debug` leaves the owner value out: anyone who
/// has it can release the lock.
#[derive(Clone, Default)]
pub(crate) struct Claim {
    /// The lock key, `<namespace>:lock:<name>`.
    pub(crate) lock: String,
    /// The owner value: 16 random bytes, hex-encoded.
    pub(crate) owner: String,
}

impl Claim {
    /// A claim on `lock` with a fresh random owner value (bsm/redislock uses 16 random
    /// bytes too).
    pub(crate) fn new(lock: String) -> Self {
        Self {
            lock,
            owner: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

/// The names this backend uses in Redis, derived from its namespace.
///
/// With namespace `ns` a routine `name` has the lock key `ns:lock:name` (so the default
/// namespace `routine` gives the Go original's `routine:lock:name`), the fence counter
/// `ns:fence:name` (never expires, only incremented), and its releases are published on
/// the channel `ns:released:name`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    lock: String,
    fence: String,
    channel: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            lock: format!("{namespace}:lock:"),
            fence: format!("{namespace}:fence:"),
            channel: format!("{namespace}:released:"),
        }
    }

    pub(crate) fn lock(&self, key: &LockKey) -> String {
        format!("{}{key}", self.lock)
    }

    pub(crate) fn fence(&self, key: &LockKey) -> String {
        format!("{}{key}", self.fence)
    }

    pub(crate) fn channel(&self, key: &LockKey) -> String {
        format!("{}{key}", self.channel)
    }

    /// The `PSUBSCRIBE` pattern matching every release channel of this namespace, with
    /// the namespace's glob characters escaped so they match only themselves.
    pub(crate) fn channel_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.channel.len() + 2);
        for c in self.channel.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_namespace_gives_the_go_key_layout() {
        let keys = Keys::new("routine");
        let key = LockKey::new("billing").unwrap();
        assert_eq!(keys.lock(&key), "routine:lock:billing");
        assert_eq!(keys.fence(&key), "routine:fence:billing");
        assert_eq!(keys.channel(&key), "routine:released:billing");
        assert_eq!(keys.channel_pattern(), "routine:released:*");
    }

    #[test]
    fn channel_pattern_escapes_glob_characters_of_the_namespace() {
        let keys = Keys::new(r"a*b?c[d]e\f");
        assert_eq!(keys.channel_pattern(), r"a\*b\?c\[d\]e\\f:released:*");
    }
}
