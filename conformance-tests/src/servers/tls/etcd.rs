//! A throwaway `etcd` member that serves clients over TLS.

use super::{ClientAuth, TestCertificates};
use crate::servers::EtcdServer;

/// An `etcd` member whose client URL is `https://127.0.0.1:<port>`, presenting the server
/// certificate of a [`TestCertificates`] (`--cert-file`, `--key-file`) and trusting its CA
/// for client certificates (`--trusted-ca-file`, `--client-cert-auth` when required).
/// Peers still talk plaintext: the member is alone.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::{ClientAuth, EtcdTlsServer, TestCertificates};
///
/// let certs = TestCertificates::generate();
/// let Some(server) = EtcdTlsServer::start(&certs, ClientAuth::Required) else { return };
/// println!("{}", server.endpoint());
/// ```
#[derive(Debug)]
pub struct EtcdTlsServer {
    server: EtcdServer,
}

impl EtcdTlsServer {
    /// Starts a member, or returns `None` if `etcd` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the member does not become healthy.
    pub fn start(certs: &TestCertificates, client_auth: ClientAuth) -> Option<Self> {
        let path = |path: std::path::PathBuf| path.display().to_string();
        let mut args = vec![
            "--cert-file".to_owned(),
            path(certs.server_cert_file()),
            "--key-file".to_owned(),
            path(certs.server_key_file()),
            "--trusted-ca-file".to_owned(),
            path(certs.ca_file()),
        ];
        if client_auth == ClientAuth::Required {
            args.push("--client-cert-auth".to_owned());
        }
        EtcdServer::start_with(Some(args)).map(|server| Self { server })
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `https://127.0.0.1:<client port>`, an endpoint that turns TLS on.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// `etcds://127.0.0.1:<client port>`, for `ROUTINE_BACKEND_URL`.
    pub fn url(&self) -> String {
        format!("etcds://127.0.0.1:{}", self.port())
    }

    /// The member, to pause, kill or restart it.
    pub fn server(&mut self) -> &mut EtcdServer {
        &mut self.server
    }
}
