//! `Target`: one backend under test, with its throwaway server and that server's own
//! count of the requests it served.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use routine_conformance::servers::{EtcdServer, PostgresServer, RedisServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::procfs;

/// The backends this program measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Memory,
    Redis,
    Etcd,
    Postgres,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Memory, Kind::Redis, Kind::Etcd, Kind::Postgres];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::Etcd => "etcd",
            Kind::Postgres => "postgres",
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
            .with_context(|| format!("unknown backend {s:?}: memory, redis, etcd or postgres"))
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
    Etcd(EtcdServer),
    Postgres(PostgresServer),
}

enum Counter {
    None,
    Redis(redis::aio::MultiplexedConnection),
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
                (Server::Redis(server), Counter::Redis(conn))
            }
            Kind::Etcd => {
                let Some(server) = EtcdServer::start() else {
                    return Ok(None);
                };
                let port = server.port();
                (Server::Etcd(server), Counter::Etcd(port))
            }
            Kind::Postgres => {
                let Some(server) = PostgresServer::start() else {
                    return Ok(None);
                };
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
            Server::Etcd(server) => server.url(),
            Server::Postgres(server) => server.url(),
        }
    }

    /// The server's main process, if there is a server.
    pub(crate) fn server_pid(&self) -> Option<u32> {
        match &self.server {
            Server::None => None,
            Server::Redis(server) => Some(server.process().pid()),
            Server::Etcd(server) => Some(server.process().pid()),
            Server::Postgres(server) => Some(server.process().pid()),
        }
    }

    /// CPU time the server has used so far (with its child processes, for PostgreSQL).
    pub(crate) fn server_cpu(&self) -> Result<Option<Duration>> {
        self.server_pid()
            .map(procfs::cpu_time_with_children)
            .transpose()
    }

    /// What the server counts as requests served so far: Redis's
    /// `total_commands_processed`, the sum of etcd's `grpc_server_msg_received_total`
    /// (unary calls and keep-alive stream messages), PostgreSQL's committed and rolled
    /// back transactions of the database (every statement outside a transaction is
    /// one). `None` for the memory backend.
    ///
    /// PostgreSQL publishes a busy session's counts about once a second, so a window of
    /// several seconds is needed for a meaningful rate.
    pub(crate) async fn requests_served(&self) -> Result<Option<u64>> {
        match &self.counter {
            Counter::None => Ok(None),
            Counter::Redis(conn) => {
                let info: String = redis::cmd("INFO")
                    .arg("stats")
                    .query_async(&mut conn.clone())
                    .await?;
                let value = info
                    .lines()
                    .find_map(|line| line.strip_prefix("total_commands_processed:"))
                    .context("no total_commands_processed in INFO stats")?;
                Ok(Some(value.trim().parse()?))
            }
            Counter::Etcd(port) => Ok(Some(etcd_messages_received(*port).await?)),
            Counter::Postgres(conn) => {
                let mut conn = conn.lock().await;
                let count: i64 = sqlx::query_scalar(
                    "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
                     WHERE datname = current_database()",
                )
                .fetch_one(&mut *conn)
                .await?;
                Ok(Some(u64::try_from(count)?))
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
    fn backend_names_parse() {
        assert_eq!("etcd".parse::<Kind>().unwrap(), Kind::Etcd);
        assert!("mysql".parse::<Kind>().is_err());
    }
}
