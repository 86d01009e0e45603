//! `RedisBackendBuilder`: settings from code, a URL or the Go original's environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::{Error, Result};

use crate::RedisBackend;
use crate::config::Durability;
use crate::config::cluster::{self, ClusterSettings};
use crate::config::sentinel::{self, SentinelSettings};
use crate::config::{self, Password, Settings};
use crate::tls::TlsFile;

/// Configures and connects a [`RedisBackend`].
///
/// Setters apply in call order, so a later one overrides what an earlier URL or
/// environment variable set. That holds for the kind of server too: the last of
/// [`with_url`](Self::with_url), [`with_address`](Self::with_address) (one server),
/// [`with_sentinels`](Self::with_sentinels), [`with_master_name`](Self::with_master_name),
/// [`with_sentinel_credentials`](Self::with_sentinel_credentials) (Sentinel) and
/// [`with_cluster_nodes`](Self::with_cluster_nodes) (Redis Cluster) decides it, and
/// drops what the others set for another kind. Malformed values are reported by [`build`](Self::build) as
/// [`Error::Config`] naming the setting (`url`, `address`, `namespace`, ...) or the
/// environment variable.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_redis::RedisBackend;
///
/// # async fn run() -> leasehold_core::Result<()> {
/// let backend = RedisBackend::builder()
///     .with_url("redis://:secret@redis.internal:6379/2")
///     .with_namespace("billing")
///     .with_request_timeout(Duration::from_millis(500))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
pub struct RedisBackendBuilder {
    settings: Settings,
    /// The first malformed value given to a setter, reported by `build`.
    error: Option<Error>,
}

impl RedisBackendBuilder {
    /// Defaults: `redis://127.0.0.1:6379/0`, namespace `routine` (keys
    /// `routine:lock:<name>`), connect timeout 5 s, request timeout 3 s.
    pub fn new() -> Self {
        Self {
            settings: Settings::default(),
            error: None,
        }
    }

