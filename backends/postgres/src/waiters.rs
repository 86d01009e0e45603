//! Waking one waiter per release: the waiter table, and the SQL that registers a waiter
//! and picks the one a release wakes.
//!
//! Without it, a release notifies the shared channel `routine_lock_released`, every
//! process waiting for the key hears it and all of them try to acquire at once: one
//! wins, the others meet contention and ask again how long the new holder has left, so
//! a handover costs statements in proportion to the number of waiting processes. With
//! it, a handover costs the release statement and the woken waiter's acquire, however
//! many processes wait (as on etcd, whose waiting line does the same with keys).
//!
//! # The waiter table
//!
//! The fencing table's name with `_waiters` appended: `(lock_key bigint, waiter bigint,
//! deadline timestamptz, primary key (lock_key, waiter))`, `UNLOGGED`: its writes cost no
//! WAL (and so no flush, even with a synchronous standby), and a server crash empties it,
//! which only costs wake-ups (see the fallback below). `waiter` is the waiting lock
//! session's id (`holder_session`, random per session), not its `pg_backend_pid()`: a
//! pooler in session mode hands server backends (and their pids) to other clients in
//! turn, and a pid is reused once its process exits, while a session id names one lock
//! session of one process, on any server.
//!
//! # Registering
//!
//! The runner asks [`expires_in`](leasehold_core::LockBackend::expires_in) after every
//! failed attempt while it waits, with its `released` future already registered. When
//! this backend has a local waiter for the key (see `Dispatch::is_waiting`), the
//! `expires_in` statement also upserts the session's row for the key, with a deadline of
//! the server's clock plus `greatest(10 s, 2 × the time left)`: the runner asks again
//! about when the time left runs out (at most one TTL later), so the row of a live
//! waiter never expires, and the row of a waiter that stopped asking does within two of
//! its waits. No extra round trip; a process that only asks (a monitor) registers
//! nothing.
//!
//! A waiter that acquires leaves no row behind to remove in the hot acquire statement:
//! the release that woke it deleted its row, and a waiter that took the key without
//! being woken (it tried because the key looked free) keeps a row that no release picks
//! (a release skips the releasing session's own row) and its own release deletes.
//!
//! # Releasing
//!
//! The release statement, after unlocking, picks the key's row with the latest deadline
//! still in the future (the waiter that asked last, or against the longest lease left: most likely still
//! there), other than
//! the releasing session's, deletes it along with the key's expired rows and the
//! releasing session's own, and notifies that waiter's session on a channel of its own,
//! `routine_lock_wake_<session id in hex>`, with the lock key as payload: only the woken
//! process receives a message, where a shared channel with the waiter in the payload
//! would still deliver one to every listening process. The picked row is locked with
//! `SKIP LOCKED`, so two releases of the key close together (the key was taken and
//! released again before the first statement committed) wake two waiters, not one twice.
//! With no row to pick, the release notifies `routine_lock_released` as before, and
//! every waiter wakes: waiters that have not registered (yet), a server that lost the
//! table in a crash, and processes of older versions of this crate, which listen on that
//! channel only, keep working. In a fleet mixing versions, the older ones are only woken
//! by a release that finds no registered waiter, or by the expiry of a holder's
//! heartbeat; they are not starved of correctness, only of turns.
//!
//! A release with no waiter costs two index lookups on an empty table more than before:
//! no write.
//!
//! # What a wake-up that goes astray costs
//!
//! A waiter that stops waiting without being woken (its routine was stopped) deletes its
//! row: when the last local waiter of a key drops its `released` future, the session
//! task is sent `Command::Unwait`, unless the key is held here now (then its release
//! deletes the row). Only registered keys cost that message, so a holder's acquires cost
//! nothing. When the backend is dropped, its session deletes its remaining rows (best
//! effort: a process that exits first leaves them to expire). A session that is dropped
//! and replaced wakes all its waiters (see the `notify` module) and the next session
//! deletes the rows of the one before.
//!
//! A picked waiter that is gone all the same (its process crashed or exited since it
//! last asked, or its session was cut off unnoticed) wakes nobody. The other waiters then
//! wake when they ask again, which they do when the holder's heartbeat would run out: at
//! most one lease TTL after the release. They find the key free (`expires_in` says no
//! one holds it) and try at once.
//!
//! `force_release` wakes every waiter, on the shared channel: an operator's action, rare,
//! and the holder's process may be gone.
//!
//! # Without the table
//!
//! The table is created beside the others if missing. A role without the `CREATE`
//! privilege, or without `SELECT, INSERT, UPDATE, DELETE` on a table an administrator
//! created, works without it: it never registers, and its releases wake every waiter,
//! as before (logged once, at `warn`, when the backend is built).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, Result};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use crate::config::{Settings, WAKE_CHANNEL_PREFIX};
use crate::error::Context;
use crate::schema::{LEFT_MS, create};

