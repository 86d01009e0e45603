//! Configuration errors through the public API: each names the setting or variable at
//! fault, before anything is connected.

use std::collections::HashMap;
use std::time::Duration;

use leasehold_core::Error;
use leasehold_redis::{RedisBackend, RedisBackendBuilder};

fn setting_of(err: Error) -> String {
    match err {
        Error::Config { setting, .. } => setting,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[tokio::test]
async fn from_url_errors_name_the_url() {
    for url in [
        "",
        "redis://",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:6379/db",
    ] {
        let err = RedisBackend::from_url(url).await.unwrap_err();
        assert_eq!(setting_of(err), "url", "error for {url:?}");
    }
}

#[tokio::test]
async fn builder_errors_name_the_setting() {
    let cases = [
        (
            "address",
            RedisBackend::builder().with_address("host:99999"),
        ),
        ("namespace", RedisBackend::builder().with_namespace("")),
        ("db", RedisBackend::builder().with_db(-1)),
        (
            "connect_timeout",
            RedisBackend::builder().with_connect_timeout(Duration::ZERO),
        ),
        (
            "request_timeout",
            RedisBackend::builder().with_request_timeout(Duration::ZERO),
        ),
    ];
    for (setting, builder) in cases {
        let err = builder.build().await.unwrap_err();
        assert_eq!(setting_of(err), setting);
    }
}

#[test]
fn from_env_errors_name_the_variable() {
    for (name, value) in [
        ("REDIS_HOSTS", "redis:notaport"),
        ("REDIS_DB", "x"),
        ("REDIS_DIAL_TIMEOUT", "soon"),
        ("REDIS_READ_TIMEOUT", "-1s"),
        ("REDIS_WRITE_TIMEOUT", "0ms"),
    ] {
        let vars = HashMap::from([(name, value)]);
        let err =
            RedisBackendBuilder::from_env_with(|n| vars.get(n).map(|v| v.to_string())).unwrap_err();
        let message = err.to_string();
        assert_eq!(setting_of(err), name, "{message}");
    }
}

#[tokio::test]
async fn a_namespace_with_a_colon_is_refused_so_two_names_never_share_a_key() {
    // Namespace `a` with name `b:lock:c` and namespace `a:lock:b` with name `c` would
    // both lock `a:lock:b:lock:c`.
    for namespace in ["a:lock:b", "billing:", ":"] {
        let err = RedisBackend::builder()
            .with_namespace(namespace)
            .build()
            .await
            .unwrap_err();
        let message = err.to_string();
        assert_eq!(setting_of(err), "namespace", "{namespace:?}: {message}");
        assert!(message.contains("`:`"), "says why: {message}");
    }
}
