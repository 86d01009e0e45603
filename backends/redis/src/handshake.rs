//! What a failed TLS handshake means, and the probes that tell a plaintext server from a
//! TLS one when client and server disagree.
//!
//! A TLS client's hello sent to a plaintext Redis is read as an inline command that Redis
//! keeps buffering until a newline, which the hello may not contain: the handshake then
//! waits out the connect timeout. So when a TLS connection is not open after a tenth of
//! the connect timeout, a second connection sends a plaintext `PING`: a plaintext server
//! answers it at once (`+PONG`, or `-NOAUTH`), a TLS server drops it. A TLS server also
//! logs a warning for it, which is why the probe waits for a slow handshake instead of
//! going with every one. The other way round, a TLS server closes a plaintext client's
//! connection, which looks like any dropped connection; after such a failure a TLS hello
//! on a new connection tells whether the server speaks TLS.

use std::sync::Arc;

use leasehold_core::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Settings;
use crate::connection::Connection;
use crate::error::NAME;

/// The plaintext probe starts after the connect timeout divided by this.
const PROBE_DELAY_DIVISOR: u32 = 10;

/// Opens the command connection as [`Connection::open`] does, and turns a TLS mismatch
/// between client and server into [`Error::Misconfigured`] saying so, quickly.
pub(crate) async fn open(client: redis::Client, settings: &Settings) -> Result<Connection> {
    let (connect, request) = (settings.connect_timeout, settings.request_timeout);
    let open = Connection::open(client, connect, request);
    if settings.tls {
        tokio::pin!(open);
        // A TLS server logs a warning for every connection that does not speak TLS, so
        // the probe waits for a tenth of the connect timeout first: a handshake with a
        // TLS server is over by then, one with a plaintext server is still waiting.
        let probe = async {
            tokio::time::sleep(settings.connect_timeout / PROBE_DELAY_DIVISOR).await;
            answers_plaintext(settings).await
        };
        tokio::select! {
            opened = &mut open => return opened,
            plaintext = probe => if plaintext {
                return Err(Error::misconfigured(
                    NAME,
                    format!(
                        "TLS is on but the server at {} does not speak TLS (it answered a \
                         plaintext PING): connect with redis://, or turn TLS on in the server",
                        settings.address()
                    ),
                ));
            }
        }
        return open.await;
    }
    match open.await {
        Err(Error::Unavailable { .. }) if answers_tls(settings).await => Err(Error::misconfigured(
            NAME,
            format!(
                "the server at {} speaks TLS only (it answered a TLS hello) but TLS is \
                     off: connect with rediss://",
                settings.address()
            ),
        )),
        other => other,
    }
}

/// Whether the server answers a plaintext `PING` with a Redis reply, within the connect
/// timeout. A TLS server reads the `PING` as a malformed record and closes the connection.
async fn answers_plaintext(settings: &Settings) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect((settings.host.as_str(), settings.port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await?;
        std::io::Result::Ok(matches!(first[0], b'+' | b'-'))
    };
    matches!(
        tokio::time::timeout(settings.connect_timeout, probe).await,
        Ok(Ok(true))
    )
}

/// Whether the server answers a TLS client hello with a TLS record (a handshake or an
/// alert), within the connect timeout. No certificate is checked: only the first bytes
/// of the answer are read.
async fn answers_tls(settings: &Settings) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect((settings.host.as_str(), settings.port)).await?;
        stream.write_all(&client_hello(&settings.host)?).await?;
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await?;
        // Content type 22 (handshake) or 21 (alert), then the major version 3.
        std::io::Result::Ok(matches!(header, [22 | 21, 3]))
    };
    matches!(
        tokio::time::timeout(settings.connect_timeout, probe).await,
        Ok(Ok(true))
    )
}

/// The first flight of a TLS client for `host`.
fn client_hello(host: &str) -> std::io::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello)?;
    Ok(hello)
}
