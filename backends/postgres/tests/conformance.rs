//! The whole `leasehold-conformance` suite on `PostgresBackend`: every client is its own
//! backend (its own lock session and listener) on one throwaway server.
//!
//! Time scale 2: a lock session idle for its longest lease TTL is ended by the server, so
//! one-second runner TTLs on a loaded two-core CI machine would cost leases to scheduling
//! delays rather than to the behaviour under test.

mod common;

leasehold_conformance::conformance_tests!(
    || async {
        let Some(server) = leasehold_conformance::servers::PostgresServer::shared() else {
            leasehold_conformance::skip("PostgreSQL binaries not found");
        };
        common::backend(&server.url(), "conformance").await
    },
    time_scale = 2.0
);
