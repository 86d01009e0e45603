//! Mapping `sqlx` errors and timeouts into `leasehold_core::Error`.

use std::future::Future;
use std::time::Duration;

use leasehold_core::Error;
use sqlx::postgres::{PgDatabaseError, PgSeverity};

/// The backend's name in errors and logs.
pub(crate) use crate::NAME;

/// A plain message kept as the `source` of an [`Error`] when there is no client error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Message(pub(crate) String);

/// Runs `fut`, turning a deadline overrun into [`Error::Timeout`].
pub(crate) async fn with_timeout<T>(
    operation: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(Error::timeout(NAME, operation, timeout)))
}

/// Where an error happened, to name the right setting in `Config` errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// What was being done (`connect`, `acquire`, ...).
    pub(crate) operation: &'static str,
    /// The setting the connection URL came from (`ROUTINE_POSTGRES_URL`, `url`, ...).
    pub(crate) url_setting: &'static str,
}

impl Context {
    /// Converts a `sqlx` error.
    ///
    /// - `28P01`/`28000` (bad password, no `pg_hba.conf` entry) are [`Error::Auth`].
    /// - `3D000` (the database does not exist) is [`Error::Config`] naming the URL setting:
    ///   it does not go away by retrying, someone has to fix the URL or create the database.
    /// - `42501` (insufficient privilege) is [`Error::PermissionDenied`].
    /// - `26000`/`42P05` (prepared statement missing or duplicated) and `42P01`/`42703`
    ///   (undefined table or column) are [`Error::Misconfigured`]: a pooler in
    ///   transaction mode, or a fencing table dropped or altered behind our back.
    /// - `25006` (read-only transaction) is [`Error::Unavailable`]: the server is a
    ///   standby or was demoted in a failover, and the address may lead to the new
    ///   primary on the next connection, so it is retried.
    /// - TLS failures are named first (see [`crate::tls::classify`]): an untrusted server
    ///   certificate is [`Error::Unavailable`], a required client certificate or TLS
    ///   refused by `pg_hba.conf` [`Error::Auth`], a server without TLS when `sslmode`
    ///   requires it [`Error::Misconfigured`].
    /// - Everything else (refused or broken connections, server shutdown, unexpected SQL
    ///   errors) is [`Error::Unavailable`] with the `sqlx` error as source.
    pub(crate) fn map(self, err: sqlx::Error) -> Error {
        let operation = self.operation;
        let err = match crate::tls::classify(err, operation) {
            Ok(tls) => return tls,
            Err(err) => err,
        };
        let code = match &err {
            sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
            sqlx::Error::Configuration(_) => {
                return Error::config_with_source(
                    self.url_setting,
                    "the connection settings are not valid",
                    err,
                );
            }
            _ => None,
        };
        match code.as_deref() {
            Some("28P01" | "28000") => Error::auth(NAME, err),
            Some("3D000") => Error::config_with_source(
                self.url_setting,
                "the database named in the URL does not exist on the server",
                err,
            ),
            Some("42501") => Error::permission_denied(NAME, operation, err),
            Some("26000" | "42P05") => Error::misconfigured(
                NAME,
                format!(
                    "this connection's prepared statements are missing or mixed up with \
                     another's ({err}): the URL points at a connection pooler in transaction \
                     or statement mode, which would leak session-level advisory locks across \
                     clients; connect directly or through a pooler in session mode"
                ),
            ),
            Some("42P01" | "42703") => Error::misconfigured(
                NAME,
                format!(
                    "the fencing table is missing or has other columns ({err}); it is created \
                     when a backend is built, and its rows must never be deleted"
                ),
            ),
            Some(READ_ONLY) => Error::unavailable(
                NAME,
                operation,
                Message(format!(
                    "the server is read-only ({err}): a standby, or a primary demoted in a \
                     failover; retried on a new connection, which may reach the new primary"
                )),
            ),
            _ => Error::unavailable(NAME, operation, err),
        }
    }
}

/// SQLSTATE `query_canceled`: `pg_cancel_backend` or `statement_timeout` cancelled one
/// statement; the session, and every lock on it, lives on.
const QUERY_CANCELED: &str = "57014";

/// SQLSTATE `read_only_sql_transaction`: the session is on a standby or a demoted primary.
const READ_ONLY: &str = "25006";

/// Whether `err` means the connection (and so the session and its advisory locks) is gone
/// or in an unknown state, rather than one statement having failed on a healthy session.
pub(crate) fn breaks_session(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let fatal = db
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic));
            // Class 08: connection exception; 57: operator intervention (shutdown,
            // pg_terminate_backend, idle_session_timeout), except a cancelled statement;
            // 25006: a read-only session, which cannot refresh (the heartbeat is a
            // write) and which only a new connection may turn into a primary's.
            let code = db.code();
            fatal
                || code.as_deref().is_some_and(|code| {
                    code.starts_with("08")
                        || (code.starts_with("57") && code != QUERY_CANCELED)
                        || code == READ_ONLY
                })
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

/// Whether `err` proves the server ended the session (so it released every lock): it
/// said so (`FATAL`, class 57: terminated, idle timeout, shutdown) or closed the
/// connection. A timeout or a garbled answer proves nothing.
pub(crate) fn session_ended(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let class_57 = db
                .code()
                .is_some_and(|code| code.starts_with("57") && code != QUERY_CANCELED);
            let fatal = db
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic));
            class_57 || fatal
        }
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Context = Context {
        operation: "connect",
        url_setting: "ROUTINE_POSTGRES_URL",
    };

    #[test]
    fn io_errors_are_unavailable_and_break_the_session() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(breaks_session(&sqlx::Error::Io(io)));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = CTX.map(sqlx::Error::Io(io));
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    operation: "connect",
                    ..
                }
            ),
            "connection refused must be Unavailable, got {err:?}"
        );
    }

    #[test]
    fn configuration_errors_name_the_url_setting() {
        let err = CTX.map(sqlx::Error::Configuration("bad port".into()));
        assert!(
            matches!(&err, Error::Config { setting, .. } if setting == "ROUTINE_POSTGRES_URL"),
            "got {err:?}"
        );
    }

    #[tokio::test]
    async fn overrunning_the_deadline_is_a_timeout() {
        let err = with_timeout("refresh", Duration::from_millis(1), async {
            std::future::pending::<Result<(), Error>>().await
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    operation: "refresh",
                    ..
                }
            ),
            "got {err:?}"
        );
    }
}
