//! Latency of the PostgreSQL backend against a throwaway server on loopback.
//!
//! Prints a table: the library's acquire and release against a raw `pg_try_advisory_lock`
//! and `pg_advisory_unlock` on one connection (interleaved, same iteration count), a
//! refresh, 1,000 concurrent refreshes (coalesced into shared statements), the graceful
//! handover time (a holder releases while a waiter, another backend as another process
//! would be, awaits `released()`; from the release call to the waiter's successful
//! acquire), and the connections used while holding 1,000 leases.
//!
//! `cargo bench -p leasehold-postgres --bench latency` runs it in full; under `cargo test`
//! (no `--bench` argument) it runs a few iterations only, to check that it works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use leasehold_conformance::measure::{self, print_row as row};
use leasehold_conformance::servers::PostgresServer;
use leasehold_core::{LockBackend, LockKey};
use leasehold_postgres::PostgresBackend;
use sqlx::Connection;

const TTL: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (iterations, handovers, held) = if full { (2000, 500, 1000) } else { (20, 5, 50) };
    let Some(server) = PostgresServer::start() else {
        eprintln!("PostgreSQL binaries not found: benchmark skipped");
        return;
    };
    let url = format!("{}?application_name=bench", server.url());
    let backend = PostgresBackend::from_url(&url).await.expect("connect");
    let waiter = PostgresBackend::from_url(&server.url())
        .await
        .expect("connect");
    let mut raw = sqlx::PgConnection::connect(&server.url())
        .await
        .expect("raw connection");

    let key = LockKey::new("bench-acquire").expect("key");
    let raw_key = 42_i64;
    let measure::Latency {
        mut library,
        floor: mut baseline,
        mut refresh,
    } = measure::acquire_release_against_floor(&backend, &key, TTL, iterations, async || {
        raw_round_trip(&mut raw, raw_key).await
    })
    .await;

    let mut handover = measure::handovers(
        Arc::new(backend.clone()),
        Arc::new(waiter.clone()),
        &LockKey::new("bench-handover").expect("key"),
        TTL,
        handovers,
    )
    .await;

    // Many leases on one backend: connections used, and all of them refreshed at once.
    let keys: Vec<LockKey> = (0..held)
        .map(|i| LockKey::new(format!("bench-held-{i}")).expect("key"))
        .collect();
    let mut leases = Vec::with_capacity(held);
    for key in &keys {
        leases.push(backend.try_acquire(key, TTL).await.unwrap().unwrap());
    }
    let connections = server.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'bench (routine %'",
    );
    let mut refresh_all = Vec::with_capacity(10);
    for _ in 0..10 {
        let start = Instant::now();
        let results = join_all(leases.iter_mut().map(|lease| lease.refresh(TTL))).await;
        refresh_all.push(start.elapsed());
        assert!(results.iter().all(Result::is_ok), "every refresh succeeds");
    }
    for lease in &mut leases {
        lease.release().await.unwrap();
    }

    println!();
    println!("leasehold-postgres latency, PostgreSQL on loopback, {iterations} iterations");
    println!("(handover: {handovers} iterations; all-leases refresh: 10 rounds)");
    println!();
    println!("| measurement | p50 | p99 |");
    println!("|---|---|---|");
    row("library try_acquire + release", &mut library);
    row(
        "raw pg_try_advisory_lock + pg_advisory_unlock",
        &mut baseline,
    );
    row("library refresh", &mut refresh);
    row(
        &format!("{held} concurrent refreshes (one backend)"),
        &mut refresh_all,
    );
    row("handover: release → waiter acquired", &mut handover);
    println!();
    println!("connections in pg_stat_activity while holding {held} leases: {connections}");
}

/// What a bare lock costs: `pg_try_advisory_lock` then `pg_advisory_unlock`, two round
/// trips on one connection.
async fn raw_round_trip(conn: &mut sqlx::PgConnection, key: i64) {
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(got, "the raw key is free");
    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(released, "the raw key was ours");
}
