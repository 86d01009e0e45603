//! The record of a run: what members printed and what the harness did to them, on one
//! clock (`CLOCK_MONOTONIC` nanoseconds, shared by every process on the host).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::server::BackendKind;

/// A `CLOCK_MONOTONIC` reading in nanoseconds.
pub type Mono = u64;

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now() -> Mono {
    u64::try_from(leasehold_examples::member::mono_ns()).unwrap_or(u64::MAX)
}

/// The time from `from` to `to` (zero if `to` is earlier).
pub fn between(from: Mono, to: Mono) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

/// One line a member printed, or its exit as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The member's index in the cluster (members started later get higher indices).
    pub member: usize,
    /// When it happened.
    pub at: Mono,
    /// What happened.
    pub kind: EventKind,
}

/// What a member reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// It took the lease.
    Acquired {
        /// The lease's fencing token.
        token: u64,
    },
    /// It finished a work step under the lease.
    Work {
        /// The fencing token the step was done with.
        token: u64,
        /// The step's number within this tenure, from 0.
        step: u64,
    },
    /// Its routine saw the cancellation.
    Cancelled {
        /// The routine's fencing token.
        token: u64,
    },
    /// The runner gave the lease up as lost (refresh said so, or the local deadline
    /// passed) and dropped the routine.
    Lost {
        /// The lost lease's token.
        token: u64,
    },
    /// The lease was released.
    Released {
        /// The released lease's token.
        token: u64,
    },
    /// The member's runner has shut down.
    Stopped,
    /// The process exited (recorded by the harness when it reaped it).
    Exited,
    /// A scheduled member started its schedule (`--every`).
    Scheduled {
        /// Its wall clock's offset from the system's, in milliseconds.
        clock_offset_ms: i64,
    },
    /// A scheduled run started.
    FireStarted {
        /// The fire it runs (`leasehold::scheduled_fire()`), in UNIX milliseconds.
        fire_ms: u64,
        /// The run's fencing token (of the name's lease).
        token: u64,
    },
    /// A scheduled run ended (`at` is its end).
    FireDone {
        /// The fire, in UNIX milliseconds.
        fire_ms: u64,
        /// When the run started.
        started: Mono,
        /// Whether the run saw its cancellation instead of finishing its step.
        cancelled: bool,
    },
    /// A scheduled member found the run of a fire cut off on another member
    /// (`EventKind::FireInterrupted` of the runner).
    FireInterrupted {
        /// The fire, in UNIX milliseconds.
        fire_ms: u64,
        /// Whether this member runs it again.
        retried: bool,
    },
    /// Any other line (`backend_error`, `refresh_failed`, ...), by its `event` name.
    Other {
        /// The `event` field.
        event: String,
    },
}

impl Event {
    /// Parses one JSON line of `member`; `None` if it is not a member event.
    pub fn parse(member: usize, line: &str) -> Option<Event> {
        let value: Value = serde_json::from_str(line).ok()?;
        let at = value["mono_ns"].as_u64()?;
        let event = value["event"].as_str()?;
        let token = value["token"].as_u64();
        let kind = match (event, token) {
            ("acquired", Some(token)) => EventKind::Acquired { token },
            ("work", Some(token)) => EventKind::Work {
                token,
                step: value["step"].as_u64()?,
            },
            ("cancelled", Some(token)) => EventKind::Cancelled { token },
            ("lost", Some(token)) => EventKind::Lost { token },
            ("released", Some(token)) => EventKind::Released { token },
            ("stopped", _) => EventKind::Stopped,
            ("scheduled", _) => EventKind::Scheduled {
                clock_offset_ms: value["clock_offset_ms"].as_i64()?,
            },
            ("fire_started", Some(token)) => EventKind::FireStarted {
                fire_ms: value["fire_ms"].as_u64()?,
                token,
            },
            ("fire_done", Some(_)) => EventKind::FireDone {
                fire_ms: value["fire_ms"].as_u64()?,
                started: value["started_ns"].as_u64()?,
                cancelled: value["cancelled"].as_bool()?,
            },
            ("fire_interrupted", _) => EventKind::FireInterrupted {
                fire_ms: value["fire_ms"].as_u64()?,
                retried: value["retried"].as_bool()?,
            },
            (other, _) => EventKind::Other {
                event: other.to_owned(),
            },
        };
        Some(Event { member, at, kind })
    }

    /// The fencing token the event is about, if any.
    pub fn token(&self) -> Option<u64> {
        match self.kind {
            EventKind::Acquired { token }
            | EventKind::Work { token, .. }
            | EventKind::Cancelled { token }
            | EventKind::Lost { token }
            | EventKind::Released { token } => Some(token),
            _ => None,
        }
    }
}

