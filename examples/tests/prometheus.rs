//! The `prometheus` example on the memory backend: `/metrics` shows the lease its job
//! took, and SIGTERM stops it cleanly.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use common::{Example, get};
use leasehold_conformance::servers::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_acquired_lease() -> anyhow::Result<()> {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut example = Example::start(
        env!("CARGO_BIN_EXE_prometheus"),
        &[
            "memory://",
            "--listen",
            &listen,
            "--name",
            "prom-job",
            "--ttl",
            "2s",
        ],
    )?;
    let first = example
        .next_line()
        .await
        .context("the example did not start serving")?;
    assert_eq!(first, format!("metrics on http://{listen}/metrics"));

    // The job takes its lease at once; the scrape shows it as soon as it is counted.
    let acquired = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = get(&listen, "/metrics").await?;
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

    example.stop().await.context("the example's shutdown")?;
    Ok(())
}
