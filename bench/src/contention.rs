//! Fleet-scale contention: one name, W waiting member processes, graceful handovers.
//!
//! A holder and W waiters, each a `member` process of this program (see `child`) with
//! a current-thread runtime (`--lean`, so that 100 of them fit on two cores), all keep
//! one routine of the same name running (TTL 2 s). Per W the benchmark measures:
//! - *steady load*: the server's requests over a window with nothing happening, less
//!   what a holder alone costs (measured first, once per backend), per waiting process;
//! - *connections per process* (PostgreSQL): client connections in `pg_stat_activity`
//!   over the W + 1 member processes;
//! - *handovers*: SIGTERM to the holder (it drains and releases) and, as in `handover`,
//!   from the holder's routine returning to the first waiter's `Acquired` (the library's
//!   part) and from the signal to that `Acquired`, on `CLOCK_MONOTONIC`; and the server's
//!   requests from just before the signal to a settling pause after the acquire, less
//!   the steady load over the same time: what one handover costs the server. The new
//!   holder is the old waiter; a fresh member takes its place as a waiter.
//!
//! Requests are counted as [`Target::requests_served`] counts them (Redis calls without
//! the commands inside scripts and without the benchmark's own `INFO`; etcd gRPC
//! messages received; PostgreSQL `pg_stat_statements` calls).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rustix::process::Signal;
use serde::Serialize;

use crate::child::mono_ns;
use crate::spawn::Child;
use crate::stats::{Samples, Summary};
use crate::targets::{Kind, Target};

/// The lease TTL of every member: the retry interval is TTL / 5 = 400 ms.
pub(crate) const TTL: Duration = Duration::from_secs(2);
/// How long a step (a member starting, a handover) may take, W = 100 on two cores
/// included.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// After a handover's acquire, how long the other waiters get to finish what the
/// release woke them for, before the requests are counted.
const HANDOVER_SETTLE: Duration = Duration::from_millis(500);
/// After the members started, before the steady window: past the startup burst.
const START_SETTLE: Duration = Duration::from_secs(2);

/// How the contention benchmark runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) waiters: Vec<u64>,
    pub(crate) rounds: usize,
    pub(crate) window: Duration,
}

/// The contention figures of one backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Contention {
    pub(crate) ttl_ms: u64,
    pub(crate) window_s: f64,
    /// Requests per second of a holder with no waiter (its refreshes).
    pub(crate) holder_alone_per_s: Option<f64>,
    pub(crate) points: Vec<Point>,
}

/// One W: its figures, or why it could not be measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) waiters: u64,
    pub(crate) figures: Option<Figures>,
    pub(crate) error: Option<String>,
}

/// What one W showed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    /// From the holder's routine returning to the next holder's `Acquired`.
    pub(crate) returned_to_acquired: Summary,
    /// From SIGTERM to the next holder's `Acquired`.
    pub(crate) stop_to_acquired: Summary,
    /// Server requests per handover above the steady load: mean and largest.
    pub(crate) requests_per_handover: Option<f64>,
    pub(crate) requests_per_handover_max: Option<f64>,
    /// Requests per second with W waiters and no handover, all processes together.
    pub(crate) steady_per_s: Option<f64>,
    /// The same less the holder's own, per waiting process.
    pub(crate) steady_per_waiter_per_s: Option<f64>,
    /// Client connections on the server per member process (PostgreSQL).
    pub(crate) connections_per_process: Option<f64>,
    /// How long the W waiters took to start and find the name held.
    pub(crate) startup_ms: u64,
}

pub(crate) async fn measure(target: &Target, plan: &Plan) -> Result<Contention> {
    if target.kind == Kind::Memory {
        bail!("the memory backend lives in one process: no contention across processes");
    }
    let holder_alone_per_s = holder_alone(target, plan.window / 2)
        .await
        .context("holder alone")?;
    let mut points = Vec::new();
    for &waiters in &plan.waiters {
        eprintln!("{}: contention with {waiters} waiters", target.kind);
        let point = match with_waiters(target, waiters, plan, holder_alone_per_s).await {
            Ok(figures) => Point {
                waiters,
                figures: Some(figures),
                error: None,
            },
            Err(error) => {
                eprintln!("{}: {waiters} waiters: {error:#}", target.kind);
                Point {
                    waiters,
                    figures: None,
                    error: Some(format!("{error:#}")),
                }
            }
        };
        points.push(point);
        // Let killed members' leases and connections go before the next W.
        tokio::time::sleep(TTL).await;
    }
    Ok(Contention {
        ttl_ms: TTL.as_millis() as u64,
        window_s: plan.window.as_secs_f64(),
        holder_alone_per_s,
        points,
    })
}

/// Starts a lean member process for `name`.
fn spawn_member(target: &Target, name: &str) -> Result<Child> {
    Child::spawn(&[
        "member".to_owned(),
        "--backend".to_owned(),
        target.url(),
        "--name".to_owned(),
        name.to_owned(),
        "--ttl".to_owned(),
        humantime::format_duration(TTL).to_string(),
        "--lean".to_owned(),
    ])
}

/// A counter of the server's requests that leaves out the benchmark's own reads.
struct Requests<'a> {
    target: &'a Target,
}

