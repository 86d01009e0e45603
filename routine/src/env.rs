//! Backends and runners configured from URLs and environment variables.
//!
//! | variable | meaning |
//! |---|---|
//! | `ROUTINE_BACKEND_URL` | the lease backend: `memory://`, `redis://`, `rediss://`, `redis+sentinel://`, `rediss+sentinel://`, `redis+cluster://`, `rediss+cluster://`, `etcd://`, `etcds://` (or etcd's own `http://`, `https://`), `postgres://`, `postgresql://` (each needs its cargo feature) |
//! | `ROUTINE_LOCK_TTL` | the lease TTL, e.g. `5s`, `1500ms` (default 5 s) |
//! | `ROUTINE_REDIS_LOCK_TTL` | the Go original's name for the same, read when `ROUTINE_LOCK_TTL` is unset |
//! | `REDIS_HOSTS`, `REDIS_PASSWORD`, `REDIS_DB`, ... | with the `redis` feature and no `ROUTINE_BACKEND_URL`: Redis configured as in Go |
//! | `ROUTINE_POSTGRES_SCHEMA`, `_TABLE`, `_NAMESPACE`, `_REQUEST_TIMEOUT` | with a `postgres://` `ROUTINE_BACKEND_URL`: where the fencing table lives, and the backend's other settings |

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use leasehold_core::{Error, LockBackend, MemoryBackend, Result};

use crate::backend_slot::BackendSlot;

/// The URL schemes [`connect`] understands, whatever features are enabled.
const SCHEMES: &str = "memory, redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster, \
                       rediss+cluster, etcd, etcds, http, https (etcd), postgres, postgresql";

/// The setting a URL passed in code is named by in errors.
const CODE_URL: &str = "url";
/// The variable the default runner reads its URL from.
const ENV_URL: &str = "ROUTINE_BACKEND_URL";

/// Connects to the lease backend that `url` names.
///
/// `memory://` is a process-local [`MemoryBackend`] (a new one per call); the other
/// schemes need the matching cargo feature (`redis`, `etcd`, `postgres`) and are passed
/// to that backend's `from_url`. etcd's own form, `http://host:2379` or
/// `https://host:2379` (as `etcdctl --endpoints` takes it), names an etcd member too.
///
/// # PostgreSQL schema and other settings
///
/// A URL names a server, not the backend's settings: a `postgres://` URL given here (or
/// to [`RunnerBuilder::with_backend_url`](crate::RunnerBuilder::with_backend_url))
/// connects with the backend's defaults, the fencing table `routine_fencing` in the
/// schema `public`, namespace `routine`, request timeout 5 s. The `ROUTINE_POSTGRES_*`
/// variables apply only to the default runner's `ROUTINE_BACKEND_URL` (see
/// [`check_default_config`](crate::check_default_config)), never to a URL passed in
/// code, whose behaviour does not change with the environment. To choose the schema
/// (or the table, namespace or request timeout) in code, build the backend instead and
/// hand it to [`RunnerBuilder::with_backend`](crate::RunnerBuilder::with_backend):
/// `leasehold::postgres::PostgresBackend::builder().with_url(url).with_schema("ops")`,
/// then `.build().await?` (feature `postgres`).
///
/// # Errors
///
/// [`Error::Config`] naming the setting `url` for a malformed URL, an unknown scheme or a
/// scheme whose feature is off; otherwise whatever the backend's connection gives.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> leasehold::Result<()> {
/// let backend = leasehold::connect("memory://").await?;
/// assert_eq!(backend.name(), "memory");
/// assert!(leasehold::connect("ftp://example").await.is_err());
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn LockBackend>> {
    connect_as(url, CODE_URL).await
}

/// [`connect`], naming `setting` in errors about the URL itself.
async fn connect_as(url: &str, setting: &str) -> Result<Arc<dyn LockBackend>> {
    connect_url(url, setting)
        .await
        .map_err(|error| renamed_url_error(error, setting))
}

