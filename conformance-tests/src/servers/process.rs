//! Child-process plumbing shared by the throwaway servers.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether a missing server binary must fail the test rather than skip it: true under CI
/// (`CI=true`) or with `ROUTINE_TEST_REQUIRE_SERVICES=1`.
pub fn require_services() -> bool {
    let set = |var: &str, want: &[&str]| {
        std::env::var(var).is_ok_and(|v| want.contains(&v.trim().to_ascii_lowercase().as_str()))
    };
    set("CI", &["true", "1"]) || set("ROUTINE_TEST_REQUIRE_SERVICES", &["1", "true"])
}

/// Finds an executable named `name` on `PATH` or in one of `extra_dirs`.
pub fn find_binary(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Reports a missing binary: panics when services are required, otherwise prints a skip
/// notice and returns `None`.
pub(crate) fn missing<T>(binary: &str, install_hint: &str) -> Option<T> {
    if require_services() {
        panic!("`{binary}` not found but services are required (CI): {install_hint}");
    }
    eprintln!("skipping: `{binary}` not found ({install_hint})");
    None
}

/// A free TCP port on 127.0.0.1, as reported by the kernel. Another process may take it
/// before the server binds it; servers are started with retries for that reason.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("no free loopback port: {err}"))
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing listens on {addr} after {timeout:?}: {err}"),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir, named after `label`, after
    /// removing the directories of `label` that test processes now gone left behind.
    pub fn new(label: &str) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        remove_stale(&std::env::temp_dir(), label);
        let dir = std::env::temp_dir().join(format!(
            "leasehold-{label}-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Removes the directories `leasehold-<label>-<pid>-*` (and `routine-<label>-<pid>-*`, as
/// earlier versions named them) under `parent` whose process is gone. A server kept in a
/// `static` for a whole test binary ([`RedisServer::shared`](super::RedisServer::shared)
/// and the like) is never dropped, so its directory outlives the process (an etcd data
/// directory preallocates 128 MB); the next start of a server of that kind cleans it up.
fn remove_stale(parent: &Path, label: &str) {
    // Without /proc nothing tells a live process from a dead one.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefixes = [format!("leasehold-{label}-"), format!("routine-{label}-")];
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| prefixes.iter().find_map(|prefix| name.strip_prefix(prefix)))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server child process that dies with the test process.
///
/// The server is started by `sh` as a supervisor that reports the server's pid, then waits
/// on its standard input; when the test process exits (or is killed) that pipe closes and
/// the supervisor kills the server. Dropping a `ServerProcess` kills the server at once.
#[derive(Debug)]
pub struct ServerProcess {
    supervisor: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    label: String,
}

impl ServerProcess {
    /// Starts `program args...` with its output appended to `log`.
    pub fn spawn(label: &str, program: &Path, args: &[String], log: &Path) -> io::Result<Self> {
        // `$0` is the log file, `$@` the server command line; the supervisor prints the
        // server's pid, then kills it (and its process group, for pg_ctl-style wrappers)
        // when its stdin reaches EOF.
        let script = r#"log="$0"; "$@" >>"$log" 2>&1 & srv=$!; echo "$srv"; read -r _; kill -9 "$srv" 2>/dev/null; wait "$srv" 2>/dev/null"#;
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = supervisor
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("supervisor has no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid = line.trim().parse::<u32>().map_err(|err| {
            io::Error::other(format!(
                "supervisor printed {line:?} instead of a pid: {err}"
            ))
        })?;
        Ok(Self {
            stdin: supervisor.stdin.take(),
            supervisor,
            pid,
            label: label.to_owned(),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (a name such as `STOP`, `CONT`, `TERM`, `KILL`) to the server.
    pub fn signal(&self, signal: &str) -> io::Result<()> {
        // A server that already exited is not worth a line on stderr: the status says it.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "kill -{signal} {} ({}) failed: {status}",
                self.pid, self.label
            )))
        }
    }

    /// Pauses the server with `SIGSTOP`: it keeps its sockets but answers nothing.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("STOP")
    }

    /// Resumes a paused server with `SIGCONT`.
    pub fn resume(&self) -> io::Result<()> {
        self.signal("CONT")
    }

    /// Kills the server with `SIGKILL` and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.signal("KILL");
        self.reap();
    }

    /// Whether the server process is still alive.
    pub fn is_alive(&self) -> bool {
        Command::new("kill")
            .arg("-0")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn reap(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.supervisor.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data directory of a shared server outlives its test binary; the next server of
    /// that kind removes it, and leaves the directories of live processes alone.
    #[test]
    fn directories_of_gone_processes_are_removed_and_live_ones_kept() {
        let parent = TempDir::new("sweep-parent").unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let stale = parent.path().join(format!("leasehold-etcd-{gone}-0-1"));
        let older = parent.path().join(format!("routine-etcd-{gone}-0-2"));
        let ours = parent.path().join(format!("leasehold-etcd-{live}-0-3"));
        let other_kind = parent.path().join(format!("leasehold-redis-{gone}-0-4"));
        for dir in [&stale, &older, &ours, &other_kind] {
            std::fs::create_dir_all(dir).unwrap();
        }
        remove_stale(parent.path(), "etcd");
        assert!(!stale.exists(), "a gone process's directory is removed");
        assert!(!older.exists(), "also under the name earlier versions used");
        assert!(ours.exists(), "a live process's directory stays");
        assert!(
            other_kind.exists(),
            "only directories of the server kind being started"
        );
    }
}
