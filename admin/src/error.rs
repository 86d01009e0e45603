//! The tool's errors and exit codes.

use std::process::ExitCode;

/// Exit code: the command did what was asked (for `show`, the lease is held *or* free).
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: an error (bad setting, unreachable server, refused or unsupported query).
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit code: bad command line, or `release` without `--force`. Also clap's code for
/// usage errors.
pub(crate) const EXIT_USAGE: u8 = 2;

/// Everything that makes a command fail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// The backend could not be connected to (configuration errors come as
    /// [`AdminError::Backend`], since they name their setting already).
    #[error("cannot connect to {target}")]
    Connect {
        /// What was being connected to, without credentials.
        target: String,
        /// Why not.
        #[source]
        source: leasehold::Error,
    },

    /// The backend failed or refused an operation, or a setting or name is invalid.
    #[error(transparent)]
    Backend(#[from] leasehold::Error),

    /// `release` without `--force`: the explanation of what forcing would do.
    #[error("{0}")]
    Refused(String),

    /// Writing the output failed (a closed pipe, a full disk).
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),

    /// Serialising the JSON output failed.
    #[error("cannot write the JSON output")]
    Json(#[source] serde_json::Error),
}

impl AdminError {
    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            AdminError::Refused(_) => EXIT_USAGE,
            _ => EXIT_ERROR,
        })
    }

    /// This error followed by each of its sources, `: `-separated: the message alone
    /// often only names the operation ("redis backend unavailable during connect") and
    /// the cause is in the sources. A cause whose text the previous one already ends with
    /// is left out (client libraries often wrap an I/O error and repeat its message).
    pub(crate) fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut previous = text.clone();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let message = cause.to_string();
            if !message.is_empty() && !previous.ends_with(&message) {
                text.push_str(": ");
                text.push_str(&message);
            }
            previous = message;
            source = cause.source();
        }
        text
    }
}

impl From<std::io::Error> for AdminError {
    fn from(error: std::io::Error) -> Self {
        AdminError::Output(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_carries_every_cause_once() {
        let error = AdminError::Connect {
            target: "redis://127.0.0.1:1 (from --url)".into(),
            source: leasehold::Error::unavailable("redis", "connect", "connection refused"),
        };
        assert_eq!(
            error.chain(),
            "cannot connect to redis://127.0.0.1:1 (from --url): \
             redis backend unavailable during connect: connection refused"
        );
        let error = AdminError::Backend(leasehold::Error::unsupported("etcd", "list"));
        assert_eq!(error.chain(), "the etcd backend does not support list");
        let io = std::io::Error::other("Connection refused (os error 111)");
        let error = AdminError::Backend(leasehold::Error::unavailable(
            "redis",
            "connect",
            Repeat(io),
        ));
        assert_eq!(
            error.chain(),
            "redis backend unavailable during connect: Connection refused (os error 111)",
            "a cause repeated by its wrapper must appear once"
        );
    }

    /// A client error that repeats its source's message, as the redis crate's does.
    #[derive(Debug)]
    struct Repeat(std::io::Error);

    impl std::fmt::Display for Repeat {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for Repeat {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
