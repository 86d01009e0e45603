//! `PostgresBackendBuilder`: the settings of a backend, validated into `Settings`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

use crate::PostgresBackend;
use crate::hosts::{Hosts, Target, UrlParts};
pub(crate) use crate::sourced::Sourced;
use crate::tls::{self, TlsSettings};

/// The schema of the fencing table unless configured.
pub(crate) const DEFAULT_SCHEMA: &str = "public";
/// The fencing table's name unless configured.
pub(crate) const DEFAULT_TABLE: &str = "routine_fencing";
/// The key namespace unless configured.
pub(crate) const DEFAULT_NAMESPACE: &str = "routine";
/// The request timeout unless configured.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The `LISTEN`/`NOTIFY` channel for release notifications; the payload is the lock key.
pub(crate) const CHANNEL: &str = "routine_lock_released";
/// The `LISTEN`/`NOTIFY` channel on which `force_release` announces the lock session it
/// ended; the payload is the session's id (`holder_session`).
pub(crate) const ENDED_CHANNEL: &str = "routine_lock_session_ended";
/// The start of a lock session's own `LISTEN`/`NOTIFY` channel, on which a release wakes
/// that session alone (see the `waiters` module): followed by the session's id
/// (`holder_session`) in hexadecimal, as PostgreSQL's `to_hex` writes it; the payload is
/// the lock key.
pub(crate) const WAKE_CHANNEL_PREFIX: &str = "routine_lock_wake_";
/// PostgreSQL truncates longer identifiers (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_LEN: usize = 63;
/// Appended to the fencing table's name to name the session table beside it.
pub(crate) const SESSIONS_SUFFIX: &str = "_sessions";
/// Appended to the fencing table's name to name the epoch table beside it (shorter than
/// [`SESSIONS_SUFFIX`], so the length check of that one covers it).
pub(crate) const EPOCH_SUFFIX: &str = "_epoch";
/// Appended to the fencing table's name to name the waiter table beside it (see the
/// `waiters` module; shorter than [`SESSIONS_SUFFIX`], so the length check of that one
/// covers it).
pub(crate) const WAITERS_SUFFIX: &str = "_waiters";
/// Long enough for any sensible prefix, short enough to keep log lines readable.
const MAX_NAMESPACE_LEN: usize = 200;

/// Builds a [`PostgresBackend`]: `PostgresBackend::builder().with_url(..).build().await?`.
///
/// Only the URL is required. Nothing is checked until [`build`](Self::build), which
/// validates every setting, connects, and creates the fencing table if needed.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_postgres::PostgresBackend;
///
/// # async fn run() -> leasehold_core::Result<()> {
/// let backend = PostgresBackend::builder()
///     .with_url("postgres://app:secret@db.internal/app")
///     .with_schema("ops")
///     .with_table("routine_fencing")
///     .with_namespace("billing")
///     .with_request_timeout(Duration::from_secs(3))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBackendBuilder {
    pub(crate) url: Option<Sourced<String>>,
    pub(crate) schema: Sourced<String>,
    pub(crate) table: Sourced<String>,
    pub(crate) namespace: Sourced<String>,
    pub(crate) request_timeout: Sourced<Duration>,
    pub(crate) tls: TlsSettings,
}

impl Default for PostgresBackendBuilder {
    fn default() -> Self {
        Self {
            url: None,
            schema: Sourced::new(DEFAULT_SCHEMA.to_owned(), "schema"),
            table: Sourced::new(DEFAULT_TABLE.to_owned(), "table"),
            namespace: Sourced::new(DEFAULT_NAMESPACE.to_owned(), "namespace"),
            request_timeout: Sourced::new(DEFAULT_REQUEST_TIMEOUT, "request_timeout"),
            tls: TlsSettings::default(),
        }
    }
}

