//! TLS against a PostgreSQL server that admits TCP clients over TLS only and requires
//! client certificates, with certificates generated for the test: a good handshake works;
//! a wrong CA, a missing client certificate and a TLS/plaintext mismatch each fail at
//! `build` with a typed error that names the problem, and quickly.

use std::time::Duration;

use leasehold_conformance::servers::{
    ClientAuth, PostgresServer, PostgresTlsServer, TestCertificates,
};
use leasehold_conformance::{require_server, unique_key};
use leasehold_core::{Error, LockBackend};
use leasehold_postgres::{PostgresBackend, PostgresBackendBuilder};

/// Long enough to fail a mismatch test that waits it out: none of them may.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `url` with libpq's TLS parameters appended.
fn with_params(url: &str, params: &[(&str, String)]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!("{url}?{}", query.join("&"))
}

fn builder(url: &str) -> PostgresBackendBuilder {
    PostgresBackend::builder()
        .with_url(url)
        .with_request_timeout(TIMEOUT)
}

/// Builds within a bound below [`TIMEOUT`], so that an error found by waiting it out
/// fails the test instead of passing slowly.
async fn build(builder: PostgresBackendBuilder) -> leasehold_core::Result<PostgresBackend> {
    tokio::time::timeout(TIMEOUT / 2, builder.build())
        .await
        .expect("build must give its answer without waiting out a timeout")
}

fn path(file: std::path::PathBuf) -> String {
    file.display().to_string()
}

#[tokio::test]
async fn a_good_handshake_with_a_client_certificate_serves_leases() {
    let certs = TestCertificates::generate();
    let server = require_server!(PostgresTlsServer::start(&certs, ClientAuth::Required));
    let url = with_params(
        &server.url(),
        &[
            ("sslmode", "verify-full".to_owned()),
            ("sslrootcert", path(certs.ca_file())),
            ("sslcert", path(certs.client_cert_file())),
            ("sslkey", path(certs.client_key_file())),
        ],
    );
    let backend = build(builder(&url))
        .await
        .expect("a client trusting the CA, with a certificate it signed, connects");
    let key = unique_key("tls");
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the key is free");
    lease.refresh(Duration::from_secs(10)).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_not_trusted() {
    let certs = TestCertificates::generate();
    let server = require_server!(PostgresTlsServer::start(&certs, ClientAuth::Required));
    let url = with_params(
        &server.url(),
        &[
            ("sslmode", "verify-full".to_owned()),
            ("sslrootcert", path(certs.other_ca_file())),
            ("sslcert", path(certs.client_cert_file())),
            ("sslkey", path(certs.client_key_file())),
        ],
    );
    let err = build(builder(&url))
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
    let server = require_server!(PostgresTlsServer::start(&certs, ClientAuth::Required));
    let url = with_params(
        &server.url(),
        &[
            ("sslmode", "verify-full".to_owned()),
            ("sslrootcert", path(certs.ca_file())),
        ],
    );
    let err = build(builder(&url))
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
    let server = require_server!(PostgresServer::start());
    let url = with_params(
        &server.url(),
        &[
            ("sslmode", "verify-full".to_owned()),
            ("sslrootcert", path(certs.ca_file())),
        ],
    );
    let err = build(builder(&url))
        .await
        .expect_err("a server without TLS cannot satisfy sslmode=verify-full");
    assert!(
        matches!(&err, Error::Misconfigured { reason, .. } if reason.contains("does not speak TLS")),
        "TLS to a plaintext server is Misconfigured, saying the server does not speak TLS: \
         {err:?}"
    );
}

#[tokio::test]
async fn a_plaintext_client_finds_out_that_the_server_speaks_tls_only() {
    let certs = TestCertificates::generate();
    let server = require_server!(PostgresTlsServer::start(&certs, ClientAuth::Required));
    let url = with_params(&server.url(), &[("sslmode", "disable".to_owned())]);
    let err = build(builder(&url))
        .await
        .expect_err("a TLS-only server refuses plaintext");
    assert!(
        matches!(err, Error::Auth { .. }) && err.chain().contains("over TLS only"),
        "plaintext to a TLS-only server is Auth (pg_hba.conf refuses it), saying the server \
         admits TLS only: {}",
        err.chain()
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_a_configuration_error_naming_the_setting() {
    let certs = TestCertificates::generate();
    let server = require_server!(PostgresTlsServer::start(&certs, ClientAuth::Required));
    let url = with_params(
        &server.url(),
        &[
            ("sslmode", "verify-full".to_owned()),
            ("sslrootcert", path(certs.dir().join("no-such-ca.pem"))),
        ],
    );
    let err = build(builder(&url))
        .await
        .expect_err("the file cannot be read");
    assert!(
        matches!(&err, Error::Config { setting, .. } if setting == "url (sslrootcert)"),
        "a missing CA file in the URL is Config naming sslrootcert: {err:?}"
    );
    let err = build(
        builder(&server.url())
            .with_ssl_mode("verify-full")
            .with_ca_file(certs.dir().join("no-such-ca.pem")),
    )
    .await
    .expect_err("the file cannot be read");
    assert!(
        matches!(&err, Error::Config { setting, .. } if setting == "ca_file"),
        "a missing CA file given to the builder is Config naming ca_file: {err:?}"
    );
}

#[tokio::test]
async fn the_builder_takes_the_tls_settings_too() {
    let certs = TestCertificates::generate();
    let server = require_server!(PostgresTlsServer::start(&certs, ClientAuth::Required));
    let backend = build(
        builder(&server.url())
            .with_ssl_mode("verify-full")
            .with_ca_file(certs.ca_file())
            .with_client_identity_files(certs.client_cert_file(), certs.client_key_file()),
    )
    .await
    .expect("the builder's files are used as the URL's are");
    let key = unique_key("tls-builder");
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the key is free");
    lease.release().await.unwrap();
}
