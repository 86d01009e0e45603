//! Opening a lock session: connect, check the server, detect a transaction pooler, and
//! `LISTEN` for releases on the same connection (see the `notify` module): on the shared
//! release channel and on the session's own wake channel (see the `waiters` module).
//!
//! Session-level advisory locks belong to a server backend process. Behind a pooler in
//! transaction or statement mode (PgBouncer, Odyssey, RDS Proxy in that mode...) each
//! statement may run on another server backend, so a lock taken by one statement would be
//! held by a backend other clients then use: locks would leak across clients. It is
//! detected with a probe lock:
//!
//! 1. statement one reports `pg_backend_pid()` and takes a session-level probe lock (in the
//!    two-`int4` key space, which never meets the `bigint` keys of routines);
//! 2. statement two, outside any transaction, reports `pg_backend_pid()` and whether this
//!    backend holds the probe lock in `pg_locks`.
//!
//! A different pid or a missing probe lock proves a pooler, and so does a second,
//! short-lived connection opened between the two statements that reports the same
//! `pg_backend_pid()` (a pooler with one idle server backend hands it that one). What
//! cannot be detected: a pooler with several server backends that hands both statements
//! the same one and the second connection another. Poolers that do not support named prepared statements in transaction mode
//! (PgBouncer before 1.21, as the tests show with 1.18) fail earlier: their prepared
//! statement errors (`26000`, `42P05`) are reported as [`Error::Misconfigured`] too.

use std::time::Duration;

use leasehold_core::{Error, Result};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Row};

use crate::config::{CHANNEL, ENDED_CHANNEL, Settings};
use crate::error::{Context, NAME, with_timeout};
use crate::hosts::{Target, not_writable};
use crate::ttl::ServerTtl;
use crate::waiters::wake_channel;

/// `application_name` of lock sessions, to find them in `pg_stat_activity` (prefixed by the
/// URL's `application_name`, if any).
pub(crate) const SESSION_APPLICATION_NAME: &str = "routine lock session";
/// The first key of the probe lock (`int4`, `int4` form): "rout".
const PROBE_CLASS: i32 = 0x726f_7574;
/// `server_version_num` of the oldest supported server: 12 added `tcp_user_timeout`.
const OLDEST_SUPPORTED: i32 = 120_000;

/// An open lock session.
#[derive(Debug)]
pub(crate) struct Live {
    /// The session's connection, which also `LISTEN`s for releases (a pool of one, as
    /// `PgListener` wants). It never reconnects on its own: the session task drops it
    /// when it reports the connection lost.
    pub(crate) conn: PgListener,
    /// The pool under `conn`, closed with the session.
    pub(crate) pool: PgPool,
    /// The server backend's process id.
    pub(crate) pid: i32,
    /// The session's id in the fencing table's `holder_session` and the session table:
    /// random, so no other session, of any process or server, has it.
    pub(crate) id: i64,
    pub(crate) ttl: ServerTtl,
    /// The longest lease TTL whose settings (see the `ttl` module) this session already
    /// has, set by an earlier statement that succeeded; `None` when unknown. Statements
    /// send the settings only when they change: setting them costs the server more than
    /// the rest of a refresh.
    pub(crate) applied: Option<Duration>,
    /// The session's fencing epoch shifted into a token's high half: the least token an
    /// acquire on this session hands out (see the `epoch` module). Zero until
    /// [`EpochStatements::begin`](crate::epoch::EpochStatements::begin) has run.
    pub(crate) epoch_floor: i64,
    /// The longest lease TTL the epoch table is known to cover.
    pub(crate) stored_ttl: Duration,
    /// Until when no key may be granted: the server restarted within the longest TTL
    /// before this session opened (see the `epoch` module).
    pub(crate) guard_until: Option<tokio::time::Instant>,
}

