//! Operator queries: `list` and `force_release` (`describe` runs on the lock session, see
//! the `session` module, so a waiting process that names its key's holder keeps one
//! connection).
//!
//! They run on a small pool of connections of their own, opened on first use and closed
//! when idle, never on the lock session: a scan of every held key or a wait for a
//! terminated process must not delay the refreshes queued behind it. Records (the
//! `record` module) are read and written on the same pool.
//!
//! With several servers in the URL (the `hosts` module), the pool reaches the server the
//! backend's last connection chose, and is replaced when that changes. A transient
//! failure makes the call look for the primary (a connection of its own, closed after),
//! so the call after it reaches the new primary of a failover even if no lease of this
//! backend has reconnected yet; the failed call itself is not retried.
//!
//! A key is *held* when an acquire would now meet contention: its advisory lock is held
//! (`pg_locks`, in this database), or its fencing row names a session whose heartbeat
//! still runs (a session that ended before its holders learned it, see the `fencing`
//! module). A released key has its claim cleared and its lock given back, so it is not
//! held; its row keeps the last holder's identity and token.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use leasehold_core::{Error, LeaseInfo, LockKey, Result};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, Row};

use crate::config::{CHANNEL, ENDED_CHANNEL, Settings};
use crate::error::{Context, Message, NAME, with_timeout};
use crate::held::{LOCKS, held_rows, info};
use crate::hosts::{Target, not_writable};

/// `application_name` of operator connections.
pub(crate) const OPERATOR_APPLICATION_NAME: &str = "routine operator";

/// Operator connections idle this long are closed.
const IDLE: Duration = Duration::from_secs(60);

/// A lazy pool of operator connections to `target`.
fn new_pool(settings: &Settings, target: &Target) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(settings.request_timeout)
        .idle_timeout(Some(IDLE))
        .max_lifetime(None)
        .connect_lazy_with(settings.options_for(target, OPERATOR_APPLICATION_NAME))
}

/// Whether `target` is a writable primary, on a connection of its own, closed after.
async fn probe(settings: &Settings, target: &Target, timeout: Duration) -> Result<()> {
    let ctx = Context {
        operation: "find the primary",
        url_setting: settings.url_setting,
    };
    with_timeout(ctx.operation, timeout, async {
        let mut conn = settings
            .options_for(target, OPERATOR_APPLICATION_NAME)
            .connect()
            .await
            .map_err(|err| ctx.map(err))?;
        let (in_recovery, read_only): (bool, bool) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')::bool",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|err| ctx.map(err))?;
        let _ = conn.close().await;
        if in_recovery || read_only {
            return Err(not_writable(ctx.operation, in_recovery));
        }
        Ok(())
    })
    .await
}

/// Operator queries on their own connection pool.
#[derive(Debug)]
pub(crate) struct Operator {
    /// The pool for the server the URL's host selection last chose, and that server's
    /// index: a pool reaches one server, so a failover to another means a new pool.
    pool: Mutex<(usize, PgPool)>,
    settings: Arc<Settings>,
    /// `$1` namespace, `$2` prefix: the held rows under the prefix, in name order.
    list: String,
    /// `$1` lock key, `$2` namespace, `$3` name: the key's claim (`holder_session`),
    /// whether that session's heartbeat runs (`guarded`), the pids holding its lock, and
    /// whether the server can wait for a terminated process (`can_wait`, 14 and newer).
    probe: String,
    /// `$1` lock key, `$2` the claim to clear (session id), `$3`/`$4` the release and
    /// ended-session channels: clears the claim, wakes the key's waiters, and names the
    /// ended session if the claim was still its.
    clear: String,
}

