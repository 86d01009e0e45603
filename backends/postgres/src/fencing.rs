//! The fencing and session tables, and the SQL that takes, keeps and gives back locks.
//!
//! The fencing table has one row per lock key: `(lock_key bigint primary key, namespace
//! text, name text, token bigint, acquired_at timestamptz, holder_session bigint,
//! holder_identity text, record bytea)`. The holder bumps `token`, and sets `acquired_at`
//! (the server's `now()`) and `holder_identity`, in the statement that takes the advisory
//! lock, so tokens grow with every acquisition of a key as long as the row is kept: never
//! delete rows (a deleted row restarts its key's tokens at its session's epoch floor).
//! The new token is `greatest(token + 1, epoch << 32)` for the session's epoch (see the
//! `epoch` module), which keeps tokens growing across a crash that lost the last,
//! asynchronously committed bumps. The stored namespace and name detect hash collisions.
//!
//! `holder_session` names the lock session that took the key, and the session table (the
//! fencing table's name with `_sessions` appended) holds each session's heartbeat: `(id
//! bigint primary key, alive_until timestamptz)`, moved to the server's clock plus the
//! session's longest lease TTL by every acquire and refresh. A key whose row names another
//! session with a running heartbeat is not taken even when its advisory lock is free: that
//! session may have ended (terminated, restarted, cut off by a pooler) before its holders
//! learned it, and they may run until their local deadlines, which the heartbeat
//! outlasts. A release clears `holder_session`, so a graceful handover does not wait.
//!
//! A release also wakes one registered waiter, or every waiter if none is registered:
//! the `waiters` module has that statement, and the waiter table beside these.
//!
//! `record` is the key's record (the `record` module), written only by its holder and
//! never touched by the lock statements: it outlives every lease of the key.
//!
//! An acquire and its release write three rows: the heartbeat, the bump and the clear.
//! None can go: the heartbeat must cover the new lease from the acquire on, the bump is
//! the token, and the clear lets another session take the key at once after a graceful
//! release. All three are heap-only (HOT) updates, since no index covers the columns
//! they change, so they write no index entries. Most of what the two statements cost the
//! server beyond the bare lock functions is not these writes but the statements' size
//! (the executor sets up every CTE of the plan on each execution, even the ones that find
//! nothing to do) and committing a write (a transaction id, a commit record, waking the
//! WAL writer for the asynchronous commit). Hence the upserts stay: a plain `UPDATE` in
//! place of `INSERT ... ON CONFLICT DO UPDATE` measured no faster (alone, within the noise).

use std::sync::Arc;

use leasehold_core::{Error, Result};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use crate::config::Settings;
use crate::error::{Context, Message, NAME};
use crate::schema::{LEFT_MS, create};
use crate::waiters::{self, WaiterStatements};

/// The statements of a lock session, with the table names filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `$1` key, `$2` namespace, `$3` name, `$4`/`$5` TTL settings, `$6` session id, `$7`
    /// the session's heartbeat in milliseconds, `$8` the holder identity, `$9` the
    /// session's epoch floor (the least token it hands out). One row: `got` (the advisory lock),
    /// `settings_applied` (a count, unused), `token`, `bumped_namespace`, `bumped_name` of
    /// the bumped row if the key was taken, `holder_namespace`, `holder_name` of the
    /// existing row if the lock was not got, and `guarded_ms`, the milliseconds left on the
    /// heartbeat of a previous holder's session that may still believe it holds the key
    /// (then the key was not taken, and the lock must be given back), and `spent`: the
    /// key's token has used up the current epoch's range (then the key was not taken
    /// either: give the lock back, move the session to a new epoch and try again).
    pub(crate) acquire: Arc<str>,
    /// `$1`/`$2` TTL settings, `$3` session id, `$4` heartbeat in milliseconds: proves the
    /// session alive, moves its heartbeat on and updates its TTL settings.
    pub(crate) refresh: Arc<str>,
    /// `$1` key, `$2` channel, `$3`/`$4` TTL settings, `$5` session id. One row:
    /// `unlocked`, then the settings count and the notifications sent (unused). With the
    /// waiter table, it wakes one registered waiter if there is any (see the `waiters`
    /// module), else every one on `$2`.
    pub(crate) release: Arc<str>,
    /// `$1` key, `$2` session id: gives a lock back after a failed statement, or when its
    /// lease was dropped.
    pub(crate) unlock: Arc<str>,
    /// `$1` keys, `$2` session ids (arrays of equal length): forgets keys whose holders in
    /// ended sessions of this process have stopped, so they need not wait for the ended
    /// session's heartbeat.
    pub(crate) forget_holders: Arc<str>,
    /// `$1` key: one row, `left_ms`, the milliseconds left on the heartbeat of the
    /// session recorded as the key's holder; NULL if none is alive.
    pub(crate) expires_in: Arc<str>,
    /// Deletes the session rows whose heartbeat has run out.
    pub(crate) forget_sessions: Arc<str>,
    /// The statements that register waiters, if the waiter table can be used (see the
    /// `waiters` module); `release` then wakes one of them.
    pub(crate) waiters: Option<WaiterStatements>,
}

