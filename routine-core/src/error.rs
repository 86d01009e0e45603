//! `Error`: the one error type of the runner and every backend.

use std::time::Duration;

use crate::LockKey;

/// A boxed error from a backend's client library, kept as the [`std::error::Error::source`]
/// of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when taking, keeping or giving back a lease.
///
/// Contention (someone else holds the key) is not an error: see
/// [`LockBackend::try_acquire`](crate::LockBackend::try_acquire).
///
/// Each backend keeps its client library's error as the `source`, never in the message,
/// so the message stays short and `{:#}`/error reporters show the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lease is no longer ours: it expired, was deleted, or another client took the
    /// key. The routine holding it must stop.
    #[error("lease on `{key}` was lost")]
    Lost {
        /// The key whose lease was lost.
        key: LockKey,
    },

    /// A routine or lock name is not acceptable.
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The name as given (shortened if very long).
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A lease TTL is not acceptable (zero, or below what the backend can honour).
    #[error("invalid lease TTL {ttl:?}: {reason}")]
    InvalidTtl {
        /// The TTL as given.
        ttl: Duration,
        /// What is wrong with it.
        reason: String,
    },

    /// Configuration is malformed or incomplete: a bad URL, environment variable or
    /// builder setting. `setting` names it (`REDIS_DB`, `ROUTINE_BACKEND_URL`, ...).
    #[error("invalid configuration {setting}: {reason}")]
    Config {
        /// The setting or environment variable at fault.
        setting: String,
        /// What is wrong with it.
        reason: String,
        /// The parse error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend could not be reached or failed while serving a request. Transient:
    /// the runner retries with backoff.
    #[error("{backend} backend unavailable during {operation}")]
    Unavailable {
        /// The backend's name (`redis`, `etcd`, `postgres`, `memory`).
        backend: &'static str,
        /// What was being done (`acquire`, `refresh`, `release`, `connect`, ...).
        operation: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },

    /// The backend did not answer in time. Transient.
    #[error("{backend} backend did not answer {operation} within {timeout:?}")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// What was being done.
        operation: &'static str,
        /// How long we waited.
        timeout: Duration,
    },

    /// The server rejected our credentials.
    #[error("{backend} backend rejected the credentials")]
    Auth {
        /// The backend's name.
        backend: &'static str,
        /// The server's answer.
        #[source]
        source: BoxError,
    },

    /// The server accepted our credentials but refused an operation (missing grants,
    /// read-only replica, ...).
    #[error("{backend} backend refused {operation}: permission denied")]
    PermissionDenied {
        /// The backend's name.
        backend: &'static str,
        /// What was refused.
        operation: &'static str,
        /// The server's answer.
        #[source]
        source: BoxError,
    },

    /// The backend is set up in a way that cannot give the guarantees this library makes
    /// (for example PostgreSQL behind a pooler in transaction mode).
    #[error("{backend} backend is misconfigured: {reason}")]
    Misconfigured {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The backend cannot do this operation (an operator query such as
    /// [`LockBackend::describe`](crate::LockBackend::describe) on a backend that does not
    /// implement it).
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked.
        operation: &'static str,
    },

    /// The runner is shutting down and starts no new routine.
    #[error("the runner is shutting down")]
    ShuttingDown,
}

