//! TLS against a `redis-server` that speaks TLS only and requires client certificates,
//! with certificates generated for the test: a good handshake works; a wrong CA, a
//! missing client certificate and a TLS/plaintext mismatch each fail at `build` with a
//! typed error that names the problem, and quickly (a mismatch used to wait out the
//! connect timeout). And Sentinel over TLS (`rediss+sentinel://`) on a TLS topology.

use std::time::Duration;

use leasehold_conformance::servers::{
    ClientAuth, RedisSentinel, RedisServer, RedisTlsServer, TestCertificates,
};
use leasehold_conformance::{require_server, unique_key};
use leasehold_core::{Error, LockBackend};
use leasehold_redis::{RedisBackend, RedisBackendBuilder};

/// Long enough to fail a mismatch test that waits it out: none of them may. (The
/// plaintext probe starts after a tenth of it.)
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn builder(url: &str) -> RedisBackendBuilder {
    RedisBackend::builder()
        .with_url(url)
        .with_connect_timeout(CONNECT_TIMEOUT)
}

/// Builds within a bound below [`CONNECT_TIMEOUT`], so that an error found by waiting it
/// out fails the test instead of passing slowly.
async fn build(builder: RedisBackendBuilder) -> leasehold_core::Result<RedisBackend> {
    tokio::time::timeout(CONNECT_TIMEOUT / 2, builder.build())
        .await
        .expect("build must give its answer without waiting out the connect timeout")
}