/// The faults the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `SIGKILL` of the holder: a crash.
    Kill,
    /// `SIGSTOP` of the holder for longer than the TTL, then `SIGCONT`.
    Pause,
    /// `SIGTERM` of the holder: a graceful stop (drain, then release).
    Terminate,
    /// The holder's network cut (both ways, connections held) past the takeover, then
    /// restored.
    Cut,
    /// The holder's runtime starved of CPU (`SIGUSR1`: its worker threads busy with tasks
    /// that wake each other and its routine, so timers fire late) and its network cut,
    /// past the takeover; then restored and fed again (`SIGUSR2`).
    StarveCut,
    /// `pg_terminate_backend` of the holder's PostgreSQL lock session (PostgreSQL only).
    SessionTerminate,
    /// `pg_cancel_backend` of the PostgreSQL lock session holding the lock, again and again
    /// for about a TTL (PostgreSQL only).
    StatementCancel,
    /// The password of the members' user changed and every connection of that user
    /// killed, for longer than the TTL, then the old password restored (Redis only: the
    /// harness's etcd has no authentication, and its PostgreSQL members connect as the
    /// superuser with `trust`, where a password is never checked).
    CredentialsRotated,
    /// The server killed with `SIGKILL` and started again on the same port and data.
    ServerRestart,
    /// The server stopped with `SIGSTOP` for longer than the TTL, then `SIGCONT`.
    ServerPause,
    /// The etcd cluster's Raft leader killed with `SIGKILL`, kept down for longer than the
    /// TTL, then started again (etcd cluster only).
    LeaderKill,
    /// An etcd follower killed with `SIGKILL`, kept down for longer than the TTL, then
    /// started again (etcd cluster only).
    FollowerKill,
    /// The etcd cluster's Raft leader killed with `SIGKILL` and started again at once
    /// (etcd cluster only).
    MemberRestart,
    /// The etcd cluster's Raft leader cut off from the other members (its peer traffic,
    /// both ways) for longer than the TTL, then healed: the leader is the minority side
    /// (etcd cluster only).
    LeaderIsolate,
    /// Every member's network to the etcd leader's client port cut for longer than the
    /// TTL, then restored: clients must fail over to the other members (etcd cluster
    /// only).
    ClientMemberCut,
    /// The PostgreSQL primary killed with `SIGKILL` and the standby promoted (PostgreSQL
    /// pairs only); members reconnect through their multi-host URLs.
    Failover,
    /// The Redis master killed with `SIGKILL`; the sentinels fail over to a replica, then
    /// the old master is started again as a replica (Sentinel only).
    MasterKill,
    /// The Redis master stopped with `SIGSTOP` until the sentinels have failed over, then
    /// resumed: it comes back as a master with clients still connected until the
    /// sentinels demote it (Sentinel only).
    MasterPause,
    /// The Redis master cut off from the sentinels (clients and replicas still reach it)
    /// until they have failed over, then healed: two masters for a while (Sentinel only).
    MasterIsolate,
    /// The Redis Cluster master serving the lock's slot killed with `SIGKILL`; its
    /// replica takes the slots over, then the old master is started again and rejoins
    /// as a replica (Redis Cluster only).
    ClusterMasterKill,
}

impl FaultKind {
    /// Every fault, in the order of the results table: the holder faults, the single
    /// server's, then the topologies' ([`FaultKind::TOPOLOGY`]).
    pub const ALL: [FaultKind; 20] = [
        FaultKind::Terminate,
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Cut,
        FaultKind::StarveCut,
        FaultKind::SessionTerminate,
        FaultKind::StatementCancel,
        FaultKind::CredentialsRotated,
        FaultKind::ServerRestart,
        FaultKind::ServerPause,
        FaultKind::LeaderKill,
        FaultKind::FollowerKill,
        FaultKind::MemberRestart,
        FaultKind::LeaderIsolate,
        FaultKind::ClientMemberCut,
        FaultKind::Failover,
        FaultKind::MasterKill,
        FaultKind::MasterPause,
        FaultKind::MasterIsolate,
        FaultKind::ClusterMasterKill,
    ];

    /// The faults of server topologies (see [`BackendKind::topologies`]): the last ones
    /// of [`FaultKind::ALL`], after the holder and single-server faults.
    pub const TOPOLOGY: &'static [FaultKind] = Self::ALL.split_at(10).1;

    /// Whether this is a fault of a server topology (see [`FaultKind::TOPOLOGY`]).
    pub fn is_topology(self) -> bool {
        Self::TOPOLOGY.contains(&self)
    }

    /// The faults that can be injected into a cluster on `backend`, in table order.
    pub fn for_backend(backend: BackendKind) -> Vec<FaultKind> {
        Self::ALL
            .into_iter()
            .filter(|kind| kind.applies_to(backend))
            .collect()
    }

