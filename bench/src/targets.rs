//! `Target`: one backend under test, with its throwaway server and that server's own
//! count of the requests it served.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use leasehold_conformance::servers::{EtcdServer, PostgresServer, RedisCluster, RedisServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::procfs;

/// The backends this program measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Memory,
    Redis,
    /// A Redis Cluster of three masters with one replica each (the backend's opt-in
    /// cluster mode, `redis+cluster://`). Not in the default run: only `scale` is
    /// meant for it.
    RedisCluster,
    Etcd,
    /// PostgreSQL with its default durability (`fsync`, `synchronous_commit` on), as
    /// users run it: the headline.
    Postgres,
    /// PostgreSQL with durability off (`fsync=off`, `full_page_writes=off`), as the
    /// test servers run: what the figures were before durability was the headline.
    PostgresNondurable,
}

impl Kind {
    /// The backends a run without `--backends` measures.
    pub(crate) const DEFAULT: [Kind; 5] = [
        Kind::Memory,
        Kind::Redis,
        Kind::Etcd,
        Kind::Postgres,
        Kind::PostgresNondurable,
    ];

    /// Every backend `--backends` may name.
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Memory,
        Kind::Redis,
        Kind::RedisCluster,
        Kind::Etcd,
        Kind::Postgres,
        Kind::PostgresNondurable,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::RedisCluster => "redis-cluster",
            Kind::Etcd => "etcd",
            Kind::Postgres => "postgres",
            Kind::PostgresNondurable => "postgres-nondurable",
        }
    }

    /// The shortest TTL the crash benchmark may use: 1 s, or etcd's minimum of 2 s.
    pub(crate) fn crash_ttl(self) -> Duration {
        match self {
            Kind::Etcd => Duration::from_secs(2),
            _ => Duration::from_secs(1),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .with_context(|| {
                format!(
                    "unknown backend {s:?}: memory, redis, redis-cluster, etcd, postgres or \
                     postgres-nondurable"
                )
            })
    }
}

/// A backend under test: its kind and the server it runs against.
pub(crate) struct Target {
    pub(crate) kind: Kind,
    server: Server,
    /// The server's request counter, read over a connection of our own.
    counter: Counter,
}

enum Server {
    None,
    Redis(RedisServer),
    RedisCluster(RedisCluster),
    Etcd(EtcdServer),
    Postgres(PostgresServer),
}

enum Counter {
    None,
    /// One connection per server that serves requests: the one server, or each master
    /// of a cluster (replicas only apply what their master ran).
    Redis(Vec<redis::aio::MultiplexedConnection>),
    Etcd(u16),
    Postgres(tokio::sync::Mutex<sqlx::PgConnection>),
}

impl Target {
    /// Starts the server `kind` needs, or `None` (with a notice) if its binaries are
    /// missing.
    pub(crate) async fn start(kind: Kind) -> Result<Option<Self>> {
        // The starters block (they wait for the port); that is fine before measuring.
        let (server, counter) = match kind {
            Kind::Memory => (Server::None, Counter::None),
            Kind::Redis => {
                let Some(server) = RedisServer::start() else {
                    return Ok(None);
                };
                let conn = redis::Client::open(server.url())?
                    .get_multiplexed_async_connection()
                    .await
                    .context("connect to redis for INFO")?;
                (Server::Redis(server), Counter::Redis(vec![conn]))
            }
            Kind::RedisCluster => {
                let Some(cluster) = RedisCluster::start() else {
                    return Ok(None);
                };
                let ports = cluster.node_ports();
                let mut conns = Vec::new();
                for master in cluster.masters() {
                    let url = format!("redis://127.0.0.1:{}/", ports[master]);
                    conns.push(
                        redis::Client::open(url)?
                            .get_multiplexed_async_connection()
                            .await
                            .context("connect to a cluster master for INFO")?,
                    );
                }
                (Server::RedisCluster(cluster), Counter::Redis(conns))
            }
            Kind::Etcd => {
                let Some(server) = EtcdServer::start() else {
                    return Ok(None);
                };
                let port = server.port();
                (Server::Etcd(server), Counter::Etcd(port))
            }
            Kind::Postgres | Kind::PostgresNondurable => {
                let server = if kind == Kind::Postgres {
                    PostgresServer::start_durable()
                } else {
                    PostgresServer::start()
                };
                let Some(mut server) = server else {
                    return Ok(None);
                };
                load_pg_stat_statements(&mut server)?;
                let conn = <sqlx::PgConnection as sqlx::Connection>::connect(&server.url())
                    .await
                    .context("connect to postgres for pg_stat_database")?;
                (
                    Server::Postgres(server),
                    Counter::Postgres(tokio::sync::Mutex::new(conn)),
                )
            }
        };
        Ok(Some(Self {
            kind,
            server,
            counter,
        }))
    }

