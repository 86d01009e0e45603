//! Reading settings from `etcd://` URLs and `ROUTINE_ETCD_*` environment variables, and
//! checking them.

use std::path::PathBuf;
use std::time::Duration;

use crate::key;
use crate::settings::{ConfigError, Credentials, DEFAULT_KEY_PREFIX, Settings};

/// The etcd client port, used when an endpoint names none.
const DEFAULT_PORT: u16 = 2379;

/// The setting named in errors about URLs.
const URL: &str = "etcd URL";

fn bad(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

/// Looks a variable up in the process environment. Empty values count as unset, as
/// container tooling often sets variables to `""` to mean "not configured".
pub(crate) fn process_env(name: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(bad(name, "value is not valid UTF-8")),
    }
}

/// Applies the variables `lookup` finds to `settings`.
pub(crate) fn apply_env(
    settings: &mut Settings,
    lookup: &dyn Fn(&str) -> Result<Option<String>, ConfigError>,
) -> Result<(), ConfigError> {
    if let Some(value) = lookup("ROUTINE_ETCD_ENDPOINTS")? {
        let endpoints: Vec<String> = value.split(',').map(|e| e.trim().to_owned()).collect();
        for endpoint in &endpoints {
            check_endpoint(endpoint).map_err(|reason| bad("ROUTINE_ETCD_ENDPOINTS", reason))?;
        }
        settings.endpoints = endpoints;
    }
    match (
        lookup("ROUTINE_ETCD_USER")?,
        lookup("ROUTINE_ETCD_PASSWORD")?,
    ) {
        (Some(user), Some(password)) => settings.user = Some(Credentials::new(user, password)),
        (Some(_), None) => {
            return Err(bad(
                "ROUTINE_ETCD_PASSWORD",
                "must be set when ROUTINE_ETCD_USER is",
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "ROUTINE_ETCD_USER",
                "must be set when ROUTINE_ETCD_PASSWORD is",
            ));
        }
        (None, None) => {}
    }
    if let Some(value) = lookup("ROUTINE_ETCD_TLS")? {
        settings.tls.enabled = parse_bool(&value).map_err(|r| bad("ROUTINE_ETCD_TLS", r))?;
    }
    let path = |name: &str| lookup(name).map(|v| v.map(PathBuf::from));
    if let Some(ca) = path("ROUTINE_ETCD_CA_FILE")? {
        settings.tls.ca_file = Some(ca);
    }
    if let Some(cert) = path("ROUTINE_ETCD_CERT_FILE")? {
        settings.tls.cert_file = Some(cert);
    }
    if let Some(key) = path("ROUTINE_ETCD_KEY_FILE")? {
        settings.tls.key_file = Some(key);
    }
    if let Some(domain) = lookup("ROUTINE_ETCD_TLS_DOMAIN")? {
        settings.tls.domain = Some(domain);
    }
    if let Some(prefix) = lookup("ROUTINE_ETCD_KEY_PREFIX")? {
        key::check_prefix(&prefix).map_err(|r| bad("ROUTINE_ETCD_KEY_PREFIX", r))?;
        settings.key_prefix = prefix;
    }
    for (name, slot) in [
        (
            "ROUTINE_ETCD_REQUEST_TIMEOUT",
            &mut settings.request_timeout,
        ),
        (
            "ROUTINE_ETCD_CONNECT_TIMEOUT",
            &mut settings.connect_timeout,
        ),
    ] {
        if let Some(value) = lookup(name)? {
            *slot = parse_duration(&value).map_err(|r| bad(name, r))?;
        }
    }
    Ok(())
}

/// Applies an `etcd://` URL: see `EtcdBackend::from_url` for the form. Errors never
/// quote the URL, which may hold a password.
pub(crate) fn apply_url(settings: &mut Settings, url: &str) -> Result<(), ConfigError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("etcds://") {
        (true, rest)
    } else {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        return Err(bad(
            URL,
            format!("scheme must be `etcd://` or `etcds://`, not `{scheme}://`"),
        ));
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo
            .split_once(':')
            .ok_or_else(|| bad(URL, "user name without a password (`user:password@`)"))?;
        let user = percent_decode(user).map_err(|r| bad(URL, format!("user name: {r}")))?;
        let password = percent_decode(password).map_err(|r| bad(URL, format!("password: {r}")))?;
        if user.is_empty() {
            return Err(bad(URL, "password without a user name"));
        }
        settings.user = Some(Credentials::new(user, password));
    }
    if hosts.is_empty() {
        return Err(bad(URL, "no host"));
    }
    let endpoints: Vec<String> = hosts.split(',').map(str::to_owned).collect();
    for endpoint in &endpoints {
        if endpoint.contains("://") {
            return Err(bad(URL, "hosts must not carry a scheme"));
        }
        check_endpoint(endpoint).map_err(|reason| bad(URL, reason))?;
    }
    settings.endpoints = endpoints;
    settings.tls.enabled |= tls;
    if !path.is_empty() {
        let prefix = percent_decode(path).map_err(|r| bad(URL, format!("key prefix: {r}")))?;
        key::check_prefix(&prefix).map_err(|r| bad(URL, format!("key prefix {r}")))?;
        settings.key_prefix = prefix;
    }
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(|r| bad(URL, format!("`{name}`: {r}")))?;
        let param = |reason: String| bad(URL, format!("query parameter `{name}`: {reason}"));
        match name {
            "tls" => settings.tls.enabled = parse_bool(&value).map_err(param)?,
            "ca_file" => settings.tls.ca_file = Some(value.into()),
            "cert_file" => settings.tls.cert_file = Some(value.into()),
            "key_file" => settings.tls.key_file = Some(value.into()),
            "tls_domain" => settings.tls.domain = Some(value),
            "request_timeout" => {
                settings.request_timeout = parse_duration(&value).map_err(param)?
            }
            "connect_timeout" => {
                settings.connect_timeout = parse_duration(&value).map_err(param)?
            }
            _ => return Err(param("unknown parameter".to_owned())),
        }
    }
    Ok(())
}

