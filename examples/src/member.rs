//! One cluster member: keeps a named routine running with `keep_running_one_instance`
//! and prints one JSON object per line for every event.
//!
//! Every line has `event`, `pid` and `mono_ns` (`CLOCK_MONOTONIC` in nanoseconds, the
//! same clock in every process on the host, so lines of several members can be merged
//! and compared). Events: `acquired` (with `token`), `work` (a step done under the
//! lease, with `token` and `step`), `cancelled` (the routine saw its cancellation, with
//! `reason`), `lost`, `released`, `stopped`, and for diagnosis `backend_error`,
//! `refresh_failed` and `release_failed` (with `error`).
//!
//! With [`Output::Go`] a member prints only `task run N` for every step instead, like the
//! routine of the Go package's cluster example.
//!
//! With [`run_scheduled`] the member runs the routine on a schedule instead
//! (`RunOptions::every`, its wall clock offset from the system's by
//! [`Schedule::clock_offset_ms`] through `RunOptions::with_wall_clock`), each run one
//! step long, with [`Schedule::missed`], [`Schedule::catch_up_window`] and
//! [`Schedule::retry_interrupted`] as its missed-fire policy and retry of cut-off runs. It
//! prints `scheduled` first (with `every_ms`, `clock_offset_ms`, `missed`,
//! `catch_up_window_ms` and `retry_interrupted_ms`, null when not set), then for every run
//! `fire_started` (with `fire_ms`, the run's `leasehold::scheduled_fire()` in UNIX
//! milliseconds, `token` and `member`, the runner's holder identity) when it starts and
//! `fire_done` (the same fields, `started_ns`, and `cancelled`) when it ends. From the
//! runner's events it prints `fire_interrupted` (with `fire_ms` and `retried`: this member
//! found that fire's run cut off and runs it again, or recorded it failed) and
//! `fire_missed` (with `fire_ms`).
//!
//! For the fault harness, `SIGUSR1` starves the member's runtime of CPU until `SIGUSR2`;
//! meanwhile the tasks that starve it also hand the routine work, so it does a step
//! whenever they wake it (see [`crate::starve`]).

use std::io::Write;
use std::time::{Duration, SystemTime};

use leasehold::{EventKind, MissedFires, RunOptions, Runner};
use serde_json::{Value, json};

/// How a member runs.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The backend URL (`memory://` only makes sense inside one process).
    pub backend: String,
    /// The routine's name.
    pub name: String,
    /// The lease TTL.
    pub ttl: Duration,
    /// How long one work step takes.
    pub step: Duration,
    /// Stop after this many steps in total (0: run until SIGTERM).
    pub steps: u64,
}

/// A scheduled member's schedule and wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// `RunOptions::every(every)`.
    pub every: Duration,
    /// This member's wall clock is `SystemTime::now()` plus this many milliseconds
    /// (negative: behind).
    pub clock_offset_ms: i64,
    /// `RunOptions::missed_fires`.
    pub missed: MissedFires,
    /// `RunOptions::catch_up_window`, if set.
    pub catch_up_window: Option<Duration>,
    /// `RunOptions::retry_interrupted`, if set.
    pub retry_interrupted: Option<Duration>,
}

impl Schedule {
    /// `every`, no clock offset, the default missed-fire policy, no retries.
    pub fn every(every: Duration) -> Self {
        Self {
            every,
            clock_offset_ms: 0,
            missed: MissedFires::Skip,
            catch_up_window: None,
            retry_interrupted: None,
        }
    }

    /// The options this schedule runs with.
    pub fn options(&self) -> RunOptions {
        let schedule = *self;
        let mut options = RunOptions::every(self.every)
            .missed_fires(self.missed)
            .with_wall_clock(move || schedule.now());
        if let Some(window) = self.catch_up_window {
            options = options.catch_up_window(window);
        }
        if let Some(within) = self.retry_interrupted {
            options = options.retry_interrupted(within);
        }
        options
    }
}