impl PostgresBackendBuilder {
    /// A builder with the defaults: schema `public`, table `routine_fencing`, namespace
    /// `routine`, request timeout 5 s, and no URL.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server to use: `postgres://user:password@host:port/database?sslmode=...`
    /// (`postgresql://` works too; see `sqlx`'s `PgConnectOptions` for the parameters).
    /// Required.
    ///
    /// Several servers (a primary and its standbys) are written as libpq writes them:
    /// `postgres://user@h1:5432,h2:5433/db?target_session_attrs=read-write`, or
    /// `postgres://user@/db?host=h1,h2&port=5432,5433` (one port for all, or one per
    /// host), or a URL without a host and the lists in `PGHOST` and `PGPORT`. Every
    /// connection (lock session, operator connections) tries them in turn,
    /// starting with the one that last worked, and passes over any that is unreachable,
    /// a standby or read-only, so after a failover the backend finds the new primary. The
    /// backend writes on each connection, so it needs a writable primary whatever
    /// `target_session_attrs` says: `any` (the default), `read-write` and `primary` are
    /// accepted; `read-only`, `standby` and `prefer-standby` are an [`Error::Config`].
    /// See the [crate docs](crate#failover) for what a failover keeps.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(Sourced::new(url.into(), "url"));
        self
    }

    /// Like [`with_url`](Self::with_url), naming `setting` (the variable or setting the
    /// URL came from) in errors about it.
    pub fn with_url_from(mut self, url: impl Into<String>, setting: &'static str) -> Self {
        self.url = Some(Sourced::new(url.into(), setting));
        self
    }

    /// libpq's `sslmode`: `disable`, `allow`, `prefer` (the default), `require`,
    /// `verify-ca` or `verify-full`, overriding the URL's `sslmode` and `PGSSLMODE`. An
    /// unknown mode is an [`Error::Config`] naming `ssl_mode` from
    /// [`build`](Self::build).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leasehold_postgres::PostgresBackend;
    ///
    /// # async fn run() -> leasehold_core::Result<()> {
    /// let backend = PostgresBackend::builder()
    ///     .with_url("postgres://app@db.internal/app")
    ///     .with_ssl_mode("verify-full")
    ///     .with_ca_file("/etc/ssl/private-ca.pem")
    ///     .with_client_identity_files("/etc/ssl/app.pem", "/etc/ssl/app.key")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_ssl_mode(mut self, mode: impl Into<String>) -> Self {
        self.tls.ssl_mode = Some(mode.into());
        self
    }

    /// Trusts the certificate authorities in the PEM file at `path` (libpq's
    /// `sslrootcert`), overriding the URL's parameter and `PGSSLROOTCERT`. With
    /// `sslmode=verify-full` the server's certificate must also be issued for the host
    /// connected to; no other server name can be given. A missing or unreadable file is
    /// an [`Error::Config`] naming `ca_file` from [`build`](Self::build).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents the PEM client certificate in `cert` with the private key in `key`
    /// (libpq's `sslcert` and `sslkey`), overriding the URL's parameters and
    /// `PGSSLCERT`/`PGSSLKEY`. A missing or unreadable file is an [`Error::Config`]
    /// naming `cert_file` or `key_file` from [`build`](Self::build).
    pub fn with_client_identity_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls.cert_file = Some(cert.into());
        self.tls.key_file = Some(key.into());
        self
    }

    /// The schema of the fencing table (default `public`). Created if missing, which
    /// needs the `CREATE` privilege on the database.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Sourced::new(schema.into(), "schema");
        self
    }

    /// The name of the fencing table (default `routine_fencing`), at most 54 bytes. It is
    /// created if missing, which needs the `CREATE` privilege on the schema, and so is the
    /// session table beside it, named after it with `_sessions` appended (see the
    /// [crate docs](crate#lock-sessions-and-heartbeats)), and the epoch table, with `_epoch`
    /// appended (see the [crate docs](crate#durability)).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = Sourced::new(table.into(), "table");
        self
    }

    /// The key namespace (default `routine`): hashed into every advisory-lock key, so that
    /// applications sharing a database do not exclude each other by accident.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Sourced::new(namespace.into(), "namespace");
        self
    }

    /// The longest any single request may take (default 5 s); each request also waits at
    /// most half the lease TTL it is for.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Sourced::new(timeout, "request_timeout");
        self
    }

    /// Validates the settings, connects, and creates the fencing table if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting (or environment variable) at fault, a TLS
    /// certificate file that cannot be read included;
    /// [`Error::Unavailable`]/[`Error::Timeout`] if the server cannot be reached;
    /// [`Error::Auth`] for rejected credentials; [`Error::PermissionDenied`] if the fencing
    /// table cannot be created or written; [`Error::Misconfigured`] behind a pooler in
    /// transaction mode, on a standby, or on PostgreSQL older than 12.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes whatever connections it had opened.
    pub async fn build(self) -> Result<PostgresBackend> {
        PostgresBackend::connect(self.settings()?).await
    }

    /// Checks every setting without connecting.
    pub(crate) fn settings(self) -> Result<Settings> {
        let url = self.url.ok_or_else(|| {
            Error::config("url", "no PostgreSQL URL given (use with_url or from_env)")
        })?;
        let url = Sourced::new(self.tls.apply_to(&url.value)?, url.setting);
        tls::check_files(&url.value, url.setting, |name| std::env::var(name).ok())?;
        let hosts = Hosts::parse(&url, |name| std::env::var(name).ok())?;
        let schema = identifier(&self.schema)?;
        let table = identifier(&self.table)?;
        if table.len() + SESSIONS_SUFFIX.len() > MAX_IDENTIFIER_LEN {
            return Err(Error::config(
                self.table.setting,
                format!(
                    "the fencing table name {table:?} is too long: the session table beside it \
                     is named with {SESSIONS_SUFFIX:?} appended, and must fit in \
                     {MAX_IDENTIFIER_LEN} bytes"
                ),
            ));
        }
        let namespace = self.namespace.value;
        if namespace.is_empty()
            || namespace.len() > MAX_NAMESPACE_LEN
            || namespace.chars().any(char::is_control)
        {
            return Err(Error::config(
                self.namespace.setting,
                format!(
                    "the key namespace must be 1 to {MAX_NAMESPACE_LEN} bytes without control \
                     characters"
                ),
            ));
        }
        if self.request_timeout.value.is_zero() {
            return Err(Error::config(
                self.request_timeout.setting,
                "the request timeout must be greater than zero",
            ));
        }
        Ok(Settings {
            redacted_url: redact_url(&url.value),
            hosts,
            url_setting: url.setting,
            qualified_table: format!("{}.{}", quote(&schema), quote(&table)),
            qualified_sessions: format!(
                "{}.{}",
                quote(&schema),
                quote(&format!("{table}{SESSIONS_SUFFIX}"))
            ),
            qualified_epochs: format!(
                "{}.{}",
                quote(&schema),
                quote(&format!("{table}{EPOCH_SUFFIX}"))
            ),
            qualified_waiters: format!(
                "{}.{}",
                quote(&schema),
                quote(&format!("{table}{WAITERS_SUFFIX}"))
            ),
            schema,
            table,
            namespace,
            request_timeout: self.request_timeout.value,
        })
    }
}

