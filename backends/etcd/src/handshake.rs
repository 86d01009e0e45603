//! What a connection that failed over TLS, or to a TLS server, means.
//!
//! The transport reports a TLS mismatch as a closed connection ("tls handshake eof",
//! "broken pipe") and a server that wants a client certificate as a TLS alert, or as a
//! connection closed after the handshake, like any outage. So when connecting fails, the first endpoint is
//! asked once what it speaks: a plaintext `GET /health` (etcd answers plaintext HTTP on
//! its client port; a TLS server closes the connection), then a TLS client hello (a TLS
//! server answers with a TLS record). The answer turns the error into one that names the
//! problem. An untrusted server certificate is named from the error itself.

use std::fmt;
use std::time::Duration;

use leasehold_core::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::NAME;
use crate::parse;
use crate::settings::Settings;

/// `err`, the failure of connecting with `settings`, or the error that says which TLS
/// problem caused it. Probes the first endpoint (each probe bounded by the connect
/// timeout) only for an [`Error::Unavailable`] whose connection the server closed.
pub(crate) async fn explain(settings: &Settings, err: Error) -> Error {
    if !matches!(err, Error::Unavailable { .. }) {
        return err;
    }
    let chain = err.chain();
    if chain.contains("invalid peer certificate") {
        return Error::unavailable(
            NAME,
            "connect",
            TlsFailure {
                problem: Problem::Untrusted,
                source: err,
            },
        );
    }
    // A TLS alert about our certificate needs no probe: the server speaks TLS.
    let alerts = [
        "received fatal alert: CertificateRequired",
        "received fatal alert: BadCertificate",
        "received fatal alert: UnknownCA",
        "received fatal alert: CertificateUnknown",
    ];
    if alerts.iter().any(|alert| chain.contains(alert)) {
        return refused_certificate(settings, err);
    }
    // Only a connection the server closed is worth asking about: a refused or
    // unanswered one says the server is away, and a probe would only wait for it too.
    let closed = [
        "connection closed",
        "tls handshake eof",
        "broken pipe",
        "Connection reset",
    ];
    if !closed.iter().any(|symptom| chain.contains(symptom)) {
        return err;
    }
    let Ok((uris, tls)) = parse::endpoint_uris(settings) else {
        return err;
    };
    let Some(address) = uris
        .first()
        .and_then(|uri| uri.split_once("://"))
        .map(|(_, address)| address.to_owned())
    else {
        return err;
    };
    match (tls, speaks(&address, settings.connect_timeout).await) {
        (true, Some(Speaks::Plaintext)) => Error::misconfigured(
            NAME,
            format!(
                "TLS is on but the server at {address} does not speak TLS (it answered \
                 plaintext HTTP): turn TLS off (http:// endpoints, etcd:// URL), or on in \
                 the server"
            ),
        ),
        (false, Some(Speaks::Tls)) => Error::misconfigured(
            NAME,
            format!(
                "the server at {address} speaks TLS only (it answered a TLS hello) but TLS \
                 is off: use https:// endpoints, an etcds:// URL or ROUTINE_ETCD_TLS=true"
            ),
        ),
        (true, Some(Speaks::Tls)) if closed_after_handshake(&chain) => {
            refused_certificate(settings, err)
        }
        _ => err,
    }
}

/// Whether `chain`, the error of a TLS connect to a server that speaks TLS, says the
/// server closed the connection once the handshake was done: with TLS 1.3 the client
/// finishes its side before the server checks the client certificate, and a server that
/// refuses it closes the connection. The client then sees the close as "connection
/// closed" if it was reading, or as "broken pipe" if it was already writing its first
/// request (the alert saying why is lost either way).
fn closed_after_handshake(chain: &str) -> bool {
    chain.contains("connection closed") || chain.contains("broken pipe")
}

/// [`Error::Auth`]: the server refused our client certificate, or wanted one.
fn refused_certificate(settings: &Settings, err: Error) -> Error {
    let problem = if settings.tls.cert_file.is_some() {
        Problem::CertificateRefused
    } else {
        Problem::CertificateRequired
    };
    Error::auth(
        NAME,
        TlsFailure {
            problem,
            source: err,
        },
    )
}

enum Speaks {
    Plaintext,
    Tls,
}

/// What the server at `address` answers, if it answers within `timeout`.
async fn speaks(address: &str, timeout: Duration) -> Option<Speaks> {
    let plaintext = first_bytes(address, b"GET /health HTTP/1.0\r\n\r\n".to_vec(), 5);
    if let Ok(Some(reply)) = tokio::time::timeout(timeout, plaintext).await
        && reply.starts_with(b"HTTP/")
    {
        return Some(Speaks::Plaintext);
    }
    let tls = first_bytes(address, client_hello(), 2);
    match tokio::time::timeout(timeout, tls).await {
        // Content type 22 (handshake) or 21 (alert), then the major version 3.
        Ok(Some(reply)) if matches!(reply[..], [22 | 21, 3]) => Some(Speaks::Tls),
        _ => None,
    }
}

/// The first `len` bytes the server sends after `request`, or `None` if it closes first.
async fn first_bytes(address: &str, request: Vec<u8>, len: usize) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream.write_all(&request).await.ok()?;
    let mut reply = vec![0; len];
    stream.read_exact(&mut reply).await.ok()?;
    Some(reply)
}

/// A minimal TLS 1.2 client hello (ECDHE with AES-GCM, P-256): enough for a TLS server to
/// answer with a server hello or an alert, either of them a TLS record.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two cipher suites
    body.extend([0x01, 0x00]); // null compression
    let extensions = [
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported groups: P-256
        0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03, // signatures: ECDSA P-256 SHA-256
    ];
    body.extend(u16_be(extensions.len()));
    body.extend(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend(u16_be(body.len()));
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16_be(handshake.len()));
    record.extend(handshake);
    record
}

fn u16_be(len: usize) -> [u8; 2] {
    u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes()
}

#[derive(Debug, Clone, Copy)]
enum Problem {
    Untrusted,
    CertificateRequired,
    CertificateRefused,
}

/// The source of a TLS error: what went wrong in words, with the transport's error as
/// its own source.
#[derive(Debug)]
struct TlsFailure {
    problem: Problem,
    source: Error,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.problem {
            Problem::Untrusted => {
                "TLS handshake failed: the server's certificate was not trusted (it is not \
                 signed by a CA of the CA file, or the system's roots without one, or is \
                 not issued for the endpoint's host or the TLS domain)"
            }
            Problem::CertificateRequired => {
                "the server closed the connection after the TLS handshake, as a server \
                 that requires a client certificate does without one: it requires a \
                 client certificate (set cert_file and key_file)"
            }
            Problem::CertificateRefused => {
                "the server closed the connection after the TLS handshake, as a server \
                 does with a client certificate it does not accept: it refused the client \
                 certificate"
            }
        })
    }
}

impl std::error::Error for TlsFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_closing_after_the_handshake_is_read_from_either_side_of_the_connection() {
        // Both as seen from etcd-client when an etcd requiring client certificates
        // refused a client without one (the second in a loaded CI run).
        assert!(closed_after_handshake(
            "transport error: connection closed before message completed"
        ));
        assert!(closed_after_handshake(
            "transport error: stream closed because of a broken pipe"
        ));
        assert!(!closed_after_handshake(
            "transport error: Connection refused"
        ));
    }
}
