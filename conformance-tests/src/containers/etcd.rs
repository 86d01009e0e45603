//! A throwaway single-member etcd cluster in a container.

use std::ops::Deref;
use std::sync::OnceLock;

use super::container::shared;
use super::{Container, image, probe};

/// A single-member `etcd` in a container with etcd's default timing (so a minimum lease
/// TTL of 2 s), reachable on `127.0.0.1`. Derefs to its [`Container`] for faults.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::containers::EtcdContainer;
///
/// let Some(etcd) = EtcdContainer::start() else { return }; // skipped outside CI
/// println!("{}", etcd.endpoint());
/// ```
#[derive(Debug)]
pub struct EtcdContainer(Container);

impl EtcdContainer {
    /// The image run by default (see [Images](super#images)).
    pub const DEFAULT_IMAGE: &str = "gcr.io/etcd-development/etcd:v3.5.17";

    /// Starts one and waits until `/health` says it is healthy; `None` if docker is
    /// missing outside CI.
    ///
    /// # Panics
    ///
    /// As [`ContainerBuilder::start`](super::ContainerBuilder::start).
    pub fn start() -> Option<Self> {
        // Clients use the endpoint they are given and never the advertised URL.
        Container::builder(image("etcd", Self::DEFAULT_IMAGE), 2379)
            .args([
                "etcd",
                "--name",
                "conformance",
                "--data-dir",
                "/var/lib/etcd/data",
            ])
            .args(["--listen-client-urls", "http://0.0.0.0:2379"])
            .args(["--advertise-client-urls", "http://127.0.0.1:2379"])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "conformance=http://127.0.0.1:2380"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .ready_when(probe::etcd_health)
            .start()
            .map(Self)
    }

    /// The one shared by the tests of this test binary, started by the first call. A
    /// test that harms its server starts its own with [`EtcdContainer::start`]. If the first start
    /// fails, every call fails at once with its message.
    ///
    /// # Panics
    ///
    /// As [`EtcdContainer::start`].
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Result<Option<EtcdContainer>, String>> = OnceLock::new();
        shared(&SHARED, Self::start)
    }

    /// `127.0.0.1:<port>`, the form `etcd-client` and `ROUTINE_ETCD_ENDPOINTS` take.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// `etcd://127.0.0.1:<port>`, for `ROUTINE_BACKEND_URL`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port())
    }
}

impl Deref for EtcdContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.0
    }
}
