//! Fencing tokens without a WAL flush per acquire, and the guard after a server restart.
//!
//! The lease statements (acquire, refresh, release) commit asynchronously when the server
//! has no synchronous standby (see [`ASYNC_COMMIT_CTE`](crate::fencing::ASYNC_COMMIT_CTE)):
//! a commit returns before its WAL
//! is flushed, so a server crash may lose the last of them. Two things make that safe:
//!
//! - **Epochs.** The epoch table (the fencing table's name with `_epoch` appended) holds
//!   one row: a counter bumped, with a flushed commit, by every lock session when it
//!   opens. An acquire on a session of epoch `E` sets the key's token to
//!   `greatest(token + 1, E << 32)`. Every session opened after a crash has an epoch
//!   above every epoch used before it (the bumps were flushed), so its tokens exceed every
//!   token handed out before the crash, whether or not the crash lost the counter's last
//!   writes; within one server lifetime `token + 1` keeps a key's tokens growing even when
//!   a session of an older epoch takes a key after one of a newer epoch. An epoch allows
//!   2^32 acquisitions of one key (counted from the current epoch's floor): an acquire
//!   that would go past the current epoch's range is refused by the statement, and the
//!   session then moves to a new epoch and tries again.
//! - **The restart guard.** A lost commit may also lose a heartbeat or a claim (see the
//!   crate docs, *Lock sessions and heartbeats*): the rows that keep other clients off a
//!   key until its holders' local deadlines have passed. Every such deadline is at most
//!   the crash time plus that holder's TTL, so at most `pg_postmaster_start_time()` plus
//!   the longest TTL any client used before the restart. The epoch row keeps that longest
//!   TTL (raised, with a flushed commit, before a session first uses a longer TTL than
//!   stored: rare), and a session opened within that window of a restart grants no key
//!   until it has passed (contention, with `expires_in` saying when it ends).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, Result};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::config::Settings;
use crate::connect::Live;
use crate::error::{Context, Message, NAME};
use crate::schema::create;

/// The highest epoch: `(epoch + 1) << 32` must fit in a `bigint`.
const MAX_EPOCH: i64 = (1 << 31) - 2;

/// A CTE that makes the statement's transaction wait for its WAL flush even if the server
/// or role turned `synchronous_commit` off: epochs and the longest TTL must survive a
/// crash. Reference it as `(SELECT count(*) FROM flushed)`.
const FLUSHED_CTE: &str = "flushed AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'on', true)
    WHERE current_setting('synchronous_commit') = 'off'
)";

/// `$N` milliseconds as an interval.
fn millis(param: &str) -> String {
    format!("make_interval(secs => {param}::float8 / 1000)")
}

/// The statements on the epoch table.
#[derive(Debug, Clone)]
pub(crate) struct EpochStatements {
    /// Bumps the epoch; one row: `epoch`, `stored_ms` (the longest TTL stored) and
    /// `guard_ms` (what is left of the restart guard, 0 if none).
    begin: Arc<str>,
    /// `$1` TTL in milliseconds: stores it as the longest TTL if it is longer; one row,
    /// `stored_ms`, at least `$1`.
    raise_ttl: Arc<str>,
}