    /// Whether the fault can be injected into a cluster on `backend`: lock sessions are
    /// PostgreSQL's, rotated credentials Redis's; a topology of several servers has its
    /// own server faults (member faults on the etcd cluster, failover of a PostgreSQL
    /// pair, of a Sentinel master, of a Redis Cluster master) instead of the single
    /// server's restart and pause.
    pub fn applies_to(self, backend: BackendKind) -> bool {
        let topology = BackendKind::topologies().contains(&backend);
        match self {
            FaultKind::SessionTerminate | FaultKind::StatementCancel => backend.has_lock_sessions(),
            FaultKind::CredentialsRotated => backend == BackendKind::Redis,
            FaultKind::ServerRestart | FaultKind::ServerPause => !topology,
            FaultKind::LeaderKill
            | FaultKind::FollowerKill
            | FaultKind::MemberRestart
            | FaultKind::LeaderIsolate
            | FaultKind::ClientMemberCut => topology && backend.is_etcd(),
            FaultKind::Failover => backend.is_postgres_pair(),
            FaultKind::MasterKill | FaultKind::MasterPause | FaultKind::MasterIsolate => {
                backend.is_sentinel()
            }
            FaultKind::ClusterMasterKill => backend.is_redis_cluster(),
            // Members reach the sentinels through their proxies but the master at the
            // address the sentinels give, which no proxy of theirs is in front of; the
            // nodes of a Redis Cluster likewise at the addresses of its slot map.
            FaultKind::Cut | FaultKind::StarveCut => {
                !backend.is_sentinel() && !backend.is_redis_cluster()
            }
            _ => true,
        }
    }

    /// A short name for tables and test output.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "holder SIGKILL",
            FaultKind::Pause => "holder SIGSTOP > TTL",
            FaultKind::Terminate => "holder SIGTERM",
            FaultKind::Cut => "holder network cut",
            FaultKind::StarveCut => "holder CPU-starved + network cut",
            FaultKind::SessionTerminate => "lock session pg_terminate_backend",
            FaultKind::StatementCancel => "lock session pg_cancel_backend ~TTL",
            FaultKind::CredentialsRotated => "credentials rotated > TTL",
            FaultKind::ServerRestart => "server kill+restart",
            FaultKind::ServerPause => "server SIGSTOP > TTL",
            FaultKind::LeaderKill => "leader SIGKILL, down > TTL",
            FaultKind::FollowerKill => "follower SIGKILL, down > TTL",
            FaultKind::MemberRestart => "leader kill+restart",
            FaultKind::LeaderIsolate => "leader cut off from peers > TTL",
            FaultKind::ClientMemberCut => "leader cut off from clients > TTL",
            FaultKind::Failover => "primary SIGKILL + standby promoted",
            FaultKind::MasterKill => "master SIGKILL, sentinels fail over",
            FaultKind::MasterPause => "master SIGSTOP until failed over",
            FaultKind::MasterIsolate => "master cut off from sentinels until failed over",
            FaultKind::ClusterMasterKill => "cluster master SIGKILL, replica takes over",
        }
    }

    /// Whether the fault ends the holder's lease, so that it is measured as a takeover:
    /// from the fault to an acquisition with a newer token. The others (server faults,
    /// cancelled statements, rotated credentials) may leave the holder in place; they are
    /// measured as a recovery, from the fault's end to the first step under a lease
    /// provably live after it (see [`checker`](super::checker)).
    pub fn hits_holder(self) -> bool {
        matches!(
            self,
            FaultKind::Kill
                | FaultKind::Pause
                | FaultKind::Terminate
                | FaultKind::Cut
                | FaultKind::StarveCut
                | FaultKind::SessionTerminate
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault the harness injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Which fault.
    pub kind: FaultKind,
    /// The member hit (the holder when the fault began), for faults aimed at the holder.
    pub member: Option<usize>,
    /// The fencing token that member held.
    pub token: Option<u64>,
    /// When it was injected (just before the signal or the cut).
    pub at: Mono,
    /// When it was undone: the `SIGCONT`, the restore, the server accepting connections
    /// again, the last cancel, the old password restored. Equal to `at` for faults that
    /// are not undone (kill, terminate).
    pub until: Mono,
}

#[cfg(test)]
mod topology_tests {
    use super::*;

    #[test]
    fn the_topology_faults_are_those_only_topologies_take() {
        for kind in FaultKind::ALL {
            let on_single = BackendKind::all().into_iter().any(|b| kind.applies_to(b));
            let on_topology = BackendKind::topologies()
                .into_iter()
                .any(|b| kind.applies_to(b));
            assert_eq!(
                kind.is_topology(),
                on_topology && !on_single,
                "{kind}: on a single server {on_single}, on a topology {on_topology}"
            );
        }
    }
}
