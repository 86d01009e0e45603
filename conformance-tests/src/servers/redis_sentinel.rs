//! A throwaway Redis Sentinel topology on loopback: one master, two replicas and three
//! sentinels, whose master can be killed, paused and cut off from the sentinels; or the
//! same over TLS ([`RedisSentinel::start_tls`]).

mod proxy;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{ServerProcess, TempDir, find_binary, free_port, missing, wait_for_port};
use super::redis::throwaway_args;
use super::resp::{self, Reply};
use super::tls::TestCertificates;
use proxy::{Cuts, Kind, ServerProxy};

/// The name the sentinels monitor the master under.
const MASTER_NAME: &str = "leasehold";
/// How many servers (one master, the rest replicas) and sentinels.
const SERVERS: usize = 3;
const SENTINELS: usize = 3;
/// How long the topology may take to come up, or a failover to complete.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// A sentinel sees a server down after this long without a valid reply: short, so that a
/// test's failover takes seconds (Redis's default is 30 s).
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Sentinel's `failover-timeout`: a failover that stalls is retried after twice this.
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(2000);

/// One master, two replicas and three sentinels (quorum 2) on loopback, each server with
/// its own temp dir, persistence off, under the same supervisor as the other servers.
///
/// Each server sits behind a proxy of the topology and announces the proxy's address
/// (`replica-announce-ip`/`-port`), so sentinels, replicas and clients all reach it
/// through the proxy, which tells their connections apart: that is how
/// [`isolate_master_from_sentinels`](Self::isolate_master_from_sentinels) cuts the
/// sentinels off while clients still reach the master, and
/// [`pause_replication`](Self::pause_replication) holds the replication links. Server
/// indices are 0, 1, 2; server 0 starts as the master. Sentinels see a server down after
/// [`SENTINEL_DOWN_AFTER`] (1 s), so a failover takes a few seconds.
///
/// The blocking methods are meant for tests, and may be called from async tests as the
/// other servers' are.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::RedisSentinel;
///
/// let Some(mut topology) = RedisSentinel::start() else { return }; // skipped outside CI
/// println!("{}", topology.url()); // redis+sentinel://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/leasehold
/// let old = topology.kill_master();
/// let new = topology.wait_for_failover(old);
/// topology.restart(old); // back as a replica of `new`
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    binary: PathBuf,
    /// The TLS files and ports of a topology started with [`start_tls`](Self::start_tls).
    tls: Option<Tls>,
    servers: Vec<Server>,
    sentinels: Vec<Sentinel>,
    cuts: Arc<Cuts>,
    proxies: Vec<ServerProxy>,
    /// The server paused by [`pause_master`](Self::pause_master).
    paused: Mutex<Option<usize>>,
    /// The server cut off by [`isolate_master_from_sentinels`](Self::isolate_master_from_sentinels).
    isolated: Mutex<Option<usize>>,
    dir: TempDir,
}

#[derive(Debug)]
struct Server {
    /// The plaintext port, for the topology's own checks (with TLS too).
    port: u16,
    /// The TLS port, which the proxy forwards to, with TLS.
    tls_port: Option<u16>,
    process: Option<ServerProcess>,
}

#[derive(Debug)]
struct Sentinel {
    /// The plaintext port, for the topology's own checks (with TLS too).
    port: u16,
    /// The TLS port clients use, with TLS.
    tls_port: Option<u16>,
    process: Option<ServerProcess>,
}

/// The PEM files every server and sentinel of a TLS topology presents and trusts.
#[derive(Debug, Clone)]
struct Tls {
    cert: String,
    key: String,
    ca: String,
}

impl Tls {
    /// The TLS settings of a server or sentinel: it presents the server certificate
    /// (which is also issued for client use) to clients and, as a client, to the
    /// servers and sentinels it connects to (`tls-replication`), trusts the CA, and
    /// requires a client certificate from everyone.
    fn settings(&self, tls_port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("tls-port", tls_port.to_string()),
            ("tls-cert-file", self.cert.clone()),
            ("tls-key-file", self.key.clone()),
            ("tls-ca-cert-file", self.ca.clone()),
            ("tls-auth-clients", "yes".to_owned()),
            ("tls-replication", "yes".to_owned()),
        ]
    }
}

