//! Graceful handover: the holder is stopped as on SIGTERM (drain, then release); how
//! long until a member waiting in another process holds the lease.
//!
//! Each round has a holder and a waiter, two member processes of this program (see
//! `child`), the waiter already told it is contended. The benchmark sends SIGTERM to the
//! holder and reads, from the members' JSON lines on the shared `CLOCK_MONOTONIC`:
//! - *SIGTERM → acquired*: from the signal to the waiter's `Acquired` event, the figure
//!   a user sees (signal delivery, runner shutdown, release, notification, acquire);
//! - *returned → acquired*: from the holder's routine returning to the waiter's
//!   acquire, the library's part (release, notification, acquire).
//!
//! Then the waiter is the next holder and a fresh member the next waiter. The memory
//! backend lives in one process, so its handover is between two runners sharing one
//! `MemoryBackend`, with `Runner::shutdown` standing in for SIGTERM.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use leasehold::{EventKind, MemoryBackend, RunOptions, Runner};
use rustix::process::Signal;
use serde::Serialize;

use crate::child::mono_ns;
use crate::spawn::Child;
use crate::stats::{Samples, Summary};
use crate::targets::{Kind, Target};

/// The runner's default TTL: handover does not depend on it unless a notification is
/// missed, and then the retry interval (TTL / 5) shows.
pub(crate) const TTL: Duration = Duration::from_secs(5);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The handover figures of one backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Handover {
    pub(crate) across_processes: bool,
    /// From SIGTERM (or `shutdown()`) to the waiter's acquire.
    pub(crate) stop_to_acquired: Summary,
    /// From the holder's routine returning to the waiter's acquire.
    pub(crate) returned_to_acquired: Summary,
}

/// Starts a member process holding or waiting for `name`.
pub(crate) fn spawn_member(target: &Target, name: &str, ttl: Duration) -> Result<Child> {
    Child::spawn(&[
        "member".to_owned(),
        "--backend".to_owned(),
        target.url(),
        "--name".to_owned(),
        name.to_owned(),
        "--ttl".to_owned(),
        humantime::format_duration(ttl).to_string(),
    ])
}

/// Starts the first holder and its waiter.
pub(crate) async fn first_pair(
    target: &Target,
    name: &str,
    ttl: Duration,
) -> Result<(Child, Child)> {
    let mut holder = spawn_member(target, name, ttl)?;
    holder.event("acquired", STEP_TIMEOUT).await?;
    let waiter = next_waiter(target, name, ttl).await?;
    Ok((holder, waiter))
}

/// Starts a member and waits until it found the lease held and waits for it.
pub(crate) async fn next_waiter(target: &Target, name: &str, ttl: Duration) -> Result<Child> {
    let mut waiter = spawn_member(target, name, ttl)?;
    waiter.event("contended", STEP_TIMEOUT).await?;
    Ok(waiter)
}

pub(crate) async fn measure(target: &Target, rounds: usize) -> Result<Handover> {
    if target.kind == Kind::Memory {
        return in_process(rounds).await;
    }
    let name = format!("bench-handover-{}", rand::random::<u32>());
    let (mut holder, mut waiter) = first_pair(target, &name, TTL).await?;
    let mut total = Samples::with_capacity(rounds);
    let mut library = Samples::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = mono_ns();
        holder.signal(Signal::TERM)?;
        let acquired = waiter.event_at("acquired", STEP_TIMEOUT).await?;
        let returned = holder.event_at("returning", STEP_TIMEOUT).await?;
        holder
            .event("stopped", STEP_TIMEOUT)
            .await
            .with_context(|| format!("holder did not stop cleanly: {:?}", holder.unclaimed()))?;
        holder.finish(STEP_TIMEOUT).await;
        total.push(nanos(acquired.saturating_sub(sent)));
        library.push(nanos(acquired.saturating_sub(returned)));
        holder = waiter;
        waiter = next_waiter(target, &name, TTL).await?;
    }
    holder.kill().await;
    waiter.kill().await;
    Ok(Handover {
        across_processes: true,
        stop_to_acquired: total.summary(),
        returned_to_acquired: library.summary(),
    })
}

fn nanos(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// A runner on `backend` keeping `name` running; the receiver sees its events.
pub(crate) fn memory_member(
    backend: &MemoryBackend,
    name: &str,
    ttl: Duration,
) -> Result<(Runner, tokio::sync::broadcast::Receiver<leasehold::Event>)> {
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(ttl)
        .with_signal_handling(false)
        .build()?;
    let events = runner.subscribe();
    let _handle = runner.run_named(
        name,
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    Ok((runner, events))
}

/// Waits for the first event that `pick` accepts and returns when it happened.
pub(crate) async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<leasehold::Event>,
    pick: impl Fn(&EventKind) -> bool,
) -> Result<tokio::time::Instant> {
    let wait = async {
        loop {
            let event = events.recv().await?;
            if pick(&event.kind) {
                return Ok::<_, anyhow::Error>(event.at);
            }
        }
    };
    match tokio::time::timeout(STEP_TIMEOUT, wait).await {
        Ok(at) => at,
        Err(_) => bail!("no such event within {STEP_TIMEOUT:?}"),
    }
}

async fn in_process(rounds: usize) -> Result<Handover> {
    let backend = MemoryBackend::new();
    let name = "bench-handover";
    let acquired = |kind: &EventKind| matches!(kind, EventKind::Acquired { .. });
    let (mut holder, mut holder_events) = memory_member(&backend, name, TTL)?;
    wait_for(&mut holder_events, acquired).await?;
    let mut total = Samples::with_capacity(rounds);
    let mut library = Samples::with_capacity(rounds);
    for _ in 0..rounds {
        let (waiter, mut waiter_events) = memory_member(&backend, name, TTL)?;
        wait_for(&mut waiter_events, |kind| {
            matches!(kind, EventKind::Contended { .. })
        })
        .await?;
        let start = Instant::now();
        let stopping = tokio::spawn(async move { holder.shutdown().await });
        let at = wait_for(&mut waiter_events, acquired).await?;
        let returned = wait_for(&mut holder_events, |kind| {
            matches!(kind, EventKind::Returned)
        })
        .await?;
        total.push(at.into_std().saturating_duration_since(start));
        library.push(at.saturating_duration_since(returned));
        stopping.await?;
        holder = waiter;
        holder_events = waiter_events;
    }
    holder.shutdown().await;
    Ok(Handover {
        across_processes: false,
        stop_to_acquired: total.summary(),
        returned_to_acquired: library.summary(),
    })
}