#[tokio::test]
async fn a_good_handshake_with_a_client_certificate_serves_leases() {
    let certs = TestCertificates::generate();
    let server = require_server!(RedisTlsServer::start(&certs, ClientAuth::Required));
    let backend = build(
        builder(&server.url())
            .with_ca_file(certs.ca_file())
            .with_client_identity_files(certs.client_cert_file(), certs.client_key_file()),
    )
    .await
    .expect("a client trusting the CA, with a certificate it signed, connects");
    let key = unique_key("tls");
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the key is free");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn the_tls_files_can_come_from_url_parameters() {
    let certs = TestCertificates::generate();
    let server = require_server!(RedisTlsServer::start(&certs, ClientAuth::Required));
    let url = format!(
        "{}?ca_file={}&cert_file={}&key_file={}",
        server.url(),
        certs.ca_file().display(),
        certs.client_cert_file().display(),
        certs.client_key_file().display()
    );
    build(builder(&url))
        .await
        .expect("the URL's files are used as the setters' are");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_not_trusted() {
    let certs = TestCertificates::generate();
    let server = require_server!(RedisTlsServer::start(&certs, ClientAuth::Required));
    let err = build(
        builder(&server.url())
            .with_ca_file(certs.other_ca_file())
            .with_client_identity_files(certs.client_cert_file(), certs.client_key_file()),
    )
    .await
    .expect_err("the server's certificate is signed by a CA the client does not trust");
    assert!(
        matches!(err, Error::Unavailable { .. }),
        "an untrusted certificate is Unavailable, got {err:?}"
    );
    assert!(
        err.chain().contains("certificate was not trusted"),
        "the error says the certificate was not trusted: {}",
        err.chain()
    );
}

#[tokio::test]
async fn a_server_requiring_a_client_certificate_refuses_a_client_without_one() {
    let certs = TestCertificates::generate();
    let server = require_server!(RedisTlsServer::start(&certs, ClientAuth::Required));
    let err = build(builder(&server.url()).with_ca_file(certs.ca_file()))
        .await
        .expect_err("the server requires a client certificate");
    assert!(
        matches!(err, Error::Auth { .. }),
        "a missing client certificate is Auth, got {err:?}"
    );
    assert!(
        err.chain().contains("requires a client certificate"),
        "the error says a client certificate is required: {}",
        err.chain()
    );
}

#[tokio::test]
async fn a_tls_client_finds_out_quickly_that_the_server_speaks_plaintext() {
    let certs = TestCertificates::generate();
    let server = require_server!(RedisServer::start());
    let url = server.url().replacen("redis://", "rediss://", 1);
    let err = build(builder(&url).with_ca_file(certs.ca_file()))
        .await
        .expect_err("a plaintext server cannot complete a TLS handshake");
    assert!(
        matches!(&err, Error::Misconfigured { reason, .. } if reason.contains("does not speak TLS")),
        "TLS to a plaintext server is Misconfigured, saying the server does not speak TLS: \
         {err:?}"
    );
}

#[tokio::test]
async fn a_plaintext_client_finds_out_that_the_server_speaks_tls_only() {
    let certs = TestCertificates::generate();
    let server = require_server!(RedisTlsServer::start(&certs, ClientAuth::Required));
    let err = build(builder(&server.plaintext_url()))
        .await
        .expect_err("a TLS-only server refuses plaintext");
    assert!(
        matches!(&err, Error::Misconfigured { reason, .. } if reason.contains("speaks TLS only")),
        "plaintext to a TLS server is Misconfigured, saying the server speaks TLS only: \
         {err:?}"
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_a_configuration_error_naming_the_setting() {
    let certs = TestCertificates::generate();
    let missing = certs.dir().join("no-such-ca.pem");
    for (builder, setting) in [
        (
            RedisBackend::builder().with_ca_file(&missing),
            "ca_file".to_owned(),
        ),
        (
            RedisBackend::builder().with_client_identity_files(&missing, certs.client_key_file()),
            "cert_file".to_owned(),
        ),
        (
            RedisBackendBuilder::from_env_with(|name| {
                (name == "ROUTINE_REDIS_CA_FILE").then(|| missing.display().to_string())
            })
            .unwrap(),
            "ROUTINE_REDIS_CA_FILE".to_owned(),
        ),
        (
            // A key file is not a certificate.
            RedisBackend::builder().with_ca_file(certs.client_key_file()),
            "ca_file".to_owned(),
        ),
    ] {
        let err = build(builder).await.expect_err("the file cannot be used");
        assert!(
            matches!(&err, Error::Config { setting: named, .. } if *named == setting),
            "a bad TLS file is Config naming `{setting}`, got {err:?}"
        );
    }
}

/// Sentinel over TLS: with `rediss+sentinel://` and the TLS files as URL parameters, the
/// backend reaches the sentinels and the master they name over TLS (client certificates
/// required everywhere), and follows a kill of the master; trusting the wrong CA is the
/// same typed error as with `rediss://`. On a TLS topology of its own, since the kill
/// harms it (about 10 s: the topology's start and the failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_follows_a_master_kill_and_names_a_wrong_ca() {
    let certs = TestCertificates::generate();
    let mut topology = require_server!(RedisSentinel::start_tls(&certs));
    let url = |ca: std::path::PathBuf| {
        format!(
            "{}?ca_file={}&cert_file={}&key_file={}",
            topology.url(),
            ca.display(),
            certs.client_cert_file().display(),
            certs.client_key_file().display()
        )
    };
    assert!(url(certs.ca_file()).starts_with("rediss+sentinel://"));

    let err = build(builder(&url(certs.other_ca_file())))
        .await
        .expect_err("the sentinels' certificate is signed by a CA the client does not trust");
    assert!(
        matches!(err, Error::Unavailable { .. })
            && err.chain().contains("certificate was not trusted"),
        "an untrusted sentinel is Unavailable saying the certificate was not trusted, as \
         with rediss://: {}",
        err.chain()
    );

    let backend = build(
        RedisBackend::builder()
            .with_url(url(certs.ca_file()))
            .with_connect_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_or_else(|err| panic!("a client trusting the CA connects: {}", err.chain()));
    let ttl = Duration::from_secs(30);
    let key = unique_key("sentinel-tls");
    let mut lease = backend
        .try_acquire(&key, ttl)
        .await
        .unwrap()
        .expect("the key is free");

    let old = tokio::task::block_in_place(|| topology.kill_master());
    let new = tokio::task::block_in_place(|| topology.wait_for_failover(old));
    assert_ne!(old, new);
    // The backend asks the sentinels again (over TLS) and moves to the new master: the
    // holder's refresh answers there (kept, or lost if the kill lost the lock), and a
    // new name is acquired there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let next = unique_key("sentinel-tls-next");
    let mut next_lease = loop {
        let refreshed = lease.refresh(ttl).await;
        if matches!(refreshed, Ok(()) | Err(Error::Lost { .. }))
            && let Ok(Some(next_lease)) = backend.try_acquire(&next, ttl).await
        {
            break next_lease;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backend follows the new master within 20 s: {refreshed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    next_lease.release().await.unwrap();
}
