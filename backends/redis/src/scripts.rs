//! The Redis keys of a lock and the Lua scripts that acquire, refresh and release it.
//!
//! The lock key holds a plain string value, as bsm/redislock (used by the Go original)
//! stores its random token: `SET key <value> PX ttl` if the key is free to acquire, "if
//! `GET` equals our value then `PEXPIRE`" to refresh, "if `GET` equals our value then
//! `DEL`" to release. Our value starts with a random owner value and also names the
//! holder, the fencing token and when it was taken (see the `value` module); Go never
//! parses it, only compares it with its own token.
//! A Go instance and a Rust instance of the same routine on one Redis therefore exclude
//! each other. Each step is one script, so it is atomic on the server.
//!
//! The release scripts also announce the release: they pick one registered waiter
//! ([`PICK`]) and publish to it alone, on its own wake channel `<namespace>:wake:<id>`
//! (the prefix is an argument, [`Keys::wake_prefix`]), or to everyone on the release
//! channel if none is registered ([`ANNOUNCE`]). Cluster mode passes an empty prefix:
//! there the picked id is published on the name's sharded channel, which every waiting
//! backend subscribes to, and each one filters it (see the `notify` module).

use std::fmt;
use std::sync::{Arc, LazyLock};

use leasehold_core::LockKey;
use redis::{FromRedisValue, ParsingError, Script, Value};

/// Takes the lock if it is free and counts the acquisition on the fence key.
///
/// `KEYS[1]` lock key, `KEYS[2]` fence key, `KEYS[3]` waiters key; `ARGV[1]` owner
/// prefix (see [`new_owner_prefix`](crate::value::new_owner_prefix)), `ARGV[2]` TTL in
/// ms, `ARGV[3]` holder identity, `ARGV[4]` the fence floor (decimal; `0` for none),
/// `ARGV[5]` this backend's waiter id. Returns `{1, value}` if the lock is ours, with the
/// whole value written (it holds the fencing token), and `{0, nil}` if someone else
/// holds it.
///
/// Taking the lock also takes this backend out of the name's waiters (see
/// [`REGISTER`]): a release must not pick the holder to take over from itself.
///
/// Behind Sentinel the floor is the master's epoch shifted left by
/// [`EPOCH_SHIFT`] bits: a counter below it is first raised to it, so the token is
/// above every token of an earlier epoch even if this master lost increments in the
/// failover (see [`crate::sentinel`]). The counter is compared and read back as a
/// string: Lua's numbers are doubles, exact only up to 2^53, and `INCR` is exact up to
/// 2^63.
///
/// The value is completed here, with the counter just incremented and the server's
/// `TIME`, so that it records the token of this very acquisition: the counter is only
/// incremented when the lock is taken. `replicate_commands` lets Redis 3.2 to 4 replicate
/// a script that writes after reading the clock (later versions always do; it is a no-op).
///
/// If the lock already holds a value with *our* owner prefix, an earlier attempt with the
/// same owner value took it but its reply was lost with the connection (the backend
/// repeats a request once when the connection dropped). The lock is ours, with the
/// fencing token that attempt was given; it is extended and its value returned.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local held = redis.call('GET', KEYS[1])
if not held then
  local floor = ARGV[4]
  if floor ~= '0' then
    local counter = redis.call('GET', KEYS[2])
    if not counter or #counter < #floor or (#counter == #floor and counter < floor) then
      redis.call('SET', KEYS[2], floor)
    end
  end
  redis.call('INCR', KEYS[2])
  local fence = redis.call('GET', KEYS[2])
  local now = redis.call('TIME')
  local value = ARGV[1] .. fence .. string.format(':%s.%06d:', now[1], tonumber(now[2])) .. ARGV[3]
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[5])
  return {1, value}
end
if string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[5])
  return {1, held}
end
return {0, false}
",
    )
});

/// How far the epoch is shifted in a fence floor: 2^40 (about 10^12) acquisitions of a
/// name per epoch, and 2^23 epochs (failovers) before `INCR`'s 2^63 limit.
pub(crate) const EPOCH_SHIFT: u32 = 40;

/// The fence floor of a master in `epoch`: `epoch << EPOCH_SHIFT`, 0 for epoch 0 (no
/// Sentinel, or a master no failover has touched).
pub(crate) fn fence_floor(epoch: u64) -> u64 {
    // Past 2^23 epochs the floor would not fit `INCR`'s signed 64 bits: it stays at the
    // last one that does.
    epoch.min(MAX_EPOCH) << EPOCH_SHIFT
}

