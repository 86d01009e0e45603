//! Unit tests of URL and environment parsing (no server needed).

use std::collections::HashMap;

use super::*;

fn from_url(url: &str) -> Result<Settings> {
    let mut settings = Settings::default();
    apply_url(&mut settings, url, "url")?;
    Ok(settings)
}

fn from_env(vars: &[(&str, &str)]) -> Result<Settings> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut settings = Settings::default();
    apply_env(&mut settings, |name| vars.get(name).cloned())?;
    Ok(settings)
}

fn config_error(result: Result<Settings>) -> (String, String) {
    match result {
        Err(Error::Config {
            setting, reason, ..
        }) => (setting, reason),
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn url_with_user_password_and_db_is_parsed() {
    let s = from_url("redis://app:p%40ss@cache.internal:6380/3").unwrap();
    assert_eq!(
        (s.host.as_str(), s.port, s.db, s.tls),
        ("cache.internal", 6380, 3, false)
    );
    assert_eq!(s.username.as_deref(), Some("app"));
    assert_eq!(
        s.password,
        Some(Password("p@ss".to_owned())),
        "password is percent-decoded"
    );
}

#[test]
fn rediss_url_enables_tls_and_defaults_port_and_db() {
    let s = from_url("rediss://:secret@[::1]").unwrap();
    assert!(s.tls, "rediss:// must enable TLS");
    assert_eq!((s.host.as_str(), s.port, s.db), ("::1", 6379, 0));
    assert_eq!(s.username, None);
}

#[test]
fn malformed_urls_are_config_errors_naming_the_url() {
    for (url, needle) in [
        ("not a url", "not a valid URL"),
        ("http://host:6379", "unsupported scheme `http`"),
        ("redis://host:6379/two", "`two` is not a database number"),
        ("redis://host:6379/-1", "`-1` is not a database number"),
        (
            "redis://host:6379/0?protocol=resp3",
            "unsupported URL parameter `protocol`",
        ),
        ("rediss://host:6379/#insecure", "fragments"),
        ("redis://:6379", "not a valid URL"),
    ] {
        let (setting, reason) = config_error(from_url(url));
        assert_eq!(setting, "url", "error for {url:?} must name the setting");
        assert!(
            reason.contains(needle),
            "error for {url:?} must say {needle:?}: {reason}"
        );
    }
}

#[test]
fn url_errors_never_echo_the_password() {
    let err = from_url("redis://:hunter2@host:6379/x").unwrap_err();
    assert!(
        !format!("{err} {err:?}").contains("hunter2"),
        "the password leaked into the error: {err:?}"
    );
}

#[test]
fn env_defaults_are_the_go_defaults() {
    let s = from_env(&[]).unwrap();
    assert_eq!((s.host.as_str(), s.port, s.db), ("redis", 6379, 0));
    assert_eq!(s.password, None);
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.request_timeout, Duration::from_secs(3));
    assert_eq!(s.namespace, "routine");
}

#[test]
fn env_reads_first_host_password_db_and_go_durations() {
    let s = from_env(&[
        ("REDIS_HOSTS", " cache-a:7000 , cache-b:7001"),
        ("REDIS_PASSWORD", "pw"),
        ("REDIS_DB", "4"),
        ("REDIS_DIAL_TIMEOUT", "1500ms"),
        ("REDIS_READ_TIMEOUT", "2s"),
        ("REDIS_WRITE_TIMEOUT", "500ms"),
    ])
    .unwrap();
    assert_eq!(
        (s.host.as_str(), s.port, s.db),
        ("cache-a", 7000, 4),
        "first host is used"
    );
    assert_eq!(s.password, Some(Password("pw".to_owned())));
    assert_eq!(s.connect_timeout, Duration::from_millis(1500));
    assert_eq!(
        s.request_timeout,
        Duration::from_secs(2),
        "larger of read and write"
    );
}

#[test]
fn redis_hosts_note_fits_the_mode() {
    let hosts = ("REDIS_HOSTS", "node-a:7000,node-b:7000,node-c:7000");
    let note = |vars: &[(&str, &str)]| {
        let settings = from_env(vars).unwrap();
        let given = vars.iter().any(|(name, _)| *name == "REDIS_HOSTS");
        let ignored = vars
            .iter()
            .find(|(name, _)| *name == "REDIS_HOSTS")
            .map_or(0, |(_, list)| list.split(',').count() - 1);
        hosts_note(&settings, given, ignored)
    };
    let single = note(&[hosts]).unwrap();
    assert!(single.contains("uses the first only"), "{single}");
    let cluster = note(&[hosts, ("ROUTINE_REDIS_CLUSTER_NODES", "node-a:7000")]).unwrap();
    assert!(
        cluster.contains("not used in Redis Cluster mode") && !cluster.contains("first only"),
        "{cluster}"
    );
    let sentinel = note(&[
        hosts,
        ("ROUTINE_REDIS_SENTINELS", "s1"),
        ("ROUTINE_REDIS_SENTINEL_MASTER", "main"),
    ])
    .unwrap();
    assert!(sentinel.contains("not used in Sentinel mode"), "{sentinel}");
    assert_eq!(note(&[("REDIS_HOSTS", "one:6379")]), None);
    assert_eq!(
        note(&[("ROUTINE_REDIS_CLUSTER_NODES", "node-a:7000")]),
        None,
        "the default REDIS_HOSTS is not worth a warning"
    );
}

#[test]
fn env_host_without_port_and_ipv6_host_are_accepted() {
    let s = from_env(&[("REDIS_HOSTS", "cache")]).unwrap();
    assert_eq!((s.host.as_str(), s.port), ("cache", 6379));
    let s = from_env(&[("REDIS_HOSTS", "[::1]:7000")]).unwrap();
    assert_eq!((s.host.as_str(), s.port), ("::1", 7000));
}

#[test]
fn bad_env_values_are_config_errors_naming_the_variable() {
    for (name, value, needle) in [
        ("REDIS_HOSTS", "cache:port", "port `port`"),
        ("REDIS_HOSTS", ":6379", "host is empty"),
        ("REDIS_HOSTS", "::1:6379", "brackets"),
        ("REDIS_DB", "two", "`two` is not a database number"),
        ("REDIS_DB", "-1", "`-1` is not a database number"),
        ("REDIS_DIAL_TIMEOUT", "5", "`5` is not a duration"),
        ("REDIS_READ_TIMEOUT", "fast", "`fast` is not a duration"),
        ("REDIS_WRITE_TIMEOUT", "0s", "greater than zero"),
    ] {
        let (setting, reason) = config_error(from_env(&[(name, value)]));
        assert_eq!(
            setting, name,
            "error for {name}={value:?} must name the variable"
        );
        assert!(
            reason.contains(needle),
            "error for {name}={value:?} must say {needle:?}: {reason}"
        );
    }
}

#[test]
fn password_is_redacted_in_debug() {
    let s = Settings {
        password: Some(Password("hunter2".to_owned())),
        ..Settings::default()
    };
    let shown = format!("{s:?}");
    assert!(!shown.contains("hunter2"), "password shown: {shown}");
    assert!(
        shown.contains("<redacted>"),
        "redaction not marked: {shown}"
    );
}

#[test]
fn builder_settings_are_validated() {
    let s = Settings {
        namespace: "my app".to_owned(),
        ..Settings::default()
    };
    let (setting, _) = config_error(s.validate().map(|()| Settings::default()));
    assert_eq!(setting, "namespace");
    let s = Settings {
        request_timeout: Duration::ZERO,
        ..Settings::default()
    };
    let (setting, reason) = config_error(s.validate().map(|()| Settings::default()));
    assert_eq!(setting, "request_timeout");
    assert!(reason.contains("greater than zero"));
}

#[test]
fn rediss_url_takes_the_tls_files_as_parameters() {
    let s = from_url(
        "rediss://cache.internal:6380/1?ca_file=/etc/ssl/ca.pem\
         &cert_file=/etc/ssl/app%20one.pem&key_file=/etc/ssl/app.key",
    )
    .unwrap();
    assert!(s.tls);
    let path = |file: &Option<crate::tls::TlsFile>| {
        file.as_ref()
            .map(|file| (file.path.display().to_string(), file.setting.clone()))
    };
    assert_eq!(
        path(&s.tls_files.ca_file),
        Some(("/etc/ssl/ca.pem".to_owned(), "ca_file".to_owned()))
    );
    assert_eq!(
        path(&s.tls_files.cert_file),
        Some(("/etc/ssl/app one.pem".to_owned(), "cert_file".to_owned())),
        "parameters are percent-decoded"
    );
    assert_eq!(
        path(&s.tls_files.key_file),
        Some(("/etc/ssl/app.key".to_owned(), "key_file".to_owned()))
    );
    s.validate().unwrap();
}

#[test]
fn tls_files_without_tls_or_half_a_client_identity_are_refused() {
    let plain = from_url("redis://cache.internal?ca_file=/etc/ssl/ca.pem").unwrap();
    let (setting, reason) = config_error(plain.validate().map(|()| plain.clone()));
    assert_eq!(setting, "tls");
    assert!(reason.contains("rediss://"), "says what to use: {reason}");

    let half = from_url("rediss://cache.internal?cert_file=/etc/ssl/app.pem").unwrap();
    let (setting, _) = config_error(half.validate().map(|()| half.clone()));
    assert_eq!(setting, "cert_file/key_file");

    let (setting, reason) = config_error(from_url("rediss://cache.internal?ca_file="));
    assert_eq!(
        (setting.as_str(), reason.as_str()),
        ("ca_file", "the path is empty")
    );
}

#[test]
fn env_tls_files_turn_tls_on_and_name_their_variable() {
    let s = from_env(&[
        ("REDIS_HOSTS", "cache.internal:6380"),
        ("ROUTINE_REDIS_CA_FILE", "/etc/ssl/ca.pem"),
        ("ROUTINE_REDIS_CERT_FILE", "/etc/ssl/app.pem"),
        ("ROUTINE_REDIS_KEY_FILE", "/etc/ssl/app.key"),
    ])
    .unwrap();
    assert!(s.tls, "a CA file turns TLS on");
    let ca = s.tls_files.ca_file.as_ref().unwrap();
    assert_eq!(
        ca.setting, "ROUTINE_REDIS_CA_FILE",
        "errors name the variable"
    );
    assert_eq!(
        s.tls_files.key_file.as_ref().unwrap().setting,
        "ROUTINE_REDIS_KEY_FILE"
    );
    s.validate().unwrap();

    assert!(from_env(&[("ROUTINE_REDIS_TLS", "true")]).unwrap().tls);
    assert!(!from_env(&[]).unwrap().tls, "TLS is off by default");
    let (setting, _) = config_error(from_env(&[("ROUTINE_REDIS_TLS", "maybe")]));
    assert_eq!(setting, "ROUTINE_REDIS_TLS");
}

#[test]
fn debug_shows_the_tls_file_paths_not_their_contents() {
    let mut s = Settings::default();
    apply_url(
        &mut s,
        "rediss://:secret@host?ca_file=/etc/ssl/ca.pem",
        "url",
    )
    .unwrap();
    let debug = format!("{s:?}");
    assert!(debug.contains("/etc/ssl/ca.pem"), "{debug}");
    assert!(!debug.contains("secret"), "{debug}");
}