/// A CTE that makes the statement's own transaction commit without waiting for its WAL
/// flush, unless the server has a synchronous standby: then the failover guarantee (every
/// acquire and refresh a holder saw succeed is on the standby) needs the server's own
/// setting. The server is asked on every statement, so a standby configured later counts
/// from then on. Reference it as `(SELECT count(*) FROM commit_mode)` so that it runs.
/// The `epoch` module says why a crash that loses such commits breaks no guarantee.
pub(crate) const ASYNC_COMMIT_CTE: &str = "commit_mode AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'off', true)
    WHERE current_setting('synchronous_standby_names') = ''
)";

/// `alive_until` for a heartbeat of `$N` milliseconds from now.
fn alive_until(param: u8) -> String {
    format!("clock_timestamp() + make_interval(secs => ${param}::float8 / 1000)")
}

/// Applies the TTL settings (`ttl` module) within a statement; `MATERIALIZED` and a
/// reference from the outer query make sure it runs exactly once.
const SETTINGS_CTE: &str = "settings AS MATERIALIZED (
    SELECT count(set_config(k, v, false)) AS n FROM unnest($SETTINGS::text[]) AS s(k, v)
)";

impl Statements {
    /// The statements on `table` and the session and epoch tables beside it, and on the
    /// waiter table `waiters` if it can be used.
    pub(crate) fn new(table: &str, sessions: &str, epochs: &str, waiters: Option<&str>) -> Self {
        let settings = |first: u8| {
            SETTINGS_CTE.replace(
                "$SETTINGS::text[]",
                &format!("${first}::text[], ${}::text[]", first + 1),
            )
        };
        // The advisory lock is taken first (a materialized CTE). If the key's row names
        // another session whose heartbeat is still running, that session may have ended
        // without its holders knowing yet (terminated, killed by a pooler, a restart):
        // they may run until their local deadlines, which the heartbeat outlasts, so the
        // key is not taken (the client gives the lock back). Otherwise the row is bumped
        // and names this session, in the same statement and round trip. Without the lock,
        // the existing row tells whether the holder is really this name or a colliding
        // one.
        // A token may grow up to the end of the range of the newest epoch (see the `epoch`
        // module): beyond it, a session opened after a crash could hand out a token
        // already used.
        let acquire = format!(
            "WITH {settings}, {ASYNC_COMMIT_CTE}, lock AS MATERIALIZED (
                SELECT pg_try_advisory_lock($1) AS got
            ), prev AS MATERIALIZED (
                SELECT {LEFT_MS} AS left_ms
                FROM {table} AS p JOIN {sessions} AS s ON s.id = p.holder_session
                WHERE p.lock_key = $1 AND p.holder_session <> $6
                  AND s.alive_until > clock_timestamp()
            ), spent AS MATERIALIZED (
                SELECT p.token >= (e.epoch + 1) * 4294967296 - 1 AS spent
                FROM {table} AS p CROSS JOIN {epochs} AS e
                WHERE p.lock_key = $1 AND e.id = 1
            ), free AS MATERIALIZED (
                SELECT lock.got AND NOT EXISTS (SELECT 1 FROM prev)
                       AND NOT EXISTS (SELECT 1 FROM spent WHERE spent) AS ok
                FROM lock
            ), beat AS (
                INSERT INTO {sessions} (id, alive_until)
                SELECT $6, {alive} FROM free WHERE ok
                ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until
            ), bump AS (
                INSERT INTO {table} AS f
                    (lock_key, namespace, name, token, holder_session, holder_identity)
                SELECT $1, $2, $3, greatest($9::int8, 1), $6, $8 FROM free WHERE ok
                ON CONFLICT (lock_key) DO UPDATE
                    SET token = greatest(f.token + 1, $9::int8), acquired_at = now(),
                        holder_session = $6,
                        holder_identity = $8
                RETURNING f.token, f.namespace, f.name
            )
            SELECT lock.got AS got, settings.n AS settings_applied, bump.token AS token,
                   bump.namespace AS bumped_namespace, bump.name AS bumped_name,
                   holder.namespace AS holder_namespace, holder.name AS holder_name,
                   (SELECT left_ms FROM prev) AS guarded_ms,
                   coalesce((SELECT spent FROM spent), false) AS spent,
                   (SELECT count(*) FROM commit_mode) AS async_commit
            FROM lock CROSS JOIN settings
            LEFT JOIN bump ON true
            LEFT JOIN {table} AS holder ON holder.lock_key = $1 AND NOT lock.got",
            settings = settings(4),
            alive = alive_until(7),
        );
        let refresh = format!(
            "WITH {settings}, {ASYNC_COMMIT_CTE}, beat AS (
                INSERT INTO {sessions} (id, alive_until) VALUES ($3, {alive})
                ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until
            )
            SELECT settings.n, (SELECT count(*) FROM commit_mode) AS async_commit
            FROM settings",
            settings = settings(1),
            alive = alive_until(4),
        );
        // NOTIFY only if the lock was ours; delivered when the statement commits, after
        // the unlock and with the row no longer naming this session.
        let release = match waiters {
            Some(waiters) => {
                waiters::release_statement(table, waiters, &settings(3), ASYNC_COMMIT_CTE)
            }
            None => format!(
            "WITH {settings}, {ASYNC_COMMIT_CTE}, unlocked AS MATERIALIZED (
                SELECT pg_advisory_unlock($1) AS ok
            ), cleared AS (
                UPDATE {table} SET holder_session = NULL
                WHERE lock_key = $1 AND holder_session = $5
            )
            SELECT unlocked.ok AS unlocked, settings.n AS settings_applied,
                   (SELECT count(*) FROM (SELECT pg_notify($2, $1::text) WHERE unlocked.ok) AS sent),
                   (SELECT count(*) FROM commit_mode) AS async_commit
            FROM unlocked CROSS JOIN settings",
                settings = settings(3),
            ),
        };
        let unlock = format!(
            "WITH {ASYNC_COMMIT_CTE}, cleared AS (
                UPDATE {table} SET holder_session = NULL
                WHERE lock_key = $1 AND holder_session = $2
            )
            SELECT pg_advisory_unlock($1), (SELECT count(*) FROM commit_mode) AS async_commit"
        );
        let forget_holders = format!(
            "UPDATE {table} SET holder_session = NULL
             WHERE (lock_key, holder_session) IN (SELECT * FROM unnest($1::int8[], $2::int8[]))"
        );
        let expires_in = format!(
            "SELECT (SELECT {LEFT_MS} FROM {table} AS f
                     JOIN {sessions} AS s ON s.id = f.holder_session
                     WHERE f.lock_key = $1 AND s.alive_until > clock_timestamp()) AS left_ms"
        );
        let forget_sessions =
            format!("DELETE FROM {sessions} WHERE alive_until < clock_timestamp()");
        Self {
            acquire: Arc::from(acquire),
            refresh: Arc::from(refresh),
            release: Arc::from(release),
            unlock: Arc::from(unlock),
            forget_holders: Arc::from(forget_holders),
            expires_in: Arc::from(expires_in),
            forget_sessions: Arc::from(forget_sessions),
            waiters: waiters.map(|waiters| WaiterStatements::new(table, sessions, waiters)),
        }
    }
}

