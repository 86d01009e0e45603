//! A throwaway Redis Cluster on loopback: three masters with one replica each, whose nodes
//! can be killed, restarted as replicas and paused, and whose failovers can be waited on.

mod nodes;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nodes::{NodeLine, SLOTS, parse_nodes};

use super::process::{ServerProcess, TempDir, find_binary, free_port, missing, wait_for_port};
use super::redis::throwaway_args;
use super::resp::{self, Reply};

/// How many masters, each serving a third of the slots (a shard).
const SHARDS: usize = 3;
/// How many nodes: a master and one replica per shard.
const NODES: usize = SHARDS * 2;
/// How long the cluster may take to come up, a failover to complete, or a restarted node
/// to rejoin.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// `cluster-node-timeout`: a node is failing after this long without answering, and its
/// replica then takes over within about twice as long. Short, so that a test's failover
/// takes seconds (Redis's default is 15 s).
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Three masters with one replica each, on loopback, with the slots split in three
/// ranges; every node has its own temp dir, persistence off, and runs under the same
/// supervisor as the other servers.
///
/// Node indices are 0 to 5: nodes 0, 1, 2 start as the masters of slots 0-5460,
/// 5461-10921 and 10922-16383, and node `i + 3` as the replica of node `i`. Which node is
/// a master changes with failovers: [`master_of_slot`](Self::master_of_slot) and
/// [`masters`](Self::masters) ask the cluster. A node is seen failing after
/// [`CLUSTER_NODE_TIMEOUT`] (1 s), so a failover takes a few seconds. Every node's
/// cluster bus listens on a port of its own (`cluster-port`), not on port + 10000.
///
/// The blocking methods are meant for tests, and may be called from async tests as the
/// other servers' are.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::RedisCluster;
///
/// let Some(mut cluster) = RedisCluster::start() else { return }; // skipped outside CI
/// println!("{}", cluster.url()); // redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/
/// let old = cluster.kill_master_of("routine:lock:{name}");
/// let new = cluster.wait_for_failover(old);
/// cluster.restart(old); // back as a replica of `new`
/// assert!(cluster.replicas_of(new).contains(&old));
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    /// By shard, the node last seen serving its slots.
    owners: Mutex<[usize; SHARDS]>,
    /// By node, whether [`pause`](Self::pause) stopped it.
    paused: Mutex<[bool; NODES]>,
    dir: TempDir,
}

#[derive(Debug)]
struct Node {
    port: u16,
    bus_port: u16,
    process: Option<ServerProcess>,
}

