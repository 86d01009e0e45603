//! Sentinel settings: the `redis+sentinel://` URL, the `ROUTINE_REDIS_SENTINEL*` and
//! `ROUTINE_REDIS_DURABLE_*` variables, and the durability URL parameters.

use std::time::Duration;

use leasehold_core::{Error, Result};

use super::{Password, Settings};

/// The port of a sentinel address that gives none: Sentinel's default.
pub(crate) const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// The `WAIT` timeout of durable mode when only the replica count is given.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the sentinels are, which master to follow, and how to log in to the sentinels
/// (the master and replicas take the backend's own username and password).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SentinelSettings {
    pub(crate) sentinels: Vec<(String, u16)>,
    pub(crate) master_name: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Password>,
}

impl SentinelSettings {
    /// `host:port,host:port,...`, for logs, `Debug` and errors.
    pub(crate) fn addresses(&self) -> String {
        self.sentinels
            .iter()
            .map(|(host, port)| address(host, *port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.sentinels.is_empty() {
            return Err(Error::config("sentinels", "no sentinel address is given"));
        }
        if self.master_name.trim().is_empty() {
            return Err(Error::config(
                "master_name",
                "the master name the sentinels monitor is empty",
            ));
        }
        Ok(())
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub(crate) fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether `url` is a Sentinel URL (`redis+sentinel://` or `redis-sentinel://`, or with
/// TLS `rediss+sentinel://` or `rediss-sentinel://`).
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "redis+sentinel" | "redis-sentinel" | "rediss+sentinel" | "rediss-sentinel"
    )
}

/// Parses `redis+sentinel://[user[:password]@]host1[:port],host2[:port]/<master>[/db][?...]`
/// (or `rediss+sentinel://`: TLS to the sentinels and to the master they name, with the
/// `rediss://` file parameters) into `settings`; `setting` names the URL in errors, which
/// never echo it (it may hold a password).
pub(crate) fn apply_url(settings: &mut Settings, url: &str, setting: &str) -> Result<()> {
    let bad = |reason: String| Error::config(setting, reason);
    let super::hosts_url::Parts {
        scheme,
        hosts,
        path,
        query,
    } = super::hosts_url::split(settings, url, setting)?;
    let decode = |text: &str, what: &str| {
        super::percent_decode(text).ok_or_else(|| bad(format!("bad {what} encoding")))
    };
    let sentinels = parse_sentinels(hosts).map_err(bad)?;
    let mut segments = path.split('/');
    let master_name = decode(segments.next().unwrap_or_default(), "master name")?;
    if master_name.is_empty() {
        return Err(bad(
            "the URL has no master name: redis+sentinel://host1:26379,host2:26379/<master name>"
                .to_owned(),
        ));
    }
    settings.db = match segments.next() {
        None | Some("") => 0,
        Some(db) => super::parse_db(db).map_err(|reason| bad(format!("database: {reason}")))?,
    };
    if segments.any(|segment| !segment.is_empty()) {
        return Err(bad(
            "the path is `/<master name>[/db]`: nothing may follow the database".to_owned(),
        ));
    }
    let mut sentinel = SentinelSettings {
        sentinels,
        master_name,
        ..SentinelSettings::default()
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value, "parameter")?;
        let file = || crate::tls::path(name, &value);
        match name {
            "sentinel_username" => sentinel.username = Some(value),
            "sentinel_password" => sentinel.password = Some(Password(value)),
            "ca_file" => settings.tls_files.ca_file = Some(file()?),
            "cert_file" => settings.tls_files.cert_file = Some(file()?),
            "key_file" => settings.tls_files.key_file = Some(file()?),
            _ => match apply_param(settings, name, &value) {
                Some(applied) => applied?,
                None => return Err(bad(format!("unsupported URL parameter `{name}`"))),
            },
        }
    }
    settings.tls = scheme.to_ascii_lowercase().starts_with("rediss");
    settings.sentinel = Some(sentinel);
    Ok(())
}

/// Applies a durability parameter of any Redis URL: `durable_replicas=<n>` (0 turns
/// durable mode off) and `durable_timeout=<duration>`. `None` if `name` is not one.
pub(crate) fn apply_param(settings: &mut Settings, name: &str, value: &str) -> Option<Result<()>> {
    let applied = match name {
        "durable_replicas" => parse_count(name, value).map(|count| {
            settings.durable_replicas = count;
        }),
        "durable_timeout" => super::parse_timeout(name, value).map(|timeout| {
            settings.durable_timeout = timeout;
        }),
        _ => return None,
    };
    Some(applied)
}

/// Reads `ROUTINE_REDIS_SENTINELS`, `ROUTINE_REDIS_SENTINEL_MASTER`,
/// `ROUTINE_REDIS_SENTINEL_USERNAME`, `ROUTINE_REDIS_SENTINEL_PASSWORD`,
/// `ROUTINE_REDIS_DURABLE_REPLICAS` and `ROUTINE_REDIS_DURABLE_TIMEOUT`.
pub(crate) fn apply_env(
    settings: &mut Settings,
    mut var: impl FnMut(&str) -> Option<String>,
) -> Result<()> {
    let sentinels = var("ROUTINE_REDIS_SENTINELS");
    let master = var("ROUTINE_REDIS_SENTINEL_MASTER");
    match (sentinels, master) {
        (Some(sentinels), Some(master)) => {
            settings.sentinel = Some(SentinelSettings {
                sentinels: parse_sentinels(&sentinels)
                    .map_err(|reason| Error::config("ROUTINE_REDIS_SENTINELS", reason))?,
                master_name: master.trim().to_owned(),
                username: var("ROUTINE_REDIS_SENTINEL_USERNAME"),
                password: var("ROUTINE_REDIS_SENTINEL_PASSWORD").map(Password),
            });
        }
        (Some(_), None) => {
            return Err(Error::config(
                "ROUTINE_REDIS_SENTINEL_MASTER",
                "ROUTINE_REDIS_SENTINELS is set but not the name of the master to follow",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "ROUTINE_REDIS_SENTINELS",
                "ROUTINE_REDIS_SENTINEL_MASTER is set but no sentinel address",
            ));
        }
        (None, None) => {}
    }
    if let Some(count) = var("ROUTINE_REDIS_DURABLE_REPLICAS") {
        settings.durable_replicas = parse_count("ROUTINE_REDIS_DURABLE_REPLICAS", &count)?;
    }
    if let Some(timeout) = var("ROUTINE_REDIS_DURABLE_TIMEOUT") {
        settings.durable_timeout = super::parse_timeout("ROUTINE_REDIS_DURABLE_TIMEOUT", &timeout)?;
    }
    Ok(())
}

/// `host[:port]` entries separated by commas; the port defaults to 26379.
pub(crate) fn parse_sentinels(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut sentinels = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let has_port = match entry.strip_prefix('[') {
            Some(rest) => rest.contains("]:"),
            None => entry.contains(':'),
        };
        let (host, port) =
            super::parse_host_port(entry).map_err(|reason| format!("`{entry}`: {reason}"))?;
        sentinels.push((
            host,
            if has_port {
                port
            } else {
                DEFAULT_SENTINEL_PORT
            },
        ));
    }
    if sentinels.is_empty() {
        return Err("no sentinel address is given (host1:26379,host2:26379,...)".to_owned());
    }
    Ok(sentinels)
}

fn parse_count(setting: &str, value: &str) -> Result<u32> {
    value.trim().parse::<u32>().map_err(|err| {
        Error::config_with_source(
            setting,
            format!("`{}` is not a number of replicas", value.trim()),
            err,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    fn parse(url: &str) -> Result<Settings> {
        let mut settings = Settings::default();
        crate::config::apply_url(&mut settings, url, "url")?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn a_sentinel_url_gives_the_sentinels_the_master_and_its_credentials() {
        let settings = parse(
            "redis+sentinel://app:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:5000/main/3\
             ?sentinel_password=sp&durable_timeout=250ms&durable_replicas=2",
        )
        .unwrap();
        let sentinel = settings.sentinel.as_ref().unwrap();
        assert_eq!(
            sentinel.sentinels,
            [
                ("10.0.0.1".to_owned(), 26380),
                ("10.0.0.2".to_owned(), DEFAULT_SENTINEL_PORT),
                ("::1".to_owned(), 5000),
            ]
        );
        assert_eq!(sentinel.master_name, "main");
        assert_eq!(sentinel.password, Some(Password("sp".into())));
        assert_eq!(settings.username.as_deref(), Some("app"));
        assert_eq!(settings.password, Some(Password("p@ss".into())));
        assert_eq!(settings.db, 3);
        assert_eq!(
            settings.durability(),
            Durability::Replicas {
                count: 2,
                timeout: Duration::from_millis(250)
            },
            "parameters apply in any order"
        );
        assert!(parse("redis-sentinel://s1/main").is_ok());
    }

    #[test]
    fn a_rediss_sentinel_url_turns_tls_on_with_its_files() {
        let settings = parse(
            "rediss+sentinel://s1:26380,s2/main?ca_file=/ca.pem&cert_file=/c.pem&key_file=/c.key",
        )
        .unwrap();
        assert!(settings.tls, "rediss+sentinel:// is TLS");
        assert_eq!(settings.sentinel.as_ref().unwrap().master_name, "main");
        let files = &settings.tls_files;
        assert_eq!(
            (
                files.ca_file.as_ref().unwrap().path.to_str(),
                files.cert_file.as_ref().unwrap().path.to_str(),
                files.key_file.as_ref().unwrap().path.to_str(),
            ),
            (Some("/ca.pem"), Some("/c.pem"), Some("/c.key"))
        );
        assert!(parse("rediss-sentinel://s1/main").unwrap().tls);
        assert!(!parse("redis+sentinel://s1/main").unwrap().tls);
        let err = parse("redis+sentinel://s1/main?ca_file=/ca.pem").unwrap_err();
        assert!(
            err.chain().contains("TLS is off"),
            "files without TLS are refused as for redis://: {}",
            err.chain()
        );
        let mut env = Settings::default();
        crate::config::apply_env(&mut env, |name| {
            match name {
                "ROUTINE_REDIS_SENTINELS" => Some("s1"),
                "ROUTINE_REDIS_SENTINEL_MASTER" => Some("main"),
                "ROUTINE_REDIS_CA_FILE" => Some("/ca.pem"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap();
        assert!(env.tls && env.sentinel.is_some());
        env.validate()
            .expect("Sentinel with TLS from the variables");
    }

    #[test]
    fn malformed_sentinel_urls_say_what_is_wrong() {
        for (url, expected) in [
            ("redis+sentinel://s1:26379,s2:26379", "no master name"),
            ("redis+sentinel://s1:26379/", "no master name"),
            ("redis+sentinel:///main", "no sentinel address"),
            ("redis+sentinel://s1:x/main", "not a number"),
            ("redis+sentinel://s1/main/two", "database"),
            ("redis+sentinel://s1/main/0/extra", "nothing may follow"),
            (
                "redis+sentinel://s1/main?tls=1",
                "unsupported URL parameter `tls`",
            ),
            (
                "redis+sentinel://s1/main?durable_replicas=x",
                "not a number of replicas",
            ),
        ] {
            let err = parse(url).unwrap_err();
            assert!(
                matches!(&err, Error::Config { .. }) && err.chain().contains(expected),
                "{url}: expected a config error containing {expected:?}, got {}",
                err.chain()
            );
        }
    }

    #[test]
    fn sentinel_variables_are_read_and_checked() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let mut settings = Settings::default();
        crate::config::apply_env(
            &mut settings,
            env(&[
                ("ROUTINE_REDIS_SENTINELS", "a:1, b"),
                ("ROUTINE_REDIS_SENTINEL_MASTER", "main"),
                ("ROUTINE_REDIS_DURABLE_REPLICAS", "1"),
            ]),
        )
        .unwrap();
        let sentinel = settings.sentinel.as_ref().unwrap();
        assert_eq!(sentinel.addresses(), "a:1,b:26379");
        assert_eq!(sentinel.master_name, "main");
        assert_eq!(
            settings.durability(),
            Durability::Replicas {
                count: 1,
                timeout: DEFAULT_WAIT_TIMEOUT
            }
        );
        let err = crate::config::apply_env(
            &mut Settings::default(),
            env(&[("ROUTINE_REDIS_SENTINELS", "a:1")]),
        )
        .unwrap_err();
        assert!(
            err.chain().contains("ROUTINE_REDIS_SENTINEL_MASTER"),
            "{}",
            err.chain()
        );
    }
}
