//! A throwaway etcd cluster of several members on loopback, whose members can be killed,
//! paused, restarted and cut off from each other.

mod peer_proxy;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_proxy::{Links, PeerProxy};

use super::etcd::MemberArgs;
use super::process::{ServerProcess, TempDir, find_binary, free_port, missing, wait_for_port};

/// How long a member may take to become healthy after it starts.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// An etcd cluster of N members (3 by default) on loopback, each with its own data
/// directory in a temp dir and its own client and peer ports.
///
/// Members run with etcd's default timing, as [`EtcdServer`](super::EtcdServer) does
/// (100 ms heartbeat, 1 s election timeout, so a 2 s minimum lease TTL), under the same
/// supervisor: they die with the test process.
///
/// Each member's *peer* traffic goes through a proxy of the cluster's (each member
/// advertises its proxy's address as its peer URL), which knows which member opened each
/// connection, so that [`isolate`](Self::isolate) cuts a member off from the others in
/// both directions, as a network partition would: held, neither closed nor refused. Client
/// traffic is not proxied: [`client_ports`](Self::client_ports) are the members' own.
///
/// The blocking methods are meant for tests, and may be called from async tests as the
/// other servers' are.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::EtcdCluster;
///
/// let Some(mut cluster) = EtcdCluster::start(3) else { return }; // skipped outside CI
/// println!("{}", cluster.url()); // etcd://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c
/// let leader = cluster.leader().unwrap();
/// cluster.isolate(leader);
/// let new_leader = cluster.wait_for_leader(Some(leader), std::time::Duration::from_secs(10));
/// cluster.heal(leader);
/// cluster.kill(new_leader.unwrap());
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    token: String,
    members: Vec<Member>,
    links: Arc<Links>,
    proxies: Vec<PeerProxy>,
    dir: TempDir,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// etcd's id of the member, learnt once it is up.
    id: Option<u64>,
    process: Option<ServerProcess>,
}

/// What a member says of itself (`/v3/maintenance/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    id: u64,
    leader: u64,
    term: u64,
}