/// A backend's `from_url` names the URL `url` in its errors about the part after the
/// scheme; the URL came from `setting` (`ROUTINE_BACKEND_URL`, a builder's
/// `backend_url`), so name that instead, keeping the reason and the cause.
fn renamed_url_error(error: Error, setting: &str) -> Error {
    match error {
        Error::Config {
            setting: named,
            reason,
            source,
        } if named == CODE_URL => Error::Config {
            setting: setting.to_owned(),
            reason,
            source,
        },
        other => other,
    }
}

/// Each backend's connect future is boxed: their state machines are deep (TLS, topology
/// discovery, a client's own connect), and nested in a caller's async fn unboxed they
/// push its layout past rustc's default recursion limit.
async fn connect_url(url: &str, setting: &str) -> Result<Arc<dyn LockBackend>> {
    match scheme_of(url, setting)? {
        Scheme::Memory => Ok(Arc::new(MemoryBackend::new())),
        #[cfg(feature = "redis")]
        Scheme::Redis => Ok(Arc::new(
            Box::pin(leasehold_redis::RedisBackend::from_url(url)).await?,
        )),
        #[cfg(feature = "etcd")]
        Scheme::Etcd => Ok(Arc::new(
            Box::pin(leasehold_etcd::EtcdBackend::from_url(&etcd_url(url))).await?,
        )),
        #[cfg(feature = "postgres")]
        Scheme::Postgres => Ok(Arc::new(
            Box::pin(leasehold_postgres::PostgresBackend::from_url(url)).await?,
        )),
    }
}

/// etcd's own form as the etcd backend's: `http://host:2379` is `etcd://host:2379`, and
/// `https://` is `etcds://`.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
fn etcd_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => format!("etcd://{rest}"),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("etcds://{rest}"),
        _ => url.to_owned(),
    }
}

/// The backends a URL can name, among those compiled in.
enum Scheme {
    Memory,
    #[cfg(feature = "redis")]
    Redis,
    #[cfg(feature = "etcd")]
    Etcd,
    #[cfg(feature = "postgres")]
    Postgres,
}

// The backends compiled in, by the scheme that names them.
#[cfg(feature = "redis")]
const REDIS: Option<Scheme> = Some(Scheme::Redis);
#[cfg(not(feature = "redis"))]
const REDIS: Option<Scheme> = None;
#[cfg(feature = "etcd")]
const ETCD: Option<Scheme> = Some(Scheme::Etcd);
#[cfg(not(feature = "etcd"))]
const ETCD: Option<Scheme> = None;
#[cfg(feature = "postgres")]
const POSTGRES: Option<Scheme> = Some(Scheme::Postgres);
#[cfg(not(feature = "postgres"))]
const POSTGRES: Option<Scheme> = None;

