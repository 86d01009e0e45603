//! What a failed TLS handshake means: the rustls error in a `redis` error, named.

use std::error::Error as StdError;
use std::sync::Arc;

use leasehold_core::Error;
use redis::RedisError;
use rustls::AlertDescription;

use crate::NAME;

/// The error a TLS failure of `operation` maps to, or `None` if `err` is not one.
///
/// - The server's certificate was not trusted: [`Error::Unavailable`], saying so (a
///   server whose certificate is fixed or rotated is reached again by the runner's
///   retries).
/// - The server refused our client certificate, or asked for one we do not have:
///   [`Error::Auth`], as a refused password is.
/// - The answer was not TLS at all: [`Error::Misconfigured`], the server does not speak
///   TLS.
pub(crate) fn classify(err: &RedisError, operation: &'static str) -> Option<Error> {
    let tls = rustls_error(err)?;
    let problem = match tls {
        rustls::Error::InvalidCertificate(_) => TlsProblem::Untrusted,
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            TlsProblem::CertificateRequired
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
        ) => TlsProblem::CertificateRefused,
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            return Some(Error::misconfigured(
                NAME,
                format!(
                    "TLS is on but the server does not speak TLS (its answer to the TLS \
                     hello was not TLS: {tls}): connect with redis://, or turn TLS on in \
                     the server"
                ),
            ));
        }
        _ => return None,
    };
    let source = TlsFailure {
        problem,
        source: tls.clone(),
    };
    Some(match problem {
        TlsProblem::Untrusted => Error::unavailable(NAME, operation, source),
        TlsProblem::CertificateRequired | TlsProblem::CertificateRefused => {
            Error::auth(NAME, source)
        }
    })
}

/// The rustls error somewhere in `err`'s sources. The `redis` crate keeps an I/O error
/// in an `Arc`, and `io::Error::source` skips the error it wraps, so both are opened by
/// hand.
fn rustls_error(err: &RedisError) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(current) = source {
        let current = match current.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
            Some(shared) => &**shared as &(dyn StdError + 'static),
            None => current,
        };
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        source = current.source();
    }
    None
}

#[derive(Debug, Clone, Copy)]
enum TlsProblem {
    Untrusted,
    CertificateRequired,
    CertificateRefused,
}

/// The source of a TLS handshake error: what went wrong in words, with rustls's error
/// as its own source.
#[derive(Debug)]
struct TlsFailure {
    problem: TlsProblem,
    source: rustls::Error,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.problem {
            TlsProblem::Untrusted => {
                "TLS handshake failed: the server's certificate was not trusted (it is not \
                 signed by a CA of the CA file, or the system's roots without one, or is \
                 not issued for the host connected to)"
            }
            TlsProblem::CertificateRequired => {
                "TLS handshake refused by the server: it requires a client certificate \
                 (set the client certificate and key files)"
            }
            TlsProblem::CertificateRefused => {
                "TLS handshake refused by the server: it did not accept the client \
                 certificate"
            }
        })
    }
}

impl StdError for TlsFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}
