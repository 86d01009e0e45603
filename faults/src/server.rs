//! `Server`: the throwaway server of one backend, behind one interface for the faults.
//!
//! etcd and PostgreSQL are the conformance crate's servers. Redis is started here with
//! the append-only file on and `appendfsync always`, so that a kill and restart loses no
//! acknowledged write: the conformance crate's `RedisServer` runs without persistence,
//! and a Redis that forgets its keys on restart is outside the lease guarantee (a holder
//! keeps running until its local deadline while another one takes the forgotten key).
//!
//! The Redis server requires a password and knows three ACL users, all given on its
//! command line so that they survive a restart: `default` (the members' usual user),
//! [`RedisUser::WithoutChannels`] (every key and command, but no pub/sub channel, so its
//! `PSUBSCRIBE` fails with `NOPERM`), and the harness's own admin user, which the
//! credentials fault leaves alone.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use leasehold_conformance::servers::{
    ServerProcess, TempDir, find_binary, free_port, require_services, wait_for_port,
};

/// The backends the harness can start a server for (as enabled by cargo features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `redis-server`, durable (see the module docs).
    Redis,
    /// Redis behind Sentinel: a master, two replicas and three sentinels; members connect
    /// with a `redis+sentinel://` URL listing the sentinels, without durable mode.
    RedisSentinel,
    /// The same Sentinel topology, members in durable mode (`durable_replicas=2`: every
    /// acquire and refresh confirmed by `WAIT` on both replicas).
    RedisSentinelDurable,
    /// A Redis Cluster: three masters with one replica each; members connect with a
    /// `redis+cluster://` URL listing the nodes that started as masters, without durable
    /// mode.
    RedisCluster,
    /// The same Redis Cluster, members in durable mode (`durable_replicas=1`: every
    /// acquire and refresh confirmed by `WAIT` on the master's replica).
    RedisClusterDurable,
    /// A single-member `etcd`.
    #[cfg(feature = "etcd")]
    Etcd,
    /// A three-member `etcd` cluster, each member's peer traffic through a proxy that can
    /// cut it off; members list every member's client port.
    #[cfg(feature = "etcd")]
    EtcdCluster,
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres,
    /// A PostgreSQL primary with a synchronous streaming standby; members connect with a
    /// multi-host URL (`target_session_attrs=read-write`).
    #[cfg(feature = "postgres")]
    PostgresSync,
    /// A PostgreSQL primary with an asynchronous streaming standby.
    #[cfg(feature = "postgres")]
    PostgresAsync,
}

impl BackendKind {
    /// Every backend enabled in this build.
    pub fn all() -> Vec<BackendKind> {
        vec![
            BackendKind::Redis,
            #[cfg(feature = "etcd")]
            BackendKind::Etcd,
            #[cfg(feature = "postgres")]
            BackendKind::Postgres,
        ]
    }