impl Operator {
    /// An operator pool for `settings`; no connection is opened yet.
    pub(crate) fn new(settings: Arc<Settings>) -> Self {
        let (server, target) = settings.hosts.preferred();
        let pool = Mutex::new((server, new_pool(&settings, target)));
        let table = settings.qualified_table.as_str();
        let sessions = settings.qualified_sessions.as_str();
        let list = held_rows(&settings, "left(f.name, length($2)) = $2");
        let probe = format!(
            "SELECT f.holder_session, s.id IS NOT NULL AS guarded,
                    ARRAY(SELECT pid FROM ({LOCKS}) AS l WHERE l.lock_key = $1) AS pids,
                    current_setting('server_version_num')::int4 >= 140000 AS can_wait
             FROM {table} AS f
             LEFT JOIN {sessions} AS s
                 ON s.id = f.holder_session AND s.alive_until > clock_timestamp()
             WHERE f.lock_key = $1 AND f.namespace = $2 AND f.name = $3"
        );
        let clear = format!(
            "WITH cleared AS (
                UPDATE {table} SET holder_session = NULL
                WHERE lock_key = $1 AND holder_session = $2
                RETURNING lock_key
            )
            SELECT pg_notify($3, $1::text) AS released,
                   (SELECT count(pg_notify($4, $2::text)) FROM cleared) AS ended"
        );
        Self {
            pool,
            settings,
            list,
            probe,
            clear,
        }
    }

    /// The operator connections, shared with the record statements (the `record`
    /// module), which must not wait behind the lock session either: on the server that
    /// the last connection of this backend chose (see the `hosts` module).
    pub(crate) fn pool(&self) -> PgPool {
        let (server, target) = self.settings.hosts.preferred();
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.0 != server {
            *pool = (server, new_pool(&self.settings, target));
        }
        pool.1.clone()
    }

    /// Passes `result` on; when it is a transient failure and the URL names several
    /// servers, first looks for the primary (see the `hosts` module), so that the next
    /// operator call, and this backend's next connections, try it first: the server
    /// may have gone, or been demoted, in a failover.
    pub(crate) async fn after<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result
            && err.is_transient()
            && self.settings.hosts.len() > 1
        {
            let settings = &self.settings;
            let found = settings
                .hosts
                .connect(
                    "find the primary",
                    settings.request_timeout,
                    |target, share| probe(settings, target, share),
                )
                .await;
            if let Err(err) = found {
                tracing::debug!(error = %err.chain(), "no PostgreSQL primary found");
            }
        }
        result
    }

    fn ctx(&self, operation: &'static str) -> Context {
        Context {
            operation,
            url_setting: self.settings.url_setting,
        }
    }

    /// Every held key of this namespace whose name starts with `prefix`, in name order.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let ctx = self.ctx("list");
        let rows = with_timeout("list", self.settings.request_timeout, async {
            sqlx::query(AssertSqlSafe(self.list.as_str()))
                .bind(&self.settings.namespace)
                .bind(prefix)
                .fetch_all(&self.pool())
                .await
                .map_err(|err| ctx.map(err))
        })
        .await?;
        let mut held = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name").map_err(|err| ctx.map(err))?;
            // Every stored name came from a `LockKey`; a row edited by hand is skipped.
            let Ok(key) = LockKey::new(&name) else {
                tracing::warn!(name, "skipping a fencing row whose name is not a valid key");
                continue;
            };
            held.push(info(key, &row).map_err(|err| ctx.map(err))?);
        }
        Ok(held)
    }

    /// Frees `key` (lock key `hash`): terminates the session holding its advisory lock
    /// and clears its claim. Returns whether it was held. See
    /// [`PostgresBackend::force_release`](crate::PostgresBackend) for what it costs.
    pub(crate) async fn force_release(&self, key: &LockKey, hash: i64) -> Result<bool> {
        let timeout = self.settings.request_timeout;
        let ctx = self.ctx("force_release");
        let mut conn = with_timeout("force_release", timeout, async {
            self.pool().acquire().await.map_err(|err| ctx.map(err))
        })
        .await?;
        let probe = with_timeout("force_release", timeout, async {
            sqlx::query(AssertSqlSafe(self.probe.as_str()))
                .bind(hash)
                .bind(&self.settings.namespace)
                .bind(key.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|err| ctx.map(err))
        })
        .await?;
        // No row: this name was never acquired, and a lock on its key is not ours.
        let Some(probe) = probe else {
            return Ok(false);
        };
        let Probe {
            claim,
            guarded,
            pids,
            can_wait,
        } = Probe::read(&probe).map_err(|err| ctx.map(err))?;
        if pids.is_empty() && !guarded {
            return Ok(false);
        }
        // The server waits for the process to exit (14 and newer), so the lock is free
        // when the waiters are woken; half the request timeout leaves time to clear the
        // claim afterwards.
        let wait_ms = i64::try_from((timeout / 2).as_millis()).unwrap_or(i64::MAX);
        for pid in pids {
            let terminate = if can_wait {
                sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1, $2)")
                    .bind(pid)
                    .bind(wait_ms)
            } else {
                sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1)").bind(pid)
            };
            let terminated = with_timeout("force_release", timeout, async {
                terminate
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|err| terminate_error(ctx, pid, err))
            })
            .await?;
            if !terminated {
                tracing::warn!(
                    %key,
                    pid,
                    "force_release: the lock session did not end in time (or was gone already)"
                );
            }
        }
        with_timeout("force_release", timeout, async {
            sqlx::query(AssertSqlSafe(self.clear.as_str()))
                .bind(hash)
                .bind(claim)
                .bind(CHANNEL)
                .bind(ENDED_CHANNEL)
                .execute(&mut *conn)
                .await
                .map_err(|err| ctx.map(err))
        })
        .await?;
        Ok(true)
    }
}

/// What `force_release` reads about a key before it ends anything.
struct Probe {
    /// The session that claims the key in its fencing row, if any.
    claim: Option<i64>,
    /// Whether that session's heartbeat still runs (its holders may believe they hold).
    guarded: bool,
    /// The server processes holding the key's advisory lock.
    pids: Vec<i32>,
    /// Whether `pg_terminate_backend` can wait for the process to exit (14 and newer).
    can_wait: bool,
}

impl Probe {
    fn read(row: &PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            claim: row.try_get("holder_session")?,
            guarded: row.try_get("guarded")?,
            pids: row.try_get("pids")?,
            can_wait: row.try_get("can_wait")?,
        })
    }
}

/// The error of `pg_terminate_backend(pid)`: missing privilege names what is needed.
fn terminate_error(ctx: Context, pid: i32, err: sqlx::Error) -> Error {
    let denied = matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"));
    if !denied {
        return ctx.map(err);
    }
    Error::permission_denied(
        NAME,
        "force_release",
        Message(format!(
            "terminating the lock session holding the key (server process {pid}) needs \
             membership in pg_signal_backend or in the role that session belongs to \
             (a superuser's session only a superuser may end): {err}"
        )),
    )
}
