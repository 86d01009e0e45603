//! What an operator asks a backend about a lease: [`LeaseInfo`], and who *we* are when we
//! hold one ([`process_identity`], [`check_holder_identity`]).

use std::time::{Duration, SystemTime};

use crate::{Error, FencingToken, LockKey, Result};

/// The environment variable that overrides the process's holder identity (containers set
/// it to the pod name).
pub const HOLDER_IDENTITY_ENV: &str = "ROUTINE_HOLDER_IDENTITY";

/// The longest holder identity, in bytes.
pub const MAX_HOLDER_IDENTITY_LEN: usize = 256;

/// Who holds a lease and since when, as [`LockBackend::describe`](crate::LockBackend::describe)
/// and [`LockBackend::list`](crate::LockBackend::list) report it.
///
/// Fields a backend cannot know are `None`: a lease taken by a client that stores no
/// identity (the Go original on Redis) has no `holder`; a backend whose server keeps no
/// clock (etcd) reports `acquired_at` from the holder's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The name whose lease this is.
    pub key: LockKey,
    /// The holder's identity ([`process_identity`] unless its runner was given another).
    pub holder: Option<String>,
    /// The fencing token of the holder's acquisition.
    pub fencing_token: Option<FencingToken>,
    /// When the holder acquired the lease: the server's clock where the backend has one.
    pub acquired_at: Option<SystemTime>,
    /// How long the lease has left unless the holder refreshes it.
    pub expires_in: Option<Duration>,
}

impl LeaseInfo {
    /// A lease on `key` about which nothing else is known yet.
    pub fn new(key: LockKey) -> Self {
        Self {
            key,
            holder: None,
            fencing_token: None,
            acquired_at: None,
            expires_in: None,
        }
    }

    /// Sets the holder's identity.
    pub fn with_holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// Sets the fencing token.
    pub fn with_fencing_token(mut self, token: FencingToken) -> Self {
        self.fencing_token = Some(token);
        self
    }

    /// Sets when the lease was acquired.
    pub fn with_acquired_at(mut self, at: SystemTime) -> Self {
        self.acquired_at = Some(at);
        self
    }

    /// Sets how long the lease has left.
    pub fn with_expires_in(mut self, left: Duration) -> Self {
        self.expires_in = Some(left);
        self
    }
}

/// This process's default holder identity: `$ROUTINE_HOLDER_IDENTITY` if set and valid,
/// otherwise `<host name>:<pid>` (the host name from `$HOSTNAME` or
/// `/proc/sys/kernel/hostname`, `unknown-host` if neither is readable).
///
/// A runner uses it unless its builder is given another identity; a backend uses it for
/// [`LockBackend::try_acquire`](crate::LockBackend::try_acquire), which names no holder.
/// Computed once per process.
pub fn process_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(compute_process_identity)
}

fn compute_process_identity() -> String {
    if let Ok(value) = std::env::var(HOLDER_IDENTITY_ENV)
        && check_holder_identity(&value).is_ok()
    {
        return value;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|host| host.trim().to_owned())
                .filter(|host| !host.is_empty())
        })
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Checks a holder identity: 1 to [`MAX_HOLDER_IDENTITY_LEN`] bytes, no control
/// characters (it is shown in logs and terminals and stored by every backend).
///
/// # Errors
///
/// [`Error::Config`] naming `holder_identity` and what is wrong.
pub fn check_holder_identity(identity: &str) -> Result<()> {
    let reason = if identity.is_empty() {
        "must not be empty".to_owned()
    } else if identity.len() > MAX_HOLDER_IDENTITY_LEN {
        format!(
            "is {} bytes long; at most {MAX_HOLDER_IDENTITY_LEN} are allowed",
            identity.len()
        )
    } else if identity.chars().any(char::is_control) {
        format!("{identity:?} contains a control character")
    } else {
        return Ok(());
    };
    Err(Error::config("holder_identity", reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_checked() {
        assert!(check_holder_identity("pod-7:42").is_ok());
        assert!(check_holder_identity("").is_err());
        assert!(check_holder_identity("a\nb").is_err());
        assert!(check_holder_identity(&"x".repeat(MAX_HOLDER_IDENTITY_LEN + 1)).is_err());
        let err = check_holder_identity("").unwrap_err();
        assert!(err.to_string().contains("holder_identity"), "{err}");
    }

    #[test]
    fn the_process_identity_is_valid_and_names_the_pid() {
        let identity = process_identity();
        assert!(check_holder_identity(identity).is_ok(), "{identity:?}");
        if std::env::var(HOLDER_IDENTITY_ENV).is_err() {
            assert!(
                identity.ends_with(&format!(":{}", std::process::id())),
                "{identity:?}"
            );
        }
    }
}