impl RedisCluster {
    /// Starts the cluster and returns once every node says `cluster_state:ok`, knows all
    /// six nodes with their roles, and every master has its replica in sync. Returns
    /// `None` if `redis-server` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the cluster does not come up.
    pub fn start() -> Option<Self> {
        let binary = match find_binary("redis-server", &[]) {
            Some(binary) => binary,
            None => return missing("redis-server", "apt-get install redis-server"),
        };
        // Another process may take a port between `free_port` and the node binding it: a
        // whole new cluster is tried a few times for that reason.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(&binary) {
                Ok(cluster) => return Some(cluster),
                Err(err) => last_err = Some(err),
            }
        }
        panic!("the redis cluster did not start: {last_err:?}");
    }

    /// The cluster shared by the tests of this test binary that do not harm it, started
    /// by the first call; `None` if the binary is missing outside CI.
    ///
    /// # Panics
    ///
    /// As [`RedisCluster::start`].
    pub fn shared() -> Option<&'static RedisCluster> {
        static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();
        CLUSTER.get_or_init(RedisCluster::start).as_ref()
    }

    fn try_start(binary: &Path) -> io::Result<Self> {
        // Twelve distinct ports: the kernel may hand a port out again once it is free.
        let mut ports = Vec::with_capacity(NODES * 2);
        while ports.len() < NODES * 2 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let nodes = ports
            .chunks(2)
            .map(|pair| Node {
                port: pair[0],
                bus_port: pair[1],
                process: None,
            })
            .collect();
        let mut cluster = Self {
            binary: binary.to_owned(),
            nodes,
            owners: Mutex::new(std::array::from_fn(|shard| shard)),
            paused: Mutex::new([false; NODES]),
            dir: TempDir::new("redis-cluster")?,
        };
        for i in 0..NODES {
            cluster.spawn(i)?;
        }
        cluster.create()?;
        Ok(cluster)
    }

    /// Makes a cluster of the fresh nodes: slots and distinct epochs for the masters,
    /// every node introduced to node 0, then each replica attached to its master.
    fn create(&self) -> io::Result<()> {
        for shard in 0..SHARDS {
            let port = self.nodes[shard].port;
            let (first, last) = shard_range(shard);
            command(
                port,
                &["CLUSTER", "SET-CONFIG-EPOCH", &(shard + 1).to_string()],
            )?;
            command(
                port,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            )?;
        }
        let (port0, bus0) = (self.nodes[0].port.to_string(), self.nodes[0].bus_port);
        for node in &self.nodes[1..] {
            command(
                node.port,
                &["CLUSTER", "MEET", "127.0.0.1", &port0, &bus0.to_string()],
            )?;
        }
        self.wait_until("every node to know the others", || {
            self.nodes.iter().all(|node| {
                view(node.port).is_ok_and(|lines| {
                    lines.len() == NODES
                        && lines
                            .iter()
                            .all(|l| !l.has("handshake") && !l.has("noaddr"))
                })
            })
        })?;
        for shard in 0..SHARDS {
            let Reply::Bulk(Some(id)) = command(self.nodes[shard].port, &["CLUSTER", "MYID"])?
            else {
                return Err(io::Error::other("CLUSTER MYID gave no id"));
            };
            command(
                self.nodes[shard + SHARDS].port,
                &["CLUSTER", "REPLICATE", &id],
            )?;
        }
        self.wait_until("the cluster to be whole", || self.whole())
    }

    /// `redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/`, the ports of the three
    /// nodes that started as masters: the addresses the Redis backend's cluster mode
    /// starts from (it learns the rest from them).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..SHARDS]
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// Every node's client port, by node index.
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The number of nodes (6).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node (never).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The hash slot of `key` as Redis computes it: CRC16 of its hash tag (the part
    /// between the first `{` and the next `}`, if not empty) or of the whole key, modulo
    /// 16384. Keys with the same tag share a slot, hence a master.
    pub fn slot_of(key: &str) -> u16 {
        nodes::slot_of(key.as_bytes())
    }

    /// The node serving `slot`, as the cluster sees it: of the running nodes that answer,
    /// the master with the highest configuration epoch that lists the slot (a master
    /// that failed keeps its slots until a replica takes them over). `None` if no node
    /// answers.
    pub fn try_master_of_slot(&self, slot: u16) -> Option<usize> {
        self.views()
            .iter()
            .flatten()
            .filter(|line| line.has("master") && line.serves(slot))
            .max_by_key(|line| line.config_epoch)
            .and_then(|line| self.index_of(line.port))
    }

    /// [`try_master_of_slot`](Self::try_master_of_slot), which must answer.
    ///
    /// # Panics
    ///
    /// If no running node names a master of `slot`.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        self.try_master_of_slot(slot)
            .unwrap_or_else(|| panic!("no node of the cluster names a master of slot {slot}"))
    }

    /// The masters serving slots, by shard (slots 0-5460, 5461-10921, 10922-16383).
    ///
    /// # Panics
    ///
    /// If no running node answers.
    pub fn masters(&self) -> Vec<usize> {
        (0..SHARDS)
            .map(|shard| self.master_of_slot(shard_range(shard).0))
            .collect()
    }

    /// The replicas that node `master` reports in sync (`state=online`), by node index.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let Ok(Reply::Bulk(Some(info))) =
            resp::command(self.nodes[master].port, &["INFO", "replication"])
        else {
            return Vec::new();
        };
        // `slave0:ip=127.0.0.1,port=40001,state=online,offset=...,lag=0`
        info.lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .filter_map(|line| {
                line.split(',')
                    .find_map(|field| field.strip_prefix("port="))
                    .and_then(|port| port.trim().parse().ok())
            })
            .filter_map(|port| self.index_of(port))
            .collect()
    }

    /// Node `i`'s process, to signal it; `None` while it is killed.
    pub fn process(&self, i: usize) -> Option<&ServerProcess> {
        self.nodes[i].process.as_ref()
    }

    /// Kills node `i` with `SIGKILL`. Its data is lost (persistence is off); if it was a
    /// master, its replica takes its slots over once the others see it failing.
    pub fn kill(&mut self, i: usize) {
        self.note_owners();
        drop(self.nodes[i].process.take());
        lock(&self.paused)[i] = false;
    }

    /// Kills the master serving `key`'s slot (see [`kill`](Self::kill)) and returns its
    /// index.
    ///
    /// # Panics
    ///
    /// If no running node names a master of the slot.
    pub fn kill_master_of(&mut self, key: &str) -> usize {
        let master = self.master_of_slot(Self::slot_of(key));
        self.kill(master);
        master
    }

    /// Starts node `i` again (after a kill) on the same ports, with the cluster
    /// configuration it had: the cluster, whose newer epochs gave its slots to another
    /// node, turns it into a replica of that node. Waits until it is a replica in sync
    /// and every running node says `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If it runs already, still serves slots (wait for the failover first), or does not
    /// come back.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.nodes[i].process.is_none(),
            "redis node {i} runs already"
        );
        let masters = self.masters();
        assert!(
            !masters.contains(&i),
            "redis node {i} still serves slots: wait for the failover first"
        );
        let started = self.spawn(i).and_then(|()| {
            self.wait_until("the restarted node to rejoin as a replica", || {
                masters.iter().any(|&m| self.replicas_of(m).contains(&i)) && self.whole()
            })
        });
        started.unwrap_or_else(|err| panic!("redis node {i} did not come back: {err}"));
    }

    /// Pauses node `i` with `SIGSTOP`: it keeps its sockets but answers nothing, to
    /// clients or to the other nodes, which fail over if it is a master and stays paused
    /// for longer than [`CLUSTER_NODE_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// If it is not running or cannot be signalled.
    pub fn pause(&self, i: usize) {
        self.note_owners();
        let process = self
            .process(i)
            .unwrap_or_else(|| panic!("redis node {i} is not running"));
        process
            .pause()
            .unwrap_or_else(|err| panic!("pausing redis node {i}: {err}"));
        lock(&self.paused)[i] = true;
    }

    /// Resumes node `i` after [`pause`](Self::pause). If its slots went to its replica
    /// meanwhile, the cluster turns it into a replica.
    ///
    /// # Panics
    ///
    /// If it cannot be signalled.
    pub fn resume(&self, i: usize) {
        if let Some(process) = self.process(i) {
            process
                .resume()
                .unwrap_or_else(|err| panic!("resuming redis node {i}: {err}"));
        }
        lock(&self.paused)[i] = false;
    }

    /// Waits until the slots node `old` served (when it was last seen serving them: at
    /// the latest [`kill`](Self::kill) or [`pause`](Self::pause)) are served by another
    /// node that says it is a master, and every running node says `cluster_state:ok`;
    /// returns that node's index.
    ///
    /// # Panics
    ///
    /// If `old` served no slots, or that does not happen within 30 s.
    pub fn wait_for_failover(&self, old: usize) -> usize {
        let shards: Vec<usize> = (0..SHARDS)
            .filter(|&shard| lock(&self.owners)[shard] == old)
            .collect();
        assert!(!shards.is_empty(), "redis node {old} served no slots");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let owners: Vec<Option<usize>> = shards
                .iter()
                .map(|&shard| self.try_master_of_slot(shard_range(shard).0))
                .collect();
            if let Some(&Some(new)) = owners.first()
                && owners
                    .iter()
                    .all(|&o| o.is_some_and(|o| o != old && self.is_master(o)))
                && self.states_ok()
            {
                for (&shard, owner) in shards.iter().zip(&owners) {
                    lock(&self.owners)[shard] = owner.unwrap_or(new);
                }
                return new;
            }
            assert!(
                Instant::now() < deadline,
                "no failover away from redis node {old} within {READY_WITHIN:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records which node serves each shard, if the running nodes say.
    fn note_owners(&self) {
        for shard in 0..SHARDS {
            if let Some(owner) = self.try_master_of_slot(shard_range(shard).0) {
                lock(&self.owners)[shard] = owner;
            }
        }
    }

    /// Whether the cluster is whole: every node runs and says `cluster_state:ok`, sees
    /// three masters serving every slot and three replicas each following a master, none
    /// failing; and every master has a replica in sync.
    fn whole(&self) -> bool {
        let views_whole = self.nodes.iter().all(|node| {
            node.process.is_some()
                && state_ok(node.port)
                && view(node.port).is_ok_and(|lines| {
                    let masters = lines.iter().filter(|l| l.has("master")).count();
                    let replicas = lines
                        .iter()
                        .filter(|l| l.has("slave") && l.master_id.is_some())
                        .count();
                    let slots: u32 = lines
                        .iter()
                        .flat_map(|l| &l.slots)
                        .map(|&(first, last)| u32::from(last - first) + 1)
                        .sum();
                    lines.len() == NODES
                        && masters == SHARDS
                        && replicas == SHARDS
                        && slots == u32::from(SLOTS)
                        && lines.iter().all(|l| !l.has("fail") && !l.has("fail?"))
                })
        });
        views_whole
            && (0..NODES)
                .filter(|&i| self.is_master(i))
                .all(|master| !self.replicas_of(master).is_empty())
    }

    /// Whether every running, unpaused node says `cluster_state:ok`.
    fn states_ok(&self) -> bool {
        self.running().all(|i| state_ok(self.nodes[i].port))
    }

    /// Whether node `i` says it is a master.
    fn is_master(&self, i: usize) -> bool {
        match resp::command(self.nodes[i].port, &["ROLE"]) {
            Ok(Reply::Array(Some(items))) => items.first().and_then(Reply::text) == Some("master"),
            _ => false,
        }
    }

    /// The indices of the nodes that run and are not paused.
    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        let paused = *lock(&self.paused);
        (0..NODES).filter(move |&i| self.nodes[i].process.is_some() && !paused[i])
    }

    /// What each running, unpaused node that answers says of the cluster.
    fn views(&self) -> Vec<Vec<NodeLine>> {
        self.running()
            .filter_map(|i| view(self.nodes[i].port).ok())
            .collect()
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|node| node.port == port)
    }

    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) -> io::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        while !ready() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "timed out waiting for {what}; logs in {}",
                        self.dir.path().display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts node `i`, whose cluster configuration file (`nodes.conf` in its own
    /// directory) survives a kill: a restarted node keeps its id and learns its new role.
    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let dir = self.dir.path().join(format!("node-{i}"));
        std::fs::create_dir_all(&dir)?;
        let Node { port, bus_port, .. } = self.nodes[i];
        let mut args = throwaway_args(port, &dir);
        for (name, value) in [
            ("--cluster-enabled", "yes".to_owned()),
            ("--cluster-config-file", "nodes.conf".to_owned()),
            ("--cluster-port", bus_port.to_string()),
            (
                "--cluster-node-timeout",
                CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
            ),
            // A replica may take over however long it was cut off from its master.
            ("--cluster-replica-validity-factor", "0".to_owned()),
            // Every master keeps its one replica.
            ("--cluster-allow-replica-migration", "no".to_owned()),
            // Redis 7 waits 5 s for more replicas before a diskless full sync.
            ("--repl-diskless-sync-delay", "0".to_owned()),
        ] {
            args.extend([name.to_owned(), value]);
        }
        let log = self.dir.path().join(format!("node-{i}.log"));
        let process = ServerProcess::spawn("redis-server", &self.binary, &args, &log)?;
        self.nodes[i].process = Some(process);
        wait_for_port(port, Duration::from_secs(10))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            drop(node.process.take());
        }
    }
}

