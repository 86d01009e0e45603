//! Uncontended acquire + release: the library against the raw floor of the same server.
//!
//! Three measurements, interleaved in every iteration so that load changes on the
//! machine hit all of them alike:
//! - *library*: `try_acquire` + `release` on the backend, what the runner calls;
//! - *floor*: the bare protocol operations a lock needs, without the library: on Redis
//!   `SET NX PX` + a compare-and-delete `EVALSHA` as RESP written by hand on one tokio
//!   socket (see [`RawRedis`]); elsewhere on the same kind of connection from the same
//!   client crate: a put-if-absent transaction under a lease + a delete (etcd), `pg_try_advisory_lock` +
//!   `pg_advisory_unlock` (PostgreSQL), a map insert + remove under a mutex (memory);
//! - *runner*: a whole `run_named(.., RunOptions::exclusive())` with an empty routine,
//!   joined: task start, acquire, routine, release and outcome;
//! - *peer* (Redis only): another Rust lock library's lock + unlock, rslock 0.10
//!   (`LockManager` on one server: `SET NX PX` + a compare-and-delete script, on the
//!   `redis` crate's multiplexed connection), in the same process, runtime and
//!   iterations, against the same server. In-process and interleaved rather than a
//!   worker process run before or after: every load swing of the machine hits both.
//!
//! Then, to tell the server's share from the client's, the server's own time per round
//! trip (Redis `commandstats`, PostgreSQL `pg_stat_statements`) over [`SERVER_ROUNDS`]
//! library round trips and as many floor round trips, each phase on its own; on
//! PostgreSQL also the WAL writes and flushes (`pg_stat_wal`) of each phase, per 1,000
//! round trips: what a server with default durability waits for.

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
/// How long PostgreSQL backends may keep their WAL statistics before publishing them in
/// `pg_stat_wal`: at the latest 10 s after going idle (`PGSTAT_IDLE_INTERVAL`).
const WAL_STATS_SETTLE: Duration = Duration::from_secs(11);

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
    /// PostgreSQL's WAL writes and flushes per 1,000 library round trips.
    pub(crate) wal_library: Option<Wal>,
    /// PostgreSQL's WAL writes and flushes per 1,000 floor round trips.
    pub(crate) wal_floor: Option<Wal>,
    /// A peer library's lock + unlock against the same server, interleaved in the same
    /// iterations (Redis: rslock), and its name.
    pub(crate) peer: Option<(&'static str, Summary)>,
}

/// WAL writes and flushes (`pg_stat_wal`'s `wal_write` and `wal_sync`), the whole
/// server's, during a phase of round trips, per 1,000 of them.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Wal {
    pub(crate) writes: f64,
    pub(crate) syncs: f64,
}

/// The server's `pg_stat_wal` counters (`wal_write`, `wal_sync`) once every backend has
/// published its share, or `None` if `url` is not a PostgreSQL server's.
async fn wal_counters(url: Option<&str>) -> Result<Option<(i64, i64)>> {
    let Some(url) = url else {
        return Ok(None);
    };
    tokio::time::sleep(WAL_STATS_SETTLE).await;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let counters: (i64, i64) = sqlx::query_as("SELECT wal_write, wal_sync FROM pg_stat_wal")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(Some(counters))
}

/// The WAL counters' growth from `before` to `after`, per 1,000 of `rounds`.
fn wal_per_1000(
    before: Option<(i64, i64)>,
    after: Option<(i64, i64)>,
    rounds: usize,
) -> Option<Wal> {
    let ((w0, s0), (w1, s1)) = before.zip(after)?;
    let per_1000 = |n: i64| n as f64 * 1_000.0 / rounds as f64;
    Some(Wal {
        writes: per_1000(w1 - w0),
        syncs: per_1000(s1 - s0),
    })
}

/// The raw operations of one server.
enum Floor {
    /// Shared, as a backend's map would be.
    Memory(Arc<Mutex<HashMap<String, u64>>>),
    /// One tokio TCP connection speaking RESP written by hand (see [`RawRedis`]).
    Redis(Box<RawRedis>),
    Etcd(Box<etcd_client::Client>, i64),
    Postgres(sqlx::PgConnection),
}

