//! Mapping `etcd-client` errors and our own deadlines into [`leasehold_core::Error`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{BoxError, Error};

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "etcd";

/// gRPC status codes, as numbers: they are fixed by the gRPC wire protocol, and reading
/// them this way spares a direct dependency on the `tonic` version `etcd-client` uses.
mod code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// What went wrong in one etcd request, before it becomes a [`leasehold_core::Error`]:
/// the client's error or our own deadline. Cheap to clone, so that one keep-alive failure
/// can be reported to every refresh that waited for it.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The client (transport or server) failed.
    Etcd(Arc<etcd_client::Error>),
    /// Our deadline passed.
    Timeout(Duration),
}

impl From<etcd_client::Error> for Failure {
    fn from(err: etcd_client::Error) -> Self {
        Failure::Etcd(Arc::new(err))
    }
}

impl Failure {
    /// Whether etcd said that the lease a request named does not exist (it expired, was
    /// revoked, or the cluster's data was wiped).
    pub(crate) fn is_lease_not_found(&self) -> bool {
        match self {
            Failure::Etcd(err) => match &**err {
                etcd_client::Error::GRpcStatus(status) => {
                    status.code() as i32 == code::NOT_FOUND
                        && status.message().contains("lease not found")
                }
                etcd_client::Error::LeaseKeepAliveError(message) => {
                    message.contains("lease not found")
                }
                _ => false,
            },
            Failure::Timeout(_) => false,
        }
    }

    /// Converts into the public error for `operation`, which had `timeout` to complete.
    pub(crate) fn into_error(self, operation: &'static str, timeout: Duration) -> Error {
        match self {
            Failure::Timeout(timeout) => Error::timeout(NAME, operation, timeout),
            Failure::Etcd(err) => map_client_error(operation, timeout, err),
        }
    }
}

/// Maps an `etcd-client` error by its gRPC status code and, where etcd reuses a generic
/// code for authentication problems, by its message. `timeout` is what the request had,
/// reported if the server itself gave up on the deadline.
fn map_client_error(
    operation: &'static str,
    timeout: Duration,
    err: Arc<etcd_client::Error>,
) -> Error {
    use etcd_client::Error as E;
    let source: BoxError = Box::new(Arc::clone(&err));
    let status = match &*err {
        E::GRpcStatus(status) => status,
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => {
            return Error::config_with_source(
                "endpoints",
                "etcd-client rejected an endpoint",
                source,
            );
        }
        _ => return Error::unavailable(NAME, operation, source),
    };
    let message = status.message();
    match status.code() as i32 {
        code::DEADLINE_EXCEEDED => Error::timeout(NAME, operation, timeout),
        code::UNAUTHENTICATED => Error::auth(NAME, source),
        code::PERMISSION_DENIED => Error::permission_denied(NAME, operation, source),
        // etcd answers a wrong user or password with InvalidArgument ("authentication
        // failed, invalid user ID or password"), and credentials sent to a server without
        // auth with FailedPrecondition ("authentication is not enabled").
        code::INVALID_ARGUMENT | code::FAILED_PRECONDITION
            if message.contains("authentication") || message.contains("user name") =>
        {
            Error::auth(NAME, source)
        }
        _ => Error::unavailable(NAME, operation, source),
    }
}

/// Runs `future` under `timeout`, turning the deadline into [`Failure::Timeout`].
pub(crate) async fn timed<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Failure::Timeout(timeout)),
    }
}
