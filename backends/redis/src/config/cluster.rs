//! Redis Cluster settings: the `redis+cluster://` URL and the `ROUTINE_REDIS_CLUSTER_NODES`
//! variable.
//!
//! The Redis ecosystem has no standard URL for a cluster (clients take a list of seed
//! nodes); this one follows the Sentinel URL's shape: `redis+cluster://[user[:password]@]
//! host1:port,host2:port,...[/][?parameters]`, or `rediss+cluster://` for TLS. The nodes
//! are seeds: the client reads the slot layout from the first that answers and follows it.

use leasehold_core::{Error, Result};

use super::{Settings, sentinel};

/// The seed nodes of a Redis Cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClusterSettings {
    pub(crate) nodes: Vec<(String, u16)>,
}

impl ClusterSettings {
    /// `host:port,host:port,...`, for logs, `Debug` and errors.
    pub(crate) fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|(host, port)| sentinel::address(host, *port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::config(
                "cluster_nodes",
                "no cluster node address is given",
            ));
        }
        Ok(())
    }
}

/// Whether `url` is a cluster URL (`redis+cluster://` or `rediss+cluster://`).
pub(crate) fn is_cluster_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "redis+cluster" | "rediss+cluster"
    )
}

/// Parses `redis+cluster://[user[:password]@]host1[:port],host2[:port][/][?...]` (or
/// `rediss+cluster://`) into `settings`; `setting` names the URL in errors, which never
/// echo it (it may hold a password).
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
    let nodes = parse_nodes(hosts).map_err(bad)?;
    match path.trim_matches('/') {
        "" | "0" => {}
        _ => {
            return Err(bad(
                "a cluster URL takes no path: Redis Cluster has database 0 only \
                 (redis+cluster://host1:6379,host2:6379)"
                    .to_owned(),
            ));
        }
    }
    settings.tls = scheme.eq_ignore_ascii_case("rediss+cluster");
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value, "parameter")?;
        let file = || crate::tls::path(name, &value);
        match name {
            "ca_file" => settings.tls_files.ca_file = Some(file()?),
            "cert_file" => settings.tls_files.cert_file = Some(file()?),
            "key_file" => settings.tls_files.key_file = Some(file()?),
            _ => match sentinel::apply_param(settings, name, &value) {
                Some(applied) => applied?,
                None => return Err(bad(format!("unsupported URL parameter `{name}`"))),
            },
        }
    }
    settings.db = 0;
    settings.sentinel = None;
    settings.cluster = Some(ClusterSettings { nodes });
    Ok(())
}

/// Reads `ROUTINE_REDIS_CLUSTER_NODES`: the cluster's seed nodes, instead of `REDIS_HOSTS`.
pub(crate) fn apply_env(
    settings: &mut Settings,
    mut var: impl FnMut(&str) -> Option<String>,
) -> Result<()> {
    const VARIABLE: &str = "ROUTINE_REDIS_CLUSTER_NODES";
    let Some(nodes) = var(VARIABLE) else {
        return Ok(());
    };
    if settings.sentinel.is_some() {
        return Err(Error::config(
            VARIABLE,
            "ROUTINE_REDIS_SENTINELS is set too: choose Sentinel or Cluster",
        ));
    }
    settings.cluster = Some(ClusterSettings {
        nodes: parse_nodes(&nodes).map_err(|reason| Error::config(VARIABLE, reason))?,
    });
    Ok(())
}

/// `host[:port]` entries separated by commas; the port defaults to 6379.
pub(crate) fn parse_nodes(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut nodes = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        nodes.push(super::parse_host_port(entry).map_err(|reason| format!("`{entry}`: {reason}"))?);
    }
    if nodes.is_empty() {
        return Err("no cluster node address is given (host1:6379,host2:6379,...)".to_owned());
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Password;

    fn parse(url: &str) -> Result<Settings> {
        let mut settings = Settings::default();
        crate::config::apply_url(&mut settings, url, "url")?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn a_cluster_url_gives_the_seed_nodes_and_credentials() {
        let settings = parse(
            "redis+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/?durable_replicas=1",
        )
        .unwrap();
        let cluster = settings.cluster.as_ref().unwrap();
        assert_eq!(
            cluster.nodes,
            [
                ("10.0.0.1".to_owned(), 7000),
                ("10.0.0.2".to_owned(), 6379),
                ("::1".to_owned(), 7002),
            ]
        );
        assert_eq!(
            cluster.addresses(),
            "10.0.0.1:7000,10.0.0.2:6379,[::1]:7002"
        );
        assert_eq!(settings.username.as_deref(), Some("app"));
        assert_eq!(settings.password, Some(Password("p@ss".into())));
        assert_eq!(settings.durable_replicas, 1);
        assert!(!settings.tls);
        assert!(parse("rediss+cluster://a:1,b:2").unwrap().tls);
        assert!(parse("REDIS+CLUSTER://a:1").is_ok());
    }

    #[test]
    fn malformed_cluster_urls_say_what_is_wrong() {
        for (url, expected) in [
            ("redis+cluster://", "no cluster node address"),
            ("redis+cluster:///", "no cluster node address"),
            ("redis+cluster://a:x", "not a number"),
            ("redis+cluster://a:1/2", "database 0 only"),
            ("redis+cluster://a:1?db=1", "unsupported URL parameter `db`"),
            ("redis+cluster://a:1?ca_file=/x", "TLS is off"),
            ("redis+cluster://a:1#x", "fragments"),
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
    fn the_cluster_variable_is_read_and_checked() {
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
            env(&[("ROUTINE_REDIS_CLUSTER_NODES", "a:7000, b:7001")]),
        )
        .unwrap();
        settings.validate().unwrap();
        assert_eq!(
            settings.cluster.as_ref().unwrap().addresses(),
            "a:7000,b:7001"
        );
        for (vars, expected) in [
            (
                &[("ROUTINE_REDIS_CLUSTER_NODES", "a:0")][..],
                "ROUTINE_REDIS_CLUSTER_NODES",
            ),
            (
                &[
                    ("ROUTINE_REDIS_CLUSTER_NODES", "a:7000"),
                    ("ROUTINE_REDIS_SENTINELS", "s:26379"),
                    ("ROUTINE_REDIS_SENTINEL_MASTER", "main"),
                ][..],
                "choose Sentinel or Cluster",
            ),
            (
                &[("ROUTINE_REDIS_CLUSTER_NODES", "a:7000"), ("REDIS_DB", "2")][..],
                "database 0 only",
            ),
        ] {
            let mut settings = Settings::default();
            let err = crate::config::apply_env(&mut settings, env(vars))
                .and_then(|()| settings.validate())
                .unwrap_err();
            assert!(
                matches!(&err, Error::Config { .. }) && err.chain().contains(expected),
                "expected a config error containing {expected:?}, got {}",
                err.chain()
            );
        }
    }
}
