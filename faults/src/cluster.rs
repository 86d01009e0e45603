//! `Cluster`: a throwaway server, N `member` processes each behind its own [`Proxy`], their
//! events collected on one clock, and the faults the harness injects into them.
//!
//! Faults are recorded with `CLOCK_MONOTONIC` taken just before the signal is sent or the
//! proxy cut, on the same clock the members print, so the checker can measure from them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checker::{self, Report};
use super::log::{Event, EventKind, Fault, Mono, now};
use super::proxy::Proxy;
use super::server::{BackendKind, RedisUser, Server};

/// How to run a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `member` program (in tests: `env!("CARGO_BIN_EXE_faults-member")`).
    pub member_exe: PathBuf,
    /// Which server to start.
    pub backend: BackendKind,
    /// How many members to start.
    pub members: usize,
    /// The routine's name.
    pub name: String,
    /// The lease TTL members run with.
    pub ttl: Duration,
    /// How long one work step takes.
    pub step: Duration,
    /// The ACL user members connect as on Redis (ignored by the other backends).
    pub redis_user: RedisUser,
    /// Run the routine on a schedule instead of keeping it running (each run one
    /// `step`).
    pub schedule: Option<ScheduleConfig>,
}

/// A scheduled cluster's schedule and its members' wall clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// `RunOptions::every`.
    pub every: Duration,
    /// `RunOptions::missed_fires`, as the member's `--missed` reads it (`skip`,
    /// `run-once`, `run-each:N`); `None`: the default.
    pub missed: Option<String>,
    /// `RunOptions::catch_up_window`; `None`: the default.
    pub catch_up_window: Option<Duration>,
    /// `RunOptions::retry_interrupted`; `None`: runs cut off are recorded failed.
    pub retry_interrupted: Option<Duration>,
    /// Member `i`'s wall clock is offset from the system's by entry `i % len` of this,
    /// in milliseconds (negative: behind); empty: no offsets.
    pub clock_offsets_ms: Vec<i64>,
}

impl ClusterConfig {
    /// Three members, the backend's test TTL (see [`BackendKind::test_ttl`]), 50 ms steps.
    pub fn new(member_exe: impl Into<PathBuf>, backend: BackendKind) -> Self {
        Self {
            member_exe: member_exe.into(),
            backend,
            members: 3,
            name: "faults".to_owned(),
            ttl: backend.test_ttl(),
            step: Duration::from_millis(50),
            redis_user: RedisUser::Default,
            schedule: None,
        }
    }
}

/// Everything a run produced, for [`checker::check`].
#[derive(Debug, Clone)]
pub struct Run {
    /// Every member event, time-ordered.
    pub events: Vec<Event>,
    /// Every fault injected.
    pub faults: Vec<Fault>,
    /// When the harness began stopping the cluster.
    pub end: Mono,
    /// The lease TTL.
    pub ttl: Duration,
    /// The system's wall clock and `CLOCK_MONOTONIC` read together when the cluster
    /// started: wall-clock instants (scheduled fires) map to the events' clock through it.
    pub clock_origin: (std::time::SystemTime, Mono),
}

impl Run {
    /// Runs the checker.
    pub fn check(&self) -> Report {
        checker::check(&self.events, &self.faults, self.end, self.ttl)
    }
}

/// What the member reader tasks share with the cluster.
#[derive(Debug)]
pub(super) struct Shared {
    /// Time-ordered.
    pub(super) events: Mutex<Vec<Event>>,
    /// Lines members wrote to stderr (or unparsable stdout lines), for error messages.
    stderr: Mutex<Vec<(usize, String)>>,
    /// Bumped on every new event.
    pub(super) changed: watch::Sender<u64>,
}

