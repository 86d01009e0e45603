//! Scale: one process holding N named routines (each `keep_running_one_instance`, each
//! holding its lease), and what keeping those leases costs.
//!
//! A `hold` child process (see `child`) starts N routines and reports `ready` once all
//! run. After a settling pause (past the startup burst, into steady refreshing), the
//! benchmark samples over a window: the child's CPU time (`/proc/<pid>/stat`), the
//! server's CPU time, the server's request counter, then the child's resident memory
//! (`VmRSS`) and its open sockets. An idle child (backend connected, runner built, no
//! routine) is measured the same way first and subtracted, so the figures are those of
//! keeping leases, not of a tokio process with a client in it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::procfs;
use crate::spawn::Child;
use crate::targets::Target;

/// The runner's default TTL, as a service would run: refresh every TTL / 5 = 1 s.
pub(crate) const TTL: Duration = Duration::from_secs(5);

/// How long a child may take until every routine holds its lease: 120 s, or 2 ms per
/// routine above that (PostgreSQL took 3.5 s for 10,000).
fn ready_timeout(routines: u64) -> Duration {
    Duration::from_secs(120).max(Duration::from_millis(2 * routines))
}

/// How the scale benchmark runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The routine counts, each measured in a child of its own.
    pub(crate) counts: Vec<u64>,
    pub(crate) settle: Duration,
    pub(crate) window: Duration,
}

/// What one child showed over the window, before subtracting the idle child.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Raw {
    pub(crate) routines: u64,
    pub(crate) startup_ms: u64,
    /// CPU seconds per second (1.0 = one core busy).
    pub(crate) cpu_cores: f64,
    pub(crate) rss_bytes: u64,
    pub(crate) sockets: usize,
    pub(crate) server_requests_per_s: Option<f64>,
    pub(crate) server_cpu_cores: Option<f64>,
    /// Routines started again during the window (a lease lost and retaken).
    pub(crate) restarts_in_window: u64,
    /// Routines running at the end of the window.
    pub(crate) running_at_end: u64,
    /// How long the child's `Runner::shutdown` took: every routine cancelled, every
    /// lease released.
    pub(crate) shutdown_ms: u64,
}

/// One routine count, with the idle child subtracted.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) raw: Raw,
    /// Percent of one core spent keeping the leases.
    pub(crate) lease_cpu_percent: f64,
    /// Resident memory above the idle child, per routine.
    pub(crate) bytes_per_routine: f64,
    /// Requests per second above the idle child's.
    pub(crate) requests_per_s: Option<f64>,
    /// Server CPU above the idle child's, in percent of one core.
    pub(crate) server_cpu_percent: Option<f64>,
}

/// The scale figures of one backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scale {
    pub(crate) ttl_ms: u64,
    pub(crate) window_s: f64,
    pub(crate) idle: Raw,
    pub(crate) points: Vec<Point>,
    /// Why the series stopped before its last count, if it did: the counts measured
    /// before stay in `points`.
    pub(crate) stopped: Option<String>,
}

pub(crate) async fn measure(target: &Target, plan: &Plan) -> Result<Scale> {
    let idle = sample(target, 0, plan).await.context("idle child")?;
    let mut points = Vec::new();
    let mut stopped = None;
    for &routines in &plan.counts {
        let raw = match sample(target, routines, plan).await {
            Ok(raw) => raw,
            Err(error) => {
                // A larger count would fail too; the smaller ones still tell.
                let error = format!("child holding {routines} routines: {error:#}");
                eprintln!("{}: scale: {error}", target.kind);
                stopped = Some(error);
                break;
            }
        };
        let per_routine = (raw.rss_bytes as f64 - idle.rss_bytes as f64) / routines as f64;
        let minus = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        points.push(Point {
            lease_cpu_percent: (raw.cpu_cores - idle.cpu_cores) * 100.0,
            bytes_per_routine: per_routine,
            requests_per_s: minus(raw.server_requests_per_s, idle.server_requests_per_s),
            server_cpu_percent: minus(raw.server_cpu_cores, idle.server_cpu_cores)
                .map(|cores| cores * 100.0),
            raw,
        });
    }
    Ok(Scale {
        ttl_ms: TTL.as_millis() as u64,
        window_s: plan.window.as_secs_f64(),
        idle,
        points,
        stopped,
    })
}

async fn status(child: &mut Child) -> Result<(u64, u64)> {
    child.send_line("status").await?;
    let status = child.event("status", Duration::from_secs(10)).await?;
    let field = |name: &str| status.get(name).and_then(Value::as_u64).unwrap_or(0);
    Ok((field("running"), field("starts")))
}

async fn sample(target: &Target, routines: u64, plan: &Plan) -> Result<Raw> {
    let prefix = format!("bench-scale-{routines}-{}", rand::random::<u32>());
    let mut child = Child::spawn(&[
        "hold".to_owned(),
        "--backend".to_owned(),
        target.url(),
        "--prefix".to_owned(),
        prefix,
        "--routines".to_owned(),
        routines.to_string(),
        "--ttl".to_owned(),
        humantime::format_duration(TTL).to_string(),
    ])?;
    let ready_within = ready_timeout(routines);
    let ready = match child.event("ready", ready_within).await {
        Ok(ready) => ready,
        Err(error) => {
            // Say how far it got: routines that never run are a finding, not noise.
            let progress = status(&mut child).await.ok();
            return Err(error.context(format!(
                "not every routine held its lease within {ready_within:?} \
                 ((running, starts) = {progress:?})"
            )));
        }
    };
    let startup_ms = ready.get("startup_ms").and_then(Value::as_u64).unwrap_or(0);
    tokio::time::sleep(plan.settle).await;
    let pid = child.pid();

    let (_, starts_before) = status(&mut child).await?;
    let started = Instant::now();
    let cpu_before = procfs::cpu_time(pid)?;
    let server_cpu_before = target.server_cpu()?;
    let requests_before = target.requests_served().await?;
    tokio::time::sleep(plan.window).await;
    let requests_after = target.requests_served().await?;
    let server_cpu_after = target.server_cpu()?;
    let cpu_after = procfs::cpu_time(pid)?;
    let elapsed = started.elapsed().as_secs_f64();
    let (running, starts_after) = status(&mut child).await?;
    let rss_bytes = procfs::resident_bytes(pid)?;
    let sockets = procfs::open_sockets(pid)?;
    // Released, not killed: expiring leases would load the server during the next
    // child's measurement.
    child.send_line("stop").await?;
    let stopped = child.event("stopped", Duration::from_secs(120)).await?;
    let shutdown_ms = stopped
        .get("shutdown_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    child.finish(Duration::from_secs(10)).await;

    let per_second = |before: Duration, after: Duration| (after - before).as_secs_f64() / elapsed;
    Ok(Raw {
        routines,
        startup_ms,
        cpu_cores: per_second(cpu_before, cpu_after),
        rss_bytes,
        sockets,
        server_requests_per_s: requests_before
            .zip(requests_after)
            .map(|(before, after)| after.saturating_sub(before) as f64 / elapsed),
        server_cpu_cores: server_cpu_before
            .zip(server_cpu_after)
            .map(|(before, after)| per_second(before, after)),
        restarts_in_window: starts_after.saturating_sub(starts_before),
        running_at_end: running,
        shutdown_ms,
    })
}