    /// Reads the Go original's environment variables; unset or empty ones keep their
    /// defaults:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `REDIS_HOSTS` | comma-separated `host:port` list; **only the first is used** (a lease lives on one server; a warning is logged if there are more); not used with Sentinel or Cluster variables (a warning says so if it is set) | `redis:6379` |
    /// | `REDIS_PASSWORD` | password | none |
    /// | `REDIS_DB` | database number | `0` |
    /// | `REDIS_DIAL_TIMEOUT` | connect timeout, Go syntax (`5s`, `500ms`) | `5s` |
    /// | `REDIS_READ_TIMEOUT` | request timeout | `3s` |
    /// | `REDIS_WRITE_TIMEOUT` | request timeout too: the redis crate sends a request and awaits the reply under one timeout, the larger of the two | `3s` |
    /// | `ROUTINE_REDIS_TLS` | `true` to connect with TLS (not in the Go original) | `false` |
    /// | `ROUTINE_REDIS_CA_FILE` | PEM CA file to trust instead of the system's roots; turns TLS on | none |
    /// | `ROUTINE_REDIS_CERT_FILE` | PEM client certificate; turns TLS on; needs `ROUTINE_REDIS_KEY_FILE` | none |
    /// | `ROUTINE_REDIS_KEY_FILE` | PEM private key of the client certificate | none |
    /// | `ROUTINE_REDIS_SENTINELS` | comma-separated sentinel `host:port` list (port 26379 by default): follow the master they name instead of `REDIS_HOSTS`; needs `ROUTINE_REDIS_SENTINEL_MASTER` | none |
    /// | `ROUTINE_REDIS_SENTINEL_MASTER` | the master name the sentinels monitor | none |
    /// | `ROUTINE_REDIS_SENTINEL_USERNAME` | ACL user for the sentinels (the master takes `REDIS_PASSWORD`) | none |
    /// | `ROUTINE_REDIS_SENTINEL_PASSWORD` | password for the sentinels | none |
    /// | `ROUTINE_REDIS_CLUSTER_NODES` | comma-separated `host:port` seed nodes of a Redis Cluster: cluster mode (hash-tagged keys, not Go-compatible; see [`with_cluster_nodes`](Self::with_cluster_nodes)) instead of `REDIS_HOSTS`; not with Sentinel | none |
    /// | `ROUTINE_REDIS_DURABLE_REPLICAS` | durable mode: replicas that must confirm an acquire or refresh with `WAIT` (see [`Durability`]); `0` is off | `0` |
    /// | `ROUTINE_REDIS_DURABLE_TIMEOUT` | the `WAIT` timeout of durable mode | `500ms` |
    ///
    /// The lease TTL (`ROUTINE_REDIS_LOCK_TTL`) is a runner setting, read by `leasehold`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable, if one is malformed (a zero or unparsable
    /// duration, a negative database, a bad port, a boolean that is not one). The TLS
    /// files are read by [`build`](Self::build), which names the variable of a file it
    /// cannot read.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading the variables through `lookup` instead
    /// of the process environment (for tests, or configuration kept elsewhere).
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env).
    ///
    /// # Examples
    ///
    /// ```
    /// use leasehold_redis::RedisBackendBuilder;
    ///
    /// let err = RedisBackendBuilder::from_env_with(|name| {
    ///     (name == "REDIS_DB").then(|| "two".to_owned())
    /// })
    /// .unwrap_err();
    /// assert!(err.to_string().contains("REDIS_DB"));
    /// ```
    pub fn from_env_with(lookup: impl FnMut(&str) -> Option<String>) -> Result<Self> {
        let mut builder = Self::new();
        config::apply_env(&mut builder.settings, lookup)?;
        Ok(builder)
    }

    /// Takes address, TLS, credentials and database from a URL:
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS (rustls, with
    /// the system's root certificates unless a CA file is given). Percent-encode special
    /// characters in the user, the password and the parameters. The port defaults to
    /// 6379, the database to 0.
    ///
    /// A `rediss://` URL takes the TLS files as parameters, read by
    /// [`build`](Self::build) as with [`with_ca_file`](Self::with_ca_file) and
    /// [`with_client_identity_files`](Self::with_client_identity_files):
    /// `rediss://redis.internal:6380/0?ca_file=/etc/ssl/ca.pem&cert_file=/etc/ssl/app.pem&key_file=/etc/ssl/app.key`.
    /// Any other parameter, or a file with `redis://`, is [`Error::Config`].
    ///
    /// `redis+sentinel://[user[:password]@]host1[:port],host2[:port],.../<master name>[/db]`
    /// (or `redis-sentinel://`), the form the Redis ecosystem writes (redis-rs, Lettuce,
    /// go-redis's failover options) follows the master that the listed sentinels name
    /// (port 26379 by default): see [`with_sentinels`](Self::with_sentinels). The user
    /// and password are the master's; the parameters `sentinel_username` and
    /// `sentinel_password` log in to the sentinels. `rediss+sentinel://` reaches the
    /// sentinels and the master over TLS, with the `rediss://` file parameters. Any URL
    /// takes `durable_replicas=<n>`
    /// and `durable_timeout=<duration>` (see [`with_durability`](Self::with_durability)):
    /// `redis+sentinel://:secret@s1:26379,s2:26379,s3:26379/main/0?durable_replicas=2&durable_timeout=500ms`.
    ///
    /// `redis+cluster://[user[:password]@]host1[:port],host2[:port],...[/]` (or
    /// `rediss+cluster://` for TLS, with the same TLS file parameters) turns on Redis
    /// Cluster mode with these seed nodes (port 6379 by default): see
    /// [`with_cluster_nodes`](Self::with_cluster_nodes). It takes no database (Redis
    /// Cluster has database 0 only) and the durability parameters:
    /// `redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000`.
    pub fn with_url(mut self, url: impl AsRef<str>) -> Self {
        if let Err(err) = config::apply_url(&mut self.settings, url.as_ref(), "url") {
            self.record(err);
        }
        self
    }

    /// The server as `host:port`, `host` (port 6379) or `[ipv6]:port`: one server,
    /// turning off Sentinel or Cluster mode set before (by a URL, a variable,
    /// [`with_sentinels`](Self::with_sentinels) or
    /// [`with_cluster_nodes`](Self::with_cluster_nodes)); the last of these calls wins.
    pub fn with_address(mut self, address: impl AsRef<str>) -> Self {
        match config::parse_host_port(address.as_ref().trim()) {
            Ok((host, port)) => {
                self.settings.host = host;
                self.settings.port = port;
                self.settings.sentinel = None;
                self.settings.cluster = None;
            }
            Err(reason) => self.record(Error::config("address", reason)),
        }
        self
    }

    /// Follows the master that these sentinels (`host:port`, port 26379 by default) name
    /// for [`with_master_name`](Self::with_master_name), instead of one fixed address:
    /// the backend asks the sentinels at connect, and again whenever a request fails in
    /// a way a failover explains (the connection refused, reset or timed out, or
    /// `READONLY` from a demoted master); commands, scripts (loaded again on the new
    /// master), release notifications and batched refreshes all move to the new master.
    /// It turns off Cluster mode and replaces a fixed address set before, as do
    /// [`with_master_name`](Self::with_master_name) and
    /// [`with_sentinel_credentials`](Self::with_sentinel_credentials); a later
    /// [`with_address`](Self::with_address) or [`with_cluster_nodes`](Self::with_cluster_nodes)
    /// turns Sentinel off again. With TLS on ([`with_tls`](Self::with_tls) or a TLS
    /// file), the sentinels and the master are reached over TLS with the same files.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use leasehold_redis::{Durability, RedisBackend};
    ///
    /// # async fn run() -> leasehold_core::Result<()> {
    /// let backend = RedisBackend::builder()
    ///     .with_sentinels(["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"])
    ///     .with_master_name("main")
    ///     .with_password("secret")
    ///     .with_durability(Durability::Replicas { count: 2, timeout: Duration::from_millis(500) })
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_sentinels<I>(mut self, sentinels: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let list: Vec<String> = sentinels
            .into_iter()
            .map(|s| s.as_ref().trim().to_owned())
            .collect();
        match sentinel::parse_sentinels(&list.join(",")) {
            Ok(parsed) => self.sentinel().sentinels = parsed,
            Err(reason) => self.record(Error::config("sentinels", reason)),
        }
        self
    }

    /// Redis Cluster mode: these seed nodes (`host:port`, port 6379 by default) instead of
    /// one server. The client reads the slot layout from the first node that answers and
    /// sends each request to the master of its key's slot, following `MOVED`/`ASK`
    /// redirections and failovers by itself.
    ///
    /// Keys carry the name as a hash tag (`<namespace>:lock:{<name>}`, see the
    /// [crate documentation](crate#redis-cluster)): **not compatible with the Go
    /// original**, whose keys have no hash tag. Same as a `redis+cluster://` URL or
    /// `ROUTINE_REDIS_CLUSTER_NODES`. TLS ([`with_tls`](Self::with_tls) and the TLS files)
    /// and durable mode apply to every node; the database must be 0. It turns off
    /// Sentinel mode and replaces a fixed address set before; a later
    /// [`with_address`](Self::with_address) or [`with_sentinels`](Self::with_sentinels)
    /// turns Cluster mode off again.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leasehold_redis::RedisBackend;
    ///
    /// # async fn run() -> leasehold_core::Result<()> {
    /// let backend = RedisBackend::builder()
    ///     .with_cluster_nodes(["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"])
    ///     .with_password("secret")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_cluster_nodes<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let list: Vec<String> = nodes
            .into_iter()
            .map(|s| s.as_ref().trim().to_owned())
            .collect();
        match cluster::parse_nodes(&list.join(",")) {
            Ok(nodes) => {
                self.settings.sentinel = None;
                self.settings.cluster = Some(ClusterSettings { nodes });
            }
            Err(reason) => self.record(Error::config("cluster_nodes", reason)),
        }
        self
    }

    /// The name under which the sentinels monitor the master to follow (`sentinel
    /// monitor <name> ...`); needed with [`with_sentinels`](Self::with_sentinels).
    pub fn with_master_name(mut self, name: impl Into<String>) -> Self {
        self.sentinel().master_name = name.into();
        self
    }

    /// The ACL user and password to log in to the sentinels with, if they require
    /// one (`requirepass` in their configuration); the master and replicas take
    /// [`with_username`](Self::with_username) and [`with_password`](Self::with_password).
    pub fn with_sentinel_credentials(
        mut self,
        username: Option<String>,
        password: impl Into<String>,
    ) -> Self {
        let sentinel = self.sentinel();
        sentinel.username = username;
        sentinel.password = Some(Password(password.into()));
        self
    }

    /// When an acquire or a refresh counts: once the master acknowledges it
    /// ([`Durability::Master`], the default) or once `WAIT` confirms it on replicas
    /// ([`Durability::Replicas`]). A count of 0 or a timeout under 1 ms is refused by
    /// [`build`](Self::build) with [`Error::Config`] naming `durability`.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        match durability {
            Durability::Replicas { count, timeout } => {
                // 0 would mean "off" in the URL and variables: refuse it here instead.
                self.settings.durable_replicas = count;
                self.settings.durable_timeout = timeout;
                if count == 0 {
                    self.record(Error::config(
                        "durability",
                        "the number of replicas to confirm must be at least 1",
                    ));
                }
            }
            _ => self.settings.durable_replicas = 0,
        }
        self
    }

    /// Whether to connect with TLS (rustls; the system's root certificates unless
    /// [`with_ca_file`](Self::with_ca_file) names a CA). Default `false`.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.settings.tls = tls;
        self
    }

    /// Trusts the certificate authorities in the PEM file at `path` instead of the
    /// system's roots, and turns TLS on. The file is read by [`build`](Self::build): a
    /// missing or unreadable file, or one without a PEM certificate, is
    /// [`Error::Config`] naming `ca_file`.
    ///
    /// The server's certificate must be issued for the host of the address connected to
    /// (a name, or an IP address in its subject alternative names): the `redis` crate
    /// offers no way to check it against another name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leasehold_redis::RedisBackend;
    ///
    /// # async fn run() -> leasehold_core::Result<()> {
    /// let backend = RedisBackend::builder()
    ///     .with_url("rediss://redis.internal:6380")
    ///     .with_ca_file("/etc/ssl/private-ca.pem")
    ///     .with_client_identity_files("/etc/ssl/app.pem", "/etc/ssl/app.key")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.tls = true;
        self.settings.tls_files.ca_file = Some(TlsFile::new(path, "ca_file"));
        self
    }

    /// Presents the PEM client certificate (chain) in `cert` with the private key in
    /// `key` when the server asks for one, and turns TLS on. The files are read by
    /// [`build`](Self::build): a missing or unreadable file, or one without the expected
    /// PEM block, is [`Error::Config`] naming `cert_file` or `key_file`.
    pub fn with_client_identity_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.settings.tls = true;
        self.settings.tls_files.cert_file = Some(TlsFile::new(cert, "cert_file"));
        self.settings.tls_files.key_file = Some(TlsFile::new(key, "key_file"));
        self
    }

    /// The ACL user name (Redis 6 and later). Default: none (the `default` user).
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.settings.username = Some(username.into());
        self
    }

    /// The password. It never shows in `Debug` output or errors.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.settings.password = Some(Password(password.into()));
        self
    }

    /// The database number. Default 0.
    pub fn with_db(mut self, db: i64) -> Self {
        self.settings.db = db;
        self
    }

    /// Separates applications sharing one Redis: keys become `<namespace>:lock:<name>`
    /// and `<namespace>:fence:<name>`. Default `routine`, which gives the Go original's
    /// `routine:lock:<name>`, so Go and Rust instances of a routine exclude each other.
    ///
    /// A namespace must not contain `:` (nor whitespace or control characters): names
    /// may, and with a `:` in the namespace too, two different names could share one key
    /// (namespace `a` with name `b:lock:c` and namespace `a:lock:b` with name `c`).
    /// [`build`](Self::build) refuses it with [`Error::Config`] naming `namespace`.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = namespace.into();
        self
    }

    /// How long one connection attempt may take, TLS and authentication included.
    /// Default 5 s (go-redis's dial timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a request may wait for its reply, a reconnection included. Default 3 s
    /// (go-redis's read timeout). Requests made for a lease are further bounded by half
    /// its TTL.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// Whether to refuse a server that may evict keys. Default `false`.
    ///
    /// Under memory pressure, a Redis whose `maxmemory-policy` is anything but
    /// `noeviction` may delete a held lock (another instance then takes it while the
    /// holder still runs) or a fencing counter (tokens start again from 1); the
    /// `volatile-*` policies evict only keys with a TTL, which every lock is. So at
    /// connect the backend reads the policy with `CONFIG GET maxmemory-policy` and, unless
    /// it is `noeviction`, logs a warning, or with this set, fails with
    /// [`Error::Misconfigured`]. Where the server does not show its configuration (a
    /// managed service, an ACL user without `CONFIG`), the check is skipped (logged at
    /// debug level, or as a warning when it was required).
    pub fn with_require_noeviction(mut self, required: bool) -> Self {
        self.settings.require_noeviction = required;
        self
    }

    /// Connects: opens the command connection, checks it with a `PING` (so wrong
    /// credentials fail here), checks the eviction policy (see
    /// [`with_require_noeviction`](Self::with_require_noeviction)), then subscribes for
    /// release notifications. A failing subscription is logged and retried by later
    /// waits, not returned: leases work without it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for malformed settings; [`Error::Unavailable`] if the server
    /// cannot be reached; [`Error::Timeout`] if it does not answer within the connect or
    /// request timeout; [`Error::Auth`] for rejected credentials;
    /// [`Error::Misconfigured`] if `noeviction` is required and the server may evict.
    ///
    /// With TLS: [`Error::Config`] naming the setting of a TLS file that is missing,
    /// unreadable or holds no PEM certificate or key; [`Error::Unavailable`] saying the
    /// server's certificate was not trusted; [`Error::Auth`] if the server requires a
    /// client certificate and none was given, or refused the one given;
    /// [`Error::Misconfigured`] if the server does not speak TLS while TLS is on, or
    /// speaks only TLS while it is off (found out quickly, not by waiting out the connect
    /// timeout).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes whatever connection it opened.
    pub async fn build(self) -> Result<RedisBackend> {
        if let Some(err) = self.error {
            return Err(err);
        }
        RedisBackend::connect(self.settings).await
    }

    fn sentinel(&mut self) -> &mut SentinelSettings {
        self.settings.cluster = None;
        self.settings
            .sentinel
            .get_or_insert_with(SentinelSettings::default)
    }

    fn record(&mut self, err: Error) {
        self.error.get_or_insert(err);
    }
}

impl Default for RedisBackendBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("settings", &self.settings)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
