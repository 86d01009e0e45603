//! A throwaway `redis-server`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{ServerProcess, TempDir, find_binary, free_port, missing, wait_for_port};

/// A `redis-server` on a random loopback port with its own temp dir, persistence off.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::RedisServer;
///
/// let Some(server) = RedisServer::start() else { return }; // skipped outside CI
/// println!("{}", server.url());
/// ```
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    password: Option<String>,
    /// TLS arguments (see `servers::tls`): with them the port is the TLS port and the
    /// plaintext port is off.
    tls_args: Option<Vec<String>>,
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server, or returns `None` if `redis-server` is missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binary is missing under CI, or the server does not come up.
    pub fn start() -> Option<Self> {
        Self::start_with_password(None)
    }

    /// Like [`RedisServer::start`], with `requirepass` set.
    pub fn start_with_password(password: Option<&str>) -> Option<Self> {
        Self::start_with(password, None)
    }

    /// Like [`RedisServer::start_with_password`], serving TLS only on its port when
    /// `tls_args` (certificate files and the like) are given.
    pub(crate) fn start_with(
        password: Option<&str>,
        tls_args: Option<Vec<String>>,
    ) -> Option<Self> {
        let binary = match find_binary("redis-server", &[]) {
            Some(binary) => binary,
            None => return missing("redis-server", "apt-get install redis-server"),
        };
        let mut server = Self {
            binary,
            port: free_port(),
            password: password.map(str::to_owned),
            tls_args,
            process: None,
            dir: TempDir::new("redis").unwrap_or_else(|err| panic!("temp dir: {err}")),
        };
        server
            .spawn()
            .unwrap_or_else(|err| panic!("redis-server did not start: {err}"));
        Some(server)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut args = throwaway_args(self.port, self.dir.path());
        if let Some(password) = &self.password {
            args.push("--requirepass".into());
            args.push(password.clone());
        }
        if let Some(tls_args) = &self.tls_args {
            // A later `--port` wins over the one above.
            args.extend(["--port".into(), "0".into(), "--tls-port".into()]);
            args.push(self.port.to_string());
            args.extend(tls_args.iter().cloned());
        }
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

    /// `redis://127.0.0.1:<port>` (with the password, if any).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The process, to pause, resume or signal it.
    pub fn process(&self) -> &ServerProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("redis-server is not running"))
    }

    /// Kills the server with `SIGKILL` (its data is lost: persistence is off).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|err| panic!("redis-server did not restart: {err}"));
    }
}

/// The arguments of a throwaway `redis-server` on loopback port `port`, persistence off,
/// working in `dir`.
pub(super) fn throwaway_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