impl Error {
    /// This error followed by each of its sources, `: `-separated: what a log line or an
    /// event should carry, since the message alone often only names the operation
    /// ("redis backend unavailable during acquire") and the cause is in the sources.
    ///
    /// ```
    /// let error = leasehold_core::Error::unavailable("redis", "acquire", "connection refused");
    /// assert_eq!(
    ///     error.chain(),
    ///     format!("{error}: connection refused"),
    /// );
    /// ```
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// Whether trying again later may succeed without anyone changing anything:
    /// [`Error::Unavailable`] and [`Error::Timeout`].
    ///
    /// The runner retries every error with backoff (a password may be fixed while the
    /// process runs), but logs non-transient ones at error level.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// Whether waiting cannot fix this: a configuration error ([`Error::Config`],
    /// [`Error::InvalidName`], [`Error::InvalidTtl`], [`Error::Misconfigured`]).
    ///
    /// The runner ends a routine with such an error instead of retrying it. Everything
    /// else (outages, timeouts, even rejected credentials, which an operator may fix while
    /// the process runs) is retried with backoff. Not the opposite of
    /// [`is_transient`](Self::is_transient): credentials and permissions are neither.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Config { .. }
                | Error::InvalidName { .. }
                | Error::InvalidTtl { .. }
                | Error::Misconfigured { .. }
        )
    }

    /// Whether this says the lease was lost ([`Error::Lost`]).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }

    /// Builds [`Error::Config`] without a source.
    pub fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// Builds [`Error::Config`] with the error that made the setting unusable.
    pub fn config_with_source(
        setting: impl Into<String>,
        reason: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    /// Builds [`Error::InvalidName`] for `key`, a name valid in itself that a backend
    /// refuses (it would collide with another, or cannot be stored), for `reason`.
    pub fn invalid_name(key: &LockKey, reason: impl Into<String>) -> Self {
        Error::InvalidName {
            name: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Builds [`Error::Lost`] for `key`.
    pub fn lost(key: &LockKey) -> Self {
        Error::Lost { key: key.clone() }
    }

    /// Builds [`Error::Timeout`]: `backend` did not finish `operation` within `timeout`.
    pub fn timeout(backend: &'static str, operation: &'static str, timeout: Duration) -> Self {
        Error::Timeout {
            backend,
            operation,
            timeout,
        }
    }

    /// Builds [`Error::Misconfigured`].
    pub fn misconfigured(backend: &'static str, reason: impl Into<String>) -> Self {
        Error::Misconfigured {
            backend,
            reason: reason.into(),
        }
    }

    /// Builds [`Error::Auth`]: `backend` rejected the credentials, as `source` says.
    pub fn auth(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Auth {
            backend,
            source: source.into(),
        }
    }

    /// Builds [`Error::PermissionDenied`]: `backend` refused `operation`, as `source` says.
    pub fn permission_denied(
        backend: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::PermissionDenied {
            backend,
            operation,
            source: source.into(),
        }
    }

    /// Builds [`Error::Unsupported`]: `backend` cannot do `operation`.
    pub fn unsupported(backend: &'static str, operation: &'static str) -> Self {
        Error::Unsupported { backend, operation }
    }

    /// Builds [`Error::Unavailable`].
    pub fn unavailable(
        backend: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Unavailable {
            backend,
            operation,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn only_configuration_errors_are_permanent() {
        let key = LockKey::new("job").unwrap();
        assert!(Error::config("REDIS_DB", "not a number").is_permanent());
        assert!(Error::misconfigured("redis", "eviction policy").is_permanent());
        assert!(
            Error::InvalidTtl {
                ttl: Duration::ZERO,
                reason: "zero".into()
            }
            .is_permanent()
        );
        assert!(!Error::lost(&key).is_permanent());
        assert!(!Error::timeout("redis", "acquire", Duration::from_secs(1)).is_permanent());
        assert!(!Error::unavailable("redis", "acquire", "refused").is_permanent());
        assert!(
            !Error::auth("redis", "WRONGPASS").is_permanent(),
            "rejected credentials may be fixed while the process runs"
        );
    }

    #[test]
    fn constructors_build_their_variants() {
        let key = LockKey::new("job").unwrap();
        assert!(matches!(Error::lost(&key), Error::Lost { key: k } if k == key));
        assert!(matches!(
            Error::invalid_name(&key, "collides"),
            Error::InvalidName { name, reason } if name == "job" && reason == "collides"
        ));
        let err = Error::config_with_source("REDIS_DB", "not a number", "invalid digit");
        assert_eq!(
            err.chain(),
            "invalid configuration REDIS_DB: not a number: invalid digit"
        );
        assert!(matches!(
            Error::timeout("etcd", "refresh", Duration::from_secs(2)),
            Error::Timeout {
                backend: "etcd",
                operation: "refresh",
                ..
            }
        ));
        let err = Error::auth("redis", "WRONGPASS");
        assert!(matches!(
            err,
            Error::Auth {
                backend: "redis",
                ..
            }
        ));
        assert_eq!(
            err.chain(),
            "redis backend rejected the credentials: WRONGPASS"
        );
        let err = Error::permission_denied("postgres", "acquire", "42501");
        assert!(matches!(
            err,
            Error::PermissionDenied {
                backend: "postgres",
                operation: "acquire",
                ..
            }
        ));
        assert_eq!(
            err.chain(),
            "postgres backend refused acquire: permission denied: 42501"
        );
        assert!(matches!(
            Error::misconfigured("redis", "eviction"),
            Error::Misconfigured { backend: "redis", reason } if reason == "eviction"
        ));
    }

    #[test]
    fn transient_errors_are_unavailable_and_timeout_only() {
        let unavailable = Error::unavailable("redis", "acquire", "connection refused");
        let timeout = Error::Timeout {
            backend: "redis",
            operation: "refresh",
            timeout: Duration::from_secs(1),
        };
        assert!(unavailable.is_transient(), "Unavailable must be transient");
        assert!(timeout.is_transient(), "Timeout must be transient");
        let lost = Error::Lost {
            key: LockKey::new("k").unwrap(),
        };
        assert!(!lost.is_transient(), "Lost must not be transient");
        assert!(lost.is_lost());
        assert!(!Error::config("REDIS_DB", "not a number").is_transient());
    }

    #[test]
    fn source_is_kept_out_of_the_message() {
        let err = Error::unavailable("redis", "acquire", "connection refused");
        assert_eq!(err.to_string(), "redis backend unavailable during acquire");
        assert_eq!(err.source().unwrap().to_string(), "connection refused");
    }
}
