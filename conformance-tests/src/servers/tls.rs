//! TLS for the throwaway servers: a private CA and certificates made for each test run, and
//! TLS-enabled Redis, etcd and PostgreSQL servers that use them.
//!
//! [`TestCertificates::generate`] writes PEM files to a temp dir: a CA, a server
//! certificate for `127.0.0.1` and `localhost` signed by it, a client certificate signed
//! by it, and a second, unrelated CA, for tests where the client trusts the wrong
//! authority. The servers ([`RedisTlsServer`], [`EtcdTlsServer`],
//! [`PostgresTlsServer`]) present the server certificate, trust the CA for client
//! certificates, and with [`ClientAuth::Required`] refuse clients without one.

mod etcd;
mod postgres;
mod redis;

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub use etcd::EtcdTlsServer;
pub use postgres::PostgresTlsServer;
pub use redis::RedisTlsServer;

use super::process::TempDir;

/// Whether a TLS server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Any client that completes the handshake may connect; none is asked for a
    /// certificate.
    None,
    /// The handshake fails unless the client presents a certificate signed by the CA.
    Required,
}

/// PEM files for one test: a CA, a server certificate and a client certificate signed by
/// it, and an unrelated CA. The files live in a temp dir removed on drop, so keep this
/// value as long as a server or client uses them.
///
/// Keys are ECDSA P-256 in PKCS#8, which rustls, OpenSSL (Redis, PostgreSQL) and Go
/// (etcd) all read.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::TestCertificates;
///
/// let certs = TestCertificates::generate();
/// println!("trust {}", certs.ca_file().display());
/// ```
#[derive(Debug)]
pub struct TestCertificates {
    dir: TempDir,
}

/// The server certificate's names: what a client on loopback may connect by.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

impl TestCertificates {
    /// Generates the certificates and writes them as PEM files to a new temp dir.
    ///
    /// # Panics
    ///
    /// If a certificate cannot be generated or a file cannot be written.
    pub fn generate() -> Self {
        let dir = TempDir::new("tls").unwrap_or_else(|err| panic!("temp dir: {err}"));
        write_all(dir.path()).unwrap_or_else(|err| panic!("test certificates: {err}"));
        Self { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signed the server and client certificates (`ca.pem`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing here (`other-ca.pem`): a client trusting only it must
    /// refuse the server's certificate.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The server's certificate, for `localhost` and `127.0.0.1` (`server.pem`).
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (`server.key`, mode 0600).
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The client's certificate, signed by the CA (`client.pem`), with the common name
    /// `leasehold-client`.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client's private key (`client.key`, mode 0600).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }
}

/// The common name of the client certificate (PostgreSQL's `cert` authentication maps it
/// to the role of that name).
pub const CLIENT_COMMON_NAME: &str = "leasehold-client";

fn write_all(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (ca_params, ca_key) = ca("leasehold test CA")?;
    write(dir, "ca.pem", &ca_params.self_signed(&ca_key)?.pem(), false)?;
    let (other_params, other_key) = ca("leasehold unrelated CA")?;
    write(
        dir,
        "other-ca.pem",
        &other_params.self_signed(&other_key)?.pem(),
        false,
    )?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server = CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // etcd's gRPC gateway connects to etcd's own gRPC server presenting the server
    // certificate as its client certificate, which a server requiring client
    // certificates checks for the client usage.
    server
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    let server_key = KeyPair::generate()?;
    write(
        dir,
        "server.pem",
        &server.signed_by(&server_key, &issuer)?.pem(),
        false,
    )?;
    write(dir, "server.key", &server_key.serialize_pem(), true)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, CLIENT_COMMON_NAME);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    write(
        dir,
        "client.pem",
        &client.signed_by(&client_key, &issuer)?.pem(),
        false,
    )?;
    write(dir, "client.key", &client_key.serialize_pem(), true)?;
    Ok(())
}

fn ca(name: &str) -> Result<(CertificateParams, KeyPair), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok((params, KeyPair::generate()?))
}

fn write(dir: &Path, name: &str, pem: &str, private: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
}
