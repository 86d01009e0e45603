//! Connection settings: parsed from a URL or from the Go original's environment variables,
//! validated once, and turned into the `redis` crate's `ConnectionInfo`.

use std::fmt;
use std::time::Duration;

use leasehold_core::{Error, Result};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::tls::{self, TlsFiles};

pub(crate) mod cluster;
mod hosts_url;
pub(crate) mod sentinel;

use cluster::ClusterSettings;
use sentinel::SentinelSettings;

/// The port used when an address or URL gives none.
pub(crate) const DEFAULT_PORT: u16 = 6379;
/// go-redis's default for `REDIS_DIAL_TIMEOUT`, so a deployment of the Go original that
/// leaves it unset keeps its timing.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// go-redis's default for `REDIS_READ_TIMEOUT` (and so for `REDIS_WRITE_TIMEOUT`), for the
/// same reason.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Gives the keys `routine:lock:<name>`, the Go original's layout, so that Go and Rust
/// instances of a routine exclude each other.
pub(crate) const DEFAULT_NAMESPACE: &str = "routine";
/// Long enough for any sensible application name, short enough to keep keys readable.
const MAX_NAMESPACE_LEN: usize = 100;

/// A password that never shows in `Debug` output or error messages.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Password(pub(crate) String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything needed to connect, after parsing and validation.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    /// A CA to trust and a client certificate; only with `tls`.
    pub(crate) tls_files: TlsFiles,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Password>,
    pub(crate) db: i64,
    pub(crate) namespace: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// Refuse to connect unless the server's `maxmemory-policy` is `noeviction`.
    pub(crate) require_noeviction: bool,
    /// Follow the master the sentinels name instead of `host:port`.
    pub(crate) sentinel: Option<SentinelSettings>,
    /// Redis Cluster mode: these seed nodes instead of `host:port`.
    pub(crate) cluster: Option<ClusterSettings>,
    /// Replicas a write must reach (`WAIT`) before it counts; 0 for the master alone.
    pub(crate) durable_replicas: u32,
    /// The `WAIT` timeout when `durable_replicas` is set.
    pub(crate) durable_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: DEFAULT_PORT,
            tls: false,
            tls_files: TlsFiles::default(),
            username: None,
            password: None,
            db: 0,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            require_noeviction: false,
            sentinel: None,
            cluster: None,
            durable_replicas: 0,
            durable_timeout: sentinel::DEFAULT_WAIT_TIMEOUT,
        }
    }
}

impl Settings {
    /// `host:port`, for logs and `Debug`.
    pub(crate) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Checks what the parsers cannot: values set one by one on the builder.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::config("host", "host is empty"));
        }
        if self.db < 0 {
            return Err(Error::config(
                "db",
                format!("database {} is negative", self.db),
            ));
        }
        if !self.tls && self.tls_files.any() {
            return Err(Error::config(
                "tls",
                "a CA file or client certificate is set but TLS is off \
                 (a redis:// URL, or TLS turned off): use rediss://",
            ));
        }
        self.tls_files.validate()?;
        if let Some(sentinel) = &self.sentinel {
            sentinel.validate()?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if self.sentinel.is_some() {
                return Err(Error::config(
                    "cluster_nodes",
                    "both Sentinel and Cluster are configured: choose one",
                ));
            }
            if self.db != 0 {
                return Err(Error::config(
                    "db",
                    format!("database {}: Redis Cluster has database 0 only", self.db),
                ));
            }
            if self.namespace.contains(['{', '}']) {
                return Err(Error::config(
                    "namespace",
                    "in cluster mode the namespace must not contain `{` or `}`: the keys' \
                     hash tag is `{<name>}`",
                ));
            }
        }
        self.durability().validate()?;
        check_namespace(&self.namespace)?;
        check_timeout("connect_timeout", self.connect_timeout)?;
        check_timeout("request_timeout", self.request_timeout)?;
        Ok(())
    }

    /// When an acquire or a refresh counts.
    pub(crate) fn durability(&self) -> Durability {
        match self.durable_replicas {
            0 => Durability::Master,
            count => Durability::Replicas {
                count,
                timeout: self.durable_timeout,
            },
        }
    }

    /// The `redis` crate's view of these settings.
    pub(crate) fn connection_info(&self) -> Result<ConnectionInfo> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(&password.0);
        }
        let info = addr.into_connection_info().map_err(|err| {
            Error::config_with_source("address", "rejected by the redis client", err)
        })?;
        Ok(info.set_redis_settings(redis))
    }
}

