//! The `axum_service` example against a throwaway Redis: it serves `/healthz` and
//! `/leader` while it runs its job, and on SIGTERM it stops serving, drains, releases its
//! lease and exits, so the key is free the moment the process is gone (its TTL is 30 s).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use leasehold::LockKey;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `GET path` on `addr`: the status code and the body.
async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
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

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_serving_and_releases_the_lease_before_exit() -> anyhow::Result<()> {
    let Some(server) =
        tokio::task::spawn_blocking(leasehold_conformance::servers::RedisServer::start).await?
    else {
        eprintln!("skipped: redis-server is missing");
        return Ok(()); // redis-server is missing outside CI
    };
    let url = server.url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum_service"))
        .args(["--backend", &url, "--name", "axum-job", "--ttl", "30s"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start axum_service")?;
    let pid = child.id().context("the child has a pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the service did not start listening within 30 s")??
        .context("the service ended before listening")?;
    let addr = first
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {first:?}"))?
        .to_owned();

    // The job is taken by the service, held as `<host>:<pid>`.
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = get(&addr, "/leader").await?;
            if status == 200 && body != "none" {
                return anyhow::Ok(body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the job was not taken within 30 s")??;
    assert!(
        leader.contains(&format!(":{pid} ")),
        "the leader is the service process: {leader:?}"
    );
    let (status, body) = get(&addr, "/healthz").await?;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok"),
        "healthy while refreshing"
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).context("a valid pid")?,
        rustix::process::Signal::TERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the service did not exit within 30 s of SIGTERM")??;
    assert!(status.success(), "a clean exit after SIGTERM: {status}");
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await? {
        rest.push(line);
    }
    assert_eq!(rest, ["stopped"], "the service reports a finished shutdown");

    // Right after the exit, well within the 30 s TTL: the key is free.
    let backend = leasehold::connect(&url).await?;
    let key = LockKey::new("axum-job")?;
    let Some(lease) = backend.try_acquire(&key, Duration::from_secs(5)).await? else {
        bail!("the lease was not released before the service exited");
    };
    drop(lease);
    Ok(())
}
