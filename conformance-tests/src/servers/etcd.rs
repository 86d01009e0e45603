//! A throwaway single-member `etcd` cluster.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::process::{ServerProcess, TempDir, find_binary, free_port, missing, wait_for_port};

/// An `etcd` member on random loopback client and peer ports, with its data directory in a
/// temp dir, so that it can be killed and restarted with its data kept or wiped.
///
/// It runs with etcd's default timing (100 ms heartbeat, 1 s election timeout), which
/// gives the default minimum lease TTL of 2 s.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::EtcdServer;
///
/// let Some(server) = EtcdServer::start() else { return }; // skipped outside CI
/// println!("{}", server.endpoint());
/// ```
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// TLS arguments (see `servers::tls`): with them the client URL is `https://` and
    /// health is checked on a plaintext metrics port, `metrics_port`.
    tls_args: Option<Vec<String>>,
    metrics_port: u16,
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl EtcdServer {
    /// Starts a server, or returns `None` if `etcd` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the server does not become healthy.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Like [`EtcdServer::start`], serving clients over TLS when `tls_args` (certificate
    /// files and the like) are given.
    pub(crate) fn start_with(tls_args: Option<Vec<String>>) -> Option<Self> {
        let binary = match find_binary("etcd", &["/usr/local/bin", "/opt/etcd"]) {
            Some(binary) => binary,
            None => return missing("etcd", "apt-get install etcd-server"),
        };
        // Another process may grab a port between `free_port` and etcd binding it; a
        // fresh pair of ports is tried a few times for that reason.
        let mut last_err = None;
        for _ in 0..3 {
            let mut server = Self {
                binary: binary.clone(),
                client_port: free_port(),
                peer_port: free_port(),
                tls_args: tls_args.clone(),
                metrics_port: free_port(),
                process: None,
                dir: TempDir::new("etcd").unwrap_or_else(|err| panic!("temp dir: {err}")),
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(err) => last_err = Some(err),
            }
        }
        panic!("etcd did not start: {last_err:?}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) -> io::Result<()> {
        let scheme = if self.tls_args.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args = MemberArgs {
            name: "routine-test",
            data_dir: &self.data_dir(),
            client_url: &client,
            listen_peer_url: &peer,
            advertise_peer_url: &peer,
            initial_cluster: &format!("routine-test={peer}"),
            token: &format!("routine-test-{}", self.client_port),
        }
        .to_args();
        let mut health_port = self.client_port;
        if let Some(tls_args) = &self.tls_args {
            args.extend(tls_args.iter().cloned());
            args.push("--listen-metrics-urls".into());
            args.push(format!("http://127.0.0.1:{}", self.metrics_port));
            health_port = self.metrics_port;
        }
        let log = self.dir.path().join("etcd.log");
        self.process = Some(ServerProcess::spawn("etcd", &self.binary, &args, &log)?);
        wait_for_port(self.client_port, Duration::from_secs(10))?;
        wait_for_health(health_port, Duration::from_secs(20)).map_err(|err| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            io::Error::new(err.kind(), format!("{err}; etcd log:\n{log}"))
        })
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// `127.0.0.1:<client port>`, the form `etcd-client` and `ROUTINE_ETCD_ENDPOINTS` take.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:<client port>`, for `ROUTINE_BACKEND_URL`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// The process, to pause, resume or signal it.
    pub fn process(&self) -> &ServerProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("etcd is not running"))
    }

    /// Kills the server with `SIGKILL` and waits until it is gone. Its data directory
    /// is kept.
    pub fn kill(&mut self) {
        // Dropping the process kills and reaps it.
        drop(self.process.take());
    }

    /// Starts the server again on the same ports with the data it had: keys and leases
    /// survive (etcd renews every lease to its full TTL when a leader takes over).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|err| panic!("etcd did not restart: {err}"));
    }

    /// Starts the server again on the same ports with an empty data directory: every key
    /// and lease is gone and revisions start over.
    pub fn restart_wiped(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.spawn()
            .unwrap_or_else(|err| panic!("etcd did not restart wiped: {err}"));
    }
}

/// How an etcd member of a throwaway cluster is started: what [`EtcdServer`] and
/// [`EtcdCluster`](super::EtcdCluster) members share.
pub(super) struct MemberArgs<'a> {
    /// `--name`.
    pub(super) name: &'a str,
    /// `--data-dir`.
    pub(super) data_dir: &'a Path,
    /// The client URL it listens on and advertises.
    pub(super) client_url: &'a str,
    /// The peer URL it listens on.
    pub(super) listen_peer_url: &'a str,
    /// The peer URL it advertises.
    pub(super) advertise_peer_url: &'a str,
    /// `--initial-cluster`: `name=peer URL` of every member, comma separated.
    pub(super) initial_cluster: &'a str,
    /// `--initial-cluster-token`.
    pub(super) token: &'a str,
}

impl MemberArgs<'_> {
    /// The command line: a new cluster (ignored once the data directory exists, on a
    /// restart), logging warnings only.
    pub(super) fn to_args(&self) -> Vec<String> {
        [
            "--name",
            self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.listen_peer_url,
            "--initial-advertise-peer-urls",
            self.advertise_peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self.token,
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Waits until etcd's `/health` endpoint on the client port says it is healthy (it has a
/// leader and serves requests), which happens some time after the port opens.
fn wait_for_health(port: u16, timeout: Duration) -> io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match health(addr) {
            Ok(body) if body.contains("\"health\":\"true\"") => return Ok(()),
            Ok(body) => last = body,
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("etcd on {addr} not healthy after {timeout:?}: {last}"),
    ))
}

fn health(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
