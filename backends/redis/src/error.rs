//! How the `redis` crate's errors map into [`routine_core::Error`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use routine_core::Error;

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "redis";

/// Maps a client error of `operation`; `timeout` is the bound the request ran under.
///
/// Connection refused, reset or closed and other I/O failures are
/// [`Error::Unavailable`]; the client's own timeouts are [`Error::Timeout`]; `NOAUTH` and
/// `WRONGPASS` are [`Error::Auth`]; `NOPERM` (an ACL refusal) is
/// [`Error::PermissionDenied`]; `READONLY` (a replica) is [`Error::Misconfigured`].
pub(crate) fn from_redis(err: RedisError, operation: &'static str, timeout: Duration) -> Error {
    if err.is_timeout() {
        return Error::Timeout {
            backend: NAME,
            operation,
            timeout,
        };
    }
    // The client reports a refused `SELECT` on an unauthenticated connection as a
    // plain response error whose detail carries the server's `NOAUTH` message.
    let auth = matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
        || err
            .detail()
            .is_some_and(|d| d.starts_with("Authentication required"));
    match err.kind() {
        ErrorKind::AuthenticationFailed => Error::Auth {
            backend: NAME,
            source: err.into(),
        },
        _ if auth => Error::Auth {
            backend: NAME,
            source: err.into(),
        },
        ErrorKind::Server(ServerErrorKind::NoPerm) => Error::PermissionDenied {
            backend: NAME,
            operation,
            source: err.into(),
        },
        ErrorKind::Server(ServerErrorKind::ReadOnly) => Error::Misconfigured {
            backend: NAME,
            reason: "the server is a read-only replica: point the backend at the primary"
                .to_owned(),
        },
        ErrorKind::InvalidClientConfig => Error::Config {
            setting: "connection".to_owned(),
            reason: "rejected by the redis client".to_owned(),
            source: Some(err.into()),
        },
        _ if err
            .detail()
            .is_some_and(|d| d.contains("DB index is out of range")) =>
        {
            Error::Config {
                setting: "db".to_owned(),
                reason: "the server has no database with that number".to_owned(),
                source: Some(err.into()),
            }
        }
        _ => Error::unavailable(NAME, operation, err),
    }
}

/// The outer per-request deadline ran out.
pub(crate) fn timed_out(operation: &'static str, timeout: Duration) -> Error {
    Error::Timeout {
        backend: NAME,
        operation,
        timeout,
    }
}

/// A script answered something it never returns: the key holds foreign data of another
/// shape, or a proxy mangled the reply.
pub(crate) fn unexpected_reply(operation: &'static str, reply: impl fmt::Debug) -> Error {
    Error::unavailable(
        NAME,
        operation,
        format!("unexpected reply from the {operation} script: {reply:?}"),
    )
}

/// An error kept once and reported to many waiters: the pub/sub listener's failure is
/// the `source` of every `released()` call that it ended.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(pub(crate) Arc<Error>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// One error for each of `count` leases that a failed batched request was about: the
/// error itself for the first, and copies for the others (a timeout stays a timeout;
/// anything else becomes `Unavailable` with the error, shared, as its source).
pub(crate) fn for_each(error: Error, operation: &'static str, count: usize) -> Vec<Error> {
    if let Error::Timeout { timeout, .. } = error {
        return (0..count).map(|_| timed_out(operation, timeout)).collect();
    }
    let mut errors = Vec::with_capacity(count);
    if count > 1 {
        let shared = SharedError(Arc::new(error));
        errors.extend((1..count).map(|_| Error::unavailable(NAME, operation, shared.clone())));
        errors.push(Error::unavailable(NAME, operation, shared));
    } else if count == 1 {
        errors.push(error);
    }
    errors
}
