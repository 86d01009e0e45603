//! `EtcdBackendBuilder`: endpoints, credentials, TLS, key prefix and timeouts, set one by
//! one, from a URL or from the environment, into [`Settings`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::Result;

use crate::EtcdBackend;
use crate::handshake;
use crate::holder;
use crate::parse;
use crate::settings::{ConfigError, Credentials, Settings};

/// Settings of an [`EtcdBackend`], built with [`EtcdBackend::builder`].
///
/// Every setting has a default, so `EtcdBackend::builder().build().await` talks to
/// `127.0.0.1:2379` without TLS or credentials. Settings can be given one by one, from an
/// `etcd://` URL ([`with_url`](Self::with_url)) or from `ROUTINE_ETCD_*` environment
/// variables ([`with_env`](Self::with_env)); later calls override earlier ones. A bad
/// value is reported by [`build`](Self::build) as
/// [`Error::Config`](leasehold_core::Error::Config) naming the setting.
///
/// # Timeouts
///
/// Every etcd request is bounded: by the request timeout (default 5 s) and, for
/// `try_acquire` and `refresh`, by half the lease TTL if that is shorter, so that an answer
/// that comes too late to be useful is not waited for.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_etcd::EtcdBackend;
///
/// # async fn f() -> leasehold_core::Result<()> {
/// let backend = EtcdBackend::builder()
///     .with_endpoints(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .with_user("routine", "secret")
///     .with_key_prefix("billing/locks/")
///     .with_request_timeout(Duration::from_secs(2))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdBackendBuilder {
    pub(crate) settings: Settings,
    /// The first bad value met by a `with_*` call that cannot fail on its own (a URL or
    /// the environment), reported by `build`.
    pub(crate) error: Option<ConfigError>,
    /// Replacements for what the backend writes into its keys; tests only.
    holder: holder::Overrides,
}

impl Default for EtcdBackendBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EtcdBackendBuilder {
    /// Default settings: `127.0.0.1:2379`, no TLS, no credentials, prefix
    /// [`DEFAULT_KEY_PREFIX`](crate::DEFAULT_KEY_PREFIX), 5 s request and connect timeouts.
    pub fn new() -> Self {
        Self {
            settings: Settings::default(),
            error: None,
            holder: holder::Overrides::default(),
        }
    }

    /// The cluster members to talk to: `host:port`, `host` (port 2379), `http://host:port`
    /// or `https://host:port` (which turns TLS on).
    pub fn with_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Authenticates as `user` with `password` (etcd's auth must be enabled on the server).
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.settings.user = Some(Credentials::new(user, password));
        self
    }

    /// Prepended to every routine name to form its etcd key, and the range watched for
    /// release notifications. Used as given, and must end with `/`, which names must not
    /// contain: so no two applications under different prefixes can share a key (see
    /// the crate docs). [`build`](Self::build) refuses any other prefix with
    /// [`Error::Config`](leasehold_core::Error::Config) naming `key_prefix`.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// The longest any etcd request may take (default 5 s); see the type's docs.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// The longest connecting to an endpoint may take (default 5 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Talks TLS to every endpoint (needs the `tls` feature, on by default). Without a CA
    /// file the system's root certificates are trusted.
    pub fn with_tls(mut self, enabled: bool) -> Self {
        self.settings.tls.enabled = enabled;
        self
    }

    /// Trusts the PEM certificate authority in `path` (and turns TLS on).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.tls.enabled = true;
        self.settings.tls.ca_file = Some(path.into());
        self
    }

    /// Presents the PEM client certificate and key in these files (and turns TLS on).
    pub fn with_client_identity_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.settings.tls.enabled = true;
        self.settings.tls.cert_file = Some(cert.into());
        self.settings.tls.key_file = Some(key.into());
        self
    }

    /// Checks the servers' certificates against `domain` instead of the endpoint's host.
    pub fn with_tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.settings.tls.domain = Some(domain.into());
        self
    }

    /// Applies an `etcd://` or `etcds://` URL; see [`EtcdBackend::from_url`] for its form.
    /// A malformed URL is reported by [`build`](Self::build).
    pub fn with_url(mut self, url: &str) -> Self {
        if let Err(err) = parse::apply_url(&mut self.settings, url) {
            self.error.get_or_insert(err);
        }
        self
    }

    /// Applies the `ROUTINE_ETCD_*` environment variables that are set; see
    /// [`EtcdBackend::from_env`] for the list. A bad value is reported by
    /// [`build`](Self::build), naming the variable.
    pub fn with_env(mut self) -> Self {
        if let Err(err) = parse::apply_env(&mut self.settings, &parse::process_env) {
            self.error.get_or_insert(err);
        }
        self
    }

    /// For tests only, not part of the API: what the backend writes into the keys it
    /// takes is made from `pid` instead of the process id, `nonce` (if given) instead of
    /// a random number, and attempt numbers counted from `first_attempt`. Two backends
    /// built with the same arguments write the same values, as two replicas running as
    /// PID 1 would without the nonce.
    #[doc(hidden)]
    pub fn with_holder_values_for_tests(
        mut self,
        pid: u32,
        nonce: Option<u64>,
        first_attempt: u64,
    ) -> Self {
        self.holder = holder::Overrides {
            pid: Some(pid),
            nonce,
            first_attempt: Some(first_attempt),
            ..self.holder
        };
        self
    }

    /// For tests only, not part of the API: every acquire records `acquired_at` as its
    /// acquire time (see [`LeaseInfo::acquired_at`](leasehold_core::LeaseInfo::acquired_at))
    /// instead of the wall-clock time, so that a test can spell the value an acquire
    /// writes.
    #[doc(hidden)]
    pub fn with_holder_clock_for_tests(mut self, acquired_at: std::time::SystemTime) -> Self {
        self.holder.clock = Some(acquired_at);
        self
    }

    /// Checks the settings, connects and asks the cluster its minimum lease TTL.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](leasehold_core::Error::Config) for a bad setting (naming it),
    /// [`Error::Auth`](leasehold_core::Error::Auth) if the credentials are refused,
    /// [`Error::Unavailable`](leasehold_core::Error::Unavailable) or
    /// [`Error::Timeout`](leasehold_core::Error::Timeout) if no endpoint answers.
    ///
    /// A failed connect that TLS explains says so (the first endpoint is asked once what
    /// it speaks): [`Error::Unavailable`](leasehold_core::Error::Unavailable) saying the
    /// server's certificate was not trusted; [`Error::Auth`](leasehold_core::Error::Auth)
    /// if the server closed the connection after the handshake, as one that requires a
    /// client certificate does; [`Error::Misconfigured`](leasehold_core::Error::Misconfigured)
    /// if TLS is on and the server speaks plaintext, or the other way round.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: nothing is created on the server that outlives a dropped future
    /// except a probe lease of the minimum TTL.
    pub async fn build(self) -> Result<EtcdBackend> {
        if let Some(err) = self.error {
            return Err(err.into());
        }
        parse::validate(&self.settings)?;
        match EtcdBackend::connect(self.settings.clone(), &self.holder).await {
            Err(err) => Err(handshake::explain(&self.settings, err).await),
            connected => connected,
        }
    }
}

impl fmt::Debug for EtcdBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackendBuilder")
            .field("settings", &self.settings)
            .field("error", &self.error)
            .field("holder", &self.holder)
            .finish()
    }
}
