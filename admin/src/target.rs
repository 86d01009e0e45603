//! Which lease backend to talk to, and connecting to it: `--url`, else
//! `ROUTINE_BACKEND_URL`, else Redis from the Go original's `REDIS_*` variables, the
//! same order in which `leasehold`'s default runner looks (so the tool run with a
//! service's environment sees that service's leases).

use std::sync::Arc;

use leasehold::postgres::PostgresBackendBuilder;
use leasehold::redis::RedisBackend;
use leasehold::{Error, LockBackend};

use crate::error::AdminError;

/// The variable the default runner reads its URL from.
pub(crate) const ENV_URL: &str = "ROUTINE_BACKEND_URL";
/// How the command line option is named in errors.
pub(crate) const FLAG_URL: &str = "--url";

/// Where the backend's settings come from.
#[derive(Debug)]
pub(crate) enum Target {
    /// A URL, and the setting it came from (`--url` or `ROUTINE_BACKEND_URL`).
    Url { url: String, setting: &'static str },
    /// No URL: Redis configured by `REDIS_HOSTS`, `REDIS_PASSWORD`, `REDIS_DB`, ...
    RedisFromEnv,
}

impl Target {
    /// The target `--url` (if given) or the environment names. An empty
    /// `ROUTINE_BACKEND_URL` counts as unset, as it does for the library.
    pub(crate) fn resolve(flag: Option<String>) -> Result<Self, AdminError> {
        if let Some(url) = flag {
            return Ok(Target::Url {
                url,
                setting: FLAG_URL,
            });
        }
        match std::env::var(ENV_URL) {
            Ok(url) if url.trim().is_empty() => Ok(Target::RedisFromEnv),
            Ok(url) => Ok(Target::Url {
                url,
                setting: ENV_URL,
            }),
            Err(std::env::VarError::NotPresent) => Ok(Target::RedisFromEnv),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::config(ENV_URL, "the value is not valid UTF-8").into())
            }
        }
    }

    /// What the target is, for messages: scheme, host and port only, never the password
    /// a URL may carry.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Url { url, setting } => format!("{} (from {setting})", redacted(url)),
            Target::RedisFromEnv => {
                let hosts = std::env::var("REDIS_HOSTS").unwrap_or_default();
                let hosts = if hosts.trim().is_empty() {
                    "the default address".to_owned()
                } else {
                    hosts
                };
                format!(
                    "redis at {hosts} (from the REDIS_* variables; neither --url nor {ENV_URL} is set)"
                )
            }
        }
    }

    /// Connects to the backend.
    ///
    /// A URL goes through [`leasehold::connect`], except that a PostgreSQL URL also takes
    /// the `ROUTINE_POSTGRES_*` settings (schema, table, namespace, request timeout) from
    /// the environment, as the library's default runner does: the tool must look in the
    /// same namespace as the service.
    pub(crate) async fn connect(&self) -> Result<Arc<dyn LockBackend>, AdminError> {
        let connected = match self {
            Target::Url { url, setting } if is_postgres(url) => {
                connect_postgres(url, setting).await
            }
            Target::Url { url, setting } => leasehold::connect(url)
                .await
                .map_err(|error| rename_url_setting(error, setting)),
            Target::RedisFromEnv => RedisBackend::from_env()
                .await
                .map(|backend| Arc::new(backend) as Arc<dyn LockBackend>),
        };
        connected.map_err(|source| match source {
            // A configuration error names its setting already; wrapping it would only
            // repeat where it came from.
            Error::Config { .. } => AdminError::Backend(source),
            source => AdminError::Connect {
                target: self.describe(),
                source,
            },
        })
    }
}

async fn connect_postgres(
    url: &str,
    setting: &'static str,
) -> leasehold::Result<Arc<dyn LockBackend>> {
    let builder = PostgresBackendBuilder::new()
        .with_url_from(url.to_owned(), setting)
        .with_env_settings(|name| match std::env::var(name) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(error @ std::env::VarError::NotUnicode(_)) => Err(Error::config_with_source(
                name,
                "the value is not valid UTF-8",
                error,
            )),
        })?;
    Ok(Arc::new(builder.build().await?))
}

fn is_postgres(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
    })
}

/// `leasehold::connect` names a URL given in code `url`; here it came from `setting`.
fn rename_url_setting(error: Error, setting: &'static str) -> Error {
    match error {
        Error::Config {
            setting: named,
            reason,
            source,
        } if named == "url" => Error::Config {
            setting: setting.to_owned(),
            reason,
            source,
        },
        other => other,
    }
}

/// `scheme://host:port` of `url`, without user, password, path or query; just the scheme
/// when the rest is no URL authority (etcd's list of hosts), and a placeholder when there
/// is no scheme at all.
pub(crate) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}", parsed.scheme()),
            (None, _) => format!("{}://", parsed.scheme()),
        },
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) => {
                let hosts = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if hosts.contains('@') {
                    format!("{scheme}://...")
                } else {
                    format!("{scheme}://{hosts}")
                }
            }
            None => "the URL".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_host_and_port_only() {
        assert_eq!(
            redacted("redis://user:secret@example.com:6380/2"),
            "redis://example.com:6380"
        );
        assert_eq!(redacted("postgres://u:p@db/app"), "postgres://db");
        assert_eq!(redacted("etcd://a:2379,b:2379"), "etcd://a:2379,b:2379");
        assert_eq!(redacted("etcd://u:p@a:2379,b:2379"), "etcd://...");
        assert_eq!(redacted("nonsense"), "the URL");
    }

    #[test]
    fn a_url_error_names_the_flag_or_variable_it_came_from() {
        let error = rename_url_setting(Error::config("url", "bad"), FLAG_URL);
        assert!(
            matches!(&error, Error::Config { setting, .. } if setting == "--url"),
            "{error:?}"
        );
        let error = rename_url_setting(Error::config("REDIS_DB", "bad"), FLAG_URL);
        assert!(
            matches!(&error, Error::Config { setting, .. } if setting == "REDIS_DB"),
            "other settings keep their names: {error:?}"
        );
    }
}
