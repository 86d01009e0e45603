//! One container driven through the `docker` command line: started with a published
//! port, waited on until ready, removed when dropped or when the test process exits.

use std::fmt;
use std::io::{self, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::servers::{free_port, require_services};

/// The label every container started here carries (`scripts/container-images stop`
/// removes what a killed test run left behind by it).
pub const LABEL: &str = "leasehold.conformance";

/// The docker network containers start on, and the one [`Container::disconnect_network`]
/// takes them off.
const NETWORK: &str = "bridge";

type Probe = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// A container started from an image with one published port, on `127.0.0.1` and a free
/// port; removed (`docker rm -f`) on drop.
///
/// The container dies with the test process too: a small `sh` supervisor started beside
/// it removes it when the test process's pipe to it closes, even if the process is
/// killed, so containers kept in a `static` for a whole test binary (the servers'
/// `shared()`) do not outlive it.
///
/// # Examples
///
/// A Valkey server (Redis-compatible), ready once it answers `PING`:
///
/// ```no_run
/// use leasehold_conformance::containers::{Container, probe};
///
/// let Some(valkey) = Container::builder("valkey/valkey:8", 6379)
///     .ready_when(probe::redis_ping)
///     .start()
/// else {
///     return; // docker is missing outside CI
/// };
/// println!("redis://127.0.0.1:{}", valkey.port());
/// ```
pub struct Container {
    id: String,
    image: String,
    host_port: u16,
    ready: Probe,
    startup_timeout: Duration,
    supervisor: Option<(Child, ChildStdin)>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("image", &self.image)
            .field("port", &self.host_port)
            .finish_non_exhaustive()
    }
}

/// How to start a [`Container`]: its image, port, command line, environment and
/// readiness check. Made by [`Container::builder`].
#[must_use]
pub struct ContainerBuilder {
    image: String,
    port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready: Probe,
    startup_timeout: Duration,
}

