//! Durable mode at work (the setting, [`Durability`], is configuration): the `WAIT` that
//! follows a write, the check of its answer, and the request that sends a script with
//! its `WAIT`.

use std::fmt;
use std::time::Duration;

use crate::conn::Conn;
use leasehold_core::{Error, Result};
use redis::{ErrorKind, FromRedisValue, RedisResult, ServerErrorKind};

use crate::config::{Durability, Settings};
use crate::connection::Connection;
use crate::error::NAME;
use crate::eval::Eval;

/// The `WAIT` to send in `durability` after a write bounded by `limit`, if any.
pub(crate) fn wait(durability: Durability, limit: Duration) -> Option<Wait> {
    match durability {
        Durability::Replicas { count, timeout } => {
            let timeout = timeout.min(limit / 2).max(Duration::from_millis(1));
            Some(Wait { count, timeout })
        }
        _ => None,
    }
}

/// One `WAIT count timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    pub(crate) count: u32,
    pub(crate) timeout: Duration,
}

impl Wait {
    /// Whether `acked` replicas are enough; otherwise the error to report for `operation`.
    pub(crate) fn check(&self, operation: &'static str, acked: i64) -> Result<()> {
        if acked >= i64::from(self.count) {
            return Ok(());
        }
        Err(self.unconfirmed(operation, acked))
    }

    /// The error of a write of `operation` that only `acked` replicas confirmed.
    pub(crate) fn unconfirmed(&self, operation: &'static str, acked: i64) -> Error {
        Error::unavailable(
            NAME,
            operation,
            Unconfirmed {
                operation,
                acked,
                wait: *self,
            },
        )
    }
}

/// Warns at connect if the master (in cluster mode, any master) has fewer replicas
/// connected than durable mode requires: until enough are, no acquire or refresh is confirmed. Only a warning, since
/// a replica may be restarting; a server that does not answer `INFO` is not checked.
pub(crate) async fn check_replicas(conn: &Connection, settings: &Settings) {
    let Durability::Replicas { count, .. } = settings.durability() else {
        return;
    };
    let info = conn
        .request(
            "check replicas",
            settings.request_timeout,
            |mut conn| async move {
                let mut info = redis::cmd("INFO");
                info.arg("replication");
                crate::cluster::each_master::<String>(&mut conn, &info).await
            },
        )
        .await;
    // In cluster mode, the master with the fewest replicas.
    let connected = info.ok().and_then(|infos| {
        infos
            .iter()
            .filter_map(|info| {
                info.lines()
                    .find_map(|line| line.trim().strip_prefix("connected_slaves:"))
                    .and_then(|n| n.parse::<u32>().ok())
            })
            .min()
    });
    if let Some(connected) = connected.filter(|&connected| connected < count) {
        tracing::warn!(
            connected,
            required = count,
            "the redis master has fewer replicas connected than durable mode requires: no \
             acquire or refresh is confirmed until enough are"
        );
    }
}

/// Runs `eval`, then `WAIT` if `wait` is set, pipelined on one connection: `WAIT`
/// counts the replicas that have every write *its connection* made, so it must follow
/// the script on the same connection, with no reconnection in between. Returns the
/// script's reply and how many replicas confirmed (`None` without `wait`).
///
/// A script missing from the server's cache (a new master after a failover has none of
/// the scripts loaded on the old one) is loaded and the pair sent again, as
/// [`Eval::invoke`] does for a script alone.
pub(crate) async fn invoke<T: FromRedisValue>(
    mut conn: Conn,
    eval: &Eval<'_>,
    wait: Option<Wait>,
) -> RedisResult<(T, Option<i64>)> {
    let Some(wait) = wait else {
        return Ok((eval.invoke(&mut conn).await?, None));
    };
    let mut pipe = redis::pipe();
    pipe.add_command(eval.cmd().clone())
        .cmd("WAIT")
        .arg(wait.count)
        .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
    let sent: RedisResult<(T, i64)> = pipe.query_async(&mut conn).await;
    let (reply, acked) = match sent {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            eval.load(&mut conn).await?;
            pipe.query_async(&mut conn).await.map_err(on_replica)?
        }
        other => other.map_err(on_replica)?,
    };
    Ok((reply, Some(acked)))
}

/// `WAIT` refused by a replica (a script that only read ran before it) is what
/// `READONLY` says of a write: the connection reached a replica, as a connection
/// re-established to the address of a demoted master does. It is reported as
/// `READONLY`, so that the request moves to the master (see [`crate::connection`]).
fn on_replica(err: redis::RedisError) -> redis::RedisError {
    if err
        .to_string()
        .contains("WAIT cannot be used with replica instances")
    {
        return redis::RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "WAIT refused: the server is a replica",
            err.to_string(),
        ));
    }
    err
}

/// The source of the error of a write that `WAIT` did not confirm on enough replicas.
#[derive(Debug)]
struct Unconfirmed {
    operation: &'static str,
    acked: i64,
    wait: Wait,
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.operation {
            "acquire" => "the lock was given back",
            "refresh" => "the lease's deadline is not extended",
            _ => "it does not count",
        };
        write!(
            f,
            "durable mode: WAIT confirmed the {} on {} of the {} replicas required within {:?}; {outcome}",
            self.operation, self.acked, self.wait.count, self.wait.timeout
        )
    }
}

impl std::error::Error for Unconfirmed {}
