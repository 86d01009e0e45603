//! What `describe` and `list` read about held keys: the statement (a key is held when an
//! acquire would meet contention now: its advisory lock is granted in this database, or
//! its fencing row names a session whose heartbeat still runs) and its rows as
//! [`LeaseInfo`]. Shared by the lock session (`describe`, see the `session` module) and
//! the operator connections (`list`, see the `operator` module).

use std::time::{Duration, SystemTime};

use leasehold_core::{FencingToken, LeaseInfo, LockKey};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::config::Settings;
use crate::schema::LEFT_MS;

/// The granted `bigint` advisory locks of this database, as `(lock_key, pid)`.
pub(crate) const LOCKS: &str = "SELECT ((classid::int8 << 32) | objid::int8) AS lock_key, pid
    FROM pg_locks
    WHERE locktype = 'advisory' AND objsubid = 1 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The held rows of namespace `$1` that match `filter`, in byte order of their names.
pub(crate) fn held_rows(settings: &Settings, filter: &str) -> String {
    let table = settings.qualified_table.as_str();
    let sessions = settings.qualified_sessions.as_str();
    format!(
        "WITH locks AS MATERIALIZED ({LOCKS})
         SELECT f.name, f.holder_identity, f.token,
                (extract(epoch FROM f.acquired_at) * 1000000)::int8 AS acquired_us,
                CASE WHEN s.id IS NOT NULL THEN {LEFT_MS} END AS left_ms
         FROM {table} AS f
         LEFT JOIN {sessions} AS s
             ON s.id = f.holder_session AND s.alive_until > clock_timestamp()
         WHERE f.namespace = $1 AND {filter}
           AND (s.id IS NOT NULL OR f.lock_key IN (SELECT lock_key FROM locks))
         ORDER BY f.name COLLATE \"C\""
    )
}

/// `$1` namespace, `$2` lock key, `$3` name: the key's row if held.
pub(crate) fn describe_statement(settings: &Settings) -> String {
    held_rows(settings, "f.lock_key = $2 AND f.name = $3")
}

/// A held row as [`LeaseInfo`].
pub(crate) fn info(key: LockKey, row: &PgRow) -> sqlx::Result<LeaseInfo> {
    let mut info = LeaseInfo::new(key);
    if let Some(holder) = row.try_get::<Option<String>, _>("holder_identity")? {
        info = info.with_holder(holder);
    }
    let token: i64 = row.try_get("token")?;
    if let Ok(token) = u64::try_from(token) {
        info = info.with_fencing_token(FencingToken::new(token));
    }
    let acquired_us: i64 = row.try_get("acquired_us")?;
    let acquired_at = match u64::try_from(acquired_us) {
        Ok(after) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(after)),
        Err(_) => {
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_micros(acquired_us.unsigned_abs()))
        }
    };
    if let Some(at) = acquired_at {
        info = info.with_acquired_at(at);
    }
    if let Some(left_ms) = row.try_get::<Option<i64>, _>("left_ms")? {
        info = info.with_expires_in(Duration::from_millis(left_ms.max(1).unsigned_abs()));
    }
    Ok(info)
}