fn check_namespace(namespace: &str) -> Result<()> {
    let reason = if namespace.is_empty() {
        "namespace is empty".to_owned()
    } else if namespace.len() > MAX_NAMESPACE_LEN {
        format!(
            "namespace is {} bytes long, the limit is {MAX_NAMESPACE_LEN}",
            namespace.len()
        )
    } else if namespace
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        "namespace contains whitespace or a control character".to_owned()
    } else if namespace.contains(':') {
        // Keys are `<namespace>:lock:<name>` and names may contain `:`, so a namespace
        // with one lets two different names share a key: namespace `a` with name
        // `b:lock:c` and namespace `a:lock:b` with name `c` both lock `a:lock:b:lock:c`.
        "namespace contains `:`, which separates it from the rest of the key; \
         use another separator such as `-` or `.`"
            .to_owned()
    } else {
        return Ok(());
    };
    Err(Error::config("namespace", reason))
}

fn check_timeout(setting: &str, timeout: Duration) -> Result<()> {
    if timeout.is_zero() {
        return Err(Error::config(setting, "timeout must be greater than zero"));
    }
    Ok(())
}

/// The parts of a `redis://` or `rediss://` URL; `setting` names the URL in errors.
pub(crate) fn apply_url(settings: &mut Settings, url: &str, setting: &str) -> Result<()> {
    if sentinel::is_sentinel_url(url) {
        settings.cluster = None;
        return sentinel::apply_url(settings, url, setting);
    }
    if cluster::is_cluster_url(url) {
        return cluster::apply_url(settings, url, setting);
    }
    settings.sentinel = None;
    settings.cluster = None;
    let bad = |reason: String| Error::config(setting, reason);
    // The URL may hold a password: errors describe the problem, never echo the input.
    let parsed = url::Url::parse(url)
        .map_err(|err| Error::config_with_source(setting, "not a valid URL", err))?;
    settings.tls = match parsed.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(bad(format!(
                "unsupported scheme `{other}`: use redis://, rediss://, redis+sentinel://, \
                 rediss+sentinel://, redis+cluster:// or rediss+cluster://"
            )));
        }
    };
    settings.host = match parsed.host() {
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(bad("the URL has no host".to_owned())),
    };
    settings.port = parsed.port().unwrap_or(DEFAULT_PORT);
    settings.username = match parsed.username() {
        "" => None,
        user => Some(percent_decode(user).ok_or_else(|| bad("bad username encoding".into()))?),
    };
    settings.password = match parsed.password() {
        None | Some("") => None,
        Some(pw) => Some(Password(
            percent_decode(pw).ok_or_else(|| bad("bad password encoding".into()))?,
        )),
    };
    settings.db = match parsed.path().trim_matches('/') {
        "" => 0,
        db => parse_db(db).map_err(|reason| bad(format!("database in the path: {reason}")))?,
    };
    for (name, value) in parsed.query_pairs() {
        let file = || tls::path(&name, &value);
        match &*name {
            "ca_file" => settings.tls_files.ca_file = Some(file()?),
            "cert_file" => settings.tls_files.cert_file = Some(file()?),
            "key_file" => settings.tls_files.key_file = Some(file()?),
            other => match sentinel::apply_param(settings, other, &value) {
                Some(applied) => applied?,
                None => return Err(bad(format!("unsupported URL parameter `{name}`"))),
            },
        }
    }
    if parsed.fragment().is_some() {
        return Err(bad("URL fragments (`#...`) are not supported".to_owned()));
    }
    Ok(())
}