/// Parses a missed-fire policy: `skip`, `run-once` or `run-each:N`.
///
/// # Errors
///
/// If `text` is none of those.
pub fn parse_missed(text: &str) -> anyhow::Result<MissedFires> {
    match text.trim() {
        "skip" => Ok(MissedFires::Skip),
        "run-once" => Ok(MissedFires::RunOnce),
        other => match other.strip_prefix("run-each:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(MissedFires::RunEach(n)),
            _ => anyhow::bail!("{text:?} is not skip, run-once or run-each:N"),
        },
    }
}

/// The name [`parse_missed`] reads back.
fn missed_name(missed: MissedFires) -> String {
    match missed {
        MissedFires::Skip => "skip".to_owned(),
        MissedFires::RunOnce => "run-once".to_owned(),
        MissedFires::RunEach(n) => format!("run-each:{n}"),
        other => format!("{other:?}"),
    }
}

impl Schedule {
    /// This member's wall clock now.
    pub fn now(&self) -> SystemTime {
        offset_clock(SystemTime::now(), self.clock_offset_ms)
    }
}

/// `time` moved by `offset_ms` milliseconds (negative: back).
fn offset_clock(time: SystemTime, offset_ms: i64) -> SystemTime {
    let by = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms >= 0 { time + by } else { time - by }
}

/// A wall-clock instant in UNIX milliseconds (0 before the epoch).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a member prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// One JSON object per event (see the module docs).
    #[default]
    Json,
    /// `task run N` for every work step and nothing else, as the Go example prints.
    Go,
}