/// The backend `url` names, checked without printing the rest (it may hold a password).
/// Only the scheme is read here: the rest is the backend's to parse (etcd's list of
/// hosts, for one, is no URL authority). `setting` names the URL in errors.
fn scheme_of(url: &str, setting: &str) -> Result<Scheme> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme)
        .filter(|scheme| {
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
        .ok_or_else(|| {
            Error::config(
                setting,
                "not a URL: expected scheme://..., e.g. redis://host:6379/0",
            )
        })?
        .to_ascii_lowercase();
    let (backend, feature) = match scheme.as_str() {
        "memory" => return Ok(Scheme::Memory),
        "redis" | "rediss" | "redis+sentinel" | "redis-sentinel" | "rediss+sentinel"
        | "rediss-sentinel" | "redis+cluster" | "rediss+cluster" => (REDIS, "redis"),
        "etcd" | "etcds" | "http" | "https" => (ETCD, "etcd"),
        "postgres" | "postgresql" => (POSTGRES, "postgres"),
        other => {
            return Err(Error::config(
                setting,
                format!("unknown scheme `{other}://`; known: {SCHEMES}"),
            ));
        }
    };
    backend.ok_or_else(|| {
        Error::config(
            setting,
            format!("`{scheme}://` needs the `{feature}` feature of the leasehold crate"),
        )
    })
}

/// Looks a variable up: `std::env::var_os` in production, a map in tests.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process environment.
pub(crate) fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Reads a duration variable (`5s`, `1500ms`, `1m`), naming the variable on error.
pub(crate) fn duration_var(env: Lookup<'_>, name: &str) -> Result<Option<Duration>> {
    let Some(value) = var(env, name)? else {
        return Ok(None);
    };
    let duration = humantime::parse_duration(value.trim()).map_err(|error| {
        Error::config_with_source(
            name,
            format!("{value:?} is not a duration (expected e.g. 5s or 1500ms)"),
            error,
        )
    })?;
    if duration.is_zero() {
        return Err(Error::config(
            name,
            "the lease TTL must be greater than zero",
        ));
    }
    Ok(Some(duration))
}

/// Reads a variable; unset and empty are both `None`, non-UTF-8 is an error.
pub(crate) fn var(env: Lookup<'_>, name: &str) -> Result<Option<String>> {
    match env(name).map(OsString::into_string) {
        None => Ok(None),
        Some(Ok(value)) if value.trim().is_empty() => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(_)) => Err(Error::config(name, "the value is not valid UTF-8")),
    }
}

/// The lease TTL from `ROUTINE_LOCK_TTL`, else `ROUTINE_REDIS_LOCK_TTL` (the Go name).
pub(crate) fn ttl_from_env(env: Lookup<'_>) -> Result<Option<Duration>> {
    match duration_var(env, "ROUTINE_LOCK_TTL")? {
        Some(ttl) => Ok(Some(ttl)),
        None => duration_var(env, "ROUTINE_REDIS_LOCK_TTL"),
    }
}

/// How the default runner finds its backend: `ROUTINE_BACKEND_URL`, else (with the
/// `redis` feature) Redis from the Go variables, else none.
pub(crate) enum EnvBackend {
    /// A URL, and the setting it came from (for errors).
    Url(String, &'static str),
    #[cfg(feature = "redis")]
    RedisFromEnv,
    #[cfg_attr(feature = "redis", allow(dead_code))]
    None,
}

/// A lazily connected backend for `url`, given in code as `setting`, whose scheme is
/// checked now.
pub(crate) fn lazy_backend(url: String, setting: &'static str) -> Result<BackendSlot> {
    scheme_of(&url, setting)?;
    Ok(EnvBackend::Url(url, setting).into_lazy_slot())
}

pub(crate) fn backend_from_env(env: Lookup<'_>) -> Result<EnvBackend> {
    if let Some(url) = var(env, ENV_URL)? {
        scheme_of(&url, ENV_URL)?;
        return Ok(EnvBackend::Url(url, ENV_URL));
    }
    #[cfg(feature = "redis")]
    return Ok(EnvBackend::RedisFromEnv);
    #[cfg(not(feature = "redis"))]
    Ok(EnvBackend::None)
}

impl EnvBackend {
    /// A backend slot that connects on first use (and again after a failed attempt).
    pub(crate) fn into_lazy_slot(self) -> BackendSlot {
        let description = self.description();
        let source = Arc::new(self);
        BackendSlot::lazy(description, move || {
            let source = Arc::clone(&source);
            async move { source.connect().await }.boxed()
        })
    }

    pub(crate) fn description(&self) -> String {
        match self {
            EnvBackend::Url(url, setting) => match url::Url::parse(url) {
                Ok(parsed) => format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
                Err(_) => format!("backend from {setting}"),
            },
            #[cfg(feature = "redis")]
            EnvBackend::RedisFromEnv => "redis from REDIS_* variables".into(),
            EnvBackend::None => "no backend".into(),
        }
    }

