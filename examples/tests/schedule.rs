//! The `schedule` example: three members whose clocks are a second apart each share the
//! fires of one scheduled routine, each fire once, in memory and against a real Redis.

use std::process::Command;

use anyhow::Context as _;
use leasehold_conformance::servers::RedisServer;

/// Runs the example with `args` and returns its output, failing if it did not succeed.
fn run_example(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_schedule"))
        .args(args)
        .output()
        .context("starting the schedule example")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "the example failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

fn assert_each_fire_once(stdout: &str) {
    let ran: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(" ran on member "))
        .collect();
    assert_eq!(ran.len(), 3, "three fires reported: {stdout}");
    assert!(
        stdout.contains("3 fires, each ran once"),
        "the example checks that no fire ran twice: {stdout}"
    );
}

#[test]
fn members_with_skewed_clocks_share_the_fires_in_memory() -> anyhow::Result<()> {
    let stdout = run_example(&["--fires", "5", "--every", "1s", "--skew", "1s"])?;
    assert!(
        stdout.contains("5 fires, each ran once"),
        "the example checks that no fire ran twice: {stdout}"
    );
    // "  fire <RFC 3339> ran on member <i>": RFC 3339 times in UTC sort as text.
    let runs: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("fire "))
        .filter_map(|rest| rest.split_once(" ran on member "))
        .collect();
    assert_eq!(runs.len(), 5, "five fires reported: {stdout}");
    let first_of_ahead = runs
        .iter()
        .filter(|(_, member)| *member == "0")
        .map(|(fire, _)| *fire)
        .min()
        .context("the member whose clock is ahead runs fires")?;
    assert!(
        runs.iter()
            .filter(|(_, member)| *member != "0")
            .all(|(fire, _)| *fire < first_of_ahead),
        "members behind run only fires from before the one ahead started; from then on \
         they find every fire claimed: {stdout}"
    );
    Ok(())
}

#[test]
fn members_share_the_fires_through_a_redis_server() -> anyhow::Result<()> {
    let Some(redis) = RedisServer::start() else {
        return Ok(());
    };
    let url = redis.url();
    let stdout = run_example(&["--fires", "3", "--every", "1s", "--backend", &url])?;
    assert_each_fire_once(&stdout);
    Ok(())
}