impl fmt::Debug for PostgresBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackendBuilder")
            .field("url", &self.url.as_ref().map(|url| redact_url(&url.value)))
            .field("schema", &self.schema.value)
            .field("table", &self.table.value)
            .field("namespace", &self.namespace.value)
            .field("request_timeout", &self.request_timeout.value)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Validated settings of a running backend.
pub(crate) struct Settings {
    /// The servers of the URL, each with every connection setting.
    pub(crate) hosts: Hosts,
    pub(crate) url_setting: &'static str,
    pub(crate) schema: String,
    pub(crate) table: String,
    /// `"schema"."table"`, quoted for SQL.
    pub(crate) qualified_table: String,
    /// `"schema"."table_sessions"`, the session heartbeat table, quoted for SQL.
    pub(crate) qualified_sessions: String,
    /// `"schema"."table_epoch"`, the fencing epoch table (see the `epoch` module), quoted
    /// for SQL.
    pub(crate) qualified_epochs: String,
    /// `"schema"."table_waiters"`, the waiter table (see the `waiters` module), quoted
    /// for SQL.
    pub(crate) qualified_waiters: String,
    pub(crate) namespace: String,
    pub(crate) request_timeout: Duration,
    redacted_url: String,
}

impl Settings {
    /// Connection options for one of our connections, named `role` in
    /// `pg_stat_activity`: `routine lock session`, or `<application_name> (routine lock
    /// session)` when the URL sets an `application_name`.
    pub(crate) fn options_for(&self, target: &Target, role: &str) -> PgConnectOptions {
        let name = match self.hosts.first().get_application_name() {
            Some(app) => format!("{app} ({role})"),
            None => role.to_owned(),
        };
        target.options.clone().application_name(&name)
    }

