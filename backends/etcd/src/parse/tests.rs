//! Tests of URL and environment parsing, validation and password redaction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::EtcdBackend;
use crate::settings::Settings;

fn from_url(url: &str) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    apply_url(&mut settings, url)?;
    Ok(settings)
}

fn from_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut settings = Settings::default();
    apply_env(&mut settings, &|name| Ok(vars.get(name).cloned()))?;
    Ok(settings)
}

#[test]
fn url_with_everything_is_parsed() {
    let settings = from_url(
        "etcd://routine:s%40cret+1@10.0.0.1:2379,10.0.0.2,[::1]:2380/billing/locks/\
         ?request_timeout=2s&connect_timeout=500ms&tls_domain=etcd.internal",
    )
    .unwrap();
    assert_eq!(
        settings.endpoints,
        ["10.0.0.1:2379", "10.0.0.2", "[::1]:2380"]
    );
    assert_eq!(
        settings.user,
        Some(Credentials::new("routine", "s@cret+1")),
        "user info is percent-decoded and `+` stays `+`"
    );
    assert_eq!(settings.key_prefix, "billing/locks/");
    assert_eq!(settings.request_timeout, Duration::from_secs(2));
    assert_eq!(settings.connect_timeout, Duration::from_millis(500));
    assert_eq!(settings.tls.domain.as_deref(), Some("etcd.internal"));
    assert!(!settings.tls.enabled);
    let (uris, tls) = endpoint_uris(&settings).unwrap();
    assert_eq!(
        uris,
        [
            "http://10.0.0.1:2379",
            "http://10.0.0.2:2379",
            "http://[::1]:2380"
        ]
    );
    assert!(!tls);
}

#[test]
fn etcds_and_tls_query_turn_tls_on() {
    for url in [
        "etcds://host",
        "etcd://host?tls=true",
        "etcd://host?ca_file=/ca.pem&tls=1",
    ] {
        let settings = from_url(url).unwrap();
        assert!(settings.tls.enabled, "{url} must enable TLS");
        let (uris, tls) = endpoint_uris(&settings).unwrap();
        assert_eq!(uris, ["https://host:2379"]);
        assert!(tls);
    }
    let settings =
        from_url("etcds://host?ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem").unwrap();
    assert_eq!(settings.tls.ca_file, Some(PathBuf::from("/ca.pem")));
    assert_eq!(settings.tls.cert_file, Some(PathBuf::from("/c.pem")));
    assert_eq!(settings.tls.key_file, Some(PathBuf::from("/k.pem")));
}

#[test]
fn minimal_url_keeps_the_defaults() {
    let settings = from_url("etcd://localhost").unwrap();
    assert_eq!(settings.endpoints, ["localhost"]);
    assert_eq!(settings.key_prefix, DEFAULT_KEY_PREFIX);
    assert_eq!(settings.user, None);
    assert_eq!(settings.request_timeout, Duration::from_secs(5));
}

#[test]
fn malformed_urls_are_config_errors_that_never_quote_the_password() {
    for (url, needle) in [
        ("redis://host", "scheme"),
        ("etcd://", "no host"),
        ("etcd://user@host", "without a password"),
        ("etcd://:secretpw@host", "without a user name"),
        ("etcd://user:secretpw@host:99999", "port"),
        ("etcd://user:secretpw@host:abc", "port"),
        ("etcd://user:secretpw@host,,other", "empty endpoint"),
        ("etcd://user:secretpw@http://host", "endpoint `http:`"),
        ("etcd://user:secretpw@host?timeout=2s", "unknown parameter"),
        ("etcd://user:secretpw@host?request_timeout=soon", "duration"),
        (
            "etcd://user:secretpw@host?request_timeout=0s",
            "greater than zero",
        ),
        ("etcd://user:secretpw@host?tls=maybe", "boolean"),
        ("etcd://user:secret%zzpw@host", "percent"),
        ("etcd://user:secretpw@host/app/locks", "must end with `/`"),
    ] {
        let err = from_url(url).unwrap_err();
        let err = leasehold_core::Error::from(err);
        let message = err.to_string();
        assert!(
            matches!(err, leasehold_core::Error::Config { .. }),
            "{url} must be a Config error"
        );
        assert!(
            message.contains(URL),
            "{url}: the error names the URL: {message}"
        );
        assert!(
            message.contains(needle),
            "{url}: {message} must say {needle:?}"
        );
        assert!(
            !message.contains("secret"),
            "{url}: the password leaked: {message}"
        );
    }
}

