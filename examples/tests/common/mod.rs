//! What the tests of the HTTP-serving examples share: start the example as a child with
//! its stdout piped, a plain HTTP GET, and a SIGTERM that must end it cleanly.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

/// A running example and the lines it prints.
pub(crate) struct Example {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) lines: Lines<BufReader<ChildStdout>>,
}

impl Example {
    /// Starts `binary` with `args`; it is killed if the test ends early.
    pub(crate) fn start(binary: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let pid = child.id().context("the child has a pid")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Self { child, pid, lines })
    }

    /// The next line it prints, within 30 s.
    pub(crate) async fn next_line(&mut self) -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .context("no line within 30 s")??
            .context("the example ended")
    }

    /// Sends SIGTERM and checks the example exits cleanly within 30 s, its last line
    /// `stopped` (printed once its leases were released).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid as i32).context("a valid pid")?,
            rustix::process::Signal::TERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("no exit within 30 s of SIGTERM")??;
        anyhow::ensure!(status.success(), "a clean exit after SIGTERM: {status}");
        let mut rest = Vec::new();
        while let Some(line) = self.lines.next_line().await? {
            rest.push(line);
        }
        anyhow::ensure!(rest == ["stopped"], "a finished shutdown, got {rest:?}");
        Ok(())
    }
}

/// `GET path` on `addr` over plain HTTP/1.1: the status and the body.
pub(crate) async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
