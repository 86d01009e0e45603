//! The whole conformance suite against PostgreSQL in a container
//! (`leasehold-conformance`'s `containers` feature: `postgres:15`, or the image built
//! from Debian's package with `LEASEHOLD_CONTAINER_IMAGES=local`). Every client is its
//! own backend (its own lock session and listener).
//!
//! Time scale 2, as in `conformance.rs`: a lock session idle for its longest lease TTL is
//! ended by the server, so one-second runner TTLs on a loaded two-core CI machine would
//! cost leases to scheduling delays rather than to the behaviour under test.

mod common;

leasehold_conformance::conformance_tests!(
    || async {
        let Some(postgres) = leasehold_conformance::containers::PostgresContainer::shared() else {
            leasehold_conformance::skip("docker is not usable");
        };
        common::backend(&postgres.url(), "conformance").await
    },
    time_scale = 2.0
);
