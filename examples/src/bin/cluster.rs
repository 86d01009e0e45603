//! Several instances of one singleton job, a graceful stop and a crash of the holder.
//!
//! ```text
//! cargo run -p leasehold-examples --bin cluster                       # in-memory, one process
//! cargo run -p leasehold-examples --bin cluster -- --backend redis://127.0.0.1:6379
//! ```
//!
//! Without `--backend`, N runners share one in-memory backend inside this process. With
//! `--backend URL`, every instance is its own process (this program, run as `cluster
//! member ...`), as replicas of a service would be. Either way it shows who runs the
//! task, stops the holder gracefully (SIGTERM: drain, then release) and prints the
//! handover time, then makes the next holder vanish (SIGKILL, or an abort in-process)
//! and prints the takeover time against the TTL.
#![allow(clippy::print_stdout)]

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use leasehold::{EventKind, MemoryBackend, RunOptions, Runner};
use leasehold_examples::args::Args;
use leasehold_examples::member::{self, MemberConfig, mono_ns};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

const NAME: &str = "report";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env()?;
    let ttl = args.duration("ttl", Duration::from_secs(2))?;
    let instances = args.number("instances", 3)?.max(2) as usize;
    if args.words.first().map(String::as_str) == Some("member") {
        let backend = args.get("backend").context("member needs --backend")?;
        return member::run(MemberConfig {
            backend: backend.to_owned(),
            name: NAME.to_owned(),
            ttl,
            step: ttl / 4,
            steps: 0,
        })
        .await;
    }
    println!("{instances} instances of `{NAME}`, lease TTL {ttl:?}");
    match args.get("backend") {
        None => in_process(instances, ttl).await,
        Some(url) => processes(url, instances, ttl).await,
    }
}

/// All instances in this process, on one shared in-memory backend.
async fn in_process(instances: usize, ttl: Duration) -> anyhow::Result<()> {
    let backend = MemoryBackend::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut runners = Vec::new();
    for index in 0..instances {
        let runner = Runner::builder()
            .with_backend(backend.clone())
            .with_lease_ttl(ttl)
            .with_signal_handling(false)
            .build()?;
        let mut events = runner.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let EventKind::Acquired { token } = event.kind {
                    let _ = tx.send((index, token.get(), event.at));
                }
            }
        });
        runner.run_named(
            NAME,
            move |ctx| async move {
                let token = ctx.fencing_token().map_or(0, |t| t.get());
                while !ctx.is_cancelled() {
                    println!("  instance {index} works (fencing token {token})");
                    tokio::select! {
                        _ = ctx.cancelled() => {}
                        _ = tokio::time::sleep(ttl / 2) => {}
                    }
                }
            },
            RunOptions::keep_running_one_instance(),
        );
        runners.push(runner);
    }
    let next = async |rx: &mut mpsc::UnboundedReceiver<(usize, u64, Instant)>| {
        rx.recv().await.context("all instances stopped")
    };
    let (holder, token, _) = next(&mut rx).await?;
    println!("instance {holder} runs the task (fencing token {token})");
    tokio::time::sleep(ttl).await;

    println!("stopping instance {holder} gracefully (drain, then release)...");
    let stopped = Instant::now();
    runners[holder].shutdown().await;
    let (holder, token, at) = next(&mut rx).await?;
    println!(
        "instance {holder} took over after {:.3} ms (fencing token {token})",
        ms(at - stopped)
    );
    tokio::time::sleep(ttl).await;

    println!("instance {holder} vanishes without releasing...");
    let crashed = Instant::now();
    runners[holder].abort();
    let (holder, token, at) = next(&mut rx).await?;
    println!(
        "instance {holder} took over after {:.3} ms (TTL {:.0} ms; fencing token {token})",
        ms(at - crashed),
        ms(ttl)
    );
    tokio::time::sleep(ttl / 2).await;
    for runner in &runners {
        runner.shutdown().await;
    }
    Ok(())
}

/// One process per instance, against a real server.
async fn processes(url: &str, instances: usize, ttl: Duration) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this program to start members")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, serde_json::Value)>();
    let mut children = Vec::new();
    for index in 0..instances {
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "member",
                "--backend",
                url,
                "--ttl",
                &humantime::format_duration(ttl).to_string(),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a member process")?;
        let stdout = child.stdout.take().context("member stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = tx.send((index, value));
                }
            }
        });
        children.push(child);
    }
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    if pids.len() != instances {
        bail!("a member process exited at once");
    }

    let next_acquired = async |rx: &mut mpsc::UnboundedReceiver<(usize, serde_json::Value)>| -> anyhow::Result<(usize, u64, u128)> {
        loop {
            let (index, event) = tokio::time::timeout(ttl * 10, rx.recv())
                .await
                .context("no member acquired the lease in time")?
                .context("all members exited")?;
            match event["event"].as_str() {
                Some("acquired") => {
                    let token = event["token"].as_u64().unwrap_or_default();
                    let at = event["mono_ns"].as_u64().unwrap_or_default() as u128;
                    return Ok((index, token, at));
                }
                Some("work") => println!("  instance {index} works (fencing token {})", event["token"]),
                Some("backend_error") => println!("  instance {index}: backend error: {}", event["error"]),
                _ => {}
            }
        }
    };

    let (holder, token, _) = next_acquired(&mut rx).await?;
    println!(
        "instance {holder} (pid {}) runs the task (fencing token {token})",
        pids[holder]
    );
    drain_for(&mut rx, ttl).await;

    println!("SIGTERM to instance {holder}: drain, then release...");
    let stopped = mono_ns();
    signal(pids[holder], rustix::process::Signal::TERM)?;
    let (holder, token, at) = next_acquired(&mut rx).await?;
    println!(
        "instance {holder} took over after {:.3} ms (fencing token {token})",
        (at.saturating_sub(stopped)) as f64 / 1e6
    );
    drain_for(&mut rx, ttl).await;

    println!("SIGKILL to instance {holder}: it vanishes without releasing...");
    let crashed = mono_ns();
    signal(pids[holder], rustix::process::Signal::KILL)?;
    let (holder, token, at) = next_acquired(&mut rx).await?;
    println!(
        "instance {holder} took over after {:.3} ms (TTL {:.0} ms; fencing token {token})",
        (at.saturating_sub(crashed)) as f64 / 1e6,
        ms(ttl)
    );
    drain_for(&mut rx, ttl / 2).await;
    for pid in pids {
        let _ = signal(pid, rustix::process::Signal::TERM);
    }
    for mut child in children {
        let _ = tokio::time::timeout(ttl * 2, child.wait()).await;
    }
    Ok(())
}

/// Prints work lines for a while.
async fn drain_for(rx: &mut mpsc::UnboundedReceiver<(usize, serde_json::Value)>, period: Duration) {
    let until = Instant::now() + period;
    while let Ok(Some((index, event))) = tokio::time::timeout_at(until, rx.recv()).await {
        if event["event"] == "work" {
            println!(
                "  instance {index} works (fencing token {})",
                event["token"]
            );
        }
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .context("bad pid")?;
    rustix::process::kill_process(pid, signal).context("cannot signal a member")
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