/// The least time a registration lasts: the runner asks again when the holder's time
/// left runs out, so twice that would do, but a holder whose time is nearly out (or a key
/// nobody holds) must not make the row expire before the waiter's next attempt.
pub(crate) const MIN_REGISTRATION: Duration = Duration::from_secs(10);

/// The wake channel of the lock session with id `session` (see the module docs): the
/// hexadecimal digits of its two's complement, as PostgreSQL's `to_hex(bigint)` writes
/// them.
pub(crate) fn wake_channel(session: i64) -> String {
    format!("{WAKE_CHANNEL_PREFIX}{:x}", session.cast_unsigned())
}

/// The waiter statements of a lock session, with the table names filled in; present only
/// when the waiter table can be used.
#[derive(Debug)]
pub(crate) struct WaiterStatements {
    /// `$1` key, `$2` session id, `$3` milliseconds left on the restart guard (0 if
    /// none): like `Statements::expires_in` (one row, `left_ms`, NULL if no live session
    /// claims the key), and registers the session as a waiter for the key.
    pub(crate) register: Arc<str>,
    /// `$1` the id of the session dropped before this one (NULL if none), or of this
    /// session when its backend is dropped: deletes its rows and every expired one.
    pub(crate) forget: Arc<str>,
    /// `$1` key, `$2` session id: deletes the session's row for the key, when the last
    /// waiter for it in this process stopped waiting without being woken.
    pub(crate) unwait: Arc<str>,
}

impl WaiterStatements {
    pub(crate) fn new(table: &str, sessions: &str, waiters: &str) -> Self {
        let min_ms = MIN_REGISTRATION.as_millis();
        // The holder's time left, as `expires_in` reads it, and the registration in the
        // same statement; the row is written whether or not anyone holds the key (the
        // runner tries at once when nobody does, and may meet contention again).
        let register = format!(
            "WITH holder AS MATERIALIZED (
                SELECT {LEFT_MS} AS left_ms
                FROM {table} AS f JOIN {sessions} AS s ON s.id = f.holder_session
                WHERE f.lock_key = $1 AND s.alive_until > clock_timestamp()
            ), registered AS (
                INSERT INTO {waiters} AS w (lock_key, waiter, deadline)
                SELECT $1, $2, clock_timestamp() + make_interval(secs => greatest(
                    {min_ms},
                    2 * greatest(coalesce((SELECT left_ms FROM holder), 0), $3::int8)
                )::float8 / 1000)
                ON CONFLICT (lock_key, waiter) DO UPDATE SET deadline = excluded.deadline
            )
            SELECT (SELECT left_ms FROM holder) AS left_ms"
        );
        let forget = format!(
            "DELETE FROM {waiters} WHERE deadline < clock_timestamp() OR waiter = $1::int8"
        );
        let unwait = format!("DELETE FROM {waiters} WHERE lock_key = $1 AND waiter = $2");
        Self {
            register: Arc::from(register),
            forget: Arc::from(forget),
            unwait: Arc::from(unwait),
        }
    }
}

