//! The Go package's own cluster example, run for real on every backend (the Go original
//! skips its version of this test): two member processes share one stdout pipe, each
//! keeps the routine `task` running as one instance, prints `task run N` for three
//! iterations and exits. The combined output is `task run 0, 1, 2` twice, never mixed:
//! the second process starts only once the first has stopped and released the lease.

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

/// Runs the example against the server at `url`, with lease TTL `ttl`, and checks the
/// combined output.
async fn go_example(url: &str, ttl: Duration) -> anyhow::Result<()> {
    let ttl = humantime::format_duration(ttl).to_string();
    // One pipe for both, as the Go test's shared buffer: lines land in the order they
    // were written.
    let (mut output, writer) = std::io::pipe()?;
    let mut members = Vec::new();
    for _ in 0..2 {
        members.push(
            Command::new(env!("CARGO_BIN_EXE_member"))
                .args(["--backend", url, "--name", "task", "--ttl", &ttl])
                .args(["--step", "100ms", "--steps", "3", "--format", "go"])
                .args(["--exit-with-stdin", "true"])
                .stdin(Stdio::piped())
                .stdout(writer.try_clone()?)
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a member")?,
        );
    }
    drop(writer);
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        output.read_to_string(&mut text).map(|_| text)
    });
    // Three 100 ms steps each, a handover, and process start-up: seconds, not 30.
    let text = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .context("the members did not finish within 30 s")???;
    for mut member in members {
        let status = member.wait().await?;
        assert!(status.success(), "a member failed: {status}");
    }
    assert_eq!(
        text,
        "task run 0\ntask run 1\ntask run 2\n".repeat(2),
        "each member runs the task three times, one member after the other"
    );
    Ok(())
}

/// The example on the server `$start` starts (skipped when its binary is missing outside
/// CI), with lease TTL `$ttl`, in module `$module`.
macro_rules! go_example_test {
    ($module:ident, $start:expr, $ttl:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_members_print_task_run_0_1_2_each_one_after_the_other()
            -> anyhow::Result<()> {
                let Some(server) = tokio::task::spawn_blocking(|| $start).await? else {
                    return Ok(()); // the server's binary is missing outside CI
                };
                go_example(&server.url(), $ttl).await
            }
        }
    };
}

#[cfg(feature = "redis")]
go_example_test!(
    redis,
    leasehold_conformance::servers::RedisServer::start(),
    Duration::from_secs(1)
);
// etcd's minimum TTL with its default election timeout.
#[cfg(feature = "etcd")]
go_example_test!(
    etcd,
    leasehold_conformance::servers::EtcdServer::start(),
    Duration::from_secs(2)
);
#[cfg(feature = "postgres")]
go_example_test!(
    postgres,
    leasehold_conformance::servers::PostgresServer::start(),
    Duration::from_secs(1)
);
