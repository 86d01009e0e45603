//! TLS against an `etcd` member that serves clients over TLS and requires client
//! certificates, with certificates generated for the test: a good handshake works (also
//! with the server name set apart from the address); a wrong CA, a wrong server name, a
//! missing client certificate and a TLS/plaintext mismatch each fail at `build` with a
//! typed error that names the problem, and quickly.

use std::time::Duration;

use leasehold_conformance::servers::{ClientAuth, EtcdServer, EtcdTlsServer, TestCertificates};
use leasehold_conformance::{require_server, unique_key};
use leasehold_core::{Error, LockBackend};
use leasehold_etcd::{EtcdBackend, EtcdBackendBuilder};

/// Long enough to fail a mismatch test that waits it out: none of them may.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn builder(endpoint: &str) -> EtcdBackendBuilder {
    EtcdBackend::builder()
        .with_endpoints([endpoint])
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_request_timeout(CONNECT_TIMEOUT)
}

/// Builds within a bound below [`CONNECT_TIMEOUT`], so that an error found by waiting it
/// out fails the test instead of passing slowly.
async fn build(builder: EtcdBackendBuilder) -> leasehold_core::Result<EtcdBackend> {
    tokio::time::timeout(CONNECT_TIMEOUT / 2, builder.build())
        .await
        .expect("build must give its answer without waiting out the connect timeout")
}

async fn acquire_and_release(backend: &EtcdBackend) {
    let key = unique_key("tls");
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the key is free");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn a_good_handshake_with_a_client_certificate_serves_leases() {
    let certs = TestCertificates::generate();
    let server = require_server!(EtcdTlsServer::start(&certs, ClientAuth::Required));
    let backend = build(
        builder(&server.endpoint())
            .with_ca_file(certs.ca_file())
            .with_client_identity_files(certs.client_cert_file(), certs.client_key_file()),
    )
    .await
    .expect("a client trusting the CA, with a certificate it signed, connects");
    acquire_and_release(&backend).await;
}

#[tokio::test]
async fn the_tls_settings_can_come_from_an_etcds_url_with_a_server_name() {
    let certs = TestCertificates::generate();
    let server = require_server!(EtcdTlsServer::start(&certs, ClientAuth::Required));
    let url = format!(
        "{}?ca_file={}&cert_file={}&key_file={}&tls_domain=localhost",
        server.url(),
        certs.ca_file().display(),
        certs.client_cert_file().display(),
        certs.client_key_file().display()
    );
    let backend = build(EtcdBackend::builder().with_url(&url))
        .await
        .expect("the certificate names `localhost`, checked in place of the address");
    acquire_and_release(&backend).await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_not_trusted() {
    let certs = TestCertificates::generate();
    let server = require_server!(EtcdTlsServer::start(&certs, ClientAuth::Required));
    let err = build(
        builder(&server.endpoint())
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
async fn a_server_name_the_certificate_does_not_carry_is_not_trusted() {
    let certs = TestCertificates::generate();
    let server = require_server!(EtcdTlsServer::start(&certs, ClientAuth::Required));
    let err = build(
        builder(&server.endpoint())
            .with_ca_file(certs.ca_file())
            .with_client_identity_files(certs.client_cert_file(), certs.client_key_file())
            .with_tls_domain("etcd.elsewhere.example"),
    )
    .await
    .expect_err("the certificate is for localhost and 127.0.0.1 only");
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.chain().contains("not trusted"),
        "a certificate for another name is not trusted: {}",
        err.chain()
    );
}

#[tokio::test]
async fn a_server_requiring_a_client_certificate_refuses_a_client_without_one() {
    let certs = TestCertificates::generate();
    let server = require_server!(EtcdTlsServer::start(&certs, ClientAuth::Required));
    let err = build(builder(&server.endpoint()).with_ca_file(certs.ca_file()))
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
    let server = require_server!(EtcdServer::start());
    let endpoint = format!("https://{}", server.endpoint());
    let err = build(builder(&endpoint).with_ca_file(certs.ca_file()))
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
    let server = require_server!(EtcdTlsServer::start(&certs, ClientAuth::Required));
    let endpoint = format!("http://127.0.0.1:{}", server.port());
    let err = build(builder(&endpoint))
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
        (EtcdBackend::builder().with_ca_file(&missing), "ca_file"),
        (
            EtcdBackend::builder().with_client_identity_files(&missing, certs.client_key_file()),
            "cert_file",
        ),
    ] {
        let err = build(builder).await.expect_err("the file cannot be read");
        assert!(
            matches!(&err, Error::Config { setting: named, .. } if named == setting),
            "a missing TLS file is Config naming `{setting}`, got {err:?}"
        );
    }
}
