//! Faults when connecting: wrong credentials, nothing listening, a server that never
//! answers, TLS against a plain server. Each gives a clear typed error, quickly, without
//! a panic.

mod common;

use std::time::Duration;

use common::within;

use leasehold_conformance::servers::{RedisServer, free_port};
use leasehold_core::Error;
use leasehold_redis::RedisBackend;

/// Generous bound for "did not hang": far above every timeout configured here.
const HANG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn wrong_or_missing_password_is_an_auth_error() {
    let server =
        leasehold_conformance::require_server!(RedisServer::start_with_password(Some("right-pw")));
    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}", server.port());
    let err = within(
        HANG,
        "connect with a wrong password",
        RedisBackend::from_url(&wrong),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "wrong password: {err:?}");
    let chain = format!("{err} / {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("rejected the credentials"),
        "clear message: {chain}"
    );
    assert!(
        !chain.contains("wrong-pw"),
        "the password must not be echoed: {chain}"
    );

    let none = format!("redis://127.0.0.1:{}", server.port());
    let err = within(
        HANG,
        "connect without a password",
        RedisBackend::from_url(&none),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Auth { .. }),
        "missing password: {err:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable_without_hanging() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let err = within(
        HANG,
        "connect to a closed port",
        RedisBackend::from_url(&url),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                operation: "connect",
                ..
            }
        ),
        "closed port: {err:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_connect_timeout() {
    // Accepts TCP connections (the kernel completes the handshake) but never replies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let err = within(
        HANG,
        "connect to a silent server",
        RedisBackend::builder()
            .with_address(format!("127.0.0.1:{port}"))
            .with_connect_timeout(Duration::from_millis(300))
            .with_request_timeout(Duration::from_millis(300))
            .build(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. }),
        "silent server: {err:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn rediss_to_a_plain_server_fails_cleanly() {
    let server = leasehold_conformance::require_server!(RedisServer::start());
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let err = within(
        HANG,
        "TLS handshake with a plain server",
        RedisBackend::builder()
            .with_url(url)
            .with_connect_timeout(Duration::from_millis(500))
            .build(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Misconfigured { .. }),
        "TLS to a plain server is Misconfigured (the server does not speak TLS), found \
         out before the connect timeout: {err:?}"
    );
}