impl RedisSentinel {
    /// Starts the topology and returns once the replicas are in sync with the master and
    /// every sentinel knows the master, both replicas and the other two sentinels.
    /// Returns `None` if `redis-server` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the topology does not come up.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// [`start`](Self::start) over TLS, with `certs` (which must outlive the topology):
    /// every server and sentinel serves TLS on its client port (the proxies' ports and
    /// [`url`](Self::url)'s, `rediss+sentinel://`) with the server certificate, requires
    /// a client certificate signed by the CA, and replicates and monitors over TLS
    /// (`tls-replication yes`). Each also keeps a plaintext port for the topology's own
    /// checks.
    ///
    /// The proxies forward the encrypted bytes but cannot read them, so they cannot tell
    /// a sentinel's or a replica's connection from a client's:
    /// [`isolate_master_from_sentinels`](Self::isolate_master_from_sentinels) and
    /// [`pause_replication`](Self::pause_replication) are not available (they panic).
    /// Killing, pausing and restarting servers work.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start) (a `redis-server` built without TLS does not come up).
    pub fn start_tls(certs: &TestCertificates) -> Option<Self> {
        let path = |path: PathBuf| path.display().to_string();
        Self::start_with(Some(Tls {
            cert: path(certs.server_cert_file()),
            key: path(certs.server_key_file()),
            ca: path(certs.ca_file()),
        }))
    }

