//! A throwaway `redis-server` that speaks TLS only.

use super::{ClientAuth, TestCertificates};
use crate::servers::RedisServer;

/// A `redis-server` serving TLS only (`--port 0 --tls-port <port>`) with the server
/// certificate of a [`TestCertificates`], trusting its CA for client certificates.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::{ClientAuth, RedisTlsServer, TestCertificates};
///
/// let certs = TestCertificates::generate();
/// let Some(server) = RedisTlsServer::start(&certs, ClientAuth::Required) else { return };
/// println!("{}", server.url());
/// ```
#[derive(Debug)]
pub struct RedisTlsServer {
    server: RedisServer,
}

impl RedisTlsServer {
    /// Starts a server, or returns `None` if `redis-server` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the server does not come up (a
    /// `redis-server` built without TLS refuses the `--tls-*` arguments).
    pub fn start(certs: &TestCertificates, client_auth: ClientAuth) -> Option<Self> {
        let path = |path: std::path::PathBuf| path.display().to_string();
        let auth = match client_auth {
            ClientAuth::None => "no",
            ClientAuth::Required => "yes",
        };
        let args = vec![
            "--tls-cert-file".to_owned(),
            path(certs.server_cert_file()),
            "--tls-key-file".to_owned(),
            path(certs.server_key_file()),
            "--tls-ca-cert-file".to_owned(),
            path(certs.ca_file()),
            "--tls-auth-clients".to_owned(),
            auth.to_owned(),
        ];
        RedisServer::start_with(None, Some(args)).map(|server| Self { server })
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }

    /// `redis://127.0.0.1:<port>`: the same port without TLS, to show what a plaintext
    /// client gets.
    pub fn plaintext_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// The server, to pause, kill or restart it.
    pub fn server(&mut self) -> &mut RedisServer {
        &mut self.server
    }
}
