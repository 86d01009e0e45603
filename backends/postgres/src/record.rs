//! Records: a small value per key, kept in the `record` column (`bytea`) of the key's
//! fencing row and written only by the key's holder.
//!
//! A record lives in the fencing row, so it has no TTL and outlives every lease of its
//! key, and it goes only with the row. The write is one statement: it locks the key's row
//! (`FOR UPDATE`, so it reads the latest committed token, claim and record, not its
//! snapshot's), decides from that locked row, and updates the record only when the
//! decision is to write. An acquire bumping the token, or a release clearing the claim,
//! waits for it or is seen by it: never both.
//!
//! The statements run on the operator connections (see the `operator` module), like
//! `describe`, never on the lock session: a write is guarded by the fencing row, not by
//! the session, so it need not queue behind the session's refreshes, nor make them wait
//! for a row lock.

use leasehold_core::{FencingToken, LockKey, RecordWrite, Result};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row};

use crate::config::Settings;
use crate::error::{Context, with_timeout};

/// The record statements, with the table names filled in.
#[derive(Debug)]
pub(crate) struct Records {
    /// `$1` lock key, `$2` namespace, `$3` name: the key's `record` (NULL: none); no row
    /// if the key was never acquired (or its row belongs to a colliding name).
    read: String,
    /// `$1` lock key, `$2` namespace, `$3` name, `$4` the writer's fencing token, `$5` the
    /// expected record (NULL: none), `$6` the new value. One row: `written`, whether the
    /// value was stored; `holds`, whether the writer holds the key (its row has the token
    /// `$4`, is claimed by a session and that session's heartbeat runs); `current`, the
    /// record found (before the write).
    write: String,
}

impl Records {
    /// The statements for the fencing table `table` and its session table `sessions`
    /// (both quoted and qualified).
    pub(crate) fn new(table: &str, sessions: &str) -> Self {
        let read = format!(
            "SELECT record FROM {table} WHERE lock_key = $1 AND namespace = $2 AND name = $3"
        );
        // `cur` locks the key's row and reads its latest committed version (an acquire
        // that bumped the token after this statement's snapshot is seen, one that comes
        // later waits for this statement). The update joins `cur`, so it writes exactly
        // when `cur` says the writer holds the key and the record is the expected one.
        // A released key (claim cleared) or a claim whose session heartbeat has run out
        // is not held: the write is fenced then too.
        let write = format!(
            "WITH cur AS MATERIALIZED (
                SELECT f.record,
                       f.token = $4 AND f.holder_session IS NOT NULL
                         AND EXISTS (SELECT 1 FROM {sessions} AS s
                                     WHERE s.id = f.holder_session
                                       AND s.alive_until > clock_timestamp()) AS holds
                FROM {table} AS f
                WHERE f.lock_key = $1 AND f.namespace = $2 AND f.name = $3
                FOR UPDATE OF f
            ), written AS (
                UPDATE {table} AS f SET record = $6::bytea
                FROM cur
                WHERE f.lock_key = $1 AND cur.holds
                  AND cur.record IS NOT DISTINCT FROM $5::bytea
                RETURNING 1
            )
            SELECT EXISTS (SELECT 1 FROM written) AS written,
                   coalesce(cur.holds, false) AS holds,
                   cur.record AS current
            FROM (SELECT) AS one LEFT JOIN cur ON true"
        );
        Self { read, write }
    }

    /// The record of `key` (lock key `hash`), `None` if none was written.
    pub(crate) async fn read(
        &self,
        pool: &PgPool,
        settings: &Settings,
        key: &LockKey,
        hash: i64,
    ) -> Result<Option<Vec<u8>>> {
        let ctx = Context {
            operation: "read_record",
            url_setting: settings.url_setting,
        };
        let record = with_timeout(ctx.operation, settings.request_timeout, async {
            sqlx::query_scalar::<_, Option<Vec<u8>>>(AssertSqlSafe(self.read.as_str()))
                .bind(hash)
                .bind(&settings.namespace)
                .bind(key.as_str())
                .fetch_optional(pool)
                .await
                .map_err(|err| ctx.map(err))
        })
        .await?;
        Ok(record.flatten())
    }

    /// Replaces the record of `key` (lock key `hash`) with `value` if the lease with
    /// `token` still holds the key and the record is `expected`; the value's length is
    /// checked first.
    pub(crate) async fn write(
        &self,
        pool: &PgPool,
        settings: &Settings,
        (key, hash): (&LockKey, i64),
        token: FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<RecordWrite> {
        leasehold_core::check_record(key, value)?;
        // Stored tokens are positive `bigint`s: a token beyond them was never handed out.
        let Ok(token) = i64::try_from(token.get()) else {
            return Ok(RecordWrite::Fenced);
        };
        let ctx = Context {
            operation: "write_record",
            url_setting: settings.url_setting,
        };
        let row = with_timeout(ctx.operation, settings.request_timeout, async {
            sqlx::query(AssertSqlSafe(self.write.as_str()))
                .bind(hash)
                .bind(&settings.namespace)
                .bind(key.as_str())
                .bind(token)
                .bind(expected)
                .bind(value)
                .fetch_one(pool)
                .await
                .map_err(|err| ctx.map(err))
        })
        .await?;
        outcome(&row).map_err(|err| ctx.map(err))
    }
}

/// The [`RecordWrite`] of a write statement's row.
fn outcome(row: &PgRow) -> sqlx::Result<RecordWrite> {
    if row.try_get::<bool, _>("written")? {
        return Ok(RecordWrite::Written);
    }
    if !row.try_get::<bool, _>("holds")? {
        return Ok(RecordWrite::Fenced);
    }
    Ok(RecordWrite::Conflict {
        current: row.try_get("current")?,
    })
}
