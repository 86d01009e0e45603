//! The connection a request is sent on: one server's multiplexed `ConnectionManager`
//! (single commands first try the server's direct lane, see [`crate::lane`]), or the
//! `redis` crate's cluster connection, which sends each command to the master of its
//! key's slot and follows `MOVED`/`ASK` and failovers by itself.
//!
//! Both are `redis::aio::ConnectionLike`, so the scripts, pipelines and commands of the
//! request path run unchanged on either.
//!
//! An acquire's undo must run on the server after the acquire (see [`crate::abandon`]),
//! so an acquire records which of the manager and the lane it went on ([`Route`]) and
//! its undo follows it there ([`Conn::following`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::lane::Lane;

/// A handle on the command connection; cloning is cheap and shares it.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (fixed, or the master the sentinels name).
    Single(Single),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

/// One server's manager, its direct lane where there is one, and how this handle picks
/// between them.
#[derive(Clone)]
pub(crate) struct Single {
    manager: ConnectionManager,
    lane: Option<Arc<Lane>>,
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    /// The lane if it is free, else the manager.
    Either,
    /// As `Either`, noting in the route where each command went.
    Recording(Arc<Route>),
    /// Behind everything sent on the lane so far (see [`Lane::send_behind`]); the
    /// manager if the lane has no connection.
    BehindLane,
    /// The manager only.
    Manager,
}

/// Where a request's commands went: nowhere yet (0, the default), the lane, or the
/// manager (the last command's path counts).
#[derive(Debug, Default)]
pub(crate) struct Route(AtomicU8);

const LANE: u8 = 1;
const MANAGER: u8 = 2;

impl Route {
    fn set(&self, path: u8) {
        self.0.store(path, Ordering::Release);
    }

    fn on_lane(&self) -> bool {
        self.0.load(Ordering::Acquire) == LANE
    }
}

impl Conn {
    /// A handle on one server's manager and its lane, if any.
    pub(crate) fn single(manager: ConnectionManager, lane: Option<Arc<Lane>>) -> Self {
        Conn::Single(Single {
            manager,
            lane,
            mode: Mode::Either,
        })
    }

    /// The cluster connection, in cluster mode.
    pub(crate) fn cluster(&mut self) -> Option<&mut ClusterConnection> {
        match self {
            Conn::Cluster(cluster) => Some(cluster),
            Conn::Single(..) => None,
        }
    }

    /// This handle, noting in `route` which connection its commands go on.
    pub(crate) fn recording(self, route: Arc<Route>) -> Self {
        self.with_mode(Mode::Recording(route))
    }

    /// A handle whose commands run on the server after those of the request that
    /// recorded `route`: behind them on the lane if they went there, else on the manager,
    /// queued behind them on its one connection.
    pub(crate) fn following(self, route: &Route) -> Self {
        self.with_mode(if route.on_lane() {
            Mode::BehindLane
        } else {
            Mode::Manager
        })
    }

    fn with_mode(self, mode: Mode) -> Self {
        match self {
            Conn::Single(single) => Conn::Single(Single { mode, ..single }),
            cluster => cluster,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(single) => single.req_packed_command(cmd),
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
            Conn::Single(single) => {
                if let Mode::Recording(route) = &single.mode {
                    route.set(MANAGER);
                }
                single.manager.req_packed_commands(pipeline, offset, count)
            }
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(single) => single.manager.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Single {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let Single {
            manager,
            lane,
            mode,
        } = self;
        let route = match mode {
            Mode::Manager => return manager.req_packed_command(cmd),
            Mode::BehindLane => {
                let lane = lane.clone();
                return Box::pin(async move {
                    if let Some(lane) = lane
                        && let Some(Ok(value)) = lane.send_behind(cmd).await
                    {
                        return Ok(value);
                    }
                    manager.req_packed_command(cmd).await
                });
            }
            Mode::Recording(route) => Some(&*route),
            Mode::Either => None,
        };
        let on_lane = lane.as_ref().and_then(|lane| lane.try_send(cmd));
        let Some(sent) = on_lane else {
            if let Some(route) = route {
                route.set(MANAGER);
            }
            return manager.req_packed_command(cmd);
        };
        if let Some(route) = route {
            route.set(LANE);
        }
        Box::pin(async move {
            match sent.await {
                Ok(value) => Ok(value),
                // A failed lane is not the request's failure: the manager sends it.
                Err(err) => {
                    tracing::debug!(error = %err, "redis direct lane failed; sending on the manager");
                    if let Some(route) = route {
                        route.set(MANAGER);
                    }
                    manager.req_packed_command(cmd).await
                }
            }
        })
    }
}
