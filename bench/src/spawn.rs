//! `Child`: this program re-executed in a child mode (`member`, `hold`), and the JSON
//! events it prints.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;

/// A child process of this program. Dropping it kills the child.
pub(crate) struct Child {
    process: tokio::process::Child,
    pid: u32,
    /// Held open: the child exits when it closes.
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Events read but not yet asked for.
    pending: Vec<Value>,
}

impl Child {
    /// Starts this program with `args` (a child mode and its options).
    pub(crate) fn spawn(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("path of this program")?;
        let mut process = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start a child process")?;
        let pid = process.id().context("child pid")?;
        let stdout = process.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("child {pid}: {line}"),
                }
            }
        });
        Ok(Self {
            stdin: process.stdin.take(),
            process,
            pid,
            lines,
            pending: Vec::new(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The first event named `name` not returned before, waiting up to `timeout`.
    pub(crate) async fn event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let is = |value: &Value| is_event(value, name);
        if let Some(at) = self.pending.iter().position(is) {
            return Ok(self.pending.remove(at));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.recv()).await;
            match next {
                Ok(Some(value)) if is(&value) => return Ok(value),
                Ok(Some(value)) => self.pending.push(value),
                Ok(None) => bail!(
                    "child {} ended before `{name}` (seen: {:?})",
                    self.pid,
                    self.pending
                ),
                Err(_) => bail!(
                    "child {} printed no `{name}` within {timeout:?} (seen: {:?})",
                    self.pid,
                    self.pending
                ),
            }
        }
    }

    /// The `mono_ns` of the next event `name`.
    pub(crate) async fn event_at(&mut self, name: &str, timeout: Duration) -> Result<u64> {
        let event = self.event(name, timeout).await?;
        event
            .get("mono_ns")
            .and_then(Value::as_u64)
            .with_context(|| format!("event {event} has no mono_ns"))
    }

    /// The `mono_ns` of the next event `name` if the child printed it already, without
    /// waiting. An error if the child's output ended.
    pub(crate) fn try_event_at(&mut self, name: &str) -> Result<Option<u64>> {
        loop {
            match self.lines.try_recv() {
                Ok(value) => self.pending.push(value),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if !self.pending.iter().any(|value| is_event(value, name)) {
                        bail!("child {} ended (seen: {:?})", self.pid, self.pending);
                    }
                    break;
                }
            }
        }
        let Some(at) = self.pending.iter().position(|value| is_event(value, name)) else {
            return Ok(None);
        };
        let event = self.pending.remove(at);
        event
            .get("mono_ns")
            .and_then(Value::as_u64)
            .map(Some)
            .with_context(|| format!("event {event} has no mono_ns"))
    }

    /// Events read so far and not asked for, such as errors, for diagnostics.
    pub(crate) fn unclaimed(&self) -> &[Value] {
        &self.pending
    }

    /// Writes one line to the child's stdin.
    pub(crate) async fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends `signal` to the child.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = Pid::from_raw(self.pid as i32).context("pid 0")?;
        kill_process(pid, signal).with_context(|| format!("signal child {}", self.pid))
    }

    /// Waits up to `timeout` for the child to exit, then kills it.
    pub(crate) async fn finish(mut self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.kill().await;
        }
    }

    /// Kills the child at once (SIGKILL) and reaps it.
    pub(crate) async fn kill(mut self) {
        let _ = self.process.kill().await;
    }
}

/// Whether a child's JSON line is the event `name`.
fn is_event(value: &Value, name: &str) -> bool {
    value.get("event").and_then(Value::as_str) == Some(name)
}