    /// The server topologies of several servers enabled in this build: Redis behind
    /// Sentinel, the etcd cluster, the PostgreSQL primary/standby pairs and the Redis
    /// Cluster.
    pub fn topologies() -> Vec<BackendKind> {
        vec![
            BackendKind::RedisSentinel,
            BackendKind::RedisSentinelDurable,
            #[cfg(feature = "etcd")]
            BackendKind::EtcdCluster,
            #[cfg(feature = "postgres")]
            BackendKind::PostgresSync,
            #[cfg(feature = "postgres")]
            BackendKind::PostgresAsync,
            BackendKind::RedisCluster,
            BackendKind::RedisClusterDurable,
        ]
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Redis => "redis",
            BackendKind::RedisSentinel => "redis-sentinel",
            BackendKind::RedisSentinelDurable => "redis-sentinel-durable",
            BackendKind::RedisCluster => "redis-cluster",
            BackendKind::RedisClusterDurable => "redis-cluster-durable",
            #[cfg(feature = "etcd")]
            BackendKind::Etcd => "etcd",
            #[cfg(feature = "etcd")]
            BackendKind::EtcdCluster => "etcd-cluster",
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => "postgres",
            #[cfg(feature = "postgres")]
            BackendKind::PostgresSync => "postgres-sync-standby",
            #[cfg(feature = "postgres")]
            BackendKind::PostgresAsync => "postgres-async-standby",
        }
    }

    /// The shortest lease TTL the fault tests use: 1 s; 2 s for etcd (its minimum with
    /// the default election timeout), Redis behind Sentinel (whose failovers take about a
    /// second and a half) and a Redis Cluster (a master is failing after the 1 s node
    /// timeout, then its replica is elected); 3 s for a PostgreSQL pair, so that a failover
    /// (kill, promote: about a second) ends while the holder's heartbeat still runs and
    /// the new primary must keep other members off the key until it runs out.
    pub fn test_ttl(self) -> Duration {
        match self {
            BackendKind::RedisSentinel
            | BackendKind::RedisSentinelDurable
            | BackendKind::RedisCluster
            | BackendKind::RedisClusterDurable => Duration::from_secs(2),
            #[cfg(feature = "etcd")]
            BackendKind::Etcd | BackendKind::EtcdCluster => Duration::from_secs(2),
            #[cfg(feature = "postgres")]
            BackendKind::PostgresSync | BackendKind::PostgresAsync => Duration::from_secs(3),
            _ => Duration::from_secs(1),
        }
    }

    /// Whether this is an etcd backend (one member or a cluster): etcd revokes expired
    /// leases in a 500 ms loop.
    pub fn is_etcd(self) -> bool {
        match self {
            #[cfg(feature = "etcd")]
            BackendKind::Etcd | BackendKind::EtcdCluster => true,
            _ => false,
        }
    }

    /// Whether a failover of this topology may lose acknowledged writes, so that overlap
    /// is measured, not promised away: a PostgreSQL pair with asynchronous replication,
    /// Redis behind Sentinel or a Redis Cluster without durable mode.
    pub fn loses_writes_on_failover(self) -> bool {
        match self {
            BackendKind::RedisSentinel | BackendKind::RedisCluster => true,
            #[cfg(feature = "postgres")]
            BackendKind::PostgresAsync => true,
            _ => false,
        }
    }

    /// Whether this is Redis behind Sentinel (durable or not).
    pub fn is_sentinel(self) -> bool {
        matches!(
            self,
            BackendKind::RedisSentinel | BackendKind::RedisSentinelDurable
        )
    }

    /// Whether this is a Redis Cluster (durable or not).
    pub fn is_redis_cluster(self) -> bool {
        matches!(
            self,
            BackendKind::RedisCluster | BackendKind::RedisClusterDurable
        )
    }

    /// Whether this is a PostgreSQL primary/standby pair.
    pub fn is_postgres_pair(self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            BackendKind::PostgresSync | BackendKind::PostgresAsync => true,
            _ => false,
        }
    }

    /// Whether leases live in server sessions that an operator can end or interrupt
    /// (`pg_terminate_backend`, `pg_cancel_backend`): PostgreSQL's lock sessions.
    pub fn has_lock_sessions(self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => true,
            _ => false,
        }
    }
}

/// A running server of some backend, or a topology of several.
#[derive(Debug)]
pub enum Server {
    /// Redis with an fsync'ed append-only file.
    Redis(DurableRedis),
    /// Redis behind Sentinel; `true`: members in durable mode.
    RedisSentinel(leasehold_conformance::servers::RedisSentinel, bool),
    /// A Redis Cluster; `true`: members in durable mode.
    RedisCluster(leasehold_conformance::servers::RedisCluster, bool),
    /// etcd.
    #[cfg(feature = "etcd")]
    Etcd(leasehold_conformance::servers::EtcdServer),
    /// A three-member etcd cluster.
    #[cfg(feature = "etcd")]
    EtcdCluster(leasehold_conformance::servers::EtcdCluster),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(leasehold_conformance::servers::PostgresServer),
    /// A PostgreSQL primary and a streaming standby.
    #[cfg(feature = "postgres")]
    PostgresPair(leasehold_conformance::servers::PostgresPair),
}

impl Server {
    /// Starts a server; `None` if its binary is missing outside CI (the test skips).
    /// Blocks until the server accepts connections: call it from a blocking thread.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the server does not come up.
    pub fn start(kind: BackendKind) -> Option<Server> {
        match kind {
            BackendKind::Redis => DurableRedis::start().map(Server::Redis),
            BackendKind::RedisSentinel | BackendKind::RedisSentinelDurable => {
                let durable = kind == BackendKind::RedisSentinelDurable;
                leasehold_conformance::servers::RedisSentinel::start()
                    .map(|topology| Server::RedisSentinel(topology, durable))
            }
            BackendKind::RedisCluster | BackendKind::RedisClusterDurable => {
                let durable = kind == BackendKind::RedisClusterDurable;
                leasehold_conformance::servers::RedisCluster::start()
                    .map(|cluster| Server::RedisCluster(cluster, durable))
            }
            #[cfg(feature = "etcd")]
            BackendKind::Etcd => {
                leasehold_conformance::servers::EtcdServer::start().map(Server::Etcd)
            }
            #[cfg(feature = "etcd")]
            BackendKind::EtcdCluster => {
                leasehold_conformance::servers::EtcdCluster::start(3).map(Server::EtcdCluster)
            }
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => {
                leasehold_conformance::servers::PostgresServer::start().map(Server::Postgres)
            }
            #[cfg(feature = "postgres")]
            BackendKind::PostgresSync | BackendKind::PostgresAsync => {
                use leasehold_conformance::servers::{PostgresPair, Replication};
                let replication = if kind == BackendKind::PostgresSync {
                    Replication::Synchronous
                } else {
                    Replication::Asynchronous
                };
                PostgresPair::start(replication).map(Server::PostgresPair)
            }
        }
    }

