//! The faults of server topologies: the members of a three-member etcd cluster (killed,
//! restarted, cut off from their peers or from the clients), the failover of a
//! PostgreSQL primary to its standby, of a Redis master behind Sentinel, and of the Redis
//! Cluster master serving the lock's slot.
//!
//! Each is a server fault: it need not end the holder's lease, so it is measured as a
//! recovery from its end (see [`FaultKind::hits_holder`]). The server operations block
//! (they wait for an election, for a member to rejoin, for a promotion), so they run on a
//! blocking thread with the server moved there and back.

use std::time::Duration;

use anyhow::Context as _;

use super::cluster::Cluster;
use super::inject::FaultId;
use super::log::FaultKind;
use super::server::Server;

/// How long to wait for the etcd cluster to name a leader.
#[cfg(feature = "etcd")]
const ELECTION_PATIENCE: Duration = Duration::from_secs(15);

impl Cluster {
    /// Runs `f` on the server on a blocking thread.
    async fn with_server<T, F>(&mut self, what: &str, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Server) -> anyhow::Result<T> + Send + 'static,
    {
        let mut server = self.server.take().context("the server is gone")?;
        let (server, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut server);
            (server, out)
        })
        .await
        .with_context(|| format!("{what}: the server's thread panicked"))?;
        self.server = Some(server);
        out.with_context(|| what.to_owned())
    }

    /// Injects the topology fault `kind`, held for `down` where it is held (a member kept
    /// down, a cut), and returns once it has ended: the member is back, the cut healed,
    /// the standby promoted.
    ///
    /// # Errors
    ///
    /// If `kind` is not a fault of this cluster's topology, or the topology does not do
    /// what the fault needs (no leader is elected, a member does not come back, the
    /// standby is not promoted).
    pub async fn topology_fault(
        &mut self,
        kind: FaultKind,
        down: Duration,
    ) -> anyhow::Result<FaultId> {
        anyhow::ensure!(
            kind.is_topology() && kind.applies_to(self.config().backend),
            "{kind} is not a fault of a {} topology",
            self.config().backend.name()
        );
        match kind {
            FaultKind::MasterKill | FaultKind::MasterPause | FaultKind::MasterIsolate => {
                self.sentinel_fault(kind).await
            }
            FaultKind::ClusterMasterKill => self.cluster_master_kill().await,
            #[cfg(feature = "postgres")]
            FaultKind::Failover => self.failover().await,
            #[cfg(feature = "etcd")]
            _ => self.etcd_member_fault(kind, down).await,
            #[cfg(not(feature = "etcd"))]
            _ => anyhow::bail!("{kind} needs the `etcd` feature ({down:?})"),
        }
    }

    /// The faults of a Redis master behind Sentinel: each lasts until the sentinels have
    /// failed over to a replica and the old master is back as a replica in sync.
    async fn sentinel_fault(&mut self, kind: FaultKind) -> anyhow::Result<FaultId> {
        let id = self.record(kind, None, None);
        self.with_server("fail the Redis master over", move |server| {
            let Server::RedisSentinel(topology, _) = server else {
                anyhow::bail!("not Redis behind Sentinel");
            };
            match kind {
                FaultKind::MasterKill => {
                    let old = topology.kill_master();
                    topology.wait_for_failover(old);
                    topology.restart(old);
                }
                FaultKind::MasterPause => {
                    let old = topology.pause_master();
                    let new = topology.wait_for_failover(old);
                    topology.resume_master();
                    whole_again(topology, new)?;
                }
                _ /* MasterIsolate */ => {
                    let old = topology.isolate_master_from_sentinels();
                    let new = topology.wait_for_failover(old);
                    topology.heal();
                    whole_again(topology, new)?;
                }
            }
            Ok(())
        })
        .await?;
        self.end(id);
        Ok(id)
    }

    /// Kills the Redis Cluster master serving the lock's slot: the fault lasts until its
    /// replica has taken the slots over and the old master is back as a replica in sync.
    async fn cluster_master_kill(&mut self) -> anyhow::Result<FaultId> {
        // In cluster mode the backend wraps the name in a hash tag (`<ns>:lock:{name}`):
        // the tag alone decides the slot.
        let tag = format!("{{{}}}", self.config().name);
        let id = self.record(FaultKind::ClusterMasterKill, None, None);
        self.with_server("fail a Redis Cluster master over", move |server| {
            let Server::RedisCluster(cluster, _) = server else {
                anyhow::bail!("not a Redis Cluster");
            };
            let old = cluster.kill_master_of(&tag);
            cluster.wait_for_failover(old);
            cluster.restart(old);
            Ok(())
        })
        .await?;
        self.end(id);
        Ok(id)
    }

    /// Kills the PostgreSQL primary and promotes the standby; the fault ends when the
    /// new primary accepts writes. Then a new standby is made from it, so that the pair
    /// can fail over again.
    #[cfg(feature = "postgres")]
    async fn failover(&mut self) -> anyhow::Result<FaultId> {
        let id = self.record(FaultKind::Failover, None, None);
        self.with_server("failover", |server| match server {
            Server::PostgresPair(pair) => {
                pair.failover();
                Ok(())
            }
            _ => anyhow::bail!("not a PostgreSQL pair"),
        })
        .await?;
        self.end(id);
        Ok(id)
    }

    /// Makes a new standby of the current primary after a failover, on the old
    /// primary's port, so the members' URLs reach the pair again and it can fail over
    /// once more. Not a fault: call it once the cluster has recovered.
    ///
    /// # Errors
    ///
    /// If the server is not a PostgreSQL pair or the standby does not come up.
    #[cfg(feature = "postgres")]
    pub async fn rebuild_standby(&mut self) -> anyhow::Result<()> {
        self.with_server("rebuild the standby", |server| match server {
            Server::PostgresPair(pair) => {
                pair.rebuild_standby();
                Ok(())
            }
            _ => anyhow::bail!("not a PostgreSQL pair"),
        })
        .await?;
        // The members' proxies to the killed server now lead to the new standby.
        let ports = self.server()?.ports();
        for member in &self.members {
            let served: Vec<u16> = member.proxies.iter().map(|p| p.upstream_port()).collect();
            let fresh: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|p| !served.contains(p))
                .collect();
            let stale = member
                .proxies
                .iter()
                .filter(|proxy| !ports.contains(&proxy.upstream_port()));
            for (proxy, port) in stale.zip(fresh) {
                proxy.retarget(port);
            }
        }
        Ok(())
    }

    /// The faults of an etcd cluster's members.
    #[cfg(feature = "etcd")]
    async fn etcd_member_fault(
        &mut self,
        kind: FaultKind,
        down: Duration,
    ) -> anyhow::Result<FaultId> {
        use std::time::Instant;

        let leader = self
            .with_server("find the etcd leader", |server| {
                let cluster = etcd_cluster(server)?;
                let deadline = Instant::now() + ELECTION_PATIENCE;
                loop {
                    if let Some(leader) = cluster.leader() {
                        return Ok(leader);
                    }
                    anyhow::ensure!(Instant::now() < deadline, "no etcd leader");
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .await?;
        let members = self.server()?.ports().len();
        let victim = match kind {
            FaultKind::FollowerKill => (leader + 1) % members,
            _ => leader,
        };
        let id = self.record(kind, None, None);
        match kind {
            FaultKind::LeaderKill | FaultKind::FollowerKill => {
                self.with_server("kill an etcd member", move |server| {
                    etcd_cluster(server)?.kill(victim);
                    Ok(())
                })
                .await?;
                // Held on purpose for longer than the TTL: leases must outlive it.
                tokio::time::sleep(down).await;
                self.with_server("start an etcd member again", move |server| {
                    etcd_cluster(server)?.start_member(victim);
                    Ok(())
                })
                .await?;
            }
            FaultKind::MemberRestart => {
                self.with_server("restart an etcd member", move |server| {
                    etcd_cluster(server)?.restart(victim);
                    Ok(())
                })
                .await?;
            }
            FaultKind::LeaderIsolate => {
                self.with_server("isolate the etcd leader", move |server| {
                    etcd_cluster(server)?.isolate(victim);
                    Ok(())
                })
                .await?;
                tokio::time::sleep(down).await;
                self.with_server("heal the etcd leader", move |server| {
                    etcd_cluster(server)?.heal(victim);
                    Ok(())
                })
                .await?;
            }
            FaultKind::ClientMemberCut => {
                for member in &self.members {
                    if let Some(proxy) = member.proxies.get(victim) {
                        proxy.cut();
                    }
                }
                tokio::time::sleep(down).await;
                for member in &self.members {
                    if let Some(proxy) = member.proxies.get(victim) {
                        proxy.restore();
                    }
                }
            }
            other => anyhow::bail!("{other} is not a fault of an etcd cluster's members"),
        }
        self.end(id);
        Ok(id)
    }
}

/// Waits until the old master, back after a pause or a cut, has been turned into a replica
/// of `master` by the sentinels and is in sync: the fault ends when the topology is whole
/// again (until then durable mode cannot have both replicas confirm a write).
fn whole_again(
    topology: &leasehold_conformance::servers::RedisSentinel,
    master: usize,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while topology.replicas_online(master) < topology.len() - 1 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the old master did not rejoin as a replica within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The etcd cluster `server` is.
#[cfg(feature = "etcd")]
fn etcd_cluster(
    server: &mut Server,
) -> anyhow::Result<&mut leasehold_conformance::servers::EtcdCluster> {
    match server {
        Server::EtcdCluster(cluster) => Ok(cluster),
        _ => anyhow::bail!("not an etcd cluster"),
    }
}