/// Creates the schema and the fencing and session tables if missing (adding
/// `holder_session`, `holder_identity` and `record` to a fencing table made by an earlier
/// version), then checks that the tables are ours and that this role may read and write
/// them. The epoch table is the `epoch` module's.
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
                acquired_at timestamptz NOT NULL DEFAULT now(),
                holder_session bigint,
                holder_identity text,
                record bytea
            )"
        );
        create(conn, sql, ctx("create the fencing table")).await?;
    }
    let sessions = settings.qualified_sessions.as_str();
    let sessions_exist: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(sessions)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| ctx("look up the session table").map(err))?;
    if !sessions_exist {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {sessions} (
                id bigint PRIMARY KEY,
                alive_until timestamptz NOT NULL
            )"
        );
        create(conn, sql, ctx("create the session table")).await?;
    }
    let check = TableCheck::run(conn, table, sessions)
        .await
        .map_err(|err| ctx("check the fencing table").map(err))?;
    let TableCheck {
        columns,
        has_holder,
        has_identity,
        has_record,
        writable,
        sessions_ok,
    } = check;
    if columns == 4 && !(has_holder && has_identity && has_record) {
        // Made by a version without session heartbeats, holder identities or records.
        // Replicas upgrading at once: `IF NOT EXISTS` skips a column another one added
        // (its `ALTER` waits for the other's to commit), and `create` accepts the
        // "already exists" errors of a closer race.
        let sql = format!(
            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS holder_session bigint,
                                 ADD COLUMN IF NOT EXISTS holder_identity text,
                                 ADD COLUMN IF NOT EXISTS record bytea"
        );
        create(
            conn,
            sql,
            ctx("add columns holder_session, holder_identity and record to the fencing table"),
        )
        .await?;
    }
    if columns != 4 {
        return Err(Error::misconfigured(
            NAME,
            format!(
                "table {table} exists but is not a fencing table (it needs columns lock_key, \
                 namespace, name, token); configure another table name"
            ),
        ));
    }
    if !writable {
        return Err(Error::permission_denied(
            NAME,
            "write the fencing table",
            Message(format!(
                "the role needs SELECT, INSERT and UPDATE on {table}"
            )),
        ));
    }
    if !sessions_ok {
        return Err(Error::permission_denied(
            NAME,
            "write the session table",
            Message(format!(
                "the role needs SELECT, INSERT, UPDATE and DELETE on {sessions}"
            )),
        ));
    }
    // Rows of sessions whose heartbeat ran out guard nothing any more.
    let forget = Statements::new(table, sessions, &settings.qualified_epochs, None).forget_sessions;
    sqlx::query(sqlx::AssertSqlSafe(forget))
        .execute(&mut *conn)
        .await
        .map_err(|err| ctx("forget ended sessions").map(err))?;
    Ok(())
}

