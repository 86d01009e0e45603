//! A throwaway Redis server in a container.

use std::ops::Deref;
use std::sync::OnceLock;

use super::container::shared;
use super::{Container, image, probe};

/// A `redis-server` in a container, without persistence, reachable on `127.0.0.1`.
/// Derefs to its [`Container`] for faults (`pause`, `restart`, ...).
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::containers::RedisContainer;
///
/// let Some(redis) = RedisContainer::start() else { return }; // skipped outside CI
/// println!("{}", redis.url());
/// redis.pause();
/// redis.unpause();
/// ```
#[derive(Debug)]
pub struct RedisContainer(Container);

impl RedisContainer {
    /// The image run by default (see [Images](super#images)).
    pub const DEFAULT_IMAGE: &str = "redis:7";

    /// Starts one and waits until it answers `PING`; `None` if docker is missing outside
    /// CI.
    ///
    /// # Panics
    ///
    /// As [`ContainerBuilder::start`](super::ContainerBuilder::start).
    pub fn start() -> Option<Self> {
        Container::builder(image("redis", Self::DEFAULT_IMAGE), 6379)
            .args(["redis-server", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .ready_when(probe::redis_ping)
            .start()
            .map(Self)
    }

    /// The one shared by the tests of this test binary, started by the first call. A
    /// test that harms its server starts its own with [`RedisContainer::start`]. If the first start
    /// fails, every call fails at once with its message.
    ///
    /// # Panics
    ///
    /// As [`RedisContainer::start`].
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Result<Option<RedisContainer>, String>> = OnceLock::new();
        shared(&SHARED, Self::start)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }
}

impl Deref for RedisContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.0
    }
}