/// Checks settings that were set one by one, before connecting.
pub(crate) fn validate(settings: &Settings) -> Result<(), ConfigError> {
    endpoint_uris(settings)?;
    if settings.key_prefix.is_empty() {
        return Err(bad(
            "key_prefix",
            format!("must not be empty (the default is `{DEFAULT_KEY_PREFIX}`)"),
        ));
    }
    key::check_prefix(&settings.key_prefix).map_err(|r| bad("key_prefix", r))?;
    for (name, timeout) in [
        ("request_timeout", settings.request_timeout),
        ("connect_timeout", settings.connect_timeout),
    ] {
        if timeout.is_zero() {
            return Err(bad(name, "must be greater than zero"));
        }
    }
    let tls = &settings.tls;
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(bad(
            "cert_file/key_file",
            "a client certificate needs both the certificate and the key file",
        ));
    }
    let wants_tls = tls.enabled || tls.ca_file.is_some() || tls.cert_file.is_some();
    if wants_tls && cfg!(not(feature = "tls")) {
        return Err(bad(
            "tls",
            "TLS was asked for but leasehold-etcd was built without its `tls` feature",
        ));
    }
    Ok(())
}

/// The endpoints as URIs with a scheme, and whether TLS is on (it is if asked for or if
/// any endpoint says `https://`).
pub(crate) fn endpoint_uris(settings: &Settings) -> Result<(Vec<String>, bool), ConfigError> {
    if settings.endpoints.is_empty() {
        return Err(bad("endpoints", "no endpoint given"));
    }
    let https = settings.endpoints.iter().any(|e| e.starts_with("https://"));
    let http = settings.endpoints.iter().any(|e| e.starts_with("http://"));
    let tls = settings.tls.enabled || https;
    if http && tls {
        return Err(bad(
            "endpoints",
            "`http://` endpoint given while TLS is on; use `https://` or no scheme",
        ));
    }
    let mut uris = Vec::with_capacity(settings.endpoints.len());
    for endpoint in &settings.endpoints {
        check_endpoint(endpoint).map_err(|reason| bad("endpoints", reason))?;
        let bare = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .unwrap_or(endpoint);
        let with_port = if has_port(bare) {
            bare.to_owned()
        } else {
            format!("{bare}:{DEFAULT_PORT}")
        };
        let scheme = if tls { "https" } else { "http" };
        uris.push(format!("{scheme}://{with_port}"));
    }
    Ok((uris, tls))
}

/// Checks one `[scheme://]host[:port]` endpoint; the error says what is wrong.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let bare = match endpoint.split_once("://") {
        Some(("http" | "https", bare)) => bare,
        Some((scheme, _)) => {
            return Err(format!(
                "endpoint scheme must be http or https, not `{scheme}`"
            ));
        }
        None => endpoint,
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.is_empty() {
        return Err("empty endpoint".to_owned());
    }
    if bare.contains(['/', '@', '?', ' ']) {
        return Err(format!("endpoint `{bare}` is not `host[:port]`"));
    }
    let host = if bare.starts_with('[') {
        let end = bare
            .find(']')
            .ok_or_else(|| format!("endpoint `{bare}`: unclosed `[`"))?;
        let after = &bare[end + 1..];
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!("endpoint `{bare}` is not `[ipv6]:port`"));
        }
        &bare[..=end]
    } else {
        bare.split_once(':').map_or(bare, |(host, _)| host)
    };
    if host.is_empty() {
        return Err(format!("endpoint `{bare}` has no host"));
    }
    if has_port(bare) {
        let port = &bare[bare.rfind(':').map_or(bare.len(), |at| at + 1)..];
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(format!("endpoint `{bare}`: port `{port}` is not 1-65535")),
        }
    }
    Ok(())
}

/// Whether `host[:port]` (or `[v6]:port`) names a port.
fn has_port(bare: &str) -> bool {
    match bare.rfind(']') {
        Some(end) => bare[end..].contains(':'),
        None => bare.contains(':'),
    }
}

/// Parses `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not a boolean (true/false)")),
    }
}

/// Parses a humantime duration (`500ms`, `2s`, `1m 30s`) greater than zero.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value.trim())
        .map_err(|err| format!("`{value}` is not a duration like `2s` or `500ms`: {err}"))?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// Decodes `%XX` escapes (URL user info and paths; `+` stays `+`).
fn percent_decode(input: &str) -> Result<String, String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent escapes do not decode to UTF-8".to_owned())
}

#[cfg(test)]
mod tests;