impl EtcdCluster {
    /// Starts a cluster of `members` members and waits until every one is healthy (so a
    /// leader was elected). Returns `None` if `etcd` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If `members` is 0, if the binary is missing under CI, or if the cluster does not
    /// come up.
    pub fn start(members: usize) -> Option<Self> {
        assert!(members > 0, "an etcd cluster needs at least one member");
        let binary = match find_binary("etcd", &["/usr/local/bin", "/opt/etcd"]) {
            Some(binary) => binary,
            None => return missing("etcd", "apt-get install etcd-server"),
        };
        // Another process may take a port between `free_port` and etcd binding it: a
        // whole new cluster is tried a few times for that reason.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(&binary, members) {
                Ok(cluster) => return Some(cluster),
                Err(err) => last_err = Some(err),
            }
        }
        panic!("the etcd cluster did not start: {last_err:?}");
    }

    fn try_start(binary: &std::path::Path, count: usize) -> io::Result<Self> {
        let dir = TempDir::new("etcd-cluster")?;
        let links = Arc::new(Links::default());
        let mut members = Vec::with_capacity(count);
        let mut proxies = Vec::with_capacity(count);
        for index in 0..count {
            let peer_port = free_port();
            proxies.push(PeerProxy::start(&links, index, count, peer_port)?);
            members.push(Member {
                name: format!("member-{index}"),
                client_port: free_port(),
                peer_port,
                id: None,
                process: None,
            });
        }
        let mut cluster = Self {
            binary: binary.to_owned(),
            token: format!("routine-cluster-{}", proxies[0].port()),
            members,
            links,
            proxies,
            dir,
        };
        for index in 0..count {
            cluster.spawn(index)?;
        }
        for index in 0..count {
            cluster.wait_healthy(index, HEALTHY_WITHIN)?;
        }
        for index in 0..count {
            cluster.learn_id(index)?;
        }
        Ok(cluster)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never: [`start`](Self::start) refuses that).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's client port, by member index.
    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    /// Each member's client endpoint, `127.0.0.1:<client port>`, by member index: the
    /// form `etcd-client`, `with_endpoints` and `ROUTINE_ETCD_ENDPOINTS` take.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports()
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `etcd://127.0.0.1:a,127.0.0.1:b,...` with every member's client endpoint, for
    /// `ROUTINE_BACKEND_URL`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The port member `i` advertises as its peer URL: its proxy's.
    pub fn peer_proxy_port(&self, i: usize) -> u16 {
        self.proxies[i].port()
    }

    /// Member `i`'s etcd id (as `etcdctl member list` shows it, in hex).
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i]
            .id
            .unwrap_or_else(|| panic!("etcd member {i} has no known id"))
    }

    /// Member `i`'s process, to signal it; `None` while it is killed.
    pub fn process(&self, i: usize) -> Option<&ServerProcess> {
        self.members[i].process.as_ref()
    }

    /// Whether member `i`'s process runs (it may be paused or cut off).
    pub fn is_alive(&self, i: usize) -> bool {
        self.members[i]
            .process
            .as_ref()
            .is_some_and(ServerProcess::is_alive)
    }

    /// Whether member `i` answers `/health` with `true` now: it runs, has a leader and
    /// serves requests.
    pub fn is_healthy(&self, i: usize) -> bool {
        healthy(self.members[i].client_port).unwrap_or(false)
    }

    /// The index of the current Raft leader: of the members that answer, the one that
    /// says it leads, in the highest term any of them is in; `None` if no member that
    /// answers leads (during an election, or while the leader is down, paused or cut off
    /// and the others have not yet elected another).
    ///
    /// A leader cut off from the others keeps saying it leads until it steps down (after
    /// an election timeout without hearing from a majority); by then the others may have
    /// elected a new leader in a higher term, which is the one returned.
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<(usize, Status)> = (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .filter_map(|i| status(self.members[i].client_port).ok().map(|s| (i, s)))
            .collect();
        statuses
            .iter()
            .filter(|(_, status)| status.leader != 0 && status.leader == status.id)
            .max_by_key(|(_, status)| status.term)
            .map(|(i, _)| *i)
    }

    /// Waits up to `timeout` for a [`leader`](Self::leader) other than `other_than`.
    pub fn wait_for_leader(&self, other_than: Option<usize>, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().filter(|&l| Some(l) != other_than) {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A member that is not the leader (the first such that runs), for follower faults.
    pub fn follower(&self) -> Option<usize> {
        let leader = self.leader()?;
        (0..self.members.len()).find(|&i| i != leader && self.members[i].process.is_some())
    }

    /// Kills member `i` with `SIGKILL` and waits until it is gone. Its data directory and
    /// ports are kept for [`start_member`](Self::start_member).
    pub fn kill(&mut self, i: usize) {
        // Dropping the process kills and reaps it.
        drop(self.members[i].process.take());
    }

    /// Starts member `i` again (after [`kill`](Self::kill)) on the same ports with its
    /// data, and waits until it is healthy: it rejoined the cluster and knows the leader.
    /// A member that is cut off is only waited for until it listens.
    ///
    /// # Panics
    ///
    /// If the member runs already, or does not come back.
    pub fn start_member(&mut self, i: usize) {
        assert!(
            self.members[i].process.is_none(),
            "etcd member {i} runs already"
        );
        let started = self.spawn(i).and_then(|()| {
            if self.links.is_isolated(i) {
                Ok(())
            } else {
                self.wait_healthy(i, HEALTHY_WITHIN)
            }
        });
        started.unwrap_or_else(|err| panic!("etcd member {i} did not start again: {err}"));
    }

    /// [`kill`](Self::kill), then [`start_member`](Self::start_member).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_member(i);
    }

    /// Pauses member `i` with `SIGSTOP`: it keeps its sockets but answers nothing, to its
    /// clients or to the other members.
    pub fn pause(&self, i: usize) {
        if let Some(process) = &self.members[i].process {
            process
                .pause()
                .unwrap_or_else(|err| panic!("pausing etcd member {i}: {err}"));
        }
    }

    /// Resumes member `i` after [`pause`](Self::pause) with `SIGCONT`.
    pub fn resume(&self, i: usize) {
        if let Some(process) = &self.members[i].process {
            process
                .resume()
                .unwrap_or_else(|err| panic!("resuming etcd member {i}: {err}"));
        }
    }

    /// Cuts member `i`'s peer traffic to and from every other member, as a partition:
    /// its connections are held, neither closed nor refused. Its clients still reach it.
    pub fn isolate(&self, i: usize) {
        self.links.isolate(i, self.members.len());
    }

    /// Restores member `i`'s peer traffic after [`isolate`](Self::isolate).
    pub fn heal(&self, i: usize) {
        self.links.heal(i);
    }

    /// Whether member `i` is cut off by [`isolate`](Self::isolate).
    pub fn is_isolated(&self, i: usize) -> bool {
        self.links.is_isolated(i)
    }

    /// Waits up to `timeout` until member `i` is healthy.
    ///
    /// # Errors
    ///
    /// If it is not by then (the error holds the end of its log), or its process exited.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> io::Result<()> {
        let member = &self.members[i];
        let deadline = Instant::now() + timeout;
        loop {
            let last = match healthy(member.client_port) {
                Ok(true) => return Ok(()),
                Ok(false) => "not healthy".to_owned(),
                Err(err) => err.to_string(),
            };
            let exited = member.process.as_ref().is_none_or(|p| !p.is_alive());
            if exited || Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                let why = if exited { "exited" } else { "timed out" };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd member {i} on port {} not healthy ({why}): {last}; log:\n{tail}",
                        member.client_port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .zip(&self.proxies)
            .map(|(member, proxy)| format!("{}=http://127.0.0.1:{}", member.name, proxy.port()))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let listen_peer = format!("http://127.0.0.1:{}", member.peer_port);
        let advertise_peer = format!("http://127.0.0.1:{}", self.proxies[i].port());
        let mut args = MemberArgs {
            name: &member.name,
            data_dir: &self.data_dir(i),
            client_url: &client,
            listen_peer_url: &listen_peer,
            advertise_peer_url: &advertise_peer,
            initial_cluster: &initial_cluster,
            token: &self.token,
        }
        .to_args();
        // As etcd 3.5 and later do by default: a member that was cut off, and campaigned
        // alone in ever higher terms, rejoins without deposing the leader.
        args.push("--pre-vote".to_owned());
        let process = ServerProcess::spawn("etcd", &self.binary, &args, &self.log(i))?;
        self.links.learn_pid(i, process.pid());
        let port = member.client_port;
        self.members[i].process = Some(process);
        wait_for_port(port, Duration::from_secs(10))
    }

    fn learn_id(&mut self, i: usize) -> io::Result<()> {
        let status = status(self.members[i].client_port)?;
        self.members[i].id = Some(status.id);
        self.links.learn_id(i, status.id);
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            drop(member.process.take());
        }
        self.links.stop();
        for proxy in &self.proxies {
            proxy.wake();
        }
    }
}

