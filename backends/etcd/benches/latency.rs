//! Latency of the etcd backend against a throwaway etcd, next to the raw etcd round trips
//! it is built from.
//!
//! `cargo bench -p leasehold-etcd --bench latency` prints p50/p99 of:
//! - library `try_acquire` + `release` on a warm session,
//! - the raw equivalent: a put-if-absent transaction under a lease plus a delete, with
//!   `etcd-client` directly,
//! - graceful handover: a holder releases while a waiter on another client awaits
//!   `released()`; from the release call to the waiter's successful acquire.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a few iterations only,
//! as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use leasehold_conformance::measure::{self, print_row as row};
use leasehold_conformance::servers::EtcdServer;
use leasehold_core::{LockBackend, LockKey};
use leasehold_etcd::EtcdBackend;

const TTL: Duration = Duration::from_secs(10);

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let iterations = if full { 1000 } else { 10 };
    let Some(server) = EtcdServer::start() else {
        eprintln!("skipping the etcd latency benchmark: etcd is not installed");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut library = acquire_release(&server, iterations).await;
        let mut raw = raw_round_trip(&server, iterations).await;
        let mut handover = measure::handovers(
            Arc::new(backend(&server).await),
            Arc::new(backend(&server).await),
            &LockKey::new("bench-handover").expect("valid key"),
            TTL,
            iterations / 2,
        )
        .await;
        println!();
        println!("{} ({iterations} iterations)", etcd_version());
        println!("| operation | p50 | p99 |");
        println!("|---|---|---|");
        row("library try_acquire + release", &mut library);
        row("raw Txn put-if-absent + delete (etcd-client)", &mut raw);
        row("graceful handover (release -> waiter holds)", &mut handover);
    });
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "version unknown".to_owned())
}

async fn backend(server: &EtcdServer) -> EtcdBackend {
    EtcdBackend::builder()
        .with_endpoints([server.endpoint()])
        .build()
        .await
        .expect("backend connects")
}

async fn acquire_release(server: &EtcdServer, iterations: usize) -> Vec<Duration> {
    let backend = backend(server).await;
    let key = LockKey::new("bench-acquire").expect("valid key");
    // Warms up the connection and grants the session lease outside the measurement.
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    lease.release().await.unwrap();
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let mut lease = backend
            .try_acquire(&key, TTL)
            .await
            .expect("acquire")
            .expect("free");
        lease.release().await.expect("release");
        samples.push(started.elapsed());
    }
    samples
}

async fn raw_round_trip(server: &EtcdServer, iterations: usize) -> Vec<Duration> {
    let mut client = Client::connect([server.endpoint()], None)
        .await
        .expect("raw client connects");
    let lease = client.lease_grant(10, None).await.expect("grant").id();
    let key = b"raw/bench-acquire".to_vec();
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..=iterations {
        let started = Instant::now();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                "raw",
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let created = client.txn(txn).await.expect("txn");
        assert!(created.succeeded(), "the raw key must be free");
        client.delete(key.clone(), None).await.expect("delete");
        // The first round trip warms the connection up.
        if i > 0 {
            samples.push(started.elapsed());
        }
    }
    let _ = client.lease_revoke(lease).await;
    samples
}
