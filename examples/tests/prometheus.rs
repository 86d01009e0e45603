//! The `prometheus` example on the memory backend: `/metrics` shows the lease its job
//! took, and SIGTERM stops it cleanly.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `GET /metrics` on `addr` over plain HTTP/1.1: the status code and the body.
async fn scrape(addr: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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

/// A port free now on the loopback interface (another process may take it before the
/// example binds it, which fails the test with a clear error, not a hang).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_acquired_lease() -> anyhow::Result<()> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut child = Command::new(env!("CARGO_BIN_EXE_prometheus"))
        .args([
            "memory://",
            "--listen",
            &listen,
            "--name",
            "prom-job",
            "--ttl",
            "2s",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the prometheus example")?;
    let pid = child.id().context("the child has a pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the example did not start serving within 30 s")??
        .context("the example ended before serving")?;
    assert_eq!(first, format!("metrics on http://{listen}/metrics"));

    // The job takes its lease at once; the scrape shows it as soon as it is counted.
    let acquired = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = scrape(&listen).await?;
            assert_eq!(status, 200, "/metrics answers: {body}");
            if let Some(line) = body
                .lines()
                .find(|line| line.starts_with("leasehold_leases_acquired_total{"))
            {
                return anyhow::Ok((line.to_owned(), body));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("no leasehold_leases_acquired_total within 30 s")??;
    let (line, body) = acquired;
    assert!(
        line.contains(r#"name="prom-job""#) && line.contains(r#"backend="memory""#),
        "the counter is labelled with the routine and the backend: {line}"
    );
    assert!(line.ends_with(" 1"), "one lease taken: {line}");
    assert!(
        body.contains(r#"leasehold_routine_holding{name="prom-job"} 1"#),
        "the job holds its lease: {body}"
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).context("a valid pid")?,
        rustix::process::Signal::TERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the example did not exit within 30 s of SIGTERM")??;
    assert!(status.success(), "a clean exit after SIGTERM: {status}");
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await? {
        rest.push(line);
    }
    assert_eq!(rest, ["stopped"], "the example reports a finished shutdown");
    Ok(())
}