/// The highest epoch whose floor, plus 2^40 acquisitions, fits in an `i64`.
const MAX_EPOCH: u64 = (1 << (63 - EPOCH_SHIFT)) - 2;

/// Extends the lock if it still holds our whole value: bsm/redislock's refresh script.
///
/// `KEYS[1]` lock key; `ARGV[1]` our value, `ARGV[2]` TTL in ms. Returns 1 if extended, 0 if
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
/// `KEYS` lock keys; `ARGV[1]` TTL in ms, `ARGV[i + 1]` our value in `KEYS[i]`. Returns
/// one string with a character per key, in order: `1` extended, `0` gone or someone
/// else's ([`Extended`]). One string rather than an array of integers: the client
/// parses one reply per call instead of one per key. The answers are strings already,
/// so that joining them formats no numbers on the server.
pub(crate) static REFRESH_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local extended = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] and redis.call('PEXPIRE', key, ARGV[1]) == 1 then
    extended[i] = '1'
  else
    extended[i] = '0'
  end
end
return table.concat(extended)
",
    )
});

/// What one [`REFRESH_MANY`] call answered: for each of its keys, in order, whether
/// it was extended.
#[derive(Debug)]
pub(crate) struct Extended(Vec<u8>);

impl Extended {
    /// How many keys it answers for.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Per key, in order: 1 extended, 0 gone or someone else's.
    pub(crate) fn replies(self) -> impl Iterator<Item = i64> {
        self.0.into_iter().map(|answer| i64::from(answer == b'1'))
    }
}

impl FromRedisValue for Extended {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let answers = Vec::<u8>::from_redis_value(value)?;
        if let Some(other) = answers
            .iter()
            .find(|&&answer| answer != b'0' && answer != b'1')
        {
            return Err(format!(
                "the refresh script answered {:?} for a key, neither 0 nor 1",
                char::from(*other)
            )
            .into());
        }
        Ok(Self(answers))
    }
}

/// How many locks one [`REFRESH_MANY`] call refreshes at most, so that one script never
/// blocks the server for long (Redis runs scripts one at a time): about a millisecond.
pub(crate) const REFRESH_MANY_CHUNK: usize = 500;

/// The Lua function the release scripts share: who a release wakes.
///
/// `pick(waiters, own, one)`: with `one` = `'1'`, takes `own` (the releasing backend's
/// waiter id) out of the name's waiters, drops the entries whose deadline (score, in ms
/// of the server's clock) has passed, then takes out and returns the entry with the
/// highest deadline: the waiter that registered last, or against the longest lease left
/// (a deadline is the registration time plus max(10 s, 2 × the lease left)), most
/// likely still there.
/// Returns [`WAKE_ALL`] if none is left, or if `one` is anything else. With no waiters
/// key (nobody registered: the uncontended case) it touches nothing else.
const PICK: &str = r"
local function pick(waiters, own, one)
  if one ~= '1' or redis.call('EXISTS', waiters) == 0 then
    return ''
  end
  redis.call('ZREM', waiters, own)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', waiters, '-inf', '(' .. string.format('%.0f', ms))
  local next = redis.call('ZREVRANGE', waiters, 0, 0)[1]
  if not next then
    return ''
  end
  redis.call('ZREM', waiters, next)
  return next
end
";

/// The Lua function the release scripts share: how a release is announced.
///
/// `announce(channel, publish, picked, wake)`: with a picked waiter (`picked` not
/// [`WAKE_ALL`]) and a wake channel prefix `wake` ([`Keys::wake_prefix`]), `PUBLISH`es
/// the release channel's name on the picked waiter's own channel `wake .. picked`, which
/// only that backend subscribes to: no other process receives anything. Otherwise
/// announces on the release channel with `publish` ([`Keys::publish`]), the message
/// being the picked waiter's id or [`WAKE_ALL`], which every process receives (cluster
/// mode, where `wake` is empty, and a release that picked nobody).
const ANNOUNCE: &str = r"
local function announce(channel, publish, picked, wake)
  if picked ~= '' and wake ~= '' then
    redis.call('PUBLISH', wake .. picked, channel)
  else
    redis.call(publish, channel, picked)
  end
end
";

/// What a release publishes to wake every waiter: the empty message every release
/// published before waiters were picked, so a process of an older version, which wakes
/// on any message of the channel, and one of this version read it alike.
pub(crate) const WAKE_ALL: &str = "";

/// Deletes the lock if it still holds our whole value (bsm/redislock's release script) and
/// announces the release to one waiter.
///
/// `KEYS[1]` lock key, `KEYS[2]` waiters key; `ARGV[1]` our value, `ARGV[2]` release
/// channel, `ARGV[3]` the command that announces it ([`Keys::publish`]: `PUBLISH`, or
/// `SPUBLISH` in cluster mode, where the channel shares the lock's hash tag and so its
/// slot), `ARGV[4]` this backend's waiter id, `ARGV[5]` `1` to wake one waiter, `0` to
/// wake all, `ARGV[6]` the wake channel prefix ([`Keys::wake_prefix`]). The picked
/// waiter (see [`PICK`]) is told on its own channel, or, in cluster mode, by its id on
/// the release channel; with none picked the release channel gets [`WAKE_ALL`] (see
/// [`ANNOUNCE`]). Returns 1 if deleted, 0 if the lock was already gone or someone else's (then nothing
/// is touched). `replicate_commands` as in [`ACQUIRE`]: the pick reads the clock.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
if redis.replicate_commands then redis.replicate_commands() end
{PICK}
{ANNOUNCE}
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  announce(ARGV[2], ARGV[3], pick(KEYS[2], ARGV[4], ARGV[5]), ARGV[6])
  return 1
end
return 0
"
    ))
});