/// The slots of shard `shard`, inclusive.
fn shard_range(shard: usize) -> (u16, u16) {
    let bound = |shard: usize| (shard * usize::from(SLOTS) / SHARDS) as u16;
    (bound(shard), bound(shard + 1).wrapping_sub(1))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends one command to the node on `port`; an error reply is an error.
fn command(port: u16, args: &[&str]) -> io::Result<Reply> {
    match resp::command(port, args)? {
        Reply::Error(err) => Err(io::Error::other(format!(
            "{} on node {port}: {err}",
            args.join(" ")
        ))),
        reply => Ok(reply),
    }
}

/// `CLUSTER NODES` of the node on `port`.
fn view(port: u16) -> io::Result<Vec<NodeLine>> {
    match command(port, &["CLUSTER", "NODES"])? {
        Reply::Bulk(Some(text)) => Ok(parse_nodes(&text)),
        other => Err(io::Error::other(format!(
            "CLUSTER NODES on node {port} gave {other:?}"
        ))),
    }
}

/// Whether the node on `port` says `cluster_state:ok`.
fn state_ok(port: u16) -> bool {
    matches!(
        command(port, &["CLUSTER", "INFO"]),
        Ok(Reply::Bulk(Some(info))) if info.lines().any(|line| line.trim() == "cluster_state:ok")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_every_slot_in_three() {
        assert_eq!(shard_range(0), (0, 5460));
        assert_eq!(shard_range(1), (5461, 10921));
        assert_eq!(shard_range(2), (10922, 16383));
    }
}
