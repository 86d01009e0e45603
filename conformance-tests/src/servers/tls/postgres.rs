//! A throwaway PostgreSQL server that accepts TLS connections only.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{ClientAuth, TestCertificates};
use crate::servers::PostgresServer;

/// A PostgreSQL server with `ssl = on`, the server certificate of a [`TestCertificates`]
/// and its CA (`ssl_ca_file`) for client certificates, whose `pg_hba.conf` admits TCP
/// clients only over TLS (`hostssl`), with `clientcert=verify-ca` when client
/// certificates are required. Authentication is `trust`: the certificate is the test.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::{ClientAuth, PostgresTlsServer, TestCertificates};
///
/// let certs = TestCertificates::generate();
/// let Some(server) = PostgresTlsServer::start(&certs, ClientAuth::Required) else { return };
/// println!("{}", server.url());
/// ```
#[derive(Debug)]
pub struct PostgresTlsServer {
    server: PostgresServer,
}

impl PostgresTlsServer {
    /// Initialises a cluster with TLS and starts it, or returns `None` if the PostgreSQL
    /// binaries are missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binaries are missing under CI, or the server does not come up.
    pub fn start(certs: &TestCertificates, client_auth: ClientAuth) -> Option<Self> {
        PostgresServer::start_with("initdb with TLS", |server| {
            prepare(server, certs, client_auth)
        })
        .map(|server| Self { server })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, without TLS parameters: add
    /// `sslmode`, `sslrootcert`, `sslcert` and `sslkey` as the test needs.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The server, to pause, kill or restart it.
    pub fn server(&mut self) -> &mut PostgresServer {
        &mut self.server
    }
}

/// `initdb`, then the certificate files copied into the data directory (the server's key
/// must belong to the server's OS user and be readable by it alone) and TLS turned on.
fn prepare(
    server: &PostgresServer,
    certs: &TestCertificates,
    client_auth: ClientAuth,
) -> io::Result<()> {
    let data = server.data_dir();
    server.initdb()?;
    let owner = std::fs::metadata(&data)?;
    for (from, to, mode) in [
        (certs.server_cert_file(), "server.pem", 0o644),
        (certs.server_key_file(), "server.key", 0o600),
        (certs.ca_file(), "ca.pem", 0o644),
    ] {
        let to = data.join(to);
        std::fs::copy(&from, &to)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid()))?;
    }
    append(
        &data.join("postgresql.conf"),
        "ssl = on\n\
         ssl_cert_file = 'server.pem'\n\
         ssl_key_file = 'server.key'\n\
         ssl_ca_file = 'ca.pem'\n",
    )?;
    let clientcert = match client_auth {
        ClientAuth::None => "",
        ClientAuth::Required => " clientcert=verify-ca",
    };
    // No `host` line: a plaintext TCP client finds no entry and is refused.
    std::fs::write(
        data.join("pg_hba.conf"),
        format!(
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust{clientcert}\n"
        ),
    )
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}
