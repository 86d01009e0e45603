//! TLS files: a CA to trust instead of the system's roots, and a client certificate and
//! key; remembered with the setting that named them, read and checked when the backend
//! connects.
//!
//! The server name is not among them: the `redis` crate checks the server's certificate
//! against the host of the address connected to, and offers no way to name another
//! (neither its `ConnectionManager` nor its pub/sub connection takes a resolver that
//! could map a name to another address). Connect by a name the certificate carries.

use std::path::{Path, PathBuf};

use leasehold_core::{Error, Result};
use redis::{ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file and the setting that named it (`ca_file`, `ROUTINE_REDIS_CA_FILE`, ...), so
/// that an unreadable file is reported under the name the user gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFile {
    pub(crate) path: PathBuf,
    pub(crate) setting: String,
}

impl TlsFile {
    pub(crate) fn new(path: impl Into<PathBuf>, setting: &str) -> Self {
        Self {
            path: path.into(),
            setting: setting.to_owned(),
        }
    }

    fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.path).map_err(|err| {
            Error::config_with_source(
                &self.setting,
                format!("cannot read `{}`", self.path.display()),
                err,
            )
        })
    }
}

/// The TLS files of a backend; all unset means the system's roots and no client
/// certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// PEM certificates of the authorities to trust, instead of the system's roots.
    pub(crate) ca_file: Option<TlsFile>,
    /// The PEM client certificate (chain), presented when the server asks for one.
    pub(crate) cert_file: Option<TlsFile>,
    /// The PEM private key of the client certificate.
    pub(crate) key_file: Option<TlsFile>,
}

impl TlsFiles {
    /// Whether any file is set.
    pub(crate) fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks what can be checked without reading: a certificate needs its key and the
    /// other way round.
    pub(crate) fn validate(&self) -> Result<()> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => Err(Error::config(
                "cert_file/key_file",
                "a client certificate needs both the certificate and the key file",
            )),
            _ => Ok(()),
        }
    }

    /// Reads and checks the files: `None` if none is set. A missing or unreadable file,
    /// or one without the PEM block it must hold, is [`Error::Config`] naming its
    /// setting.
    pub(crate) fn certificates(&self) -> Result<Option<TlsCertificates>> {
        if !self.any() {
            return Ok(None);
        }
        self.validate()?;
        let root_cert = self.ca_file.as_ref().map(read_certificates).transpose()?;
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read_certificates(cert)?,
                client_key: read_key(key)?,
            }),
            _ => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// The file's bytes, if they hold at least one PEM certificate and all of them parse.
fn read_certificates(file: &TlsFile) -> Result<Vec<u8>> {
    let pem = file.read()?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|err| bad_pem(file, "a malformed PEM certificate", err))?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::config(
            &file.setting,
            format!("`{}` holds no PEM certificate", file.path.display()),
        ));
    }
    Ok(pem)
}

/// The file's bytes, if they hold a PEM private key.
fn read_key(file: &TlsFile) -> Result<Vec<u8>> {
    let pem = file.read()?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|err| bad_pem(file, "no usable PEM private key", err))?;
    Ok(pem)
}

fn bad_pem(file: &TlsFile, what: &str, err: rustls::pki_types::pem::Error) -> Error {
    Error::config_with_source(
        &file.setting,
        format!("`{}` holds {what}", file.path.display()),
        err,
    )
}

/// `true`/`false` as environment variables and URL parameters write them.
pub(crate) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not a boolean (true or false)")),
    }
}

/// A path from a URL parameter or variable; empty is refused.
pub(crate) fn path(setting: &str, value: &str) -> Result<TlsFile> {
    if value.trim().is_empty() {
        return Err(Error::config(setting, "the path is empty"));
    }
    Ok(TlsFile::new(Path::new(value), setting))
}
