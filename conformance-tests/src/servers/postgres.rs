//! A throwaway PostgreSQL server: `initdb` into a temp dir, `postgres` on a random port.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{ServerProcess, TempDir, free_port, missing};

/// The OS user that owns the cluster when the tests run as root: `initdb` and `postgres`
/// refuse to run as root.
const OS_USER: &str = "postgres";

/// A PostgreSQL server on a random loopback port, with its cluster in a temp dir, durability
/// off (`fsync=off`; [`start_durable`](Self::start_durable) keeps it on), trust
/// authentication for the `postgres` superuser and SCRAM password authentication for every
/// other role over TCP.
///
/// Binaries are looked up in `$ROUTINE_TEST_PG_BINDIR`, on `PATH`, then in
/// `/usr/lib/postgresql/<version>/bin` (newest first). When the tests run as root the
/// cluster is owned by and the server runs as the `postgres` OS user (through `setpriv`,
/// which execs, so the supervised pid is the postmaster itself).
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::PostgresServer;
///
/// let Some(server) = PostgresServer::start() else { return }; // skipped outside CI
/// println!("{}", server.url());
/// let one = server.psql("SELECT 1");
/// assert_eq!(one, "1");
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    bindir: PathBuf,
    port: u16,
    as_os_user: bool,
    /// Whether the server runs with PostgreSQL's default durability (`fsync=on`,
    /// `full_page_writes=on`) rather than with it off.
    durable: bool,
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl PostgresServer {
    /// Initialises a cluster and starts a server, or returns `None` if the PostgreSQL
    /// binaries are missing outside CI.
    ///
    /// # Panics
    ///
    /// If the binaries are missing under CI, or the server does not come up.
    pub fn start() -> Option<Self> {
        Self::start_with("initdb", Self::init)
    }

    /// Like [`start`](Self::start), but with PostgreSQL's default durability (`fsync`,
    /// `full_page_writes` and `synchronous_commit` all `on`): for tests and benchmarks of
    /// what a commit costs, or of what survives a crash, on a server as users run it.
    ///
    /// # Panics
    ///
    /// As for [`start`](Self::start).
    pub fn start_durable() -> Option<Self> {
        Self::start_configured("initdb", Self::init, true)
    }

    /// Like [`start`](Self::start), with `prepare` (named `what` in the panic message) in
    /// place of `initdb`: it must fill [`data_dir`](Self::data_dir), which is in a temp
    /// dir owned by the cluster's OS user.
    pub(crate) fn start_with(
        what: &str,
        prepare: impl FnOnce(&Self) -> io::Result<()>,
    ) -> Option<Self> {
        Self::start_configured(what, prepare, false)
    }

    /// [`start_with`](Self::start_with), with durability on or off.
    fn start_configured(
        what: &str,
        prepare: impl FnOnce(&Self) -> io::Result<()>,
        durable: bool,
    ) -> Option<Self> {
        let Some(bindir) = find_bindir() else {
            return missing(
                "postgres",
                "apt-get install postgresql, or set ROUTINE_TEST_PG_BINDIR",
            );
        };
        let as_os_user = running_as_root();
        let dir = TempDir::new("postgres").unwrap_or_else(|err| panic!("temp dir: {err}"));
        let mut server = Self {
            bindir,
            port: free_port(),
            as_os_user,
            durable,
            process: None,
            dir,
        };
        if server.as_os_user {
            run(Command::new("chown")
                .arg(format!("{OS_USER}:"))
                .arg(server.dir.path()))
            .unwrap_or_else(|err| panic!("chown of the temp dir failed: {err}"));
        }
        prepare(&server).unwrap_or_else(|err| panic!("{what} failed: {err}"));
        server
            .spawn()
            .unwrap_or_else(|err| panic!("postgres did not start: {err}"));
        Some(server)
    }

    /// The cluster's data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `program args...` as the cluster's OS user.
    fn command(&self, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
        if !self.as_os_user {
            return (program.to_owned(), args.to_vec());
        }
        let mut wrapped = vec![
            format!("--reuid={OS_USER}"),
            format!("--regid={OS_USER}"),
            "--init-groups".to_owned(),
            "--".to_owned(),
            program.display().to_string(),
        ];
        wrapped.extend_from_slice(args);
        (PathBuf::from("setpriv"), wrapped)
    }

    /// Runs the PostgreSQL program `name` (of the server's directory of PostgreSQL binaries) with `args` as the
    /// cluster's OS user, and waits for it to succeed.
    pub(crate) fn run_tool(&self, name: &str, args: &[&str]) -> io::Result<()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (program, args) = self.command(&self.bindir.join(name), &args);
        run(Command::new(program).args(args))
    }

    /// `initdb` into [`data_dir`](Self::data_dir): superuser `postgres`, `trust`
    /// authentication until `pg_hba.conf` says otherwise, UTF-8, C locale.
    pub(crate) fn initdb(&self) -> io::Result<()> {
        let data = self.data_dir().display().to_string();
        self.run_tool(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
    }

    fn init(&self) -> io::Result<()> {
        self.initdb()?;
        // The superuser needs no password (tests use it to set things up and inspect);
        // every other role must authenticate, so wrong-password tests mean something.
        std::fs::write(
            self.data_dir().join("pg_hba.conf"),
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = self.dir.path().join("postgres.log");
        let log_len_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut args: Vec<String> = vec![
            "-D".into(),
            self.data_dir().display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-k".into(),
            self.dir.path().display().to_string(),
        ];
        let durability: &[&str] = if self.durable {
            &[]
        } else {
            &["fsync=off", "full_page_writes=off"]
        };
        for setting in [
            "listen_addresses=127.0.0.1",
            "max_connections=200",
            "shared_buffers=32MB",
        ]
        .iter()
        .chain(durability)
        {
            args.push("-c".into());
            args.push((*setting).into());
        }
        let (program, args) = self.command(&self.bindir.join("postgres"), &args);
        self.process = Some(ServerProcess::spawn("postgres", &program, &args, &log)?);
        self.wait_ready(&log, log_len_before, Duration::from_secs(30))
    }

    /// Waits for the startup message in the log: the port opens before crash recovery ends,
    /// and connections before that are refused with "the database system is starting up".
    fn wait_ready(&self, log: &Path, skip: u64, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read(log).unwrap_or_default();
            let start = usize::try_from(skip).unwrap_or(usize::MAX).min(text.len());
            let new = String::from_utf8_lossy(&text[start..]);
            // A standby says "ready to accept read-only connections".
            if new.contains("database system is ready to accept connections")
                || new.contains("database system is ready to accept read-only connections")
            {
                return Ok(());
            }
            let alive = self.process.as_ref().is_some_and(ServerProcess::is_alive);
            if !alive || Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "postgres not ready (alive: {alive}); log:\n{new}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser, no password needed.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL for `user` with `password` on `database`.
    pub fn url_for(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Runs `sql` as the superuser with `psql` and returns its unaligned, tuples-only output
    /// (trimmed).
    ///
    /// # Panics
    ///
    /// If `psql` fails or the SQL raises an error.
    pub fn psql(&self, sql: &str) -> String {
        let output = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("psql did not run: {err}"));
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Creates a login role with `password` that may create tables and schemas in the
    /// `postgres` database, and returns a URL for it.
    pub fn create_role_with_password(&self, name: &str, password: &str) -> String {
        self.psql(&format!(
            "CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}';\n\
             GRANT CREATE ON SCHEMA public TO \"{name}\";\n\
             GRANT CREATE ON DATABASE postgres TO \"{name}\";"
        ));
        self.url_for(name, password, "postgres")
    }

    /// Creates a login role with `password` that may not create anything (no CREATE on the
    /// database or on schema `public`, revoked from `PUBLIC` too for PostgreSQL before 15),
    /// and returns a URL for it.
    pub fn create_role_without_create(&self, name: &str, password: &str) -> String {
        self.psql(&format!(
            "CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}';\n\
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n\
             REVOKE CREATE ON DATABASE postgres FROM PUBLIC;"
        ));
        self.url_for(name, password, "postgres")
    }

    /// The postmaster process, to signal it. To pause the whole server use
    /// [`PostgresServer::pause`]: stopping the postmaster alone leaves its backends serving.
    pub fn process(&self) -> &ServerProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("postgres is not running"))
    }

    /// The postmaster's pid, unless it was killed.
    pub(crate) fn running_pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// The postmaster and every process it started (backends, checkpointer, ...).
    fn all_pids(&self) -> Vec<u32> {
        let Some(process) = &self.process else {
            return Vec::new();
        };
        let postmaster = process.pid();
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        pids
    }

    /// Pauses the whole server with `SIGSTOP`: the postmaster and all its children keep
    /// their sockets but answer nothing, and new connections hang in the handshake.
    pub fn pause(&self) {
        // The postmaster first, so it starts no child between listing and stopping.
        if let Some(process) = &self.process {
            signal(&[process.pid()], "STOP");
        }
        signal(&self.all_pids(), "STOP");
    }

    /// Resumes a server paused with [`PostgresServer::pause`].
    pub fn resume(&self) {
        signal(&self.all_pids(), "CONT");
    }

    /// Kills the postmaster and all its children with `SIGKILL` and waits until they are
    /// gone (a crash: the data stays, the next start runs crash recovery).
    pub fn kill(&mut self) {
        let pids = self.all_pids();
        // The postmaster first (through the supervisor, which reaps it), so it starts no
        // new child; then the children it leaves behind.
        // (Dropping the `ServerProcess` kills and reaps; calling `kill` first would make
        // its `Drop` signal a dead pid.)
        drop(self.process.take());
        let children = &pids[pids.len().min(1)..];
        signal(children, "CONT");
        signal(children, "KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|&pid| is_running(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (see [`PostgresServer::kill`]) and starts it again on the same port
    /// and data; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|err| panic!("postgres did not restart: {err}"));
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ROUTINE_TEST_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|dir| dir.join("initdb").is_file())
        .collect();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    candidates.into_iter().find(|dir| {
        ["initdb", "postgres", "psql"]
            .iter()
            .all(|bin| dir.join(bin).is_file())
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs `command` to its end; an error with its output if it fails.
pub(crate) fn run(command: &mut Command) -> io::Result<()> {
    let output = command.stdin(Stdio::null()).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// The direct children of `parent`, from `/proc/<pid>/stat` (field 4 is the parent pid;
/// field 2, the command name, is in parentheses and may contain spaces).
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 1..];
            let ppid = after_name.split_whitespace().nth(1)?.parse::<u32>().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Sends `signal` (`STOP`, `KILL`...) to `pids`; gone processes are skipped.
pub(crate) fn signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    // Errors are expected for processes that exited in between.
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}