/// Deletes the lock of an acquire whose answer never came, if it holds that acquire's
/// value, and announces the release to one waiter.
///
/// `KEYS[1]` lock key, `KEYS[2]` waiters key; `ARGV[1]` the acquire's owner prefix,
/// `ARGV[2]` release channel, `ARGV[3]` the command that announces it, `ARGV[4]` this
/// backend's waiter id, `ARGV[5]` the wake channel prefix (as for [`RELEASE`], always
/// waking one). Returns 1 if deleted, 0
/// if the lock was gone or someone else's (then nothing is touched). The acquire's whole
/// value is unknown (the server completed it), but no other acquisition's value starts
/// with its random owner prefix.
pub(crate) static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
if redis.replicate_commands then redis.replicate_commands() end
{PICK}
{ANNOUNCE}
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  announce(ARGV[2], ARGV[3], pick(KEYS[2], ARGV[4], '1'), ARGV[5])
  return 1
end
return 0
"
    ))
});

/// How long a waiter stays registered at least, in ms: past this the release scripts
/// skip it unless it registered again. The runner registers again after every wait
/// (see [`REGISTER`]), well within it.
pub(crate) const REGISTRATION_MS: u64 = 10_000;

/// The lock's `PTTL`, and, if asked, this backend registered as one of the name's
/// waiters: what `expires_in` sends, still one request.
///
/// `KEYS[1]` lock key, `KEYS[2]` waiters key; `ARGV[1]` this backend's waiter id, or
/// empty not to register, `ARGV[2]` the shortest registration in ms
/// ([`REGISTRATION_MS`]). Registering adds (or moves) the id in the sorted set with the
/// deadline now + max(`ARGV[2]`, 2 × the lock's PTTL) as its score, by the server's
/// clock, and keeps the set's own expiry at least as far: a set nobody registers in
/// again goes by itself. Returns the lock's `PTTL` (-2: no lock, -1: no expiry).
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local pttl = redis.call('PTTL', KEYS[1])
if ARGV[1] == '' then
  return pttl
end
local span = tonumber(ARGV[2])
if pttl * 2 > span then
  span = pttl * 2
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], string.format('%.0f', ms + span), ARGV[1])
if redis.call('PTTL', KEYS[2]) < span then
  redis.call('PEXPIRE', KEYS[2], string.format('%.0f', span))
end
return pttl
",
    )
});

/// Reads locks for operators: per lock key, `{value, PTTL}` if it is held (by us or
/// anyone, such as a Go holder) and nil if not.
///
/// `KEYS` lock keys. Returns one entry per key, in order.
pub(crate) static DESCRIBE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value then
    held[i] = {value, redis.call('PTTL', key)}
  else
    held[i] = false
  end
end
return held
",
    )
});

/// How many locks one [`DESCRIBE`] call reads at most, for the same reason as
/// [`REFRESH_MANY_CHUNK`].
pub(crate) const DESCRIBE_CHUNK: usize = 500;

/// Deletes a name's fence counter, and its record, unless its lock is held.
///
/// `KEYS[1]` lock key, `KEYS[2]` fence key, `KEYS[3]` record key. Returns 1 if the
/// counter was deleted, 0 if the lock is held (nothing is touched) or there was no
/// counter. The record goes with the counter: the tokens that guard its writes start
/// again from 1, so a record kept across that would be guarded by tokens that no
/// longer order its writers.
pub(crate) static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[3])
return redis.call('DEL', KEYS[2])
",
    )
});

