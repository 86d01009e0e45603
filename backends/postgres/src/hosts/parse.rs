//! Parsing a connection URL that may name several servers, as libpq writes it:
//! `postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write`, or the host list in
//! the query (`?host=h1,h2&port=5432,5433`), or in `PGHOST`/`PGPORT` when the URL names no
//! host.
//!
//! `sqlx` parses one host only, so the list is taken out here and every other part of the
//! URL is left to `sqlx`, which builds each server's connection options.

use std::str::FromStr;

use leasehold_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

use super::UrlParts;
use crate::config::Sourced;

/// The libpq parameter naming the kind of server wanted.
pub(crate) const TARGET_SESSION_ATTRS: &str = "target_session_attrs";
/// libpq's variable for the host (list) when the URL names none; `sqlx` reads it too.
const PGHOST: &str = "PGHOST";
/// libpq's variable for the port (list) when the URL names none.
const PGPORT: &str = "PGPORT";

/// The kind of server `target_session_attrs` asks for. Every accepted value leads to a
/// writable primary: the backend writes on each of its connections (heartbeats, fencing
/// rows, records), so it passes over standbys and read-only servers whatever the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionAttrs {
    /// `any`, libpq's default.
    Any,
    /// `read-write`.
    ReadWrite,
    /// `primary`.
    Primary,
}

/// One server of the list, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    /// A host name, an IP address (`[::1]` for IPv6) or a Unix socket directory.
    pub(crate) host: String,
    /// The port, if the entry names one; otherwise the URL's (or 5432).
    pub(crate) port: Option<u16>,
}

/// A URL split into the options `sqlx` parsed and the servers to try.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// Every setting but the servers: `sqlx`'s parse of the URL without its host list.
    pub(crate) base: PgConnectOptions,
    /// The servers to try in order; empty when the URL names one server, which `base`
    /// then holds as `sqlx` parsed it.
    pub(crate) hosts: Vec<HostEntry>,
    pub(crate) attrs: SessionAttrs,
}

