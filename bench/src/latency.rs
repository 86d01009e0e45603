//! Uncontended acquire + release: the library against the raw floor of the same server.
//!
//! Three measurements, interleaved in every iteration so that load changes on the
//! machine hit all of them alike:
//! - *library*: `try_acquire` + `release` on the backend, what the runner calls;
//! - *floor*: the bare protocol operations a lock needs, without the library, on the
//!   same kind of connection from the same client crate: `SET NX PX` + `DEL` (Redis), a
//!   put-if-absent transaction under a lease + a delete (etcd), `pg_try_advisory_lock` +
//!   `pg_advisory_unlock` (PostgreSQL), a map insert + remove under a mutex (memory);
//! - *runner*: a whole `run_named(.., RunOptions::exclusive())` with an empty routine,
//!   joined: task start, acquire, routine, release and outcome.
//!
//! Then, to tell the server's share from the client's, the server's own time per round
//! trip (Redis `commandstats`, PostgreSQL `pg_stat_statements`) over [`SERVER_ROUNDS`]
//! library round trips and as many floor round trips, each phase on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use leasehold::{LockBackend, LockKey, Outcome, RunOptions, Runner};
use serde::Serialize;
use sqlx::Connection as _;

use crate::stats::{Samples, Summary};
use crate::targets::{Kind, Target};

/// Long enough that no lease expires during a measurement.
const TTL: Duration = Duration::from_secs(10);

/// How long the etcd floor's lease is granted for: longer than any measurement.
const FLOOR_LEASE: Duration = Duration::from_secs(3600);
const WARM_UP: usize = 50;
/// Round trips per phase of the server-time split.
const SERVER_ROUNDS: usize = 500;

/// The latency figures of one backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) floor_label: &'static str,
    pub(crate) library: Summary,
    pub(crate) floor: Summary,
    pub(crate) runner: Summary,
    /// Library p50 over floor p50.
    pub(crate) ratio_p50: f64,
    /// Library p99 over floor p99.
    pub(crate) ratio_p99: f64,
    /// The server's own time per library round trip, µs, where it says.
    pub(crate) server_library_us: Option<f64>,
    /// The server's own time per floor round trip, µs.
    pub(crate) server_floor_us: Option<f64>,
}

/// The raw operations of one server.
enum Floor {
    /// Shared, as a backend's map would be.
    Memory(Arc<Mutex<HashMap<String, u64>>>),
    Redis(redis::aio::MultiplexedConnection),
    Etcd(Box<etcd_client::Client>, i64),
    Postgres(sqlx::PgConnection),
}

impl Floor {
    async fn connect(target: &Target) -> Result<Self> {
        Ok(match target.kind {
            Kind::Memory => Floor::Memory(Arc::default()),
            Kind::Redis => {
                let url = target.raw_url().context("redis url")?;
                let conn = redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?;
                Floor::Redis(conn)
            }
            Kind::Etcd => {
                let endpoint = target.etcd_endpoint().context("etcd endpoint")?;
                let mut client = etcd_client::Client::connect([endpoint], None).await?;
                // Granted for the whole measurement (revoked at its end): the floor's
                // puts must not outlive an unrefreshed lease, which a TTL-long grant
                // did once the rounds took longer than the TTL ("requested lease not
                // found").
                let lease = client
                    .lease_grant(FLOOR_LEASE.as_secs() as i64, None)
                    .await?
                    .id();
                Floor::Etcd(Box::new(client), lease)
            }
            Kind::Postgres | Kind::PostgresNondurable => {
                let url = target.raw_url().context("postgres url")?;
                Floor::Postgres(sqlx::PgConnection::connect(&url).await?)
            }
        })
    }