    /// The request timeout for an operation on a lease of `ttl`: at most half the lease,
    /// so a hung server cannot keep a caller past its deadline, and the caller has time
    /// left to act on the error.
    pub(crate) fn timeout_for(&self, ttl: Duration) -> Duration {
        self.request_timeout.min(ttl / 2)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.redacted_url)
            .field("servers", &self.hosts.len())
            .field("target_session_attrs", &self.hosts.attrs())
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("namespace", &self.namespace)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

fn identifier(name: &Sourced<String>) -> Result<String> {
    let value = &name.value;
    if value.is_empty() || value.len() > MAX_IDENTIFIER_LEN || value.chars().any(char::is_control) {
        return Err(Error::config(
            name.setting,
            format!(
                "{value:?} is not a usable PostgreSQL identifier: it must be 1 to \
                 {MAX_IDENTIFIER_LEN} bytes without control characters"
            ),
        ));
    }
    Ok(value.clone())
}

/// Quotes an identifier for SQL: `a"b` becomes `"a""b"`.
pub(crate) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The URL with its password (in the user info or a `password` parameter) replaced.
pub(crate) fn redact_url(url: &str) -> String {
    // A host list (`h1:1,h2:2`) is no valid URL authority: redact with a placeholder
    // host, then put the list back.
    const PLACEHOLDER: &str = "hosts.invalid";
    let list = UrlParts::split(url).filter(|parts| parts.hosts.contains(','));
    let single = list.map_or_else(|| url.to_owned(), |parts| parts.with_hosts(PLACEHOLDER));
    let Ok(mut parsed) = url::Url::parse(&single) else {
        return "<not a valid URL; not shown>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let shown = parsed.to_string();
    match list {
        Some(parts) => shown.replacen(PLACEHOLDER, parts.hosts, 1),
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_setting(result: Result<Settings>) -> String {
        match result {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_setting() {
        let base = PostgresBackendBuilder::new().with_url("postgres://u@h/db");
        let cases = [
            (PostgresBackendBuilder::new(), "url"),
            (base.clone().with_url("mysql://h/db"), "url"),
            (base.clone().with_url("not a url"), "url"),
            (base.clone().with_url("postgres://h:99999/db"), "url"),
            (base.clone().with_schema(""), "schema"),
            (base.clone().with_table("x".repeat(64)), "table"),
            // The session table's name would be longer than 63 bytes.
            (base.clone().with_table("x".repeat(55)), "table"),
            (base.clone().with_namespace("a\0b"), "namespace"),
            (
                base.clone().with_request_timeout(Duration::ZERO),
                "request_timeout",
            ),
        ];
        for (builder, setting) in cases {
            assert_eq!(config_setting(builder.settings()), setting);
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        for url in [
            "postgres://app:s3cret@db/app",
            "postgres://app@db/app?password=s3cret&sslmode=disable",
            "postgres://app:s3cret@h1:5432,h2:5433/app?target_session_attrs=read-write",
        ] {
            let builder = PostgresBackendBuilder::new().with_url(url);
            let shown = format!("{builder:?} {:?}", builder.clone().settings().unwrap());
            assert!(!shown.contains("s3cret"), "password leaked: {shown}");
            assert!(shown.contains("***"), "redaction must be visible: {shown}");
        }
        let shown = redact_url("postgres://app:s3cret@h1:5432,h2:5433/app");
        assert_eq!(shown, "postgres://app:***@h1:5432,h2:5433/app");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
        let settings = PostgresBackendBuilder::new()
            .with_url("postgres://h/db")
            .with_schema("Ops")
            .settings()
            .unwrap();
        assert_eq!(settings.qualified_table, "\"Ops\".\"routine_fencing\"");
        assert_eq!(
            settings.qualified_sessions,
            "\"Ops\".\"routine_fencing_sessions\""
        );
    }
}