/// What the fencing and session tables look like to this role.
struct TableCheck {
    /// How many of the columns `lock_key`, `namespace`, `name`, `token` the fencing table
    /// has: 4 if it is ours.
    columns: i64,
    /// Whether it has `holder_session` (tables made before session heartbeats do not).
    has_holder: bool,
    /// Whether it has `holder_identity` (tables made before operator queries do not).
    has_identity: bool,
    /// Whether it has `record` (tables made before records do not).
    has_record: bool,
    /// Whether the role may read and write the fencing table.
    writable: bool,
    /// Whether the role may read, write and delete in the session table.
    sessions_ok: bool,
}

impl TableCheck {
    async fn run(conn: &mut PgConnection, table: &str, sessions: &str) -> sqlx::Result<Self> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass
                       AND attname IN ('lock_key', 'namespace', 'name', 'token')
                       AND NOT attisdropped) AS columns,
                    EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass
                       AND attname = 'holder_session' AND NOT attisdropped) AS has_holder,
                    EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass
                       AND attname = 'holder_identity' AND NOT attisdropped) AS has_identity,
                    EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass
                       AND attname = 'record' AND NOT attisdropped) AS has_record,
                    has_table_privilege($1, 'SELECT, INSERT, UPDATE') AS writable,
                    has_table_privilege($2, 'SELECT, INSERT, UPDATE, DELETE') AS sessions_ok",
        )
        .bind(table)
        .bind(sessions)
        .fetch_one(conn)
        .await?;
        Ok(Self {
            columns: row.try_get("columns")?,
            has_holder: row.try_get("has_holder")?,
            has_identity: row.try_get("has_identity")?,
            has_record: row.try_get("has_record")?,
            writable: row.try_get("writable")?,
            sessions_ok: row.try_get("sessions_ok")?,
        })
    }
}