impl Live {
    /// What is left of the restart guard (see the `epoch` module), if it still runs.
    pub(crate) fn guard_left(&self) -> Option<Duration> {
        let left = self
            .guard_until?
            .checked_duration_since(tokio::time::Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// The settings to send with a statement for `longest`: none if the session has them.
    pub(crate) fn settings_for(&self, longest: Duration) -> (Vec<&'static str>, Vec<String>) {
        if self.applied == Some(longest) {
            (Vec::new(), Vec::new())
        } else {
            self.ttl.settings(longest)
        }
    }
}

/// Connects a lock session and checks it (see the module docs), within `timeout`, on
/// the first usable server of the URL (see the `hosts` module).
///
/// # Errors
///
/// [`Error::Misconfigured`] behind a transaction pooler or before PostgreSQL 12;
/// [`Error::Unavailable`] on a standby or read-only server; otherwise as mapped by
/// [`Context::map`]. With several servers, an error naming each one (see
/// [`Hosts::connect`](crate::hosts::Hosts::connect)).
pub(crate) async fn open(settings: &Settings, timeout: Duration) -> Result<Live> {
    let (live, _server) = settings
        .hosts
        .connect("connect", timeout, |target, share| {
            open_on(settings, target, share)
        })
        .await?;
    Ok(live)
}

/// [`open`] on one server.
async fn open_on(settings: &Settings, target: &Target, timeout: Duration) -> Result<Live> {
    let ctx = Context {
        operation: "connect",
        url_setting: settings.url_setting,
    };
    with_timeout("connect", timeout, async {
        // A pool of one, as PgListener wants; a fresh one per session, so that a broken
        // connection is never handed back.
        let options = settings.options_for(target, SESSION_APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            // Half the time: the pool retries a refused connection until then.
            .acquire_timeout(timeout / 2)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone());
        let mut conn = match PgListener::connect_with(&pool).await {
            Ok(conn) => conn,
            // The pool names no cause: one direct attempt does (refused, a rejected
            // password...), or runs into the connect's own timeout.
            Err(sqlx::Error::PoolTimedOut) => {
                let err = match options.connect().await {
                    Ok(_) => sqlx::Error::PoolTimedOut,
                    Err(err) => err,
                };
                return Err(ctx.map(err));
            }
            Err(err) => return Err(ctx.map(err)),
        };
        conn.eager_reconnect(false);
        conn.ignore_pool_close_event(true);
        // statement_timeout bounds our statements on the server too, should the client
        // side give up (a request that timed out abandons the session anyway).
        let statement_timeout = settings.request_timeout.as_millis().max(1).to_string();
        // The server's or role's idle_session_timeout must not end a session that holds
        // nothing yet; the lease statements set their own. The lease statements are
        // planned once per session (a generic plan) rather than on each of their first
        // five runs: a new process's first handover would otherwise pay for planning.
        let row = sqlx::query(
            "SELECT pg_backend_pid() AS pid,
                    current_setting('server_version_num')::int4 AS version,
                    pg_is_in_recovery() AS in_recovery,
                    current_setting('transaction_read_only')::bool AS read_only,
                    pg_try_advisory_lock($1, pg_backend_pid()) AS probed,
                    set_config('statement_timeout', $2, false),
                    set_config('plan_cache_mode', 'force_generic_plan', false),
                    (SELECT set_config('idle_session_timeout', '0', false)
                     WHERE current_setting('server_version_num')::int4 >= 140000)",
        )
        .bind(PROBE_CLASS)
        .bind(statement_timeout)
        .fetch_one(&mut conn)
        .await
        .map_err(|err| ctx.map(err))?;
        let pid: i32 = row.try_get("pid").map_err(|err| ctx.map(err))?;
        let version: i32 = row.try_get("version").map_err(|err| ctx.map(err))?;
        let in_recovery: bool = row.try_get("in_recovery").map_err(|err| ctx.map(err))?;
        let read_only: bool = row.try_get("read_only").map_err(|err| ctx.map(err))?;
        let probed: bool = row.try_get("probed").map_err(|err| ctx.map(err))?;
        if version < OLDEST_SUPPORTED {
            return Err(Error::misconfigured(
                NAME,
                format!(
                    "PostgreSQL {version} (server_version_num) is not supported: 12 or newer is \
                 needed (tcp_user_timeout; 14 or newer for idle_session_timeout)"
                ),
            ));
        }
        if in_recovery || read_only {
            // A standby now may be promoted, or the address may lead to the new primary
            // after a failover: retried, not a configuration error.
            return Err(not_writable("connect", in_recovery));
        }
        // A second, short-lived connection while this one is idle: on a server it is a
        // backend of its own, while a pooler in transaction mode with one idle server
        // backend hands it the same one (the probe lock below cannot tell when the
        // pooler keeps giving this connection that backend too).
        let mut other = options.connect().await.map_err(|err| ctx.map(err))?;
        let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut other)
            .await
            .map_err(|err| ctx.map(err))?;
        let _ = other.close().await;
        if other_pid == pid {
            return Err(pooler_detected(format!(
                "two connections were served by the same backend {pid}"
            )));
        }
        let row = sqlx::query(
            "SELECT pg_backend_pid() AS pid, EXISTS (
                SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                  AND classid::int8 = $1 AND objid::int8 = $2 AND pid = pg_backend_pid()
            ) AS still_held",
        )
        .bind(i64::from(PROBE_CLASS))
        .bind(i64::from(pid))
        .fetch_one(&mut conn)
        .await
        .map_err(|err| ctx.map(err))?;
        let pid_again: i32 = row.try_get("pid").map_err(|err| ctx.map(err))?;
        let still_held: bool = row.try_get("still_held").map_err(|err| ctx.map(err))?;
        if !probed || pid_again != pid || !still_held {
            return Err(pooler_detected(format!(
                "a session-level advisory lock taken by backend {pid} was not held by the next \
                 statement's backend {pid_again}"
            )));
        }
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(PROBE_CLASS)
            .bind(pid)
            .execute(&mut conn)
            .await
            .map_err(|err| ctx.map(err))?;
        // Checked to be a session of its own: now it hears releases too, those that wake
        // every waiter and those that wake this session alone (see the `waiters` module).
        let id: i64 = rand::random();
        let wake = wake_channel(id);
        conn.listen_all([CHANNEL, ENDED_CHANNEL, wake.as_str()])
            .await
            .map_err(|err| ctx.map(err))?;
        let ttl = ServerTtl::for_version(version);
        if !ttl.enforces_idle_timeout() {
            tracing::warn!(
                version,
                "PostgreSQL before 14 has no idle_session_timeout: a paused lock holder keeps \
                 its locks until its connection is closed"
            );
        }
        Ok(Live {
            conn,
            pool,
            pid,
            id,
            ttl,
            applied: None,
            epoch_floor: 0,
            stored_ttl: Duration::ZERO,
            guard_until: None,
        })
    })
    .await
}

/// The error for a detected transaction pooler.
pub(crate) fn pooler_detected(evidence: String) -> Error {
    Error::misconfigured(
        NAME,
        format!(
            "{evidence}: the URL points at a connection pooler in transaction or statement \
             mode, which would leak session-level advisory locks across clients; connect to \
             PostgreSQL directly or through a pooler in session mode"
        ),
    )
}