    /// Checks, without connecting, the variables `env` holds that this backend reads
    /// besides its URL: every `REDIS_*` variable for Redis from the Go variables, and
    /// the `ROUTINE_POSTGRES_*` ones for a `postgres://` `ROUTINE_BACKEND_URL` (whether
    /// each is UTF-8 and parses; the limits on identifiers are the backend's, checked
    /// when it connects).
    #[cfg_attr(
        not(any(feature = "redis", feature = "postgres")),
        allow(unused_variables)
    )]
    pub(crate) fn check_settings(&self, env: Lookup<'_>) -> Result<()> {
        match self {
            #[cfg(feature = "postgres")]
            EnvBackend::Url(url, setting) => {
                if let Some(builder) = postgres_from_env(url, setting, env) {
                    builder?;
                }
            }
            #[cfg(feature = "redis")]
            EnvBackend::RedisFromEnv => {
                leasehold_redis::RedisBackendBuilder::from_env_with(|name| {
                    env(name).and_then(|value| value.into_string().ok())
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) async fn connect(&self) -> Result<Arc<dyn LockBackend>> {
        match self {
            // The PostgreSQL backend's own variables (schema, table, namespace, request
            // timeout) apply to a URL from the environment too.
            EnvBackend::Url(url, setting) => {
                #[cfg(feature = "postgres")]
                if let Some(builder) = postgres_from_env(url, setting, &process_env) {
                    return Ok(Arc::new(builder?.build().await?));
                }
                connect_as(url, setting).await
            }
            #[cfg(feature = "redis")]
            EnvBackend::RedisFromEnv => {
                Ok(Arc::new(leasehold_redis::RedisBackend::from_env().await?))
            }
            EnvBackend::None => Err(Error::config(
                "ROUTINE_BACKEND_URL",
                "no lease backend configured",
            )),
        }
    }
}

/// For a `postgres://` URL from `ROUTINE_BACKEND_URL` (`setting`), a PostgreSQL builder
/// with the backend's other variables read through `env`; `None` for any other URL.
#[cfg(feature = "postgres")]
fn postgres_from_env(
    url: &str,
    setting: &'static str,
    env: Lookup<'_>,
) -> Option<Result<leasehold_postgres::PostgresBackendBuilder>> {
    if setting != ENV_URL || !matches!(scheme_of(url, setting), Ok(Scheme::Postgres)) {
        return None;
    }
    Some(
        leasehold_postgres::PostgresBackendBuilder::new()
            .with_url_from(url.to_owned(), setting)
            .with_env_settings(|name| var(env, name)),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A lookup over `vars`, for tests of what reads the environment.
    pub(crate) fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn ttl_reads_generic_then_go_variable() {
        let both = env(&[("ROUTINE_LOCK_TTL", "2s"), ("ROUTINE_REDIS_LOCK_TTL", "9s")]);
        assert_eq!(ttl_from_env(&both).unwrap(), Some(Duration::from_secs(2)));
        let go = env(&[("ROUTINE_REDIS_LOCK_TTL", "1500ms")]);
        assert_eq!(
            ttl_from_env(&go).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            ttl_from_env(&env(&[])).unwrap(),
            None,
            "unset means default"
        );
    }

    #[test]
    fn bad_ttl_names_the_variable() {
        for (value, needle) in [("abc", "not a duration"), ("0s", "greater than zero")] {
            let err = ttl_from_env(&env(&[("ROUTINE_REDIS_LOCK_TTL", value)])).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("ROUTINE_REDIS_LOCK_TTL") && text.contains(needle),
                "error for {value:?} must name the variable and say {needle:?}: {text}"
            );
        }
    }

    #[test]
    fn malformed_or_unknown_backend_url_names_the_variable() {
        for url in ["not a url", "ftp://host/x"] {
            let err = backend_from_env(&env(&[("ROUTINE_BACKEND_URL", url)]))
                .err()
                .unwrap();
            assert!(
                err.to_string().contains("ROUTINE_BACKEND_URL"),
                "error for {url:?} must name ROUTINE_BACKEND_URL: {err}"
            );
        }
    }

    #[tokio::test]
    async fn connect_rejects_unknown_scheme_without_echoing_the_url() {
        let err = connect("ftp://user:secret@host/").await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("unknown scheme `ftp://`"), "{text}");
        assert!(
            !text.contains("secret"),
            "errors must not echo passwords: {text}"
        );
    }

    #[tokio::test]
    async fn a_url_passed_in_code_is_named_as_such_in_errors() {
        for url in ["nonsense", "ftp://host/x"] {
            let err = connect(url).await.err().unwrap();
            assert!(
                matches!(&err, Error::Config { setting, .. } if setting == "url"),
                "a URL given to connect() must be named `url`, not a variable nobody set: \
                 {err:?}"
            );
        }
        let err = lazy_backend("nonsense".into(), "backend_url")
            .err()
            .unwrap();
        assert!(
            matches!(&err, Error::Config { setting, .. } if setting == "backend_url"),
            "{err:?}"
        );
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_bad_url_after_the_scheme_is_named_by_the_setting_it_came_from() {
        let url = "redis://h/notanumber";
        let setting_of = |err: Error| match err {
            Error::Config {
                setting,
                reason,
                source,
            } => {
                assert!(!reason.is_empty(), "the backend's reason is kept");
                (setting, source.is_some())
            }
            other => panic!("expected a Config error, got {other:?}"),
        };
        let from_env = backend_from_env(&env(&[(ENV_URL, url)])).ok().unwrap();
        let (setting, _) = setting_of(from_env.connect().await.err().unwrap());
        assert_eq!(
            setting, ENV_URL,
            "a bad ROUTINE_BACKEND_URL names that variable"
        );
        let (setting, _) = setting_of(connect_as(url, "backend_url").await.err().unwrap());
        assert_eq!(setting, "backend_url");
        let (setting, _) = setting_of(connect(url).await.err().unwrap());
        assert_eq!(setting, CODE_URL);
        let kept = renamed_url_error(
            Error::config_with_source(CODE_URL, "bad port", std::fmt::Error),
            ENV_URL,
        );
        assert_eq!(
            setting_of(kept),
            (ENV_URL.to_owned(), true),
            "the cause is kept"
        );
        let other = renamed_url_error(Error::config("REDIS_DB", "bad"), ENV_URL);
        assert_eq!(
            setting_of(other).0,
            "REDIS_DB",
            "other settings keep their name"
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn every_redis_topology_scheme_names_redis() {
        for url in [
            "redis://h",
            "rediss://h",
            "redis+sentinel://a,b/m",
            "redis-sentinel://a/m",
            "rediss+sentinel://a,b/m",
            "rediss-sentinel://a/m",
            "redis+cluster://a,b,c",
            "rediss+cluster://a,b,c",
        ] {
            assert!(
                matches!(scheme_of(url, "url"), Ok(Scheme::Redis)),
                "{url} must name redis"
            );
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcds_own_http_form_names_an_etcd_member() {
        for url in ["http://127.0.0.1:2379", "HTTPS://a:2379,b:2379/prefix"] {
            assert!(
                matches!(scheme_of(url, "url"), Ok(Scheme::Etcd)),
                "{url} must name etcd"
            );
        }
        assert_eq!(etcd_url("http://h:2379/p"), "etcd://h:2379/p");
        assert_eq!(etcd_url("https://a:1,b:2"), "etcds://a:1,b:2");
        assert_eq!(etcd_url("etcd://h"), "etcd://h");
    }

    #[tokio::test]
    async fn memory_url_connects_to_a_memory_backend() {
        assert_eq!(connect("memory://").await.unwrap().name(), "memory");
    }
}
