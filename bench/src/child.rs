//! The two child modes of this program, each run in its own process by the benchmarks:
//!
//! - `member`: one cluster member keeping one named routine running with
//!   `keep_running_one_instance`, printing a JSON line per event with its
//!   `CLOCK_MONOTONIC` time (`mono_ns`, comparable across processes on the host).
//!   SIGTERM drains and releases, as in a service;
//! - `hold`: one process keeping N named routines running, each holding its lease,
//!   for the scale benchmark. It prints `ready` once all N run, and answers a `status`
//!   line on stdin with how many run and how often they were started; a `stop` line
//!   shuts its runner down, releasing every lease.
//!
//! Both exit at once, without releasing anything, when stdin reaches end of file: the
//! benchmark holds the other end, so children never outlive it.

use std::io::{BufRead as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use leasehold::{EventKind, RunOptions, Runner};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// `CLOCK_MONOTONIC` now, in nanoseconds: the same clock in every process on the host.
pub(crate) fn mono_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The `CLOCK_MONOTONIC` time of a tokio instant in the past (tokio's clock is
/// `CLOCK_MONOTONIC` on Linux when not paused).
fn mono_ns_of(at: tokio::time::Instant) -> u64 {
    mono_ns().saturating_sub(at.elapsed().as_nanos() as u64)
}

/// Prints one JSON line with `event` and `mono_ns` added.
fn emit(event: &str, mono_ns: u64, mut fields: Value) {
    if let Value::Object(map) = &mut fields {
        map.insert("event".into(), event.into());
        map.insert("mono_ns".into(), mono_ns.into());
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{fields}");
    let _ = out.flush();
}

/// Exits the process, without any cleanup, when stdin closes; calls `on_line` for every
/// line before that. A plain thread, so that it works whatever the runtime does.
fn watch_stdin(on_line: impl Fn(&str) + Send + 'static) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(line) => on_line(line.trim()),
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
}

/// `member`: see the module docs.
pub(crate) async fn member(backend: &str, name: &str, ttl: Duration) -> Result<()> {
    watch_stdin(|_| {});
    let backend = leasehold::connect(backend).await?;
    let runner = Runner::builder()
        .with_shared_backend(backend)
        .with_lease_ttl(ttl)
        .with_signal_handling(true)
        .build()?;
    let mut events = runner.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let at = mono_ns_of(event.at);
            match event.kind {
                EventKind::Contended { holder, .. } => {
                    emit("contended", at, json!({ "holder": holder }))
                }
                EventKind::Acquired { token } => {
                    emit("acquired", at, json!({ "token": token.get() }))
                }
                EventKind::Released { token } => {
                    emit("released", at, json!({ "token": token.get() }))
                }
                EventKind::LeaseLost { token } => emit("lost", at, json!({ "token": token.get() })),
                EventKind::BackendError { error } => {
                    emit("backend_error", at, json!({ "error": error }))
                }
                EventKind::ReleaseFailed { error } => {
                    emit("release_failed", at, json!({ "error": error }))
                }
                _ => {}
            }
        }
    });
    let _handle = runner.run_named(
        name,
        |ctx| async move {
            ctx.cancelled().await;
            // The routine is done: from here on, handover is the library's work.
            emit("returning", mono_ns(), json!({}));
        },
        RunOptions::keep_running_one_instance(),
    );
    emit("started", mono_ns(), json!({ "pid": std::process::id() }));
    runner.wait_for_shutdown().await;
    // The printer ends when the runner, the events' sender, is gone.
    drop(runner);
    let _ = printer.await;
    emit("stopped", mono_ns(), json!({}));
    Ok(())
}

/// Routines of a `hold` process currently running under their lease, and starts so far.
static RUNNING: AtomicU64 = AtomicU64::new(0);
static STARTS: AtomicU64 = AtomicU64::new(0);
/// Notified by a `stop` line on stdin.
static STOP: Notify = Notify::const_new();

/// `hold`: see the module docs. Its lines carry `mono_ns` 0: it times only itself, with
/// `Instant`, so that it runs under valgrind (whose vDSO rustix's clock cannot read).
pub(crate) async fn hold(backend: &str, prefix: &str, routines: u64, ttl: Duration) -> Result<()> {
    watch_stdin(|line| {
        if line == "status" {
            emit(
                "status",
                0,
                json!({
                    "running": RUNNING.load(Ordering::SeqCst),
                    "starts": STARTS.load(Ordering::SeqCst),
                }),
            );
        }
        if line == "stop" {
            STOP.notify_one();
        }
    });
    let started = std::time::Instant::now();
    let backend = leasehold::connect(backend).await?;
    let runner = Runner::builder()
        .with_shared_backend(backend)
        .with_lease_ttl(ttl)
        .with_signal_handling(false)
        .build()?;
    let all_running = Arc::new(Notify::new());
    for i in 0..routines {
        let all_running = Arc::clone(&all_running);
        let _handle = runner.run_named(
            &format!("{prefix}-{i}"),
            move |ctx| {
                let all_running = Arc::clone(&all_running);
                async move {
                    STARTS.fetch_add(1, Ordering::SeqCst);
                    if RUNNING.fetch_add(1, Ordering::SeqCst) + 1 == routines {
                        all_running.notify_one();
                    }
                    ctx.cancelled().await;
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                }
            },
            RunOptions::keep_running_one_instance(),
        );
    }
    if routines > 0 {
        // The benchmark gives up sooner; this only ends a child left behind.
        tokio::time::timeout(Duration::from_secs(600), all_running.notified())
            .await
            .context("not every routine acquired its lease within 10 minutes")?;
    }
    emit(
        "ready",
        0,
        json!({
            "pid": std::process::id(),
            "routines": routines,
            "startup_ms": started.elapsed().as_millis() as u64,
        }),
    );
    // Runs until told to stop, or until stdin closes (see `watch_stdin`).
    STOP.notified().await;
    let stopping = std::time::Instant::now();
    runner.shutdown().await;
    emit(
        "stopped",
        0,
        json!({ "shutdown_ms": stopping.elapsed().as_millis() as u64 }),
    );
    Ok(())
}