/// What [`WRITE_RECORD`] answers first: the record now holds the new value.
pub(crate) const RECORD_WRITTEN: i64 = 0;
/// What [`WRITE_RECORD`] answers first: the record held another value (the second
/// element, nil for no record) and was left alone.
pub(crate) const RECORD_CONFLICT: i64 = 1;
/// What [`WRITE_RECORD`] answers first: the lease with the writer's token is not the
/// key's live lease, and nothing was written.
pub(crate) const RECORD_FENCED: i64 = 2;

/// Compare-and-set of a name's record by the holder of the lease with a given fencing
/// token, in one step.
///
/// `KEYS[1]` lock key, `KEYS[2]` fence key, `KEYS[3]` record key; `ARGV[1]` the
/// writer's fencing token (decimal), `ARGV[2]` `1` if a value is expected and `0` for
/// no record, `ARGV[3]` the expected value (empty when none is), `ARGV[4]` the new
/// value. Returns `{RECORD_FENCED, nil}` unless the lock is held, the fence counter
/// equals the token (every acquisition increments it, so no later acquisition exists)
/// and the lock's value is one of ours carrying that token (so the live lease is that
/// acquisition, not a Go holder's lock, which never counts on the fence key);
/// otherwise `{RECORD_CONFLICT, current}` if the record differs from the expected value
/// (a missing record is nil); otherwise sets the record, with no expiry, and returns
/// `{RECORD_WRITTEN, nil}`. Values are binary-safe.
pub(crate) static WRITE_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if not held or redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {2, false}
end
if string.match(held, '^leasehold:v1:%x+:(%d+):') ~= ARGV[1] then
  return {2, false}
end
local current = redis.call('GET', KEYS[3])
if ARGV[2] == '1' then
  if current ~= ARGV[3] then
    return {1, current}
  end
elseif current then
  return {1, current}
end
redis.call('SET', KEYS[3], ARGV[4])
return {0, false}
",
    )
});

/// A lock key and the whole value one acquisition wrote into it: what the refresh and
/// release scripts compare. `Debug` leaves the value out: anyone who has it can release
/// the lock.
///
/// Both live in one shared allocation, key first: a clone (one per lease in every
/// batched refresh) raises a count, and reading the key and the value after it reads
/// memory next to that count rather than two allocations elsewhere.
#[derive(Clone)]
pub(crate) struct Claim {
    /// The lock key followed by the value.
    text: Arc<str>,
    /// Where the value starts in `text`.
    split: usize,
}

impl Claim {
    /// The claim of `value` written into the lock key `lock`.
    pub(crate) fn new(lock: &str, value: &str) -> Self {
        let mut text = String::with_capacity(lock.len() + value.len());
        text.push_str(lock);
        text.push_str(value);
        Self {
            text: Arc::from(text),
            split: lock.len(),
        }
    }

    /// The lock key, `<namespace>:lock:<name>`.
    pub(crate) fn lock(&self) -> &str {
        // `split` is where the key ends, a character boundary: `get` never fails.
        self.text.get(..self.split).unwrap_or_default()
    }

    /// The value written: a random owner value, the fencing token, the time and the
    /// holder (see the `value` module).
    pub(crate) fn value(&self) -> &str {
        self.text.get(self.split..).unwrap_or_default()
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("lock", &self.lock())
            .finish_non_exhaustive()
    }
}

/// The names this backend uses in Redis, derived from its namespace.
///
/// With namespace `ns` a routine `name` has the lock key `ns:lock:name` (so the default
/// namespace `routine` gives the Go original's `routine:lock:name`), the fence counter
/// `ns:fence:name` (never expires, only incremented), the record `ns:record:name` (no
/// expiry, written only by the holder), the waiters `ns:waiters:name` (a sorted set of
/// the backends waiting for the name, see [`REGISTER`]; it expires once nobody
/// registers), and its releases are published on the channel `ns:released:name`,
/// or, to the one waiting backend a release picks, on that backend's own channel
/// `ns:wake:<waiter id>` (see [`ANNOUNCE`]).
///
/// In cluster mode the name is a hash tag: `ns:lock:{name}`, `ns:fence:{name}`,
/// `ns:record:{name}`, `ns:waiters:{name}` and the sharded channel
/// `ns:released:{name}` all hash to one slot
/// (the namespace has no braces, see the settings' validation), so every script touches
/// keys of one slot and the release is announced on the name's shard. There is no wake
/// channel in cluster mode: the picked waiter's id is published on the name's channel,
/// which every backend waiting for the name subscribes to on that shard.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    lock: String,
    fence: String,
    record: String,
    waiters: String,
    channel: String,
    wake: String,
    /// Cluster mode: names are wrapped in `{...}`.
    tagged: bool,
}

