//! Crash takeover: the holder process is killed (SIGKILL, nothing released); how long
//! until the member waiting in another process holds the lease, against the TTL.
//!
//! The kill lands at a random point of the holder's refresh cycle (after a random wait
//! of up to one TTL), so the rounds sample every remaining lease time. A takeover can
//! never be sooner than what the lease has left, at most the TTL; the goal is that it is
//! never later than TTL + 100 ms. The memory backend crashes in one process:
//! `Runner::abort` drops the holder's routines without releasing, as a crash would.

use std::time::{Duration, Instant};

use anyhow::Result;
use leasehold::{EventKind, MemoryBackend};
use rustix::process::Signal;
use serde::Serialize;

use crate::child::mono_ns;
use crate::handover::{first_pair, memory_member, next_waiter, wait_for};
use crate::stats::{Samples, Summary};
use crate::targets::{Kind, Target};

/// The crash figures of one backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Crash {
    pub(crate) across_processes: bool,
    pub(crate) ttl_ms: u64,
    /// From the kill to the waiter's acquire.
    pub(crate) takeover: Summary,
    /// Takeover p50 over the TTL.
    pub(crate) ratio_p50: f64,
    /// Slowest takeover over the TTL.
    pub(crate) ratio_max: f64,
    /// Slowest takeover minus the TTL, in ms (negative: sooner than the TTL).
    pub(crate) max_over_ttl_ms: f64,
}

/// A random wait of up to `ttl`, so the kill lands anywhere in the refresh cycle.
fn random_wait(ttl: Duration) -> Duration {
    ttl.mul_f64(rand::random::<f64>())
}

pub(crate) async fn measure(target: &Target, rounds: usize) -> Result<Crash> {
    let ttl = target.kind.crash_ttl();
    let takeover = if target.kind == Kind::Memory {
        in_process(ttl, rounds).await?
    } else {
        across_processes(target, ttl, rounds).await?
    };
    let summary = takeover.summary();
    let ttl_us = ttl.as_secs_f64() * 1e6;
    Ok(Crash {
        across_processes: target.kind != Kind::Memory,
        ttl_ms: ttl.as_millis() as u64,
        takeover: summary,
        ratio_p50: summary.p50_us / ttl_us,
        ratio_max: summary.max_us / ttl_us,
        max_over_ttl_ms: (summary.max_us - ttl_us) / 1e3,
    })
}

async fn across_processes(target: &Target, ttl: Duration, rounds: usize) -> Result<Samples> {
    let name = format!("bench-crash-{}", rand::random::<u32>());
    let (mut holder, mut waiter) = first_pair(target, &name, ttl).await?;
    let mut takeover = Samples::with_capacity(rounds);
    // Generous: the measurement must not be cut short by its own timeout.
    let limit = ttl * 5 + Duration::from_secs(10);
    for _ in 0..rounds {
        tokio::time::sleep(random_wait(ttl)).await;
        let killed = mono_ns();
        holder.signal(Signal::KILL)?;
        let acquired = waiter.event_at("acquired", limit).await?;
        holder.kill().await;
        takeover.push(Duration::from_nanos(acquired.saturating_sub(killed)));
        holder = waiter;
        waiter = next_waiter(target, &name, ttl).await?;
    }
    holder.kill().await;
    waiter.kill().await;
    Ok(takeover)
}

async fn in_process(ttl: Duration, rounds: usize) -> Result<Samples> {
    let backend = MemoryBackend::new();
    let name = "bench-crash";
    let acquired = |kind: &EventKind| matches!(kind, EventKind::Acquired { .. });
    let (mut holder, mut events) = memory_member(&backend, name, ttl)?;
    wait_for(&mut events, acquired).await?;
    let mut takeover = Samples::with_capacity(rounds);
    for _ in 0..rounds {
        let (waiter, mut waiter_events) = memory_member(&backend, name, ttl)?;
        wait_for(&mut waiter_events, |kind| {
            matches!(kind, EventKind::Contended { .. })
        })
        .await?;
        tokio::time::sleep(random_wait(ttl)).await;
        let killed = Instant::now();
        holder.abort();
        let at = wait_for(&mut waiter_events, acquired).await?;
        takeover.push(at.into_std().saturating_duration_since(killed));
        holder = waiter;
    }
    holder.abort();
    Ok(takeover)
}
