//! Latency of the Redis backend against a throwaway redis-server on loopback.
//!
//! Prints a table: the library's acquire + release against a raw `SET NX PX` + `DEL`
//! round trip (interleaved, same iteration count, same kind of multiplexed connection),
//! a refresh, and the graceful handover time: a holder releases while a waiter (another
//! backend, as another process would be) awaits `released()`; measured from the release
//! call to the waiter's successful acquire.
//!
//! `cargo bench -p leasehold-redis --bench latency` runs it in full; under `cargo test`
//! (no `--bench` argument) it runs a few iterations only, to check that it works.

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::measure::{self, print_row as row};
use leasehold_conformance::servers::RedisServer;
use leasehold_core::LockKey;
use leasehold_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (iterations, handovers) = if full { (2000, 500) } else { (20, 5) };
    let Some(server) = RedisServer::start() else {
        eprintln!("redis-server not found: benchmark skipped");
        return;
    };
    let backend = RedisBackend::from_url(&server.url())
        .await
        .expect("connect");
    let waiter = RedisBackend::from_url(&server.url())
        .await
        .expect("connect");
    let mut raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");

    let key = LockKey::new("bench-acquire").expect("key");
    let raw_key = "bench-raw";
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

    println!();
    println!("leasehold-redis latency, redis-server on loopback, {iterations} iterations");
    println!("(handover: {handovers} iterations)");
    println!();
    println!("| measurement | p50 | p99 |");
    println!("|---|---|---|");
    row("library try_acquire + release", &mut library);
    row("raw SET NX PX + DEL", &mut baseline);
    row("library refresh", &mut refresh);
    row("handover: release → waiter acquired", &mut handover);
}

/// What a bare lock costs: `SET key v NX PX ttl` then `DEL key`, two round trips.
async fn raw_round_trip(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg("token")
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(set.as_deref(), Some("OK"));
    let _: i64 = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
}