/// The release statement when the waiter table can be used (see the module docs): as
/// `Statements::release` (`$1` key, `$2` the shared release channel, `$3`/`$4` TTL
/// settings, `$5` session id), waking one registered waiter instead of every one when
/// there is any. `settings` and `commit_mode` are the CTEs of that statement.
pub(crate) fn release_statement(
    table: &str,
    waiters: &str,
    settings: &str,
    commit: &str,
) -> String {
    format!(
        "WITH {settings}, {commit}, unlocked AS MATERIALIZED (
            SELECT pg_advisory_unlock($1) AS ok
        ), cleared AS (
            UPDATE {table} SET holder_session = NULL
            WHERE lock_key = $1 AND holder_session = $5
        ), picked AS MATERIALIZED (
            SELECT w.waiter FROM {waiters} AS w
            WHERE w.lock_key = $1 AND w.waiter <> $5 AND w.deadline > clock_timestamp()
              AND (SELECT ok FROM unlocked)
            ORDER BY w.deadline DESC
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ), pruned AS (
            DELETE FROM {waiters} AS w
            WHERE w.lock_key = $1
              AND (w.waiter = $5 OR w.deadline <= clock_timestamp()
                   OR w.waiter IN (SELECT waiter FROM picked))
        )
        SELECT unlocked.ok AS unlocked, settings.n AS settings_applied,
               (SELECT count(*) FROM (SELECT pg_notify($2, $1::text)
                                      WHERE unlocked.ok AND NOT EXISTS (SELECT 1 FROM picked))
                    AS everyone) AS sent,
               (SELECT count(pg_notify('{WAKE_CHANNEL_PREFIX}' || to_hex(waiter), $1::text))
                FROM picked) AS woken,
               (SELECT count(*) FROM commit_mode) AS async_commit
        FROM unlocked CROSS JOIN settings"
    )
}

/// Creates the waiter table if missing and tells whether this role can use it. Missing
/// privileges, or a table of that name that is not ours, leave the backend waking every
/// waiter (logged at `warn`); other errors (a lost connection) are returned.
///
/// # Errors
///
/// As mapped by [`Context::map`], for failures other than missing privileges.
pub(crate) async fn ensure_table(conn: &mut PgConnection, settings: &Settings) -> Result<bool> {
    let waiters = settings.qualified_waiters.as_str();
    let ctx = |operation| Context {
        operation,
        url_setting: settings.url_setting,
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(waiters)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| ctx("look up the waiter table").map(err))?;
    if !exists {
        let sql = format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {waiters} (
                lock_key bigint NOT NULL,
                waiter bigint NOT NULL,
                deadline timestamptz NOT NULL,
                PRIMARY KEY (lock_key, waiter)
            )"
        );
        match create(conn, sql, ctx("create the waiter table")).await {
            Ok(()) => {}
            Err(err @ Error::PermissionDenied { .. }) => {
                tracing::warn!(
                    error = %err.chain(),
                    "cannot create the waiter table {waiters}: every release wakes every \
                     waiting process (create it once as an administrator, and grant SELECT, \
                     INSERT, UPDATE, DELETE on it, to wake one)"
                );
                return Ok(false);
            }
            Err(err) => return Err(err),
        }
    }
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass
                   AND attname IN ('lock_key', 'waiter', 'deadline')
                   AND NOT attisdropped) AS columns,
                has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE') AS writable",
    )
    .bind(waiters)
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| ctx("check the waiter table").map(err))?;
    let columns: i64 = row
        .try_get("columns")
        .map_err(|err| ctx("check the waiter table").map(err))?;
    let writable: bool = row
        .try_get("writable")
        .map_err(|err| ctx("check the waiter table").map(err))?;
    if columns != 3 {
        tracing::warn!(
            "table {waiters} exists but is not a waiter table (it needs columns lock_key, \
             waiter, deadline): every release wakes every waiting process"
        );
        return Ok(false);
    }
    if !writable {
        tracing::warn!(
            "the role lacks SELECT, INSERT, UPDATE, DELETE on {waiters}: every release \
             wakes every waiting process"
        );
        return Ok(false);
    }
    // Rows of waiters long gone would otherwise stay until a release of their key.
    let forget = format!("DELETE FROM {waiters} WHERE deadline < clock_timestamp()");
    sqlx::query(sqlx::AssertSqlSafe(forget))
        .execute(&mut *conn)
        .await
        .map_err(|err| ctx("forget expired waiters").map(err))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_channels_are_postgres_to_hex_of_the_session_id() {
        // SELECT to_hex(-1::int8), to_hex(255::int8), to_hex(-9223372036854775808)
        assert_eq!(wake_channel(-1), "routine_lock_wake_ffffffffffffffff");
        assert_eq!(wake_channel(255), "routine_lock_wake_ff");
        assert_eq!(wake_channel(i64::MIN), "routine_lock_wake_8000000000000000");
        assert!(
            wake_channel(i64::MIN).len() <= 63,
            "a channel name fits NAMEDATALEN"
        );
    }
}