impl fmt::Debug for ContainerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerBuilder")
            .field("image", &self.image)
            .field("port", &self.port)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl ContainerBuilder {
    /// Appends arguments to the container's command (what follows the image in
    /// `docker run`); without any, the image's own command runs.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable in the container.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The container is ready once `probe(host_port)` returns true; it is polled until the
    /// startup timeout. The default probe only needs the published port to accept a
    /// connection, which docker's port proxy does before the server listens: give a
    /// protocol-level probe (see [`probe`](super::probe)).
    pub fn ready_when(mut self, probe: impl Fn(u16) -> bool + Send + Sync + 'static) -> Self {
        self.ready = Arc::new(probe);
        self
    }

    /// How long [`start`](Self::start) and [`Container::restart`] wait for readiness
    /// (default 60 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the container and waits until it is ready; `None` if docker is missing or
    /// its daemon unreachable outside CI (a notice goes to stderr).
    ///
    /// # Panics
    ///
    /// If docker is missing under CI (`CI=true` or `ROUTINE_TEST_REQUIRE_SERVICES=1`),
    /// the image cannot be run, or the container is not ready in time (its log is in the
    /// message).
    pub fn start(self) -> Option<Container> {
        if let Err(err) = docker(&["version", "--format", "{{.Server.Version}}"]) {
            let hint = "install docker and start its daemon; scripts/container-images does both";
            if require_services() {
                panic!("docker is not usable but services are required (CI): {err}; {hint}");
            }
            eprintln!("skipping: docker is not usable ({err}; {hint})");
            return None;
        }
        let image = self.image.clone();
        Some(
            self.try_start()
                .unwrap_or_else(|err| panic!("container of {image} did not start: {err}")),
        )
    }

    /// Starts the container and waits until it is ready.
    ///
    /// # Errors
    ///
    /// If docker fails (a missing image that cannot be pulled, no daemon) or the
    /// container is not ready in time; the container is removed then.
    pub fn try_start(self) -> io::Result<Container> {
        // The host port is chosen here rather than by docker (`127.0.0.1::PORT`), which
        // would pick a new one on every `docker restart` and network reconnect, under
        // the clients' feet. Another process may take it first: a few ports are tried.
        let mut last_err = None;
        for _ in 0..3 {
            let host_port = free_port();
            let args = self.run_args(host_port);
            let id = match docker(&args.iter().map(String::as_str).collect::<Vec<_>>()) {
                Ok(id) => id,
                Err(err) if err.to_string().contains("already") => {
                    last_err = Some(err);
                    continue;
                }
                Err(err) => {
                    return Err(io::Error::other(format!(
                        "{err} (with no registry reachable, build local images with \
                         scripts/container-images and set LEASEHOLD_CONTAINER_IMAGES=local)"
                    )));
                }
            };
            let container = Container {
                supervisor: supervise(&id),
                id,
                image: self.image,
                host_port,
                ready: self.ready,
                startup_timeout: self.startup_timeout,
            };
            // On error `container` is dropped here, which removes it.
            container.wait_ready()?;
            return Ok(container);
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free port")))
    }

    fn run_args(&self, host_port: u16) -> Vec<String> {
        // No `--rm`: docker may remove an auto-removed container while `docker restart`
        // stops it, so a restart fault could lose its server. Containers are removed by
        // `Drop`, by the supervisor when the test process exits, and by
        // `scripts/container-images stop` (by label).
        let mut run: Vec<String> = ["run", "-d", "--label"].map(String::from).into();
        run.push(format!("{LABEL}={}", std::process::id()));
        run.push("-p".into());
        run.push(format!("127.0.0.1:{host_port}:{}", self.port));
        for (name, value) in &self.env {
            run.push("-e".into());
            run.push(format!("{name}={value}"));
        }
        run.push(self.image.clone());
        run.extend(self.args.iter().cloned());
        run
    }
}

impl Container {
    /// A builder for a container of `image` whose server listens on `port` inside it.
    pub fn builder(image: impl Into<String>, port: u16) -> ContainerBuilder {
        ContainerBuilder {
            image: image.into(),
            port,
            args: Vec::new(),
            env: Vec::new(),
            ready: Arc::new(|_| true),
            startup_timeout: Duration::from_secs(60),
        }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The image it runs.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The port on `127.0.0.1` that reaches the server in the container; it stays the
    /// same across [`restart`](Self::restart) and network reconnects.
    pub fn port(&self) -> u16 {
        self.host_port
    }

    /// Freezes every process of the container (`docker pause`, the cgroup freezer: like
    /// `SIGSTOP` of the whole server). Connections stay open and answer nothing; new
    /// ones are accepted by docker's port proxy and then hang.
    ///
    /// # Panics
    ///
    /// If docker fails.
    pub fn pause(&self) {
        self.expect(&["pause", &self.id]);
    }

    /// Resumes a container frozen by [`pause`](Self::pause).
    ///
    /// # Panics
    ///
    /// If docker fails.
    pub fn unpause(&self) {
        self.expect(&["unpause", &self.id]);
    }

    /// Kills the server (`docker restart -t 0`: `SIGKILL`, no clean shutdown) and starts it
    /// again with the data it had in the container, on the same port; returns once it
    /// is ready.
    ///
    /// # Panics
    ///
    /// If docker fails or the server is not ready in time.
    pub fn restart(&self) {
        self.expect(&["restart", "-t", "0", &self.id]);
        self.wait_ready()
            .unwrap_or_else(|err| panic!("{} did not restart: {err}", self.image));
    }

    /// Takes the container off its network (`docker network disconnect`): the server
    /// keeps running, but its published port closes and open connections through it
    /// break, so every client loses it at once.
    ///
    /// # Panics
    ///
    /// If docker fails.
    pub fn disconnect_network(&self) {
        self.expect(&["network", "disconnect", NETWORK, &self.id]);
    }

    /// Puts a container taken off its network back on it, on the same port, and waits
    /// until it is ready again.
    ///
    /// # Panics
    ///
    /// If docker fails or the server is not reachable in time.
    pub fn connect_network(&self) {
        self.expect(&["network", "connect", NETWORK, &self.id]);
        self.wait_ready()
            .unwrap_or_else(|err| panic!("{} did not come back: {err}", self.image));
    }

    /// The container's output so far (`docker logs`), stdout and stderr together.
    pub fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", &self.id])
            .stdin(Stdio::null())
            .output()
            .map(|out| {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text
            })
            .unwrap_or_else(|err| format!("(docker logs failed: {err})"))
    }

    /// Runs `command` in the container (`docker exec`) and returns its standard output.
    ///
    /// # Errors
    ///
    /// If docker fails or the command exits with an error.
    pub fn exec(&self, command: &[&str]) -> io::Result<String> {
        let mut args = vec!["exec", self.id.as_str()];
        args.extend_from_slice(command);
        docker(&args)
    }

    fn expect(&self, args: &[&str]) {
        if let Err(err) = docker(args) {
            panic!("docker {} on {}: {err}", args.join(" "), self.image);
        }
    }

    /// Polls the readiness probe until the startup timeout.
    fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            if (self.ready)(self.host_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} not ready after {:?}; its log:\n{}",
                        self.image,
                        self.startup_timeout,
                        self.logs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.id]);
        if let Some((mut child, stdin)) = self.supervisor.take() {
            // The container is gone; the supervisor's own `rm` finds nothing.
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The value of `cell`, started by the first call with `start`. A start that panics
/// (docker is required but missing, the server does not come up) is not tried again by
/// every test of the binary, each waiting out the startup timeout: they all fail at once
/// with its message.
pub(crate) fn shared<T: Send + Sync>(
    cell: &'static OnceLock<Result<Option<T>, String>>,
    start: fn() -> Option<T>,
) -> Option<&'static T> {
    let started = cell.get_or_init(|| {
        std::panic::catch_unwind(start).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the container did not start".to_owned())
        })
    });
    match started {
        Ok(container) => container.as_ref(),
        Err(message) => panic!("{message}"),
    }
}

/// Runs `docker args...` and returns its trimmed standard output.
pub(crate) fn docker(args: &[&str]) -> io::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| io::Error::new(err.kind(), format!("docker did not run: {err}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(io::Error::other(format!(
            "docker {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Starts `sh`, which removes container `id` when its standard input closes: when the
/// [`Container`] is dropped or the test process exits, however it exits.
fn supervise(id: &str) -> Option<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read -r _; docker rm -f -v "$0" >/dev/null 2>&1"#)
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some((child, stdin))
}

/// What a server sends in reply to `request` on `127.0.0.1:port`: up to `limit` bytes,
/// less if it closes the connection or stays silent for a second. For readiness probes.
pub(crate) fn exchange(port: u16, request: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    use std::io::Write as _;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(request)?;
    let mut reply = Vec::new();
    let mut buf = [0; 512];
    while reply.len() < limit {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) if !reply.is_empty() => break,
            Err(err) => return Err(err),
        }
    }
    Ok(reply)
}