/// Parses `url`, reading `PGHOST`/`PGPORT` through `env` when the URL names no host.
///
/// # Errors
///
/// [`Error::Config`] naming `url.setting` (or `PGHOST`/`PGPORT`) for a malformed URL or
/// list, a host and port list of different lengths, or a `target_session_attrs` that
/// asks for a standby or is unknown.
pub(crate) fn parse(url: &Sourced<String>, env: impl Fn(&str) -> Option<String>) -> Result<Parsed> {
    let setting = url.setting;
    let bad = |reason: String| Error::config(setting, reason);
    let parts = UrlParts::split(&url.value)
        .ok_or_else(|| bad("not a valid URL: no scheme such as postgres://".to_owned()))?;
    let scheme = parts.scheme;
    if !matches!(
        scheme.to_ascii_lowercase().as_str(),
        "postgres" | "postgresql"
    ) {
        return Err(bad(format!(
            "the scheme must be postgres:// or postgresql://, not {scheme}://"
        )));
    }
    let mut hosts: Vec<HostEntry> = Vec::new();
    let mut first = parts.hosts;
    if parts.hosts.contains(',') {
        hosts = parts
            .hosts
            .split(',')
            .map(|entry| host_entry(entry, setting))
            .collect::<Result<_>>()?;
        // Without its port, so that the URL's default port (PGPORT, else 5432) stays
        // for the entries that name none.
        first = hosts.first().map_or("", |entry| entry.host.as_str());
    }
    let single = parts.with_hosts(first);
    let mut parsed = url::Url::parse(&single)
        .map_err(|err| Error::config_with_source(setting, "not a valid URL", err))?;

    let mut attrs = SessionAttrs::Any;
    let mut query_hosts = None;
    let mut query_ports = None;
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match &*key {
            TARGET_SESSION_ATTRS => attrs = session_attrs(&value, setting)?,
            "host" if value.contains(',') => query_hosts = Some(value.into_owned()),
            "port" if value.contains(',') => query_ports = Some(value.into_owned()),
            "hostaddr" if value.contains(',') => {
                return Err(bad(
                    "hostaddr lists are not supported: list the servers in host".to_owned(),
                ));
            }
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let base = PgConnectOptions::from_str(parsed.as_str())
        .map_err(|err| Error::config_with_source(setting, "not a valid PostgreSQL URL", err))?;

    let names_host = !first.is_empty() || parsed.query_pairs().any(|(key, _)| key == "host");
    let mut ports_setting = setting;
    if let Some(list) = query_hosts {
        hosts = list
            .split(',')
            .map(|host| plain_host(host, setting))
            .collect::<Result<_>>()?;
    } else if hosts.is_empty() && !names_host {
        // sqlx reads PGHOST itself, but takes a list for one host name.
        if let Some(list) = env(PGHOST).filter(|list| list.contains(',')) {
            hosts = list
                .split(',')
                .map(|host| plain_host(host, PGHOST))
                .collect::<Result<_>>()?;
        }
        if query_ports.is_none()
            && let Some(list) = env(PGPORT).filter(|list| list.contains(','))
        {
            query_ports = Some(list);
            ports_setting = PGPORT;
        }
    }
    if let Some(list) = query_ports {
        let ports = list
            .split(',')
            .map(|port| {
                port.trim().parse::<u16>().map_err(|err| {
                    let reason = format!("{port:?} in the port list {list:?} is not a port");
                    Error::config_with_source(ports_setting, reason, err)
                })
            })
            .collect::<Result<Vec<u16>>>()?;
        let count = hosts.len().max(1);
        if ports.len() != count {
            return Err(Error::config(
                ports_setting,
                format!(
                    "the port list {list:?} has {} ports for {count} hosts: give one port for \
                     all, or one per host",
                    ports.len()
                ),
            ));
        }
        if hosts.is_empty() {
            // One host (the URL's or the default) and a list of one port is not a list.
            hosts.push(HostEntry {
                host: base.get_host().to_owned(),
                port: None,
            });
        }
        for (entry, port) in hosts.iter_mut().zip(ports) {
            entry.port = Some(port);
        }
    }
    if hosts.len() == 1 {
        let entry = hosts.remove(0);
        return Ok(Parsed {
            base: apply(base, &entry),
            hosts,
            attrs,
        });
    }
    Ok(Parsed { base, hosts, attrs })
}

/// `base` aimed at `entry`: a host, or a Unix socket directory.
pub(crate) fn apply(base: PgConnectOptions, entry: &HostEntry) -> PgConnectOptions {
    let options = if entry.host.starts_with('/') {
        base.socket(&entry.host)
    } else {
        base.host(&entry.host)
    };
    match entry.port {
        Some(port) => options.port(port),
        None => options,
    }
}

/// One `host[:port]` of the URL's authority.
fn host_entry(entry: &str, setting: &'static str) -> Result<HostEntry> {
    let bad = |detail: String| {
        Error::config(
            setting,
            format!("{entry:?} in the URL's host list is not host[:port]{detail}"),
        )
    };
    if entry.is_empty() {
        return Err(bad(": the list has an empty entry".to_owned()));
    }
    let parsed =
        url::Url::parse(&format!("postgres://{entry}/")).map_err(|err| bad(format!(" ({err})")))?;
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| bad(String::new()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            ": only the first host may follow the user name".to_owned()
        ));
    }
    Ok(HostEntry {
        host: host.to_owned(),
        port: parsed.port(),
    })
}

/// One host of a `host=` parameter or `PGHOST`: no port.
fn plain_host(host: &str, setting: &'static str) -> Result<HostEntry> {
    let host = host.trim();
    if host.is_empty() || host.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::config(
            setting,
            format!("the host list has an empty or malformed entry {host:?}"),
        ));
    }
    Ok(HostEntry {
        host: host.to_owned(),
        port: None,
    })
}

