//! A throwaway PostgreSQL server in a container.

use std::ops::Deref;
use std::sync::OnceLock;

use super::container::shared;
use super::{Container, image, probe};

/// A PostgreSQL server in a container, reachable on `127.0.0.1` with trust
/// authentication (any role, no password), durability off. Derefs to its [`Container`]
/// for faults.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::containers::PostgresContainer;
///
/// let Some(postgres) = PostgresContainer::start() else { return }; // skipped outside CI
/// println!("{}", postgres.url());
/// ```
#[derive(Debug)]
pub struct PostgresContainer(Container);

impl PostgresContainer {
    /// The image run by default (see [Images](super#images)).
    pub const DEFAULT_IMAGE: &str = "postgres:15";

    /// Starts one and waits until it accepts sessions; `None` if docker is missing
    /// outside CI. The official image initialises its cluster first (a few seconds).
    ///
    /// # Panics
    ///
    /// As [`ContainerBuilder::start`](super::ContainerBuilder::start).
    pub fn start() -> Option<Self> {
        Container::builder(image("postgres", Self::DEFAULT_IMAGE), 5432)
            .env("POSTGRES_HOST_AUTH_METHOD", "trust")
            .args(["postgres", "-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .ready_when(probe::postgres_ready)
            .start()
            .map(Self)
    }

    /// The one shared by the tests of this test binary, started by the first call. A
    /// test that harms its server starts its own with [`PostgresContainer::start`]. If the first start
    /// fails, every call fails at once with its message.
    ///
    /// # Panics
    ///
    /// As [`PostgresContainer::start`].
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Result<Option<PostgresContainer>, String>> = OnceLock::new();
        shared(&SHARED, Self::start)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser, no password needed.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port())
    }
}

impl Deref for PostgresContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.0
    }
}