    /// The URL members and scale children connect with (`memory://` is per process).
    pub(crate) fn url(&self) -> String {
        match &self.server {
            Server::None => "memory://".to_owned(),
            Server::Redis(server) => server.url(),
            Server::RedisCluster(cluster) => cluster.url(),
            Server::Etcd(server) => server.url(),
            Server::Postgres(server) => server.url(),
        }
    }

    /// The server's main processes: none, one, or every node of a cluster.
    pub(crate) fn server_pids(&self) -> Vec<u32> {
        match &self.server {
            Server::None => Vec::new(),
            Server::Redis(server) => vec![server.process().pid()],
            Server::RedisCluster(cluster) => (0..cluster.len())
                .filter_map(|i| Some(cluster.process(i)?.pid()))
                .collect(),
            Server::Etcd(server) => vec![server.process().pid()],
            Server::Postgres(server) => vec![server.process().pid()],
        }
    }

    /// CPU time the server has used so far (with its child processes, for PostgreSQL;
    /// summed over the six nodes of a Redis Cluster, replicas included).
    pub(crate) fn server_cpu(&self) -> Result<Option<Duration>> {
        let pids = self.server_pids();
        if pids.is_empty() {
            return Ok(None);
        }
        let mut total = Duration::ZERO;
        for pid in pids {
            total += procfs::cpu_time_with_children(pid)?;
        }
        Ok(Some(total))
    }

    /// The requests the server has served so far, by its own count; `None` for the
    /// memory backend:
    /// - Redis: the calls of `INFO commandstats` without the commands the library's Lua
    ///   scripts run inside ([`SCRIPT_COMMANDS`], which Redis counts too), so one
    ///   `EVALSHA` is one request; summed over the three
    ///   masters of a cluster;
    /// - etcd: the sum of `grpc_server_msg_received_total` (unary calls and keep-alive
    ///   stream messages);
    /// - PostgreSQL: the calls of every statement in `pg_stat_statements` (loaded by
    ///   [`Target::start`]) but the counting query itself. `pg_stat_database`'s
    ///   transaction counts are no use here: a session that is never idle for long, like
    ///   the lock session under load, does not publish them.
    pub(crate) async fn requests_served(&self) -> Result<Option<u64>> {
        match &self.counter {
            Counter::None => Ok(None),
            Counter::Redis(conns) => {
                let mut calls = 0;
                for info in redis_infos(conns).await? {
                    calls += redis_top_level_calls(&info);
                }
                Ok(Some(calls))
            }
            Counter::Etcd(port) => Ok(Some(etcd_messages_received(*port).await?)),
            Counter::Postgres(conn) => {
                let mut conn = conn.lock().await;
                let count: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                     WHERE query NOT LIKE '%pg_stat_statements%'",
                )
                .fetch_one(&mut *conn)
                .await?;
                Ok(Some(u64::try_from(count)?))
            }
        }
    }

    /// Client connections the server has open now, the benchmark's own counting
    /// connection left out; `None` where the server does not say (all but PostgreSQL).
    pub(crate) async fn client_connections(&self) -> Result<Option<u64>> {
        let Counter::Postgres(conn) = &self.counter else {
            return Ok(None);
        };
        let mut conn = conn.lock().await;
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(Some(u64::try_from(count)?))
    }

    /// Clears the server's per-command statistics (Redis `CONFIG RESETSTAT`, PostgreSQL
    /// `pg_stat_statements_reset()`), before [`Target::server_time_us`] measures a phase.
    pub(crate) async fn reset_server_stats(&self) -> Result<()> {
        match &self.counter {
            Counter::None | Counter::Etcd(_) => {}
            Counter::Redis(conns) => {
                for conn in conns {
                    redis::cmd("CONFIG")
                        .arg("RESETSTAT")
                        .query_async::<()>(&mut conn.clone())
                        .await?;
                }
            }
            Counter::Postgres(conn) => {
                let mut conn = conn.lock().await;
                sqlx::query("SELECT pg_stat_statements_reset()")
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// The time the server spent executing requests since the last reset, in µs, by its
    /// own count; `None` where the server does not say (memory, etcd):
    /// - Redis: the `usec` of `INFO commandstats` summed over `redis_commands` (give the
    ///   top-level commands only: a script's `usec` includes the commands it runs);
    /// - PostgreSQL: `total_exec_time` summed over `pg_stat_statements` but its own
    ///   queries.
    pub(crate) async fn server_time_us(&self, redis_commands: &[&str]) -> Result<Option<f64>> {
        match &self.counter {
            Counter::None | Counter::Etcd(_) => Ok(None),
            Counter::Redis(conns) => {
                let mut usec = 0.0;
                for info in redis_infos(conns).await? {
                    usec += redis_usec(&info, redis_commands);
                }
                Ok(Some(usec))
            }
            Counter::Postgres(conn) => {
                let mut conn = conn.lock().await;
                let ms: f64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements \
                     WHERE query NOT LIKE '%pg_stat_statements%'",
                )
                .fetch_one(&mut *conn)
                .await?;
                Ok(Some(ms * 1_000.0))
            }
        }
    }

    /// The server's client endpoint for raw etcd clients.
    pub(crate) fn etcd_endpoint(&self) -> Option<String> {
        match &self.server {
            Server::Etcd(server) => Some(server.endpoint()),
            _ => None,
        }
    }

    /// The plain server URL for raw clients (Redis and PostgreSQL).
    pub(crate) fn raw_url(&self) -> Option<String> {
        match &self.server {
            Server::Redis(server) => Some(server.url()),
            Server::Postgres(server) => Some(server.url()),
            _ => None,
        }
    }
}

/// Loads `pg_stat_statements` (a restart, since it must be preloaded) so that
/// statements can be counted on the server.
fn load_pg_stat_statements(server: &mut PostgresServer) -> Result<()> {
    let available = server
        .psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'");
    if available != "1" {
        bail!("pg_stat_statements is not installed (postgresql-contrib)");
    }
    server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    server.restart();
    server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    Ok(())
}

/// `INFO commandstats` of each connection's server.
async fn redis_infos(conns: &[redis::aio::MultiplexedConnection]) -> Result<Vec<String>> {
    let mut infos = Vec::with_capacity(conns.len());
    for conn in conns {
        infos.push(
            redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn.clone())
                .await?,
        );
    }
    Ok(infos)
}