    fn label(&self) -> &'static str {
        match self {
            Floor::Memory(_) => "Mutex<HashMap> insert + remove",
            Floor::Redis(_) => "SET NX PX + DEL",
            Floor::Etcd(..) => "txn put-if-absent under a lease + delete",
            Floor::Postgres(_) => "pg_try_advisory_lock + pg_advisory_unlock",
        }
    }

    /// One lock and unlock with the bare protocol; fails if the lock was not free.
    async fn round_trip(&mut self) -> Result<()> {
        match self {
            Floor::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if map.insert("floor".to_owned(), 1).is_some() {
                    bail!("memory floor key was held");
                }
                map.remove("floor");
            }
            Floor::Redis(conn) => {
                let set: Option<String> = redis::cmd("SET")
                    .arg("floor")
                    .arg("token")
                    .arg("NX")
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .query_async(conn)
                    .await?;
                if set.as_deref() != Some("OK") {
                    bail!("redis floor key was held");
                }
                let _: i64 = redis::cmd("DEL").arg("floor").query_async(conn).await?;
            }
            Floor::Etcd(client, lease) => {
                let txn = Txn::new()
                    .when([Compare::create_revision("floor", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        "floor",
                        "raw",
                        Some(PutOptions::new().with_lease(*lease)),
                    )]);
                if !client.txn(txn).await?.succeeded() {
                    bail!("etcd floor key was held");
                }
                client.delete("floor", None).await?;
            }
            Floor::Postgres(conn) => {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(42_i64)
                    .fetch_one(&mut *conn)
                    .await?;
                if !got {
                    bail!("postgres floor lock was held");
                }
                let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(42_i64)
                    .fetch_one(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}

async fn library_round_trip(backend: &dyn LockBackend, key: &LockKey) -> Result<()> {
    let mut lease = backend
        .try_acquire(key, TTL)
        .await?
        .context("the library's key was held")?;
    lease.release().await?;
    Ok(())
}

async fn runner_round_trip(runner: &Runner, name: &str) -> Result<()> {
    let handle = runner.run_named(name, |_ctx| async {}, RunOptions::exclusive());
    match handle.join().await {
        Outcome::Returned => Ok(()),
        other => bail!("exclusive run ended with {other:?}"),
    }
}

/// Measures `iterations` interleaved rounds of library, floor and runner.
pub(crate) async fn measure(target: &Target, iterations: usize) -> Result<Latency> {
    let backend = leasehold::connect(&target.url()).await?;
    let runner = Runner::builder()
        .with_shared_backend(Arc::clone(&backend))
        .with_lease_ttl(TTL)
        .with_signal_handling(false)
        .build()?;
    let mut floor = Floor::connect(target).await?;
    let key = LockKey::new("bench-latency")?;
    let runner_name = "bench-latency-runner";

    // Warm up every path: connections, scripts, prepared statements, the etcd session,
    // fencing rows.
    for _ in 0..WARM_UP {
        library_round_trip(&*backend, &key).await?;
        floor.round_trip().await?;
        runner_round_trip(&runner, runner_name).await?;
    }
    let mut library = Samples::with_capacity(iterations);
    let mut raw = Samples::with_capacity(iterations);
    let mut via_runner = Samples::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        library_round_trip(&*backend, &key).await?;
        library.push(start.elapsed());

        let start = Instant::now();
        floor.round_trip().await?;
        raw.push(start.elapsed());

        let start = Instant::now();
        runner_round_trip(&runner, runner_name).await?;
        via_runner.push(start.elapsed());
    }
    runner.shutdown().await;

    // The server's share: each phase alone, between resets of its statistics.
    target.reset_server_stats().await?;
    for _ in 0..SERVER_ROUNDS {
        library_round_trip(&*backend, &key).await?;
    }
    let server_library_us = target.server_time_us(&["evalsha", "eval"]).await?;
    target.reset_server_stats().await?;
    for _ in 0..SERVER_ROUNDS {
        floor.round_trip().await?;
    }
    let server_floor_us = target.server_time_us(&["set", "del"]).await?;
    let per_round = |total: Option<f64>| total.map(|us| us / SERVER_ROUNDS as f64);

    if let Floor::Etcd(client, lease) = &mut floor {
        let _ = client.lease_revoke(*lease).await;
    }
    let (library, floor_summary) = (library.summary(), raw.summary());
    Ok(Latency {
        floor_label: floor.label(),
        ratio_p50: library.p50_us / floor_summary.p50_us,
        ratio_p99: library.p99_us / floor_summary.p99_us,
        library,
        floor: floor_summary,
        runner: via_runner.summary(),
        server_library_us: per_round(server_library_us),
        server_floor_us: per_round(server_floor_us),
    })
}