impl Shared {
    fn push(&self, event: Event) {
        {
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            // Lines of different members arrive nearly in time order: insert near the end.
            let at = events.partition_point(|e| e.at <= event.at);
            events.insert(at, event);
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

/// One member process and its proxies, one per server port (see [`Server::ports`]).
#[derive(Debug)]
pub(super) struct Member {
    pub(super) pid: Pid,
    pub(super) proxies: Vec<Proxy>,
    /// Closing it makes the member exit (`--exit-with-stdin`).
    _stdin: Option<ChildStdin>,
    /// Owns the child (killed on drop) and reads its output.
    reader: JoinHandle<()>,
    pub(super) paused: bool,
    /// Starved of CPU (`SIGUSR1`) until `SIGUSR2`.
    pub(super) starved: bool,
}

/// A running cluster. Dropping it kills every member and the server.
#[derive(Debug)]
pub struct Cluster {
    pub(super) config: ClusterConfig,
    /// `None` only while a blocking thread restarts it.
    pub(super) server: Option<Server>,
    pub(super) members: Vec<Member>,
    pub(super) shared: Arc<Shared>,
    pub(super) faults: Vec<Fault>,
    clock_origin: (std::time::SystemTime, Mono),
}

impl Member {
    /// Cuts the member's network to every server.
    pub(super) fn cut(&self) {
        self.proxies.iter().for_each(Proxy::cut);
    }

    /// Restores the member's network to every server.
    pub(super) fn restore(&self) {
        self.proxies.iter().for_each(Proxy::restore);
    }
}

impl Cluster {
    /// Starts the server and the members. `Ok(None)` if the server's binary is missing
    /// outside CI (the caller skips).
    ///
    /// # Errors
    ///
    /// If the server or a member cannot be started.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Option<Cluster>> {
        let backend = config.backend;
        let server = tokio::task::spawn_blocking(move || Server::start(backend))
            .await
            .with_context(|| format!("the {} server did not start", backend.name()))?;
        let Some(server) = server else {
            return Ok(None);
        };
        let mut cluster = Cluster {
            server: Some(server),
            members: Vec::new(),
            shared: Arc::new(Shared {
                events: Mutex::new(Vec::new()),
                stderr: Mutex::new(Vec::new()),
                changed: watch::channel(0).0,
            }),
            faults: Vec::new(),
            clock_origin: (std::time::SystemTime::now(), now()),
            config,
        };
        for _ in 0..cluster.config.members {
            cluster.add_member().await?;
        }
        Ok(Some(cluster))
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Starts one more member behind its own proxy; returns its index.
    ///
    /// # Errors
    ///
    /// If the proxy or the process cannot be started.
    pub async fn add_member(&mut self) -> anyhow::Result<usize> {
        let offset = self.config.schedule.as_ref().and_then(|s| {
            let offsets = &s.clock_offsets_ms;
            (!offsets.is_empty()).then(|| offsets[self.members.len() % offsets.len()])
        });
        self.add_member_with_clock_offset(offset.unwrap_or(0)).await
    }

    /// Starts one more member whose wall clock is offset by `offset_ms` (only scheduled
    /// clusters use it); returns its index.
    ///
    /// # Errors
    ///
    /// If the proxy or the process cannot be started.
    pub async fn add_member_with_clock_offset(&mut self, offset_ms: i64) -> anyhow::Result<usize> {
        let index = self.members.len();
        let server = self.server()?;
        let mut proxies = Vec::new();
        for port in server.ports() {
            proxies.push(Proxy::start(port).await?);
        }
        let ports: Vec<u16> = proxies.iter().map(Proxy::port).collect();
        let url = server.url_as(&ports, self.config.redis_user);
        let format = |d: Duration| humantime::format_duration(d).to_string();
        let mut command = Command::new(&self.config.member_exe);
        if let Some(schedule) = &self.config.schedule {
            command
                .args(["--every", &format(schedule.every)])
                .args(["--clock-offset", &offset_ms.to_string()]);
            if let Some(missed) = &schedule.missed {
                command.args(["--missed", missed]);
            }
            if let Some(window) = schedule.catch_up_window {
                command.args(["--catch-up-window", &format(window)]);
            }
            if let Some(within) = schedule.retry_interrupted {
                command.args(["--retry-interrupted", &format(within)]);
            }
        }
        let mut child = command
            .args(["--backend", &url, "--name", &self.config.name])
            .args(["--ttl", &format(self.config.ttl)])
            .args(["--step", &format(self.config.step)])
            .args(["--exit-with-stdin", "true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.config.member_exe.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .context("member exited at once")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("member stdout")?;
        let stderr = child.stderr.take().context("member stderr")?;
        let shared = Arc::clone(&self.shared);
        let reader = tokio::spawn(async move {
            let errors = Arc::clone(&shared);
            let stderr = tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut all = errors.stderr.lock().unwrap_or_else(PoisonError::into_inner);
                    all.push((index, line));
                }
            });
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match Event::parse(index, &line) {
                    Some(event) => shared.push(event),
                    None => {
                        let mut all = shared.stderr.lock().unwrap_or_else(PoisonError::into_inner);
                        all.push((index, format!("stdout: {line}")));
                    }
                }
            }
            let _ = child.wait().await;
            let _ = stderr.await;
            shared.push(Event {
                member: index,
                at: now(),
                kind: EventKind::Exited,
            });
        });
        self.members.push(Member {
            pid,
            proxies,
            _stdin: stdin,
            reader,
            paused: false,
            starved: false,
        });
        Ok(index)
    }

    pub(super) fn server(&self) -> anyhow::Result<&Server> {
        self.server.as_ref().context("the server is gone")
    }

    pub(super) fn member(&self, index: usize) -> anyhow::Result<&Member> {
        self.members
            .get(index)
            .with_context(|| format!("no member {index}"))
    }
}

impl Cluster {
    /// Every event so far, time-ordered.
    pub fn events(&self) -> Vec<Event> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The faults injected so far.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// How many members were started (exited ones included).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Whether member `index` has exited.
    pub fn has_exited(&self, index: usize) -> bool {
        let events = self
            .shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        events
            .iter()
            .any(|e| e.member == index && e.kind == EventKind::Exited)
    }

