//! The fencing table and the SQL that takes, keeps and gives back locks.
//!
//! One row per lock key: `(lock_key bigint primary key, namespace text, name text, token
//! bigint, acquired_at timestamptz)`. The holder bumps `token` in the statement that takes
//! the advisory lock, so tokens grow with every acquisition of a key as long as the row is
//! kept: never delete rows (a deleted row restarts its key's tokens at 1). The stored
//! namespace and name detect hash collisions.

use std::sync::Arc;

use routine_core::{Error, Result};
use sqlx::postgres::PgConnection;

use crate::config::Settings;
use crate::error::{Context, Message, NAME};

/// The statements of a lock session, with the table name filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `$1` key, `$2` namespace, `$3` name, `$4`/`$5` TTL settings. One row: `got`,
    /// (settings count), `token`, `namespace`, `name` of the bumped row if `got`, and the
    /// `namespace`, `name` of the existing row if not.
    pub(crate) acquire: Arc<str>,
    /// `$1` key, `$2` channel, `$3`/`$4` TTL settings. One row: `unlocked`, (settings
    /// count), (notifications sent).
    pub(crate) release: Arc<str>,
}

/// `$1`/`$2` TTL settings: proves the session alive and updates its TTL settings.
pub(crate) const REFRESH: &str =
    "SELECT count(set_config(k, v, false)) FROM unnest($1::text[], $2::text[]) AS s(k, v)";

/// `$1` key: gives a lock back after a failed statement.
pub(crate) const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Applies the TTL settings (`ttl` module) within a statement; `MATERIALIZED` and a
/// reference from the outer query make sure it runs exactly once.
const SETTINGS_CTE: &str = "settings AS MATERIALIZED (
    SELECT count(set_config(k, v, false)) AS n FROM unnest($SETTINGS::text[]) AS s(k, v)
)";

impl Statements {
    pub(crate) fn new(table: &str) -> Self {
        let settings = |first: u8| {
            SETTINGS_CTE.replace(
                "$SETTINGS::text[]",
                &format!("${first}::text[], ${}::text[]", first + 1),
            )
        };
        // The advisory lock is taken first (a materialized CTE); the row is bumped only if
        // it was, in the same statement and round trip. Without the lock, the existing row
        // tells whether the holder is really this name or a colliding one.
        let acquire = format!(
            "WITH {settings}, lock AS MATERIALIZED (
                SELECT pg_try_advisory_lock($1) AS got
            ), bump AS (
                INSERT INTO {table} AS f (lock_key, namespace, name, token)
                SELECT $1, $2, $3, 1 FROM lock WHERE got
                ON CONFLICT (lock_key) DO UPDATE SET token = f.token + 1, acquired_at = now()
                RETURNING f.token, f.namespace, f.name
            )
            SELECT lock.got, settings.n, bump.token, bump.namespace, bump.name,
                   holder.namespace, holder.name
            FROM lock CROSS JOIN settings
            LEFT JOIN bump ON true
            LEFT JOIN {table} AS holder ON holder.lock_key = $1 AND NOT lock.got",
            settings = settings(4),
        );
        // NOTIFY only if the lock was ours; delivered when the statement commits, after
        // the unlock.
        let release = format!(
            "WITH {settings}, unlocked AS MATERIALIZED (
                SELECT pg_advisory_unlock($1) AS ok
            )
            SELECT unlocked.ok, settings.n,
                   (SELECT count(*) FROM (SELECT pg_notify($2, $1::text) WHERE unlocked.ok) AS sent)
            FROM unlocked CROSS JOIN settings",
            settings = settings(3),
        );
        Self {
            acquire: Arc::from(acquire),
            release: Arc::from(release),
        }
    }
}

/// Creates the schema and table if missing, then checks that the table is a fencing table
/// this role may read and write.
///
/// # Errors
///
/// [`Error::PermissionDenied`] without the privileges to create or write them;
/// [`Error::Misconfigured`] if the table exists with other columns.
pub(crate) async fn ensure_table(conn: &mut PgConnection, settings: &Settings) -> Result<()> {
    let table = settings.qualified_table.as_str();
    let ctx = |operation| Context {
        operation,
        url_setting: settings.url_setting,
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| ctx("look up the fencing table").map(err))?;
    if !exists {
        let schema_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&settings.schema)
                .fetch_one(&mut *conn)
                .await
                .map_err(|err| ctx("look up the fencing table's schema").map(err))?;
        if !schema_exists {
            let sql = format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                crate::config::quote(&settings.schema)
            );
            create(conn, sql, ctx("create the fencing table's schema")).await?;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                lock_key bigint PRIMARY KEY,
                namespace text NOT NULL,
                name text NOT NULL,
                token bigint NOT NULL,
                acquired_at timestamptz NOT NULL DEFAULT now()
            )"
        );
        create(conn, sql, ctx("create the fencing table")).await?;
    }
    let (columns, writable): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass
                   AND attname IN ('lock_key', 'namespace', 'name', 'token')
                   AND NOT attisdropped),
                has_table_privilege($1, 'SELECT, INSERT, UPDATE')",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| ctx("check the fencing table").map(err))?;
    if columns != 4 {
        return Err(Error::Misconfigured {
            backend: NAME,
            reason: format!(
                "table {table} exists but is not a fencing table (it needs columns lock_key, \
                 namespace, name, token); configure another table name"
            ),
        });
    }
    if !writable {
        return Err(Error::PermissionDenied {
            backend: NAME,
            operation: "write the fencing table",
            source: Box::new(Message(format!(
                "the role needs SELECT, INSERT and UPDATE on {table}"
            ))),
        });
    }
    Ok(())
}

/// Runs a `CREATE ... IF NOT EXISTS`, accepting the errors of a concurrent creation.
async fn create(conn: &mut PgConnection, sql: String, ctx: Context) -> Result<()> {
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db))
            // Two processes creating at once: unique violation on the catalog, or
            // "already exists" (duplicate table, duplicate schema).
            if matches!(db.code().as_deref(), Some("23505" | "42P07" | "42P06")) =>
        {
            Ok(())
        }
        Err(err) => Err(ctx.map(err)),
    }
}
