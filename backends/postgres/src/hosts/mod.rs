//! The servers a backend may connect to, and choosing among them: a URL may name several
//! (libpq's multi-host form), of which one at a time is the primary.
//!
//! The lock session is opened through [`Hosts::connect`]: it tries the
//! servers in turn, starting with the one that last gave a usable connection, and passes
//! over any that is unreachable, a standby (in recovery) or read-only, since the backend
//! writes on each of its connections. The operator pool connects to that preferred
//! server, and after a transient failure looks for the primary the same way (see the
//! `operator` module), so that its next call, and every next connection, goes there. The
//! time allowed is shared out: each server gets the time left divided by the number of
//! servers still to try, so a server that never answers (a dead host) cannot use up the
//! whole timeout and leave the others untried. After a failover the next connection
//! finds the promoted server, wherever it is in the list.

mod parse;
mod url_parts;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leasehold_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;
use tokio::time::Instant;

use crate::error::{Message, NAME, with_timeout};
use crate::sourced::Sourced;
pub(crate) use parse::SessionAttrs;
pub(crate) use url_parts::UrlParts;

/// One server and the options to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port` (or the socket directory), to name the server in errors and logs.
    pub(crate) label: String,
    pub(crate) options: PgConnectOptions,
}

/// The servers of a URL, in the order given.
#[derive(Debug)]
pub(crate) struct Hosts {
    targets: Vec<Target>,
    attrs: SessionAttrs,
    /// The index of the server that last gave a usable connection: tried first.
    preferred: AtomicUsize,
}

