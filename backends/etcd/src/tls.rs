//! Turning the TLS settings into `etcd-client` TLS options (feature `tls`).

use etcd_client::ConnectOptions;

use crate::settings::{ConfigError, Tls};

/// Adds TLS to `options`: the CA file if given, else the system's roots; the client
/// identity and the domain name if given. Files are read here, so a missing or unreadable
/// file is a configuration error naming its setting.
#[cfg(feature = "tls")]
pub(crate) fn apply(options: ConnectOptions, tls: &Tls) -> Result<ConnectOptions, ConfigError> {
    use etcd_client::{Certificate, Identity, TlsOptions};

    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| ConfigError {
            setting: setting.to_owned(),
            reason: format!("cannot read `{}`: {err}", path.display()),
        })
    };
    let mut config = TlsOptions::new();
    config = match &tls.ca_file {
        Some(path) => config.ca_certificate(Certificate::from_pem(read("ca_file", path)?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        config = config.identity(Identity::from_pem(
            read("cert_file", cert)?,
            read("key_file", key)?,
        ));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(options.with_tls(config))
}

/// Without the `tls` feature TLS settings are refused (`parse::validate` says so first).
#[cfg(not(feature = "tls"))]
pub(crate) fn apply(_options: ConnectOptions, _tls: &Tls) -> Result<ConnectOptions, ConfigError> {
    Err(ConfigError {
        setting: "tls".to_owned(),
        reason: "TLS was asked for but leasehold-etcd was built without its `tls` feature"
            .to_owned(),
    })
}
