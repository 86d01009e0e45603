//! `Settings`: what an `EtcdBackendBuilder` collects and a backend runs with, and the
//! configuration error kept until `build`.
//!
//! A leaf: the builder (`config`), the parsers (`parse`), TLS (`tls`) and the backend all
//! read these types, and none of them needs another to do so.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::Error;

/// The key prefix used when none is configured: a routine named `report` is held in the
/// key `routine/lock/report`.
pub const DEFAULT_KEY_PREFIX: &str = "routine/lock/";

/// The endpoint used when none is configured, as for `etcdctl`.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// A configuration error kept until `build`: [`Error`] is not `Clone`, this is.
#[derive(Clone, Debug)]
pub(crate) struct ConfigError {
    pub(crate) setting: String,
    pub(crate) reason: String,
}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Error::config(err.setting, err.reason)
    }
}

/// The resolved settings.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `host:port` or `scheme://host:port`, as given.
    pub(crate) endpoints: Vec<String>,
    pub(crate) user: Option<Credentials>,
    pub(crate) tls: Tls,
    pub(crate) key_prefix: String,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

/// A user name and its password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl Credentials {
    pub(crate) fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }
}

/// Shows the password as `<redacted>`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// TLS settings. `enabled` is also switched on by `etcds://` URLs and `https://` endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) enabled: bool,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) domain: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            user: None,
            tls: Tls::default(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .field("key_prefix", &self.key_prefix)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}