impl Keys {
    pub(crate) fn new(namespace: &str, tagged: bool) -> Self {
        Self {
            lock: format!("{namespace}:lock:"),
            fence: format!("{namespace}:fence:"),
            record: format!("{namespace}:record:"),
            waiters: format!("{namespace}:waiters:"),
            channel: format!("{namespace}:released:"),
            wake: format!("{namespace}:wake:"),
            tagged,
        }
    }

    fn key(&self, prefix: &str, key: &LockKey) -> String {
        if self.tagged {
            format!("{prefix}{{{key}}}")
        } else {
            format!("{prefix}{key}")
        }
    }

    /// The record key of `key`: `<namespace>:record:<name>`.
    pub(crate) fn record(&self, key: &LockKey) -> String {
        self.key(&self.record, key)
    }

    /// The waiters key of `key`: `<namespace>:waiters:<name>`.
    pub(crate) fn waiters(&self, key: &LockKey) -> String {
        self.key(&self.waiters, key)
    }

    pub(crate) fn lock(&self, key: &LockKey) -> String {
        self.key(&self.lock, key)
    }

    pub(crate) fn fence(&self, key: &LockKey) -> String {
        self.key(&self.fence, key)
    }

    pub(crate) fn channel(&self, key: &LockKey) -> String {
        self.key(&self.channel, key)
    }

    /// What the release scripts prefix a picked waiter's id with to name its own wake
    /// channel: `<namespace>:wake:`, or empty in cluster mode, where the release
    /// channel carries the id instead (see [`ANNOUNCE`]).
    pub(crate) fn wake_prefix(&self) -> &str {
        if self.tagged { "" } else { &self.wake }
    }

    /// The wake channel of the backend with `waiter_id`, `<namespace>:wake:<waiter id>`:
    /// a plain channel name (subscribed with `SUBSCRIBE`, so glob characters of the
    /// namespace need no escaping).
    pub(crate) fn wake_channel(&self, waiter_id: &str) -> String {
        format!("{}{waiter_id}", self.wake)
    }

    /// Whether this is the cluster layout (hash-tagged keys, sharded channels).
    pub(crate) fn tagged(&self) -> bool {
        self.tagged
    }

    /// The command the release scripts announce a release with: `PUBLISH`, or
    /// `SPUBLISH` (sharded pub/sub, Redis 7) in cluster mode.
    pub(crate) fn publish(&self) -> &'static str {
        if self.tagged { "SPUBLISH" } else { "PUBLISH" }
    }

    /// Checks that `key`'s keys share a slot, for the scripts that touch more than one:
    /// in cluster mode a name starting with `}` makes an empty hash tag (`{}...}`), and
    /// Redis then hashes each whole key, putting them in different slots.
    pub(crate) fn check(&self, key: &LockKey) -> leasehold_core::Result<()> {
        if self.tagged && key.as_str().starts_with('}') {
            return Err(leasehold_core::Error::invalid_name(
                key,
                "in Redis Cluster mode a name must not start with `}` (the keys' hash tag \
                 `{<name>}` would be empty, and the name's keys would land in different slots)",
            ));
        }
        Ok(())
    }

    /// The `SCAN MATCH` pattern of every lock key whose name starts with `prefix`, with
    /// the glob characters of the namespace and of `prefix` escaped so they match only
    /// themselves.
    pub(crate) fn lock_pattern(&self, prefix: &str) -> String {
        let mut pattern = escape_glob(&self.lock);
        if self.tagged {
            pattern.push('{');
        }
        pattern.push_str(&escape_glob(prefix));
        pattern.push('*');
        pattern
    }

    /// The name of a lock key of this namespace, `None` for any other key.
    pub(crate) fn name_of_lock<'k>(&self, lock: &'k str) -> Option<&'k str> {
        let name = lock.strip_prefix(&self.lock)?;
        if self.tagged {
            return name.strip_prefix('{')?.strip_suffix('}');
        }
        Some(name)
    }

    /// The `PSUBSCRIBE` pattern matching every release channel of this namespace, with
    /// the namespace's glob characters escaped so they match only themselves.
    pub(crate) fn channel_pattern(&self) -> String {
        let mut pattern = escape_glob(&self.channel);
        pattern.push('*');
        pattern
    }
}