/// Reads the Go original's variables through `lookup` (the process environment, or a map
/// in tests). Unset and empty variables keep their defaults.
pub(crate) fn apply_env(
    settings: &mut Settings,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<()> {
    let mut var = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let given_hosts = var("REDIS_HOSTS");
    let hosts = given_hosts
        .clone()
        .unwrap_or_else(|| "redis:6379".to_owned());
    let mut entries = hosts.split(',').map(str::trim);
    let first = entries.next().unwrap_or_default();
    let (host, port) = parse_host_port(first)
        .map_err(|reason| Error::config("REDIS_HOSTS", format!("`{first}`: {reason}")))?;
    let ignored = entries.filter(|entry| !entry.is_empty()).count();
    settings.host = host;
    settings.port = port;
    if let Some(password) = var("REDIS_PASSWORD") {
        settings.password = Some(Password(password));
    }
    if let Some(db) = var("REDIS_DB") {
        settings.db = parse_db(db.trim()).map_err(|reason| Error::config("REDIS_DB", reason))?;
    }
    if let Some(dial) = var("REDIS_DIAL_TIMEOUT") {
        settings.connect_timeout = parse_timeout("REDIS_DIAL_TIMEOUT", &dial)?;
    }
    // The redis crate sends a request and awaits its reply as one step with one timeout,
    // so Go's separate read and write timeouts become one bound: the larger of the two.
    let read = var("REDIS_READ_TIMEOUT")
        .map(|v| parse_timeout("REDIS_READ_TIMEOUT", &v))
        .transpose()?;
    let write = var("REDIS_WRITE_TIMEOUT")
        .map(|v| parse_timeout("REDIS_WRITE_TIMEOUT", &v))
        .transpose()?;
    if read.is_some() || write.is_some() {
        settings.request_timeout = read
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
            .max(write.unwrap_or(Duration::ZERO));
    }
    // The Go original has no TLS settings; these follow the etcd backend's
    // `ROUTINE_ETCD_*` names. A file turns TLS on, as the builder's setters do.
    for (name, slot) in [
        ("ROUTINE_REDIS_CA_FILE", &mut settings.tls_files.ca_file),
        ("ROUTINE_REDIS_CERT_FILE", &mut settings.tls_files.cert_file),
        ("ROUTINE_REDIS_KEY_FILE", &mut settings.tls_files.key_file),
    ] {
        if let Some(value) = var(name) {
            *slot = Some(tls::path(name, &value)?);
            settings.tls = true;
        }
    }
    if let Some(value) = var("ROUTINE_REDIS_TLS") {
        settings.tls =
            tls::parse_bool(&value).map_err(|reason| Error::config("ROUTINE_REDIS_TLS", reason))?;
    }
    sentinel::apply_env(settings, &mut var)?;
    cluster::apply_env(settings, var)?;
    if let Some(note) = hosts_note(settings, given_hosts.is_some(), ignored) {
        tracing::warn!(hosts = %hosts, "{note}");
    }
    Ok(())
}

/// What to tell about `REDIS_HOSTS` once the mode is known: in Sentinel or Cluster mode
/// it is not used at all (the variable set instead names the servers); otherwise only its
/// first host is (`ignored` more were listed). `None` if there is nothing to tell.
pub(crate) fn hosts_note(settings: &Settings, given: bool, ignored: usize) -> Option<String> {
    let mode = if settings.cluster.is_some() {
        "Redis Cluster mode: the seed nodes are ROUTINE_REDIS_CLUSTER_NODES"
    } else if settings.sentinel.is_some() {
        "Sentinel mode: the sentinels are ROUTINE_REDIS_SENTINELS"
    } else if ignored > 0 {
        // The Go original hands all hosts to go-redis; a lease must live on one server,
        // so only the first is used. Say so rather than drop them silently.
        return Some(format!(
            "REDIS_HOSTS lists {} hosts; the redis lease backend uses the first only \
             (for a Redis Cluster, set ROUTINE_REDIS_CLUSTER_NODES)",
            ignored + 1
        ));
    } else {
        return None;
    };
    given.then(|| format!("REDIS_HOSTS is not used in {mode}"))
}

/// `host`, `host:port` or `[v6]:port`.
pub(crate) fn parse_host_port(entry: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after an IPv6 address".to_owned())?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err("expected `:port` after `]`".to_owned()),
        }
    } else {
        match entry.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("put IPv6 addresses in brackets: `[::1]:6379`".to_owned());
            }
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("host is empty".to_owned());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port `{port}` is not a number from 1 to 65535"))?,
    };
    Ok((host.to_owned(), port))
}