    fn start_with(tls: Option<Tls>) -> Option<Self> {
        let binary = match find_binary("redis-server", &[]) {
            Some(binary) => binary,
            None => return missing("redis-server", "apt-get install redis-server"),
        };
        // Another process may take a port between `free_port` and the server binding it:
        // a whole new topology is tried a few times for that reason.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(&binary, tls.clone()) {
                Ok(topology) => return Some(topology),
                Err(err) => last_err = Some(err),
            }
        }
        panic!("the redis sentinel topology did not start: {last_err:?}");
    }

    /// The topology shared by the tests of this test binary that do not harm it, started
    /// by the first call; `None` if the binary is missing outside CI.
    ///
    /// # Panics
    ///
    /// As [`RedisSentinel::start`].
    pub fn shared() -> Option<&'static RedisSentinel> {
        static TOPOLOGY: OnceLock<Option<RedisSentinel>> = OnceLock::new();
        TOPOLOGY.get_or_init(RedisSentinel::start).as_ref()
    }

    fn try_start(binary: &Path, tls: Option<Tls>) -> io::Result<Self> {
        let dir = TempDir::new("redis-sentinel")?;
        let cuts = Arc::new(Cuts::default());
        let mut servers = Vec::with_capacity(SERVERS);
        let mut proxies = Vec::with_capacity(SERVERS);
        let tls_port = || tls.is_some().then(free_port);
        for index in 0..SERVERS {
            let port = free_port();
            let tls_port = tls_port();
            proxies.push(ServerProxy::start(&cuts, index, tls_port.unwrap_or(port))?);
            servers.push(Server {
                port,
                tls_port,
                process: None,
            });
        }
        let sentinels = (0..SENTINELS)
            .map(|_| Sentinel {
                port: free_port(),
                tls_port: tls_port(),
                process: None,
            })
            .collect();
        let mut topology = Self {
            binary: binary.to_owned(),
            tls,
            servers,
            sentinels,
            cuts,
            proxies,
            paused: Mutex::new(None),
            isolated: Mutex::new(None),
            dir,
        };
        for index in 0..SERVERS {
            topology.spawn_server(index, (index != 0).then_some(0))?;
        }
        // Sentinels learn the replicas from the master's `INFO`, sent on connecting and
        // then every 10 s: start them once the replicas are attached, so that the first
        // one lists them.
        topology.wait_until("the replicas to sync", || topology.replicas_online(0) == 2)?;
        for index in 0..SENTINELS {
            topology.spawn_sentinel(index)?;
        }
        topology.wait_until("the sentinels to agree", || topology.sentinels_agree(0))?;
        Ok(topology)
    }

    /// The sentinels' ports, by sentinel index.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `redis+sentinel://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/<master name>`, the form
    /// the Redis backend takes; with TLS `rediss+sentinel://` and the sentinels' TLS
    /// ports (the client's TLS files are the caller's to add).
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.tls_port.unwrap_or(s.port)))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://{}/{MASTER_NAME}", sentinels.join(","))
    }

    /// The port through which server `i` is reached (its proxy's, which it announces and
    /// which the sentinels report).
    pub fn server_port(&self, i: usize) -> u16 {
        self.proxies[i].port()
    }

    /// The number of servers (3).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there is no server (never).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The master as the sentinels see it: of the sentinels that answer, the address
    /// named with the highest `config-epoch` (the newest configuration), as a server
    /// index. `None` if no sentinel answers or none names a server of the topology.
    pub fn try_master_index(&self) -> Option<usize> {
        self.sentinels
            .iter()
            .filter_map(|s| master_of(s.port).ok())
            .max_by_key(|(_, epoch)| *epoch)
            .and_then(|(port, _)| self.proxies.iter().position(|p| p.port() == port))
    }

    /// [`try_master_index`](Self::try_master_index), which must answer.
    ///
    /// # Panics
    ///
    /// If no sentinel names a master.
    pub fn master_index(&self) -> usize {
        self.try_master_index()
            .unwrap_or_else(|| panic!("no sentinel names a master of the topology"))
    }

    /// The port of the master the sentinels name (see [`server_port`](Self::server_port)).
    pub fn master_port(&self) -> u16 {
        self.server_port(self.master_index())
    }

    /// The sentinels' `config-epoch` of the master: it grows with every failover.
    pub fn config_epoch(&self) -> Option<u64> {
        self.sentinels
            .iter()
            .filter_map(|s| master_of(s.port).ok())
            .map(|(_, epoch)| epoch)
            .max()
    }

    /// Server `i`'s process, to signal it; `None` while it is killed.
    pub fn process(&self, i: usize) -> Option<&ServerProcess> {
        self.servers[i].process.as_ref()
    }

    /// Kills the master with `SIGKILL` and returns its index. Its data is lost
    /// (persistence is off); the sentinels fail over after [`SENTINEL_DOWN_AFTER`].
    pub fn kill_master(&mut self) -> usize {
        let master = self.master_index();
        self.kill(master);
        master
    }

    /// Kills server `i` with `SIGKILL`.
    pub fn kill(&mut self, i: usize) {
        drop(self.servers[i].process.take());
    }

    /// Starts server `i` again (after a kill) on the same port as a replica of the
    /// current master, and waits until it is in sync and the sentinels list it as a
    /// replica again.
    ///
    /// # Panics
    ///
    /// If it runs already, or does not come back.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.servers[i].process.is_none(),
            "redis server {i} runs already"
        );
        let master = self.master_index();
        assert_ne!(master, i, "server {i} is still the sentinels' master");
        let port = self.proxies[i].port();
        let started = self.spawn_server(i, Some(master)).and_then(|()| {
            self.wait_until("the restarted server to sync", || {
                self.online_replica_ports(master).contains(&port)
            })
        });
        started.unwrap_or_else(|err| panic!("redis server {i} did not come back: {err}"));
    }

    /// Pauses the master with `SIGSTOP` and returns its index: it keeps its sockets but
    /// answers nothing, to clients, replicas or sentinels.
    pub fn pause_master(&self) -> usize {
        let master = self.master_index();
        if let Some(process) = self.process(master) {
            process
                .pause()
                .unwrap_or_else(|err| panic!("pausing redis server {master}: {err}"));
        }
        *lock(&self.paused) = Some(master);
        master
    }

    /// Resumes the server [`pause_master`](Self::pause_master) paused. The sentinels then
    /// turn it into a replica if they failed over meanwhile.
    pub fn resume_master(&self) {
        if let Some(paused) = lock(&self.paused).take()
            && let Some(process) = self.process(paused)
        {
            process
                .resume()
                .unwrap_or_else(|err| panic!("resuming redis server {paused}: {err}"));
        }
    }

    /// Cuts the master off from the sentinels, as a partition (its sentinel connections
    /// are held, neither closed nor refused), and returns its index. Clients and
    /// replicas still reach it: it keeps acting as a master until the cut heals and the
    /// sentinels demote it.
    pub fn isolate_master_from_sentinels(&self) -> usize {
        self.refuse_cuts_with_tls();
        let master = self.master_index();
        self.cuts.set(master, Kind::Sentinel, true);
        *lock(&self.isolated) = Some(master);
        master
    }

    /// Holds the replication links to the master (both directions), so that what it
    /// acknowledges reaches no replica and `WAIT` confirms nothing; returns its index.
    pub fn pause_replication(&self) -> usize {
        self.refuse_cuts_with_tls();
        let master = self.master_index();
        self.cuts.set(master, Kind::Replica, true);
        master
    }

    /// Restores every cut: the sentinels' links and the replication links of every
    /// server.
    pub fn heal(&self) {
        lock(&self.isolated).take();
        for index in 0..self.servers.len() {
            self.cuts.heal(index);
        }
    }

    /// Waits until the sentinels name a master other than `old_master` and that server
    /// says it is a master, and returns its index.
    ///
    /// # Panics
    ///
    /// If that does not happen within 30 s.
    pub fn wait_for_failover(&self, old_master: usize) -> usize {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(master) = self.try_master_index().filter(|&m| m != old_master)
                && is_master(self.servers[master].port)
            {
                return master;
            }
            assert!(
                Instant::now() < deadline,
                "no failover away from redis server {old_master} within {READY_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many replicas the master at index `master` reports in sync (`state=online`).
    pub fn replicas_online(&self, master: usize) -> usize {
        self.online_replica_ports(master).len()
    }

    /// The announced ports of the replicas server `master` reports in sync.
    fn online_replica_ports(&self, master: usize) -> Vec<u16> {
        let Ok(Reply::Bulk(Some(info))) =
            resp::command(self.servers[master].port, &["INFO", "replication"])
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
            .collect()
    }

    /// Whether every sentinel names server `master` as the master, sees it up, and knows
    /// both replicas and the two other sentinels.
    fn sentinels_agree(&self, master: usize) -> bool {
        let want = self.proxies[master].port().to_string();
        self.sentinels.iter().all(|s| {
            let Ok(reply) = resp::command(s.port, &["SENTINEL", "MASTER", MASTER_NAME]) else {
                return false;
            };
            let fields = reply.fields();
            let field = |name: &str| fields.get(name).map(String::as_str);
            field("port") == Some(&want)
                && field("flags") == Some("master")
                && field("num-slaves") == Some("2")
                && field("num-other-sentinels") == Some("2")
        })
    }

    /// The proxies tell connections apart by their first bytes, which TLS encrypts.
    fn refuse_cuts_with_tls(&self) {
        assert!(
            self.tls.is_none(),
            "a TLS topology's proxies cannot tell sentinel and replication connections \
             from clients': cuts are not available"
        );
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

    fn spawn_server(&mut self, i: usize, replica_of: Option<usize>) -> io::Result<()> {
        let dir = self.dir.path().join(format!("server-{i}"));
        std::fs::create_dir_all(&dir)?;
        let port = self.servers[i].port;
        let mut args = throwaway_args(port, &dir);
        args.extend([
            "--replica-announce-ip".to_owned(),
            "127.0.0.1".to_owned(),
            "--replica-announce-port".to_owned(),
            self.proxies[i].port().to_string(),
            // Redis 7 waits 5 s for more replicas before a diskless full sync.
            "--repl-diskless-sync-delay".to_owned(),
            "0".to_owned(),
        ]);
        if let (Some(tls), Some(tls_port)) = (&self.tls, self.servers[i].tls_port) {
            for (name, value) in tls.settings(tls_port) {
                args.extend([format!("--{name}"), value]);
            }
        }
        if let Some(master) = replica_of {
            args.extend([
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                self.proxies[master].port().to_string(),
            ]);
        }
        let log = self.dir.path().join(format!("server-{i}.log"));
        let process = ServerProcess::spawn("redis-server", &self.binary, &args, &log)?;
        self.servers[i].process = Some(process);
        wait_for_port(port, Duration::from_secs(10))
    }

    fn spawn_sentinel(&mut self, i: usize) -> io::Result<()> {
        let dir = self.dir.path().join(format!("sentinel-{i}"));
        std::fs::create_dir_all(&dir)?;
        let port = self.sentinels[i].port;
        // A sentinel rewrites its configuration file as it learns: it must have one.
        let config = dir.join("sentinel.conf");
        let master = self.proxies[0].port();
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                 sentinel failover-timeout {MASTER_NAME} {failover}\n\
                 sentinel parallel-syncs {MASTER_NAME} {replicas}\n",
                dir = dir.display(),
                down = SENTINEL_DOWN_AFTER.as_millis(),
                failover = FAILOVER_TIMEOUT.as_millis(),
                replicas = SERVERS - 1,
            ),
        )?;
        if let (Some(tls), Some(tls_port)) = (&self.tls, self.sentinels[i].tls_port) {
            let mut text = std::fs::read_to_string(&config)?;
            for (name, value) in tls.settings(tls_port) {
                text.push_str(&format!("{name} {value}\n"));
            }
            std::fs::write(&config, text)?;
        }
        let args = vec![config.display().to_string(), "--sentinel".to_owned()];
        let log = self.dir.path().join(format!("sentinel-{i}.log"));
        let process = ServerProcess::spawn("redis-sentinel", &self.binary, &args, &log)?;
        self.sentinels[i].process = Some(process);
        wait_for_port(port, Duration::from_secs(10))
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            drop(sentinel.process.take());
        }
        for server in &mut self.servers {
            drop(server.process.take());
        }
        self.cuts.stop();
        for proxy in &self.proxies {
            proxy.wake();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the sentinel on `port` says of the master: its port and `config-epoch`.
fn master_of(port: u16) -> io::Result<(u16, u64)> {
    let fields = resp::command(port, &["SENTINEL", "MASTER", MASTER_NAME])?.fields();
    let parse = |name: &str| {
        fields
            .get(name)
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("sentinel on {port} gave no `{name}`")))
    };
    let master_port = u16::try_from(parse("port")?).map_err(io::Error::other)?;
    Ok((master_port, parse("config-epoch")?))
}

/// Whether the server on `port` (its own, not its proxy's) says it is a master.
fn is_master(port: u16) -> bool {
    match resp::command(port, &["ROLE"]) {
        Ok(Reply::Array(Some(items))) => items.first().and_then(Reply::text) == Some("master"),
        _ => false,
    }
}