impl Hosts {
    /// The servers of `url`, reading `PGHOST`/`PGPORT` through `env` when it names none.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting at fault (see the `parse` module).
    pub(crate) fn parse(
        url: &Sourced<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let parsed = parse::parse(url, env)?;
        let targets = if parsed.hosts.is_empty() {
            vec![target(parsed.base)]
        } else {
            parsed
                .hosts
                .iter()
                .map(|entry| target(parse::apply(parsed.base.clone(), entry)))
                .collect()
        };
        Ok(Self {
            targets,
            attrs: parsed.attrs,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The first server's options: every setting but the host is the same for all.
    pub(crate) fn first(&self) -> &PgConnectOptions {
        &self.targets[0].options
    }

    /// How many servers the URL names.
    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }

    /// The server tried first, and the one the operator pool uses.
    pub(crate) fn preferred(&self) -> (usize, &Target) {
        let index = self.preferred.load(Ordering::Relaxed) % self.targets.len();
        (index, &self.targets[index])
    }

    /// What `target_session_attrs` asked for (every accepted value leads to a writable
    /// primary; see [`SessionAttrs`]).
    pub(crate) fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// Runs `attempt` on each server in turn until one succeeds, within `timeout` for
    /// all (see the module docs), and returns its result and the server's index.
    /// `attempt` gets the time it may take, and rejects a standby or read-only server
    /// with an error.
    ///
    /// With one server, its error is returned as it is. With several, when none
    /// succeeds, the error names each server and why it was passed over: an
    /// [`Error::Unavailable`] when each failure is transient, else the kind of the first
    /// failure that is not (rejected credentials, a missing database...).
    pub(crate) async fn connect<'a, T, F, Fut>(
        &'a self,
        operation: &'static str,
        timeout: Duration,
        mut attempt: F,
    ) -> Result<(T, usize)>
    where
        F: FnMut(&'a Target, Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let count = self.targets.len();
        if count == 1 {
            let value =
                with_timeout(operation, timeout, attempt(&self.targets[0], timeout)).await?;
            return Ok((value, 0));
        }
        let started = Instant::now();
        let (first, _) = self.preferred();
        let mut failures = Vec::with_capacity(count);
        for tried in 0..count {
            let index = (first + tried) % count;
            let target = &self.targets[index];
            let left = timeout.saturating_sub(started.elapsed());
            // count - tried >= 1, and at most the number of servers.
            let share = left / u32::try_from(count - tried).unwrap_or(u32::MAX);
            match with_timeout(operation, share, attempt(target, share)).await {
                Ok(value) => {
                    if index != first {
                        let server = target.label.as_str();
                        tracing::info!(server, "connected to another PostgreSQL server of the URL");
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((value, index));
                }
                Err(err) => {
                    let (server, error) = (target.label.as_str(), err.chain());
                    tracing::debug!(server, error, "passing over a PostgreSQL server");
                    failures.push((target.label.clone(), err));
                }
            }
        }
        Err(no_usable_server(operation, failures))
    }
}

fn target(options: PgConnectOptions) -> Target {
    let label = match options.get_socket() {
        Some(dir) => format!("{}:{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    Target { label, options }
}

/// Why each server of the URL was passed over.
#[derive(Debug)]
pub(crate) struct NoUsableServer(Vec<(String, Error)>);

impl fmt::Display for NoUsableServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no usable server among the {} of the URL", self.0.len())?;
        for (label, err) in &self.0 {
            write!(f, "; {label}: {}", err.chain())?;
        }
        Ok(())
    }
}

impl std::error::Error for NoUsableServer {}

fn no_usable_server(operation: &'static str, failures: Vec<(String, Error)>) -> Error {
    let lasting = failures.iter().position(|(_, err)| !err.is_transient());
    let Some(lasting) = lasting else {
        return Error::unavailable(NAME, operation, NoUsableServer(failures));
    };
    match &failures[lasting].1 {
        Error::Auth { .. } => Error::auth(NAME, NoUsableServer(failures)),
        Error::Config { setting, .. } => {
            let setting = setting.clone();
            Error::config_with_source(
                setting,
                "no server of the URL is usable",
                NoUsableServer(failures),
            )
        }
        Error::PermissionDenied { operation, .. } => {
            let operation = *operation;
            Error::permission_denied(NAME, operation, NoUsableServer(failures))
        }
        Error::Misconfigured { .. } => {
            Error::misconfigured(NAME, NoUsableServer(failures).to_string())
        }
        _ => Error::unavailable(NAME, operation, NoUsableServer(failures)),
    }
}

/// The error for a server that is in recovery or read-only, which `attempt`s return.
pub(crate) fn not_writable(operation: &'static str, in_recovery: bool) -> Error {
    let why = if in_recovery {
        "the server is a standby in recovery; retried until the address leads to a primary"
    } else {
        "the server's sessions are read-only (default_transaction_read_only or \
         transaction_read_only is on); the backend needs a writable primary"
    };
    Error::unavailable(NAME, operation, Message(why.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(errors: Vec<Error>) -> Vec<(String, Error)> {
        errors
            .into_iter()
            .enumerate()
            .map(|(n, err)| (format!("h{n}:5432"), err))
            .collect()
    }

    #[test]
    fn no_usable_server_names_each_server_and_keeps_the_lasting_kind() {
        let down = || Error::unavailable(NAME, "connect", Message("connection refused".into()));
        let err = no_usable_server(
            "connect",
            failures(vec![down(), not_writable("connect", true)]),
        );
        assert!(err.is_transient(), "only transient failures: {err:?}");
        let text = err.chain();
        for part in ["h0:5432", "connection refused", "h1:5432", "standby"] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        let err = no_usable_server(
            "connect",
            failures(vec![
                down(),
                Error::auth(NAME, Message("bad password".into())),
            ]),
        );
        assert!(matches!(err, Error::Auth { .. }), "got {err:?}");
        assert!(err.chain().contains("h0:5432"), "{}", err.chain());
        let err = no_usable_server(
            "connect",
            failures(vec![Error::config("url", "no such database"), down()]),
        );
        assert!(
            matches!(&err, Error::Config { setting, .. } if setting == "url"),
            "got {err:?}"
        );
    }

    #[test]
    fn servers_are_labelled_and_tried_from_the_last_that_worked() {
        let url = Sourced::new("postgres://u@a:1,b:2/db".to_owned(), "url");
        let hosts = Hosts::parse(&url, |_| None).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts.preferred().1.label, "a:1");
        hosts.preferred.store(1, Ordering::Relaxed);
        assert_eq!(hosts.preferred().1.label, "b:2");
    }
}
