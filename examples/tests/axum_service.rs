//! The `axum_service` example against a throwaway Redis: it serves `/healthz` and
//! `/leader` while it runs its job, and on SIGTERM it stops serving, drains, releases its
//! lease and exits, so the key is free the moment the process is gone (its TTL is 30 s).

mod common;

use std::time::Duration;

use anyhow::{Context as _, bail};
use common::{Example, get};
use leasehold::LockKey;

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
    let mut example = Example::start(
        env!("CARGO_BIN_EXE_axum_service"),
        &["--backend", &url, "--name", "axum-job", "--ttl", "30s"],
    )?;
    let pid = example.pid;
    let first = example
        .next_line()
        .await
        .context("the service did not start listening")?;
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

    example.stop().await.context("the service's shutdown")?;

    // Right after the exit, well within the 30 s TTL: the key is free.
    let backend = leasehold::connect(&url).await?;
    let key = LockKey::new("axum-job")?;
    let Some(lease) = backend.try_acquire(&key, Duration::from_secs(5)).await? else {
        bail!("the lease was not released before the service exited");
    };
    drop(lease);
    Ok(())
}