/// `text` as a Redis glob pattern that matches only `text` itself.
fn escape_glob(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_namespace_gives_the_go_key_layout() {
        let keys = Keys::new("routine", false);
        let key = LockKey::new("billing").unwrap();
        assert_eq!(keys.lock(&key), "routine:lock:billing");
        assert_eq!(keys.fence(&key), "routine:fence:billing");
        assert_eq!(keys.record(&key), "routine:record:billing");
        assert_eq!(keys.waiters(&key), "routine:waiters:billing");
        assert_eq!(keys.channel(&key), "routine:released:billing");
        assert_eq!(keys.channel_pattern(), "routine:released:*");
        assert_eq!(keys.wake_prefix(), "routine:wake:");
        assert_eq!(
            keys.wake_channel("0123456789abcdef"),
            "routine:wake:0123456789abcdef"
        );
    }

    #[test]
    fn the_wake_channel_is_not_escaped_and_cluster_mode_has_none() {
        // Subscribed with a plain SUBSCRIBE: the name is matched as it is.
        let keys = Keys::new("a*b?", false);
        assert_eq!(keys.wake_channel("00ff"), "a*b?:wake:00ff");
        assert_eq!(Keys::new("routine", true).wake_prefix(), "");
    }

    #[test]
    fn channel_pattern_escapes_glob_characters_of_the_namespace() {
        let keys = Keys::new(r"a*b?c[d]e\f", false);
        assert_eq!(keys.channel_pattern(), r"a\*b\?c\[d\]e\\f:released:*");
    }

    #[test]
    fn lock_pattern_escapes_glob_characters_of_the_namespace_and_the_prefix() {
        let keys = Keys::new("ns?", false);
        assert_eq!(keys.lock_pattern(""), r"ns\?:lock:*");
        assert_eq!(keys.lock_pattern(r"a*b[c]\d"), r"ns\?:lock:a\*b\[c\]\\d*");
        assert_eq!(keys.name_of_lock("ns?:lock:a:b"), Some("a:b"));
        assert_eq!(keys.name_of_lock("ns?:fence:a"), None);
    }

    #[test]
    fn cluster_keys_of_a_name_share_one_slot() {
        use redis::cluster_routing::Slot;
        let keys = Keys::new("routine", true);
        for name in ["billing", "a}b", "{x}", "a:b{c"] {
            let key = LockKey::new(name).unwrap();
            let lock = keys.lock(&key);
            assert_eq!(lock, format!("routine:lock:{{{name}}}"));
            let slot = Slot::for_key(&lock);
            for other in [
                keys.fence(&key),
                keys.record(&key),
                keys.waiters(&key),
                keys.channel(&key),
            ] {
                assert_eq!(Slot::for_key(&other), slot, "{lock} and {other}");
            }
            keys.check(&key).unwrap();
            assert_eq!(keys.name_of_lock(&lock), Some(name));
        }
        assert!(keys.check(&LockKey::new("}a").unwrap()).is_err());
        assert_eq!(keys.lock_pattern("a*"), r"routine:lock:{a\**");
        assert_eq!(keys.name_of_lock("routine:fence:{a}"), None);
        assert_eq!(keys.publish(), "SPUBLISH");
    }

    #[test]
    fn a_refresh_reply_answers_each_key_in_order_and_nothing_else_parses() {
        let reply = Extended::from_redis_value(Value::BulkString(b"1101".to_vec())).unwrap();
        assert_eq!(reply.len(), 4);
        assert_eq!(reply.replies().collect::<Vec<_>>(), [1, 1, 0, 1]);
        for junk in [
            Value::BulkString(b"1 0".to_vec()),
            Value::BulkString(b"2".to_vec()),
            Value::Int(1),
        ] {
            assert!(Extended::from_redis_value(junk).is_err());
        }
    }

    #[test]
    fn a_claim_gives_back_its_key_and_value() {
        let claim = Claim::new("routine:lock:billing", "leasehold:v1:owner:7:1:host");
        let copy = claim.clone();
        assert_eq!(copy.lock(), "routine:lock:billing");
        assert_eq!(copy.value(), "leasehold:v1:owner:7:1:host");
        assert!(
            !format!("{claim:?}").contains("owner"),
            "the value stays out of Debug"
        );
    }
}