    /// The port clients connect to (the first server's in a topology).
    pub fn port(&self) -> u16 {
        self.ports()[0]
    }

    /// The ports clients connect to: one, or one per server of a topology (the
    /// sentinels; every etcd member; the PostgreSQL primary, then the standby; every
    /// Redis Cluster node).
    pub fn ports(&self) -> Vec<u16> {
        match self {
            Server::Redis(server) => vec![server.port],
            Server::RedisSentinel(topology, _) => topology.sentinel_ports(),
            Server::RedisCluster(cluster, _) => cluster.node_ports(),
            #[cfg(feature = "etcd")]
            Server::Etcd(server) => vec![server.port()],
            #[cfg(feature = "etcd")]
            Server::EtcdCluster(cluster) => cluster.client_ports(),
            #[cfg(feature = "postgres")]
            Server::Postgres(server) => vec![server.port()],
            #[cfg(feature = "postgres")]
            Server::PostgresPair(pair) => vec![pair.primary_port(), pair.standby_port()],
        }
    }

    /// The backend URL of this server as reached through a proxy on `port`, as the
    /// default user.
    pub fn url_via(&self, port: u16) -> String {
        self.url_as(&[port], RedisUser::Default)
    }

    /// The backend URL of this server as reached through proxies on `ports` (one per
    /// port of [`Server::ports`], in order), as `user` on Redis (the other backends have
    /// one user).
    ///
    /// A Redis Cluster's URL names its nodes themselves, whatever `ports` says: its
    /// clients learn every node's own address from the slot map and the redirects, and
    /// reach them there, where no proxy of theirs is in front (as Sentinel clients reach
    /// the master). Its nodes run without a password.
    pub fn url_as(&self, ports: &[u16], user: RedisUser) -> String {
        let hosts = |ports: &[u16]| {
            ports
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Server::Redis(_) => format!(
                "redis://{}:{}@{}",
                user.name(),
                user.password(),
                hosts(&ports[..1])
            ),
            Server::RedisSentinel(topology, durable) => format!(
                "redis+sentinel://{}/{}{}",
                hosts(ports),
                topology.master_name(),
                if *durable { "?durable_replicas=2" } else { "" }
            ),
            Server::RedisCluster(cluster, durable) => format!(
                "{}{}",
                cluster.url(),
                if *durable { "?durable_replicas=1" } else { "" }
            ),
            #[cfg(feature = "etcd")]
            Server::Etcd(_) | Server::EtcdCluster(_) => format!("etcd://{}", hosts(ports)),
            #[cfg(feature = "postgres")]
            Server::Postgres(_) => format!("postgres://postgres@{}/postgres", hosts(&ports[..1])),
            #[cfg(feature = "postgres")]
            Server::PostgresPair(_) => format!(
                "postgres://postgres@{}/postgres?target_session_attrs=read-write",
                hosts(ports)
            ),
        }
    }

    /// Kills the server with `SIGKILL` and starts it again on the same port and data;
    /// returns once it accepts connections. Blocks.
    ///
    /// # Panics
    ///
    /// If the server does not come back, or on a topology of several servers (its faults
    /// hit one server at a time).
    pub fn restart(&mut self) {
        match self {
            Server::Redis(server) => server.restart(),
            Server::RedisSentinel(..) => panic!("Redis behind Sentinel fails over instead"),
            Server::RedisCluster(..) => panic!("a Redis Cluster's masters fail over instead"),
            #[cfg(feature = "etcd")]
            Server::Etcd(server) => server.restart(),
            #[cfg(feature = "postgres")]
            Server::Postgres(server) => server.restart(),
            #[cfg(feature = "etcd")]
            Server::EtcdCluster(_) => panic!("restart an etcd cluster's members one by one"),
            #[cfg(feature = "postgres")]
            Server::PostgresPair(_) => panic!("a PostgreSQL pair fails over instead"),
        }
    }