/// One HTTP/1.0 request to a member's client port; the response body.
fn http(port: u16, method: &str, path: &str, body: &str) -> io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(io::Error::other(format!(
            "{method} {path} on port {port}: {response}"
        ))),
    }
}

/// Whether the member on `port` says it is healthy (`/health`: it has a leader and
/// serves requests).
fn healthy(port: u16) -> io::Result<bool> {
    match http(port, "GET", "/health", "") {
        Ok(body) => Ok(body.contains("\"health\":\"true\"")),
        // etcd answers 503 when unhealthy.
        Err(err) if err.to_string().contains("\"health\":\"false\"") => Ok(false),
        Err(err) => Err(err),
    }
}

/// The member's own id, its leader and its term, through the JSON gateway.
fn status(port: u16) -> io::Result<Status> {
    let body = http(port, "POST", "/v3/maintenance/status", "{}")?;
    let field = |name: &str| {
        json_u64(&body, name).ok_or_else(|| {
            io::Error::other(format!("status on port {port} has no `{name}`: {body}"))
        })
    };
    Ok(Status {
        id: field("member_id")?,
        // Absent (0) while the member knows no leader.
        leader: json_u64(&body, "leader").unwrap_or(0),
        term: field("raft_term")?,
    })
}

/// The unsigned integer field `name` of a flat search through `json` (the gateway writes
/// 64-bit integers as strings: `"name":"123"`).
fn json_u64(json: &str, name: &str) -> Option<u64> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = json[at..].trim_start().trim_start_matches('"');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_from_the_gateway_json() {
        let body = r#"{"header":{"cluster_id":"1","member_id":"1234","revision":"5","raft_term":"7"},"version":"3.4.23","dbSize":"20480","leader":"99","raftIndex":"8"}"#;
        assert_eq!(json_u64(body, "member_id"), Some(1234));
        assert_eq!(json_u64(body, "leader"), Some(99));
        assert_eq!(json_u64(body, "raft_term"), Some(7));
        assert_eq!(json_u64(body, "missing"), None);
    }
}
