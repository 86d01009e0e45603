//! The conformance suite's servers as containers (feature `containers`): the way a
//! backend's CI runs the suite against the server image its users deploy.
//!
//! [`RedisContainer`], [`EtcdContainer`] and [`PostgresContainer`] each start one
//! throwaway server as a container through the `docker` command line, published on
//! `127.0.0.1` and a port docker picks, wait until it answers its protocol, and remove it
//! when dropped or when the test process exits. Each has a `shared()` for the tests of a
//! binary that do not harm their server, and [`Container`] helpers for fault tests:
//! `pause`/`unpause` (the cgroup freezer), `restart` (a crash and a start) and
//! `disconnect_network`/`connect_network`, and [`faults`] checks that a held routine
//! stops within its TTL when they hit its server. [`Container::builder`] starts any other image,
//! with a readiness check from [`probe`] or of its own.
//!
//! # Images
//!
//! By default the official images, with these tags:
//!
//! | server     | image                                    | override               |
//! |------------|------------------------------------------|------------------------|
//! | Redis      | `redis:7`                                | `LEASEHOLD_REDIS_IMAGE`    |
//! | etcd       | `gcr.io/etcd-development/etcd:v3.5.17`   | `LEASEHOLD_ETCD_IMAGE`     |
//! | PostgreSQL | `postgres:15`                            | `LEASEHOLD_POSTGRES_IMAGE` |
//!
//! With `LEASEHOLD_CONTAINER_IMAGES=local` the images `scripts/container-images` builds
//! from Debian's packages are used instead (`leasehold-local/<server>:latest`), for
//! machines that reach no container registry. An `*_IMAGE` variable wins over both.
//!
//! # Missing docker
//!
//! As with the process servers: when `docker` is missing or its daemon is unreachable,
//! the starters return `None` (the test skips, with a notice) outside CI, and panic under
//! CI (`CI=true` or `ROUTINE_TEST_REQUIRE_SERVICES=1`).

mod container;
mod etcd;
pub mod faults;
mod postgres;
pub mod probe;
mod redis;

pub use container::{Container, ContainerBuilder, LABEL};
pub use etcd::EtcdContainer;
pub use postgres::PostgresContainer;
pub use redis::RedisContainer;

/// The image to run for `server` (`redis`, `etcd`, `postgres`): the
/// `LEASEHOLD_<SERVER>_IMAGE` variable, else the locally built image under
/// `LEASEHOLD_CONTAINER_IMAGES=local`, else `default` (see [Images](self#images)).
pub fn image(server: &str, default: &str) -> String {
    let var = format!("LEASEHOLD_{}_IMAGE", server.to_ascii_uppercase());
    if let Some(image) = std::env::var(&var).ok().filter(|v| !v.trim().is_empty()) {
        return image.trim().to_owned();
    }
    match std::env::var("LEASEHOLD_CONTAINER_IMAGES")
        .as_deref()
        .map(str::trim)
    {
        Ok("local") => format!("leasehold-local/{server}:latest"),
        Ok("" | "official") | Err(_) => default.to_owned(),
        Ok(other) => panic!(
            "LEASEHOLD_CONTAINER_IMAGES={other:?}: expected `local` or `official` (the default)"
        ),
    }
}
