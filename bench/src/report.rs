//! `Report`: everything one run measured, the machine it ran on, and its JSON form.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::contention::Contention;
use crate::crash::Crash;
use crate::expiry::Expiry;
use crate::handover::Handover;
use crate::latency::Latency;
use crate::scale::Scale;

/// One run of the benchmark.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Seconds since the Unix epoch when the run finished.
    pub(crate) finished_unix_s: u64,
    pub(crate) command: String,
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) backends: Vec<BackendReport>,
    pub(crate) goals: Vec<Goal>,
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) latency_iterations: usize,
    pub(crate) handover_rounds: usize,
    pub(crate) crash_rounds: usize,
    pub(crate) scale_routines: Vec<u64>,
    pub(crate) scale_settle_s: f64,
    pub(crate) scale_window_s: f64,
    pub(crate) contention_waiters: Vec<u64>,
    pub(crate) contention_rounds: usize,
    pub(crate) contention_window_s: f64,
}

/// The figures of one backend; a measurement that failed has its error instead.
#[derive(Debug, Default, Serialize)]
pub(crate) struct BackendReport {
    pub(crate) backend: &'static str,
    pub(crate) latency: Option<Latency>,
    pub(crate) handover: Option<Handover>,
    pub(crate) crash: Option<Crash>,
    pub(crate) expiry: Option<Expiry>,
    pub(crate) scale: Option<Scale>,
    pub(crate) contention: Option<Contention>,
    pub(crate) errors: Vec<String>,
}

/// A goal of the issue, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Goal {
    pub(crate) backend: &'static str,
    pub(crate) goal: &'static str,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

/// The machine, for the record: benchmark figures mean little without it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu_model: String,
    pub(crate) cpus: usize,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages at the start and the end.
    pub(crate) load_at_start: String,
    pub(crate) load_at_end: String,
}

impl Machine {
    pub(crate) fn describe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            rustc,
            load_at_start: load(),
            load_at_end: String::new(),
        }
    }
}

/// The load averages now (`/proc/loadavg`, first three fields).
pub(crate) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// Writes the report as pretty JSON to `path`.
    pub(crate) fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))
    }
}