fn session_attrs(value: &str, setting: &'static str) -> Result<SessionAttrs> {
    match value {
        "any" => Ok(SessionAttrs::Any),
        "read-write" => Ok(SessionAttrs::ReadWrite),
        "primary" => Ok(SessionAttrs::Primary),
        "read-only" | "standby" | "prefer-standby" => Err(Error::config(
            setting,
            format!(
                "{TARGET_SESSION_ATTRS}={value} asks for a standby, but the lock session \
                 writes (heartbeats, fencing rows) and needs a primary: use read-write, \
                 primary or any"
            ),
        )),
        other => Err(Error::config(
            setting,
            format!(
                "{TARGET_SESSION_ATTRS}={other:?} is not a value libpq knows (any, read-write, \
                 primary, read-only, standby, prefer-standby); this backend accepts any, \
                 read-write and primary"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(url: &str, env: &[(&str, &str)]) -> Result<Parsed> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&Sourced::new(url.to_owned(), "url"), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn servers(parsed: &Parsed) -> Vec<(String, u16)> {
        parsed
            .hosts
            .iter()
            .map(|entry| {
                let options = apply(parsed.base.clone(), entry);
                (options.get_host().to_owned(), options.get_port())
            })
            .collect()
    }

    fn config_error(result: Result<Parsed>) -> (String, String) {
        match result {
            Err(Error::Config {
                setting, reason, ..
            }) => (setting, reason),
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn a_host_list_in_the_url_keeps_each_port_and_every_other_setting() {
        let parsed = parse_with(
            "postgres://app:pw@h1:5433,[::1],h3:7000/db?target_session_attrs=read-write\
             &application_name=x",
            &[],
        )
        .unwrap();
        assert_eq!(parsed.attrs, SessionAttrs::ReadWrite);
        assert_eq!(
            servers(&parsed),
            [
                ("h1".to_owned(), 5433),
                ("[::1]".to_owned(), 5432),
                ("h3".to_owned(), 7000)
            ]
        );
        assert_eq!(parsed.base.get_username(), "app");
        assert_eq!(parsed.base.get_database(), Some("db"));
        assert_eq!(parsed.base.get_application_name(), Some("x"));
    }

    #[test]
    fn a_host_list_in_the_query_takes_one_port_or_one_per_host() {
        let parsed = parse_with("postgres:///db?host=a,b&port=1,2", &[]).unwrap();
        assert_eq!(servers(&parsed), [("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let parsed = parse_with("postgres:///db?host=a,/run/pg&port=7", &[]).unwrap();
        assert_eq!(parsed.hosts.len(), 2);
        assert_eq!(parsed.hosts[1].host, "/run/pg");
        assert!(parsed.hosts.iter().all(|entry| entry.port.is_none()));
        assert_eq!(
            parsed.base.get_port(),
            7,
            "a single port is the URL's, for all"
        );
    }

    #[test]
    fn pghost_and_pgport_lists_apply_when_the_url_names_no_host() {
        let env = [(PGHOST, "a,b"), (PGPORT, "1,2")];
        let parsed = parse_with("postgres:///db", &env).unwrap();
        assert_eq!(servers(&parsed), [("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let parsed = parse_with("postgres://h/db", &env).unwrap();
        assert!(parsed.hosts.is_empty(), "the URL's host wins over PGHOST");
        let (setting, _) = config_error(parse_with("postgres:///db", &[(PGHOST, "a,,b")]));
        assert_eq!(setting, PGHOST);
        let (setting, _) = config_error(parse_with(
            "postgres:///db",
            &[(PGHOST, "a,b"), (PGPORT, "1,2,3")],
        ));
        assert_eq!(setting, PGPORT);
    }

    #[test]
    fn one_server_is_parsed_as_sqlx_parses_it() {
        let parsed = parse_with("postgres://u@h:6000/db?target_session_attrs=primary", &[]);
        let parsed = parsed.unwrap();
        assert!(parsed.hosts.is_empty());
        assert_eq!(parsed.attrs, SessionAttrs::Primary);
        assert_eq!(
            (parsed.base.get_host(), parsed.base.get_port()),
            ("h", 6000)
        );
        let parsed = parse_with("postgres://u@h/db", &[]).unwrap();
        assert_eq!(parsed.attrs, SessionAttrs::Any, "libpq's default");
    }

    #[test]
    fn bad_lists_are_config_errors_naming_the_url_setting() {
        for url in [
            "postgres://h1,,h2/db",
            "postgres://h1,/db",
            "postgres://h1:5432,h2:99999/db",
            "postgres://h1,h2:port/db",
            "postgres:///db?host=a,b&port=1,2,3",
            "postgres:///db?host=a,b&port=1,x",
            "postgres://h1:1,h2:2/db?port=1,2,3",
            "postgres://h/db?port=1,2",
            "postgres:///db?hostaddr=10.0.0.1,10.0.0.2",
            "mysql://h1,h2/db",
            "h1,h2",
        ] {
            let (setting, reason) = config_error(parse_with(url, &[]));
            assert_eq!(setting, "url", "{url}: {reason}");
        }
    }

    #[test]
    fn target_session_attrs_asking_for_a_standby_or_unknown_are_config_errors() {
        for value in ["read-only", "standby", "prefer-standby", "writable", ""] {
            let url = format!("postgres://h1,h2/db?target_session_attrs={value}");
            let (setting, reason) = config_error(parse_with(&url, &[]));
            assert_eq!(setting, "url");
            assert!(
                reason.contains(TARGET_SESSION_ATTRS),
                "the reason must name the parameter: {reason}"
            );
        }
    }
}