#[test]
fn environment_variables_are_applied() {
    let settings = from_env(&[
        ("ROUTINE_ETCD_ENDPOINTS", "a:2379, https://b:2379"),
        ("ROUTINE_ETCD_USER", "routine"),
        ("ROUTINE_ETCD_PASSWORD", "pw"),
        ("ROUTINE_ETCD_CA_FILE", "/ca.pem"),
        ("ROUTINE_ETCD_CERT_FILE", "/c.pem"),
        ("ROUTINE_ETCD_KEY_FILE", "/k.pem"),
        ("ROUTINE_ETCD_TLS_DOMAIN", "etcd.internal"),
        ("ROUTINE_ETCD_KEY_PREFIX", "app/locks/"),
        ("ROUTINE_ETCD_REQUEST_TIMEOUT", "1s 500ms"),
        ("ROUTINE_ETCD_CONNECT_TIMEOUT", "3s"),
    ])
    .unwrap();
    assert_eq!(settings.endpoints, ["a:2379", "https://b:2379"]);
    assert_eq!(settings.user, Some(Credentials::new("routine", "pw")));
    assert_eq!(settings.key_prefix, "app/locks/");
    assert_eq!(settings.request_timeout, Duration::from_millis(1500));
    assert_eq!(settings.connect_timeout, Duration::from_secs(3));
    assert_eq!(settings.tls.domain.as_deref(), Some("etcd.internal"));
    let (uris, tls) = endpoint_uris(&settings).unwrap();
    assert!(tls, "an https:// endpoint turns TLS on");
    assert_eq!(uris, ["https://a:2379", "https://b:2379"]);
    assert_eq!(from_env(&[]).unwrap(), Settings::default());
}

#[test]
fn bad_environment_values_name_the_variable() {
    for (vars, variable, needle) in [
        (
            &[("ROUTINE_ETCD_ENDPOINTS", "a:2379,b:0")][..],
            "ROUTINE_ETCD_ENDPOINTS",
            "port",
        ),
        (
            &[("ROUTINE_ETCD_ENDPOINTS", "etcd://a")],
            "ROUTINE_ETCD_ENDPOINTS",
            "scheme",
        ),
        (
            &[("ROUTINE_ETCD_USER", "u")],
            "ROUTINE_ETCD_PASSWORD",
            "must be set",
        ),
        (
            &[("ROUTINE_ETCD_PASSWORD", "hunter2")],
            "ROUTINE_ETCD_USER",
            "must be set",
        ),
        (
            &[("ROUTINE_ETCD_TLS", "maybe")],
            "ROUTINE_ETCD_TLS",
            "boolean",
        ),
        (
            &[("ROUTINE_ETCD_REQUEST_TIMEOUT", "fast")],
            "ROUTINE_ETCD_REQUEST_TIMEOUT",
            "duration",
        ),
        (
            &[("ROUTINE_ETCD_CONNECT_TIMEOUT", "0ms")],
            "ROUTINE_ETCD_CONNECT_TIMEOUT",
            "greater than zero",
        ),
        (
            &[("ROUTINE_ETCD_KEY_PREFIX", "app/locks")],
            "ROUTINE_ETCD_KEY_PREFIX",
            "must end with `/`",
        ),
    ] {
        let err = leasehold_core::Error::from(from_env(vars).unwrap_err());
        let message = err.to_string();
        assert!(
            message.contains(variable),
            "{vars:?}: must name {variable}: {message}"
        );
        assert!(
            message.contains(needle),
            "{vars:?}: {message} must say {needle:?}"
        );
        assert!(
            !message.contains("hunter2"),
            "the password leaked: {message}"
        );
    }
}

#[test]
fn inconsistent_settings_are_rejected_before_connecting() {
    let mut settings = Settings {
        endpoints: vec!["http://a:2379".into()],
        ..Settings::default()
    };
    settings.tls.enabled = true;
    assert!(validate(&settings).unwrap_err().reason.contains("http://"));

    let mut settings = Settings::default();
    settings.tls.cert_file = Some("/c.pem".into());
    assert_eq!(
        validate(&settings).unwrap_err().setting,
        "cert_file/key_file"
    );

    for (settings, setting) in [
        (
            Settings {
                key_prefix: String::new(),
                ..Settings::default()
            },
            "key_prefix",
        ),
        (
            Settings {
                key_prefix: "app/locks".to_owned(),
                ..Settings::default()
            },
            "key_prefix",
        ),
        (
            Settings {
                endpoints: Vec::new(),
                ..Settings::default()
            },
            "endpoints",
        ),
        (
            Settings {
                request_timeout: Duration::ZERO,
                ..Settings::default()
            },
            "request_timeout",
        ),
    ] {
        assert_eq!(validate(&settings).unwrap_err().setting, setting);
    }
}

#[tokio::test]
async fn builder_reports_the_first_bad_value_at_build() {
    let err = EtcdBackend::builder()
        .with_url("etcd://host?tls=perhaps")
        .with_endpoints(["fine:2379"])
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("tls"),
        "the bad URL value must be reported: {err}"
    );
}

#[test]
fn debug_output_never_shows_the_password() {
    let builder = EtcdBackend::builder()
        .with_user("routine", "hunter2")
        .with_url("etcd://other:s3cr3t@host");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(debug.contains("other"), "the user is shown: {debug}");
}