impl Floor {
    async fn connect(target: &Target) -> Result<Self> {
        Ok(match target.kind {
            Kind::Memory => Floor::Memory(Arc::default()),
            Kind::RedisCluster => {
                bail!("no raw floor on a Redis Cluster: run it with --only scale")
            }
            Kind::Redis => {
                let url = target.raw_url().context("redis url")?;
                Floor::Redis(Box::new(RawRedis::connect(&url).await?))
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
            Floor::Redis(_) => {
                "SET NX PX + EVALSHA compare-and-delete, hand-written RESP on one tokio socket"
            }
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
            Floor::Redis(raw) => raw.round_trip().await?,
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

/// The least a safe Redis lock sends, with nothing between the caller and the socket:
/// `SET key token NX PX ttl`, then a compare-and-delete script by `EVALSHA` (a plain `DEL`
/// could delete a successor's key), each written as RESP by hand on one tokio
/// `TcpStream` and answered on the same task: no connection manager, no driver task, no
/// channel. The floor the issue asks the library to be within 1.1× of.
struct RawRedis {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    set: Vec<u8>,
    delete: Vec<u8>,
    line: String,
}

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
const COMPARE_AND_DELETE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// One RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

impl RawRedis {
    async fn connect(url: &str) -> Result<Self> {
        let address = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .context("redis url without an address")?
            .to_owned();
        let socket = tokio::net::TcpStream::connect(&address).await?;
        socket.set_nodelay(true)?;
        let mut raw = Self {
            stream: tokio::io::BufReader::new(socket),
            set: Vec::new(),
            delete: Vec::new(),
            line: String::new(),
        };
        let sha = raw
            .call(&resp(&["SCRIPT", "LOAD", COMPARE_AND_DELETE]))
            .await?;
        // A bulk reply: `$40`, then the digest on the next line.
        if !sha.starts_with('$') {
            bail!("SCRIPT LOAD answered {sha:?}");
        }
        let sha = raw.read_line().await?;
        let ttl = TTL.as_millis().to_string();
        raw.set = resp(&["SET", "floor", "token", "NX", "PX", &ttl]);
        raw.delete = resp(&["EVALSHA", &sha, "1", "floor", "token"]);
        Ok(raw)
    }

    /// Sends `request` and returns the first line of the answer, without its CRLF.
    async fn call(&mut self, request: &[u8]) -> Result<String> {
        use tokio::io::AsyncWriteExt as _;
        self.stream.get_mut().write_all(request).await?;
        self.read_line().await
    }

    async fn read_line(&mut self) -> Result<String> {
        use tokio::io::AsyncBufReadExt as _;
        self.line.clear();
        if self.stream.read_line(&mut self.line).await? == 0 {
            bail!("redis closed the floor connection");
        }
        Ok(self.line.trim_end().to_owned())
    }

    async fn round_trip(&mut self) -> Result<()> {
        let set = std::mem::take(&mut self.set);
        let answer = self.call(&set).await;
        self.set = set;
        if answer? != "+OK" {
            bail!("redis floor key was held");
        }
        let delete = std::mem::take(&mut self.delete);
        let answer = self.call(&delete).await;
        self.delete = delete;
        if answer? != ":1" {
            bail!("redis floor key was not deleted");
        }
        Ok(())
    }
}

/// One rslock lock + unlock; fails if the lock was not free.
async fn peer_round_trip(peer: &rslock::LockManager) -> Result<()> {
    let lock = peer
        .lock("bench-peer", TTL)
        .await
        .map_err(|err| anyhow::anyhow!("rslock lock: {err:?}"))?;
    peer.unlock(&lock).await;
    Ok(())
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
    let peer = match target.kind {
        Kind::Redis => Some(rslock::LockManager::new(vec![
            target.raw_url().context("redis url")?,
        ])),
        _ => None,
    };
    let key = LockKey::new("bench-latency")?;
    let runner_name = "bench-latency-runner";

    // Warm up every path: connections, scripts, prepared statements, the etcd session,
    // fencing rows.
    for _ in 0..WARM_UP {
        library_round_trip(&*backend, &key).await?;
        floor.round_trip().await?;
        runner_round_trip(&runner, runner_name).await?;
        if let Some(peer) = &peer {
            peer_round_trip(peer).await?;
        }
    }
    let mut library = Samples::with_capacity(iterations);
    let mut peer_samples = Samples::with_capacity(iterations);
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

        if let Some(peer) = &peer {
            let start = Instant::now();
            peer_round_trip(peer).await?;
            peer_samples.push(start.elapsed());
        }
    }
    runner.shutdown().await;

    // The server's share: each phase alone, between resets of its statistics.
    let wal_url = matches!(target.kind, Kind::Postgres | Kind::PostgresNondurable)
        .then(|| target.raw_url())
        .flatten();
    let wal_start = wal_counters(wal_url.as_deref()).await?;
    target.reset_server_stats().await?;
    for _ in 0..SERVER_ROUNDS {
        library_round_trip(&*backend, &key).await?;
    }
    let server_library_us = target.server_time_us(&["evalsha", "eval"]).await?;
    let wal_after_library = wal_counters(wal_url.as_deref()).await?;
    target.reset_server_stats().await?;
    for _ in 0..SERVER_ROUNDS {
        floor.round_trip().await?;
    }
    let server_floor_us = target.server_time_us(&["set", "evalsha"]).await?;
    let wal_after_floor = wal_counters(wal_url.as_deref()).await?;
    let wal_library = wal_per_1000(wal_start, wal_after_library, SERVER_ROUNDS);
    let wal_floor = wal_per_1000(wal_after_library, wal_after_floor, SERVER_ROUNDS);
    if let Some((library, floor)) = wal_library.zip(wal_floor) {
        eprintln!(
            "{}: WAL per 1,000 acquire+release: library {:.0} writes, {:.0} flushes; \
             floor {:.0} writes, {:.0} flushes",
            target.kind, library.writes, library.syncs, floor.writes, floor.syncs
        );
    }
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
        wal_library,
        wal_floor,
        peer: peer
            .is_some()
            .then(|| ("rslock 0.10", peer_samples.summary())),
    })
}
