//! A fault-injection harness for clusters of `member` processes (the `member` example of
//! `leasehold-examples`, built by this package as `faults-member`).
//!
//! [`Cluster`] starts a throwaway server ([`Server`]: Redis, etcd or PostgreSQL), N
//! `member` processes, and a TCP [`Proxy`] between each member and the server, so one
//! member's network can be cut and restored without touching the others. Members print
//! JSON events with `CLOCK_MONOTONIC` timestamps; the harness records its faults on the
//! same clock ([`Fault`]): `SIGKILL`, `SIGSTOP`/`SIGCONT` and `SIGTERM` of the holder, a
//! cut of its network, a cut while its runtime is starved of CPU (the member burns its
//! own worker threads from `SIGUSR1` to `SIGUSR2`, so its timers fire late, while the
//! burning tasks keep waking its routine; see `leasehold_examples::starve`), a kill and
//! restart of the server, a `SIGSTOP` of the server, and on PostgreSQL what an operator
//! does to the holder's lock session from `psql`: `pg_terminate_backend`, and
//! `pg_cancel_backend` of its statements for about a TTL, and on Redis a credentials
//! rotation: the members' password changed and their connections killed for longer than
//! the TTL, then the old password restored ([`FaultKind::for_backend`] lists the faults of
//! each backend). Rotation is Redis's only: the harness's etcd runs without
//! authentication, and its PostgreSQL members connect as the superuser under `trust`,
//! where no password is checked.
//!
//! Server topologies ([`BackendKind::topologies`]) put several servers behind one
//! cluster: a three-member etcd cluster whose members' peer traffic runs through proxies
//! that can cut a member off, a PostgreSQL primary with a synchronous or asynchronous
//! standby, Redis behind Sentinel (a master, two replicas, three sentinels) with and
//! without durable mode, and a Redis Cluster (three masters with a replica each). Each
//! member then has a proxy per server (per sentinel) and a URL listing them all (a
//! cluster's members list the nodes themselves: they follow its slot map), and the
//! topology brings its own faults (the etcd leader or a follower killed, the leader
//! restarted, cut off from its peers or from the clients; the primary killed and the
//! standby promoted, then a new standby made; the Redis master killed, paused or cut off
//! from the sentinels until they fail over; the cluster master serving the lock's slot
//! killed until its replica takes over) in place of the single server's restart and
//! pause.
//!
//! The Redis server requires a password, which the members' URLs carry, and has a user
//! without pub/sub channels ([`RedisUser::WithoutChannels`], chosen by
//! [`ClusterConfig::redis_user`]): its members' `PSUBSCRIBE` fails with `NOPERM`, so they
//! get no release notifications and must poll without spinning;
//! [`Cluster::redis_command_counts`] reads the server's `INFO commandstats` to show it.
//! [`scenario::inject`] plays one fault out; the [`checker`] reports overlaps, stale
//! steps and whether fencing would have rejected them, takeover times and gaps, and
//! [`scenario::judge`] holds them against the design's [`Bounds`]. [`scheduled`] runs
//! members on a schedule (`RunOptions::every`) with wall clocks up to 2 s apart while the
//! member running a fire is killed or paused mid-run; [`checker::fires`] checks that
//! every fire in the window completed exactly once, that runs cut off were reported and
//! retried elsewhere, and that no two runs overlapped. [`soak`] injects
//! random faults for minutes and writes the results as Markdown.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use leasehold_faults::{BackendKind, Bounds, Cluster, ClusterConfig, FaultKind};
//! use leasehold_faults::scenario::{inject, judge};
//!
//! let config = ClusterConfig::new("target/debug/faults-member", BackendKind::Redis);
//! let step = config.step;
//! let Some(mut cluster) = Cluster::start(config).await? else { return Ok(()) };
//! inject(&mut cluster, FaultKind::Kill).await?;
//! let run = cluster.stop().await?;
//! let report = run.check();
//! let bounds = Bounds::new(BackendKind::Redis, run.ttl, step);
//! assert!(judge(&report, &bounds, std::time::Duration::ZERO).is_empty());
//! # Ok(()) }
//! ```

pub mod checker;
mod cluster;
mod credentials;
mod inject;
mod log;
mod proxy;
pub mod scenario;
pub mod scheduled;
mod server;
mod session;
pub mod soak;
mod topology;
mod waits;

pub use checker::{Report, StaleStep, Takeover, Tenure};
pub use cluster::{Cluster, ClusterConfig, Run, ScheduleConfig};
pub use credentials::CommandCount;
pub use inject::FaultId;
pub use log::{Event, EventKind, Fault, FaultKind, Mono, between, now};
pub use proxy::Proxy;
pub use scenario::Bounds;
pub use server::{BackendKind, DurableRedis, RedisUser, Server};