impl EpochStatements {
    pub(crate) fn new(epochs: &str) -> Self {
        // The longest TTL used before this server lifetime: the stored one, unless it was
        // raised during this lifetime, which keeps the one from before in `ttl_before_ms`.
        let before = "CASE WHEN e.ttl_lifetime = pg_postmaster_start_time()
                      THEN e.ttl_before_ms ELSE e.longest_ttl_ms END";
        let begin = format!(
            "WITH {FLUSHED_CTE}, bumped AS (
                INSERT INTO {epochs} AS e
                    (id, epoch, longest_ttl_ms, ttl_lifetime, ttl_before_ms)
                VALUES (1, 1, 0, pg_postmaster_start_time(), 0)
                ON CONFLICT (id) DO UPDATE SET epoch = e.epoch + 1
                RETURNING e.*
            )
            SELECT e.epoch AS epoch, e.longest_ttl_ms AS stored_ms,
                   greatest(0, ceil(extract(epoch FROM pg_postmaster_start_time()
                       + {before_interval} - clock_timestamp()) * 1000))::int8 AS guard_ms,
                   (SELECT count(*) FROM flushed) AS flushed
            FROM bumped AS e",
            before_interval = millis(&format!("({before})")),
        );
        let raise_ttl = format!(
            "WITH {FLUSHED_CTE}, raised AS (
                UPDATE {epochs} AS e
                SET ttl_before_ms = {before}, ttl_lifetime = pg_postmaster_start_time(),
                    longest_ttl_ms = $1
                WHERE e.id = 1 AND e.longest_ttl_ms < $1
                RETURNING e.longest_ttl_ms
            )
            SELECT greatest($1, (SELECT longest_ttl_ms FROM {epochs} WHERE id = 1))::int8
                       AS stored_ms,
                   (SELECT count(*) FROM flushed) AS flushed,
                   (SELECT count(*) FROM raised) AS raised"
        );
        Self {
            begin: Arc::from(begin),
            raise_ttl: Arc::from(raise_ttl),
        }
    }

    /// Moves `live` to a new epoch, and reads the longest TTL stored and the restart
    /// guard; run when a session opens, and when an acquire finds the epoch spent.
    ///
    /// # Errors
    ///
    /// As mapped by [`Context::map`]; [`Error::Misconfigured`] if the epochs ran out.
    pub(crate) async fn begin(&self, live: &mut Live, ctx: Context) -> Result<()> {
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.begin)))
            .fetch_one(&mut live.conn)
            .await
            .map_err(|err| ctx.map(err))?;
        let epoch: i64 = row.try_get("epoch").map_err(|err| ctx.map(err))?;
        let stored_ms: i64 = row.try_get("stored_ms").map_err(|err| ctx.map(err))?;
        let guard_ms: i64 = row.try_get("guard_ms").map_err(|err| ctx.map(err))?;
        if !(1..=MAX_EPOCH).contains(&epoch) {
            return Err(Error::misconfigured(
                NAME,
                format!(
                    "the fencing epoch {epoch} is out of range (1 to {MAX_EPOCH}); the epoch \
                     table beside the fencing table was changed by hand"
                ),
            ));
        }
        live.epoch_floor = epoch << 32;
        live.stored_ttl = Duration::from_millis(stored_ms.max(0).unsigned_abs());
        // Counted on the local clock from when the answer arrived: the guard runs out
        // on the server no later.
        live.guard_until = (guard_ms > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(guard_ms.unsigned_abs()));
        if guard_ms > 0 {
            tracing::info!(
                guard_ms,
                "the PostgreSQL server restarted within the longest lease TTL: no key is \
                 granted until it has passed"
            );
        }
        Ok(())
    }

    /// Makes sure the longest TTL stored covers `ttl` before a statement of `live` uses
    /// it: one flushed write when `ttl` is longer than any TTL stored so far.
    ///
    /// # Errors
    ///
    /// The `sqlx` error of the statement, for the caller to tell a broken session.
    pub(crate) async fn cover_ttl(&self, live: &mut Live, ttl: Duration) -> sqlx::Result<()> {
        if ttl <= live.stored_ttl {
            return Ok(());
        }
        let ms = i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX);
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.raise_ttl)))
            .bind(ms)
            .fetch_one(&mut live.conn)
            .await?;
        let stored_ms: i64 = row.try_get("stored_ms")?;
        live.stored_ttl = Duration::from_millis(stored_ms.max(ms).unsigned_abs());
        Ok(())
    }
}

/// Creates the epoch table if missing and checks that this role may use it.
///
/// # Errors
///
/// [`Error::PermissionDenied`] without the privileges to create or write it;
/// [`Error::Misconfigured`] if a table of that name exists with other columns.
pub(crate) async fn ensure_table(conn: &mut PgConnection, settings: &Settings) -> Result<()> {
    let epochs = settings.qualified_epochs.as_str();
    let ctx = |operation| Context {
        operation,
        url_setting: settings.url_setting,
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(epochs)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| ctx("look up the epoch table").map(err))?;
    if !exists {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {epochs} (
                id int PRIMARY KEY CHECK (id = 1),
                epoch bigint NOT NULL,
                longest_ttl_ms bigint NOT NULL,
                ttl_lifetime timestamptz NOT NULL,
                ttl_before_ms bigint NOT NULL
            )"
        );
        create(conn, sql, ctx("create the epoch table")).await?;
    }
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass
                   AND attname IN ('id', 'epoch', 'longest_ttl_ms', 'ttl_lifetime',
                                   'ttl_before_ms')
                   AND NOT attisdropped) AS columns,
                has_table_privilege($1, 'SELECT, INSERT, UPDATE') AS writable",
    )
    .bind(epochs)
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| ctx("check the epoch table").map(err))?;
    let columns: i64 = row
        .try_get("columns")
        .map_err(|err| ctx("check the epoch table").map(err))?;
    let writable: bool = row
        .try_get("writable")
        .map_err(|err| ctx("check the epoch table").map(err))?;
    if columns != 5 {
        return Err(Error::misconfigured(
            NAME,
            format!(
                "table {epochs} exists but is not a fencing epoch table (it needs columns id, \
                 epoch, longest_ttl_ms, ttl_lifetime, ttl_before_ms); configure another \
                 fencing table name"
            ),
        ));
    }
    if !writable {
        return Err(Error::permission_denied(
            NAME,
            "write the epoch table",
            Message(format!(
                "the role needs SELECT, INSERT and UPDATE on {epochs}"
            )),
        ));
    }
    Ok(())
}
