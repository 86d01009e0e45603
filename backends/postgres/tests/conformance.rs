//! The whole `routine-conformance` suite on `PostgresBackend`: every client is its own
//! backend (its own lock session and listener) on one throwaway server.

mod common;

routine_conformance::conformance_tests!(|| async {
    let Some(server) = common::shared_server() else {
        routine_conformance::skip("PostgreSQL binaries not found");
    };
    common::backend(&server.url(), "conformance").await
});
