//! SQL pieces shared by the modules that own the backend's tables (`fencing`, `epoch`,
//! `waiters`, `held`): a leaf, so that those modules need not import one another.

use leasehold_core::Result;
use sqlx::postgres::PgConnection;

use crate::error::Context;

/// Milliseconds left until `alive_until`, at least 1 (the row is alive).
pub(crate) const LEFT_MS: &str =
    "greatest(ceil(extract(epoch FROM s.alive_until - clock_timestamp()) * 1000), 1)::int8";

/// Runs a `CREATE ... IF NOT EXISTS` (or `ADD COLUMN IF NOT EXISTS`), accepting the errors of a concurrent creation.
pub(crate) async fn create(conn: &mut PgConnection, sql: String, ctx: Context) -> Result<()> {
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db))
            // Two processes creating at once: unique violation on the catalog, or
            // "already exists" (duplicate table, schema, column, or the table's row type:
            // 42710, which is what a concurrent `CREATE TABLE IF NOT EXISTS` usually
            // reports). Each means the other creation committed, so the object exists.
            if matches!(
                db.code().as_deref(),
                Some("23505" | "42P07" | "42P06" | "42701" | "42710")
            ) =>
        {
            Ok(())
        }
        Err(err) => Err(ctx.map(err)),
    }
}