    /// The latest events and what members wrote to stderr, for error messages.
    pub fn describe(&self) -> String {
        let events = self.events();
        let mut text = format!("faults: {:?}\nlatest events of each member:\n", self.faults);
        for member in 0..self.members.len() {
            let mine: Vec<&Event> = events.iter().filter(|e| e.member == member).collect();
            for e in &mine[mine.len().saturating_sub(8)..] {
                text.push_str(&format!("  {} member {}: {:?}\n", e.at, e.member, e.kind));
            }
        }
        let stderr = self
            .shared
            .stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (member, line) in stderr.iter().rev().take(20).rev() {
            text.push_str(&format!("  member {member} stderr: {line}\n"));
        }
        text
    }

    /// Stops the cluster: ends every fault still in effect, sends `SIGTERM` to every
    /// member (graceful: drain, then release) and waits until all have exited.
    ///
    /// # Errors
    ///
    /// If a member does not exit within 15 s (it is killed).
    pub async fn stop(mut self) -> anyhow::Result<Run> {
        let end = now();
        for member in &mut self.members {
            member.restore();
            if member.paused {
                let _ = kill_process(member.pid, Signal::CONT);
                member.paused = false;
            }
            if member.starved {
                let _ = kill_process(member.pid, Signal::USR2);
                member.starved = false;
            }
        }
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| !self.has_exited(i))
            .collect();
        for &i in &live {
            let _ = kill_process(self.members[i].pid, Signal::TERM);
        }
        let all_exited = |events: &[Event]| {
            live.iter()
                .all(|&i| {
                    events
                        .iter()
                        .any(|e| e.member == i && e.kind == EventKind::Exited)
                })
                .then_some(())
        };
        let stopped = self
            .wait_for(
                0,
                Duration::from_secs(15),
                "exit of every member after SIGTERM",
                all_exited,
            )
            .await;
        let run = Run {
            events: self.events(),
            faults: self.faults.clone(),
            end,
            ttl: self.config.ttl,
            clock_origin: self.clock_origin,
        };
        stopped.map(|()| run)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (index, member) in self.members.iter().enumerate() {
            if !self.has_exited(index) {
                // A stopped process must be woken to die of anything but SIGKILL; CONT
                // first anyway, so nothing is left frozen.
                let _ = kill_process(member.pid, Signal::CONT);
                let _ = kill_process(member.pid, Signal::KILL);
            }
            member.reader.abort();
        }
    }
}