impl Output {
    /// Prints an event in this format.
    fn print(self, event: &str, fields: Value) {
        match self {
            Output::Json => emit(event, fields),
            Output::Go if event == "work" => {
                let mut out = std::io::stdout().lock();
                // As in `emit`: a closed stdout must not kill the member.
                let _ = writeln!(out, "task run {}", fields["step"]);
                let _ = out.flush();
            }
            Output::Go => {}
        }
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn mono_ns() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

/// Prints one event line to stdout.
pub fn emit(event: &str, mut fields: Value) {
    if let Value::Object(map) = &mut fields {
        map.insert("event".into(), event.into());
        map.insert("pid".into(), std::process::id().into());
        map.insert("mono_ns".into(), json!(mono_ns()));
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout (the reader went away) must not kill the member mid-lease.
    let _ = writeln!(out, "{fields}");
    let _ = out.flush();
}

/// Runs a member until SIGTERM (graceful drain-then-release) or `steps` steps, printing
/// JSON lines. `SIGUSR1` and `SIGUSR2` start and end a CPU starvation of the current
/// runtime ([`crate::starve::on_signals`]).
///
/// # Errors
///
/// If the backend URL is invalid or the runner cannot be built (e.g. a TTL below the
/// backend's minimum). Backend outages after the start are events, not errors.
pub async fn run(config: MemberConfig) -> anyhow::Result<()> {
    run_with(config, Output::Json).await
}

/// Like [`run`], printing in `output`'s format.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with(config: MemberConfig, output: Output) -> anyhow::Result<()> {
    run_member(config, output, None).await
}

/// Like [`run_with`], running the routine on `schedule` instead of keeping it running
/// (`config.steps` is ignored; each run lasts one `config.step`), until SIGTERM.
///
/// # Errors
///
/// As [`run`].
pub async fn run_scheduled(
    config: MemberConfig,
    schedule: Schedule,
    output: Output,
) -> anyhow::Result<()> {
    run_member(config, output, Some(schedule)).await
}

async fn run_member(
    config: MemberConfig,
    output: Output,
    schedule: Option<Schedule>,
) -> anyhow::Result<()> {
    let backend = leasehold::connect(&config.backend).await?;
    let runner = Runner::builder()
        .with_shared_backend(backend)
        .with_lease_ttl(config.ttl)
        .with_signal_handling(true)
        .build()?;
    // Nothing wakes the routine through `work` until SIGUSR1 (see `crate::starve`).
    let work = crate::starve::Work::default();
    let load = std::sync::Arc::clone(&work);
    let starver = tokio::spawn(async move {
        if let Err(error) = crate::starve::on_signals(load).await {
            output.print("starve_failed", json!({ "error": error.to_string() }));
        }
    });
    let mut events = runner.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event.kind {
                EventKind::Acquired { token } => {
                    output.print("acquired", json!({ "token": token.get() }))
                }
                EventKind::LeaseLost { token } => {
                    output.print("lost", json!({ "token": token.get() }))
                }
                EventKind::Released { token } => {
                    output.print("released", json!({ "token": token.get() }))
                }
                EventKind::BackendError { error } => {
                    output.print("backend_error", json!({ "error": error }))
                }
                EventKind::RefreshFailed { error } => {
                    output.print("refresh_failed", json!({ "error": error }))
                }
                EventKind::ReleaseFailed { error } => {
                    output.print("release_failed", json!({ "error": error }))
                }
                EventKind::FireInterrupted { fire, retried } => output.print(
                    "fire_interrupted",
                    json!({ "fire_ms": unix_ms(fire), "retried": retried }),
                ),
                EventKind::FireMissed { fire } => {
                    output.print("fire_missed", json!({ "fire_ms": unix_ms(fire) }))
                }
                _ => {}
            }
        }
    });

    if let Some(schedule) = schedule {
        let member = runner.holder_identity().to_owned();
        let options = schedule.options();
        let step = config.step;
        output.print(
            "scheduled",
            json!({
                "every_ms": schedule.every.as_millis(),
                "clock_offset_ms": schedule.clock_offset_ms,
                "missed": missed_name(schedule.missed),
                "catch_up_window_ms": schedule.catch_up_window.map(|d| d.as_millis()),
                "retry_interrupted_ms": schedule.retry_interrupted.map(|d| d.as_millis()),
                "member": member,
            }),
        );
        let _handle = runner.run_named(
            &config.name,
            move |ctx| {
                let member = member.clone();
                let token = ctx.fencing_token().map_or(0, |t| t.get());
                let fire_ms = leasehold::scheduled_fire().map_or(0, unix_ms);
                async move {
                    let fields = json!({ "fire_ms": fire_ms, "token": token, "member": member });
                    let started_ns = mono_ns();
                    output.print("fire_started", fields.clone());
                    let cancelled = tokio::select! {
                        _ = ctx.cancelled() => true,
                        _ = tokio::time::sleep(step) => false,
                    };
                    let mut done = fields;
                    done["started_ns"] = json!(started_ns);
                    done["cancelled"] = json!(cancelled);
                    output.print("fire_done", done);
                }
            },
            options,
        );
        runner.wait_for_shutdown().await;
        drop(runner);
        let _ = printer.await;
        starver.abort();
        output.print("stopped", json!({}));
        return Ok(());
    }

    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let step = config.step;
    let limit = config.steps;
    let handle = runner.run_named(
        &config.name,
        move |ctx| {
            let done_tx = done_tx.clone();
            let work = std::sync::Arc::clone(&work);
            let token = ctx.fencing_token().map_or(0, |t| t.get());
            async move {
                // Every instance counts from 0, like the Go example's routine.
                let mut step_no = 0;
                loop {
                    tokio::select! {
                        _ = ctx.cancelled() => {
                            output.print("cancelled", json!({ "token": token, "reason": format!("{:?}", ctx.cancel_reason()) }));
                            return;
                        }
                        _ = tokio::time::sleep(step) => {}
                        // Work handed over by a starved runtime's busy tasks.
                        _ = work.notified() => {}
                    }
                    output.print("work", json!({ "token": token, "step": step_no }));
                    step_no += 1;
                    if limit > 0 && step_no >= limit {
                        let _ = done_tx.send(()).await;
                        ctx.cancelled().await;
                        return;
                    }
                }
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    tokio::select! {
        _ = runner.wait_for_shutdown() => {}
        _ = done_rx.recv() => {
            handle.cancel();
            runner.shutdown().await;
        }
    }
    // The printer ends once the runner (the events' sender) is gone, after printing
    // everything up to the release.
    drop(runner);
    let _ = printer.await;
    starver.abort();
    output.print("stopped", json!({}));
    Ok(())
}
