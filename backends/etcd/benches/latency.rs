//! Latency of the etcd backend against a throwaway etcd, next to the raw etcd round trips
//! it is built from.
//!
//! `cargo bench -p routine-etcd --bench latency` prints p50/p99 of:
//! - library `try_acquire` + `release` on a warm session,
//! - the raw equivalent: a put-if-absent transaction under a lease plus a delete, with
//!   `etcd-client` directly,
//! - graceful handover: a holder releases while a waiter on another client awaits
//!   `released()`; from the release call to the waiter's successful acquire.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a few iterations only,
//! as a smoke test.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use routine_conformance::servers::EtcdServer;
use routine_core::{LockBackend, LockKey};
use routine_etcd::EtcdBackend;

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
        let library = acquire_release(&server, iterations).await;
        let raw = raw_round_trip(&server, iterations).await;
        let handover = handover(&server, iterations / 2).await;
        println!();
        println!("{} ({iterations} iterations)", etcd_version());
        println!("| {:<46} |      p50 |      p99 |", "operation");
        println!("|{}|----------|----------|", "-".repeat(48));
        row("library try_acquire + release", &library);
        row("raw Txn put-if-absent + delete (etcd-client)", &raw);
        row("graceful handover (release -> waiter holds)", &handover);
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

async fn handover(server: &EtcdServer, iterations: usize) -> Vec<Duration> {
    let (holder, waiter) = (backend(server).await, backend(server).await);
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..=iterations {
        let key = LockKey::new(format!("bench-handover-{i}")).expect("valid key");
        let mut lease = holder.try_acquire(&key, TTL).await.unwrap().unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let waiting = {
            let waiter = waiter.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                let released = waiter.released(&key);
                tokio::pin!(released);
                // Registers interest before the holder may release.
                let mut pending = futures::poll!(released.as_mut()).is_pending();
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                loop {
                    if pending {
                        released.as_mut().await.expect("release notification");
                    }
                    // As the runner does: register for the next release before each
                    // attempt, so a release between a failed attempt and the wait is
                    // not missed.
                    released.set(waiter.released(&key));
                    pending = futures::poll!(released.as_mut()).is_pending();
                    if let Some(mut lease) = waiter.try_acquire(&key, TTL).await.unwrap() {
                        let held = Instant::now();
                        lease.release().await.unwrap();
                        return held;
                    }
                }
            })
        };
        ready_rx.await.expect("the waiter registers");
        let started = Instant::now();
        lease.release().await.unwrap();
        let held = waiting.await.expect("waiter task");
        // The first handover also starts the waiter's watch.
        if i > 0 {
            samples.push(held - started);
        }
    }
    samples
}

fn row(label: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    };
    println!(
        "| {label:<46} | {:>8} | {:>8} |",
        format!("{:.2?}", at(0.50)),
        format!("{:.2?}", at(0.99))
    );
}