pub(crate) fn parse_db(db: &str) -> Result<i64, String> {
    db.parse::<i64>()
        .ok()
        .filter(|&n| n >= 0)
        .ok_or_else(|| format!("`{db}` is not a database number (0, 1, 2, ...)"))
}

/// A Go-style duration (`5s`, `500ms`, `1m30s`), as humantime reads it; zero is refused.
pub(crate) fn parse_timeout(setting: &str, value: &str) -> Result<Duration> {
    let timeout = humantime::parse_duration(value.trim()).map_err(|err| {
        let reason = format!(
            "`{}` is not a duration such as `5s` or `500ms`",
            value.trim()
        );
        Error::config_with_source(setting, reason, err)
    })?;
    check_timeout(setting, timeout)?;
    Ok(timeout)
}

/// Decodes `%XX` escapes; `None` if they are malformed or not UTF-8.
pub(crate) fn percent_decode(input: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(input.len());
    let mut rest = input.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Installs rustls's `ring` provider as the process default if none is installed yet.
///
/// The redis crate builds its TLS config with the process default provider. Left to
/// itself, rustls picks one from its enabled crate features and panics if another crate
/// in the build enabled a second provider; installing one up front avoids that. If the
/// application installed its own provider first, that one is kept.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An `Err` means another thread installed a provider in the meantime: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// When an acquire (with its fencing increment) or a refresh counts.
///
/// Redis replicates asynchronously: a master acknowledges a write before any replica has
/// it, and a failover to a replica that had not received it loses it. For a lease that
/// means a lock key lost in a failover (a second process acquires while the first still
/// holds) or a fencing increment lost (the next token repeats one already handed out).
/// [`Durability::Replicas`] closes that gap with `WAIT`; see the crate documentation's
/// *Sentinel* section for exactly what each mode guarantees.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leasehold_redis::Durability;
///
/// let durability = Durability::Replicas { count: 2, timeout: Duration::from_millis(500) };
/// assert_ne!(durability, Durability::Master);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// The master's acknowledgement is enough (the default, and the Go original's
    /// behaviour): fast, but a failover can lose what the master acknowledged.
    #[default]
    Master,
    /// An acquire (and its fencing increment) or a refresh counts only once `WAIT count
    /// timeout` confirms it on `count` replicas. An acquire that is not confirmed is
    /// undone (the lock is released) and reported as
    /// [`Error::Unavailable`](leasehold_core::Error::Unavailable); a refresh that is not
    /// confirmed is reported the same way, so the holder's deadline is not extended.
    ///
    /// `timeout` bounds each `WAIT` (and is cut to half a request's own bound, so that
    /// the request still gets its answer): with replicas in sync `WAIT` answers within a
    /// round trip; it takes the whole timeout only when a replica lags or is gone. While
    /// it waits, later requests of the backend queue behind it on the command connection.
    Replicas {
        /// How many replicas must confirm: at least 1. With every replica of the master
        /// (`count` = their number), no failover to any of them loses a confirmed write.
        count: u32,
        /// How long one `WAIT` may take: at least 1 ms.
        timeout: Duration,
    },
}

impl Durability {
    /// Checks `count` and `timeout` of [`Durability::Replicas`].
    pub(crate) fn validate(&self) -> Result<()> {
        match *self {
            Durability::Master => Ok(()),
            Durability::Replicas { count: 0, .. } => Err(Error::config(
                "durability",
                "the number of replicas to confirm must be at least 1",
            )),
            Durability::Replicas { timeout, .. } if timeout < Duration::from_millis(1) => Err(
                Error::config("durability", "the WAIT timeout must be at least 1 ms"),
            ),
            Durability::Replicas { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