    /// Stops the server with `SIGSTOP` (every process of it).
    ///
    /// # Errors
    ///
    /// If the signal cannot be sent.
    pub fn pause(&self) -> io::Result<()> {
        match self {
            Server::Redis(server) => server.process()?.pause(),
            Server::RedisSentinel(..) => Err(io::Error::other("pause the master instead")),
            Server::RedisCluster(..) => Err(io::Error::other("pause a cluster node instead")),
            #[cfg(feature = "etcd")]
            Server::Etcd(server) => server.process().pause(),
            #[cfg(feature = "postgres")]
            Server::Postgres(server) => {
                server.pause();
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Server::EtcdCluster(_) => Err(io::Error::other("pause an etcd member instead")),
            #[cfg(feature = "postgres")]
            Server::PostgresPair(_) => Err(io::Error::other("not for a PostgreSQL pair")),
        }
    }

    /// Resumes the server with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// If the signal cannot be sent.
    pub fn resume(&self) -> io::Result<()> {
        match self {
            Server::Redis(server) => server.process()?.resume(),
            Server::RedisSentinel(..) => Err(io::Error::other("resume the master instead")),
            Server::RedisCluster(..) => Err(io::Error::other("resume a cluster node instead")),
            #[cfg(feature = "etcd")]
            Server::Etcd(server) => server.process().resume(),
            #[cfg(feature = "postgres")]
            Server::Postgres(server) => {
                server.resume();
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Server::EtcdCluster(_) => Err(io::Error::other("resume an etcd member instead")),
            #[cfg(feature = "postgres")]
            Server::PostgresPair(_) => Err(io::Error::other("not for a PostgreSQL pair")),
        }
    }
}

/// The ACL user members of a Redis cluster connect as (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisUser {
    /// `default`, with the password the server requires (`requirepass`).
    #[default]
    Default,
    /// A user with every key and command but no pub/sub channel (`resetchannels`):
    /// `PSUBSCRIBE` fails with `NOPERM`, so its release notifications never work.
    WithoutChannels,
}

impl RedisUser {
    /// Its name on the server.
    pub fn name(self) -> &'static str {
        match self {
            RedisUser::Default => "default",
            RedisUser::WithoutChannels => "faults-no-channels",
        }
    }

    /// Its password when the server starts (the credentials fault changes it for a while).
    pub fn password(self) -> &'static str {
        match self {
            RedisUser::Default => "faults-default-password",
            RedisUser::WithoutChannels => "faults-no-channels-password",
        }
    }
}

/// The harness's own Redis user, for its commands (`ACL SETUSER`, `CLIENT KILL`, `INFO`).
pub(super) const REDIS_ADMIN: (&str, &str) = ("faults-admin", "faults-admin-password");

/// A `redis-server` on a random loopback port whose writes survive `SIGKILL`: append-only
/// file on, fsync'ed before every reply (`appendfsync always`), RDB snapshots off. It
/// requires a password and has the users of [`RedisUser`] and an admin user for the
/// harness.
#[derive(Debug)]
pub struct DurableRedis {
    binary: PathBuf,
    port: u16,
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl DurableRedis {
    /// Starts a server, or returns `None` if `redis-server` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the server does not come up.
    pub fn start() -> Option<Self> {
        let Some(binary) = find_binary("redis-server", &[]) else {
            let hint = "apt-get install redis-server";
            if require_services() {
                panic!("`redis-server` not found but services are required (CI): {hint}");
            }
            eprintln!("skipping: `redis-server` not found ({hint})");
            return None;
        };
        let mut server = Self {
            binary,
            port: free_port(),
            process: None,
            dir: TempDir::new("redis-durable").unwrap_or_else(|err| panic!("temp dir: {err}")),
        };
        server
            .spawn()
            .unwrap_or_else(|err| panic!("redis-server did not start: {err}"));
        Some(server)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path().display().to_string();
        let port = self.port.to_string();
        let (admin, admin_password) = REDIS_ADMIN;
        let admin_password = format!(">{admin_password}");
        let no_channels = RedisUser::WithoutChannels;
        let no_channels_password = format!(">{}", no_channels.password());
        let args: Vec<String> = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
            "--requirepass",
            RedisUser::Default.password(),
            // ACL rules, one `--user` directive per user.
            "--user",
            admin,
            "on",
            &admin_password,
            "~*",
            "&*",
            "+@all",
            "--user",
            no_channels.name(),
            "on",
            &no_channels_password,
            "~*",
            "resetchannels",
            "+@all",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.path().join("redis.log");
        self.process = Some(ServerProcess::spawn(
            "redis-server",
            &self.binary,
            &args,
            &log,
        )?);
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn process(&self) -> io::Result<&ServerProcess> {
        self.process
            .as_ref()
            .ok_or_else(|| io::Error::other("redis-server is not running"))
    }

    /// Kills the server with `SIGKILL` and starts it again on the same port; its data
    /// is reloaded from the append-only file.
    ///
    /// # Panics
    ///
    /// If the server does not come back, or on a topology of several servers (its faults
    /// hit one server at a time).
    pub fn restart(&mut self) {
        // Dropping the process kills and reaps it.
        drop(self.process.take());
        self.spawn()
            .unwrap_or_else(|err| panic!("redis-server did not restart: {err}"));
    }
}