impl Requests<'_> {
    async fn now(&self) -> Result<Option<(u64, Instant)>> {
        Ok(self
            .target
            .requests_served()
            .await?
            .map(|count| (count, Instant::now())))
    }

    /// Requests between two readings, and the seconds between them. Redis counts the
    /// earlier reading's own `INFO` in the later one.
    fn between(
        &self,
        before: Option<(u64, Instant)>,
        after: Option<(u64, Instant)>,
    ) -> Option<(f64, f64)> {
        let ((a, at), (b, bt)) = before.zip(after)?;
        let own = u64::from(self.target.kind == Kind::Redis);
        let count = b.saturating_sub(a).saturating_sub(own) as f64;
        Some((count, bt.duration_since(at).as_secs_f64()))
    }
}

/// Requests per second of one holder with nobody waiting.
async fn holder_alone(target: &Target, window: Duration) -> Result<Option<f64>> {
    let name = format!("bench-contention-alone-{}", rand::random::<u32>());
    let mut holder = spawn_member(target, &name)?;
    holder.event("acquired", STEP_TIMEOUT).await?;
    tokio::time::sleep(START_SETTLE).await;
    let requests = Requests { target };
    let before = requests.now().await?;
    tokio::time::sleep(window).await;
    let after = requests.now().await?;
    holder.signal(Signal::TERM)?;
    holder.finish(STEP_TIMEOUT).await;
    Ok(requests
        .between(before, after)
        .map(|(count, seconds)| count / seconds))
}

async fn with_waiters(
    target: &Target,
    w: u64,
    plan: &Plan,
    holder_alone_per_s: Option<f64>,
) -> Result<Figures> {
    let name = format!("bench-contention-{w}-{}", rand::random::<u32>());
    let mut holder = spawn_member(target, &name)?;
    holder.event("acquired", STEP_TIMEOUT).await?;
    let started = Instant::now();
    let mut waiters = (0..w)
        .map(|_| spawn_member(target, &name))
        .collect::<Result<Vec<_>>>()?;
    for waiter in &mut waiters {
        waiter.event("contended", STEP_TIMEOUT).await?;
    }
    let startup_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(START_SETTLE).await;

    let requests = Requests { target };
    let before = requests.now().await?;
    tokio::time::sleep(plan.window).await;
    let after = requests.now().await?;
    let steady_per_s = requests
        .between(before, after)
        .map(|(count, seconds)| count / seconds);
    let steady_per_waiter_per_s = steady_per_s
        .zip(holder_alone_per_s)
        .map(|(all, holder)| (all - holder) / w as f64);
    let connections_per_process = target
        .client_connections()
        .await?
        .map(|count| count as f64 / (w + 1) as f64);

    let mut returned_to_acquired = Samples::with_capacity(plan.rounds);
    let mut stop_to_acquired = Samples::with_capacity(plan.rounds);
    let mut costs = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        let before = requests.now().await?;
        let sent = mono_ns();
        holder.signal(Signal::TERM)?;
        let (next, acquired) = first_acquired(&mut waiters)
            .await
            .with_context(|| format!("round {round}"))?;
        let returned = holder.event_at("returning", STEP_TIMEOUT).await?;
        holder
            .event("stopped", STEP_TIMEOUT)
            .await
            .with_context(|| format!("holder did not stop cleanly: {:?}", holder.unclaimed()))?;
        holder.finish(STEP_TIMEOUT).await;
        tokio::time::sleep(HANDOVER_SETTLE).await;
        let after = requests.now().await?;
        if let Some((count, seconds)) = requests.between(before, after) {
            costs.push(count - steady_per_s.unwrap_or(0.0) * seconds);
        }
        returned_to_acquired.push(Duration::from_nanos(acquired.saturating_sub(returned)));
        stop_to_acquired.push(Duration::from_nanos(acquired.saturating_sub(sent)));
        holder = waiters.swap_remove(next);
        let mut fresh = spawn_member(target, &name)?;
        fresh.event("contended", STEP_TIMEOUT).await?;
        waiters.push(fresh);
    }
    holder.kill().await;
    for waiter in waiters {
        waiter.kill().await;
    }
    let mean = (!costs.is_empty()).then(|| costs.iter().sum::<f64>() / costs.len() as f64);
    let max = costs.iter().copied().reduce(f64::max);
    Ok(Figures {
        returned_to_acquired: returned_to_acquired.summary(),
        stop_to_acquired: stop_to_acquired.summary(),
        requests_per_handover: mean,
        requests_per_handover_max: max,
        steady_per_s,
        steady_per_waiter_per_s,
        connections_per_process,
        startup_ms,
    })
}

/// The waiter that acquires first, and when (`mono_ns`).
async fn first_acquired(waiters: &mut [Child]) -> Result<(usize, u64)> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        for (index, waiter) in waiters.iter_mut().enumerate() {
            if let Some(at) = waiter.try_event_at("acquired")? {
                return Ok((index, at));
            }
        }
        if Instant::now() >= deadline {
            bail!("no waiter acquired within {STEP_TIMEOUT:?}");
        }
        // The events carry their own time: polling late does not change the figures.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