/// Commands the library's Lua scripts call (`SPUBLISH` in cluster mode); Redis counts
/// them in `commandstats`.
const SCRIPT_COMMANDS: [&str; 14] = [
    "get",
    "set",
    "pexpire",
    "incr",
    "del",
    "publish",
    "spublish",
    "exists",
    "pttl",
    "time",
    "zadd",
    "zrem",
    "zremrangebyscore",
    "zrevrange",
];

/// The calls in `INFO commandstats` output, without [`SCRIPT_COMMANDS`].
fn redis_top_level_calls(info: &str) -> u64 {
    info.lines()
        .filter_map(|line| {
            let (command, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            if SCRIPT_COMMANDS.contains(&command) {
                return None;
            }
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            calls.parse::<u64>().ok()
        })
        .sum()
}

/// The `usec` in `INFO commandstats` output, summed over `commands`.
fn redis_usec(info: &str, commands: &[&str]) -> f64 {
    info.lines()
        .filter_map(|line| {
            let (command, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            if !commands.contains(&command) {
                return None;
            }
            let usec = stats.split(',').find_map(|kv| kv.strip_prefix("usec="))?;
            usec.parse::<f64>().ok()
        })
        .sum()
}

/// Sums `grpc_server_msg_received_total` over every method from etcd's `/metrics`
/// endpoint on the client port (plain HTTP/1.0, one request per call).
async fn etcd_messages_received(port: u16) -> Result<u64> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let total = sum_metric(&body, "grpc_server_msg_received_total");
    if total.is_none() {
        bail!("etcd /metrics has no grpc_server_msg_received_total");
    }
    Ok(total.unwrap_or(0.0) as u64)
}

/// The sum of every sample of the Prometheus counter `name` in `text`, if it has any.
fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_are_summed_over_labels() {
        let text = "# HELP grpc_server_msg_received_total x\n\
                    grpc_server_msg_received_total{grpc_method=\"Range\"} 10\n\
                    grpc_server_msg_received_total{grpc_method=\"Txn\"} 5\n\
                    grpc_server_msg_received_total_other 99\n\
                    grpc_server_started_total{grpc_method=\"Txn\"} 5\n";
        assert_eq!(
            sum_metric(text, "grpc_server_msg_received_total"),
            Some(15.0)
        );
        assert_eq!(sum_metric(text, "missing_total"), None);
    }

    #[test]
    fn redis_calls_leave_out_what_scripts_run_inside() {
        let info = "# Commandstats\r\n\
                    cmdstat_evalsha:calls=100,usec=900,usec_per_call=9.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_get:calls=100,usec=50,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_pexpire:calls=100,usec=80,usec_per_call=0.80,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_zadd:calls=40,usec=80,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_time:calls=40,usec=8,usec_per_call=0.20,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_info:calls=2,usec=80,usec_per_call=40.00,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(redis_top_level_calls(info), 102);
    }

    #[test]
    fn redis_usec_sums_the_given_commands_only() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=10,usec=120,usec_per_call=12.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_set:calls=10,usec=30,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=1,usec=50,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(redis_usec(info, &["evalsha", "eval"]), 120.0);
        assert_eq!(redis_usec(info, &["set", "del"]), 30.0);
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("etcd".parse::<Kind>().unwrap(), Kind::Etcd);
        assert!("mysql".parse::<Kind>().is_err());
    }
}
