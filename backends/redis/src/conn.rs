//! The connection a request is sent on: one server's multiplexed `ConnectionManager`
//! (single commands first try the server's direct lane, see [`crate::lane`]), or the
//! `redis` crate's cluster connection, which sends each command to the master of its
//! key's slot and follows `MOVED`/`ASK` and failovers by itself.
//!
//! Both are `redis::aio::ConnectionLike`, so the scripts, pipelines and commands of the
//! request path run unchanged on either.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::lane::Lane;

/// A handle on the command connection; cloning is cheap and shares it.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (fixed, or the master the sentinels name), and its direct lane where
    /// there is one.
    Single(ConnectionManager, Option<Arc<Lane>>),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// The cluster connection, in cluster mode.
    pub(crate) fn cluster(&mut self) -> Option<&mut ClusterConnection> {
        match self {
            Conn::Cluster(cluster) => Some(cluster),
            Conn::Single(..) => None,
        }
    }
}

impl Conn {
    /// This connection without its direct lane, once every request sent on the lane so
    /// far has run (see [`Lane::barrier`]): what it sends runs on the server after
    /// everything sent before on either connection.
    pub(crate) async fn behind_lane(self) -> Conn {
        match self {
            Conn::Single(manager, Some(lane)) => {
                lane.barrier().await;
                Conn::Single(manager, None)
            }
            other => other,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(manager, lane) => {
                let on_lane = lane.as_ref().and_then(|lane| lane.try_send(cmd));
                match on_lane {
                    // A failed lane is not the request's failure: the manager sends it.
                    Some(sent) => Box::pin(async move {
                        match sent.await {
                            Ok(value) => Ok(value),
                            Err(err) => {
                                tracing::debug!(error = %err, "redis direct lane failed; sending on the manager");
                                manager.req_packed_command(cmd).await
                            }
                        }
                    }),
                    None => manager.req_packed_command(cmd),
                }
            }
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(manager, _) => manager.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(manager, _) => manager.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
