//! How the `redis` crate's errors map into [`leasehold_core::Error`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

mod tls;

/// The backend's name in errors and logs.
pub(crate) use crate::NAME;

/// The typed error of a TLS handshake failure of `operation` (as
/// [`from_redis`] gives it), or `None` if `err` is not one.
pub(crate) fn from_tls(err: &RedisError, operation: &'static str) -> Option<Error> {
    tls::classify(err, operation)
}

/// Maps a client error of `operation`; `timeout` is the bound the request ran under.
///
/// Connection refused, reset or closed and other I/O failures are
/// [`Error::Unavailable`]; the client's own timeouts are [`Error::Timeout`]; `NOAUTH` and
/// `WRONGPASS` are [`Error::Auth`]; `NOPERM` (an ACL refusal) is
/// [`Error::PermissionDenied`]; `READONLY` (the address now serves a replica, as after a
/// failover) is [`Error::Unavailable`] with a [`Replica`] source: the runner retries it
/// with its error backoff, and the request replaces the connection (see
/// [`needs_new_connection`]).
pub(crate) fn from_redis(err: RedisError, operation: &'static str, timeout: Duration) -> Error {
    if err.is_timeout() {
        return Error::timeout(NAME, operation, timeout);
    }
    if let Some(tls) = tls::classify(&err, operation) {
        return tls;
    }
    if is_auth(&err) {
        return Error::auth(NAME, err);
    }
    if is_read_only(&err) {
        return Error::unavailable(NAME, operation, Replica(err));
    }
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            Error::permission_denied(NAME, operation, err)
        }
        ErrorKind::InvalidClientConfig => {
            Error::config_with_source("connection", "rejected by the redis client", err)
        }
        _ if err
            .detail()
            .is_some_and(|d| d.contains("DB index is out of range")) =>
        {
            Error::config_with_source("db", "the server has no database with that number", err)
        }
        _ => Error::unavailable(NAME, operation, err),
    }
}

/// Whether `err` means the connection will keep failing until it is replaced: the
/// credentials were refused (the `redis` crate keeps a failed reconnection's error and
/// returns it to every later request), or the server is a replica now (a connection
/// stays on the node it reached, which a failover behind a fixed address demoted).
pub(crate) fn needs_new_connection(err: &RedisError) -> bool {
    is_auth(err) || is_read_only(err)
}

fn is_auth(err: &RedisError) -> bool {
    // The client reports a refused `SELECT` on an unauthenticated connection as a
    // plain response error whose detail carries the server's `NOAUTH` message.
    err.kind() == ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
        || err
            .detail()
            .is_some_and(|d| d.starts_with("Authentication required"))
}

fn is_read_only(err: &RedisError) -> bool {
    err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) || err.code() == Some("READONLY")
}

/// The source of the [`Error::Unavailable`] a `READONLY` reply maps to: says what it
/// means, with the server's reply as its own source.
#[derive(Debug)]
pub(crate) struct Replica(RedisError);

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the server is a read-only replica (a failover may have moved the primary away \
             from the configured address); later requests reconnect and try again",
        )
    }
}

impl std::error::Error for Replica {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
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

/// What went wrong, said in words, with the error that showed it as its source.
#[derive(Debug)]
pub(crate) struct Context(pub(crate) String, pub(crate) Box<Error>);

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.1)
    }
}

/// One error for each of `count` leases that a failed batched request was about: the
/// error itself for the first, and copies for the others (a timeout stays a timeout;
/// anything else becomes `Unavailable` with the error, shared, as its source).
pub(crate) fn for_each(error: Error, operation: &'static str, count: usize) -> Vec<Error> {
    if let Error::Timeout { timeout, .. } = error {
        return (0..count)
            .map(|_| Error::timeout(NAME, operation, timeout))
            .collect();
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
