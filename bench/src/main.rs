//! `leasehold-bench`: benchmarks of `leasehold` on the memory, Redis, etcd and PostgreSQL
//! backends, each against the raw operations of the same server in the same run.
//!
//! ```text
//! cargo run --release -p leasehold-bench -- [--backends memory,redis,etcd,postgres]
//!     [--only latency,handover,crash,expiry,scale] [--quick] [--json bench/results/latest.json]
//! ```
//!
//! It starts its own throwaway servers (the conformance crate's), re-executes itself as
//! member processes (`member`) and as the process holding many routines (`hold`), prints
//! Markdown tables and, with `--json`, writes every figure. Nothing here fails on speed:
//! the goals are reported as met or not. See `BENCHMARKS.md` for how to read the tables.

mod args;
mod child;
mod crash;
mod expiry;
mod handover;
mod latency;
mod procfs;
mod report;
mod scale;
mod spawn;
mod stats;
mod table;
mod targets;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::args::Args;
use crate::report::{BackendReport, Machine, Report, Settings};
use crate::targets::{Kind, Target};

const USAGE: &str = "usage: leasehold-bench [--backends memory,redis,etcd,postgres] \
                     [--only latency,handover,crash,expiry,scale] [--quick] [--json PATH]";
const PARTS: [&str; 5] = ["latency", "handover", "crash", "expiry", "scale"];

fn main() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    if args.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    // Children log to stderr what `RUST_LOG` asks for (errors only by default): lease
    // losses and backend errors during a measurement are worth seeing.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.mode.as_deref() {
        None => runtime.block_on(benchmark(&args)),
        Some("member") => runtime.block_on(child::member(
            args.required("backend")?,
            args.required("name")?,
            args.duration("ttl")?,
        )),
        Some("hold") => runtime.block_on(child::hold(
            args.required("backend")?,
            args.required("prefix")?,
            args.number("routines")?,
            args.duration("ttl")?,
        )),
        Some(other) => bail!("unknown mode {other:?}; {USAGE}"),
    }
}

fn settings(quick: bool) -> Settings {
    if quick {
        Settings {
            quick,
            latency_iterations: 200,
            handover_rounds: 10,
            crash_rounds: 3,
            scale_routines: [100, 1_000],
            scale_settle_s: 2.0,
            scale_window_s: 3.0,
        }
    } else {
        Settings {
            quick,
            latency_iterations: 2_000,
            handover_rounds: 100,
            crash_rounds: 10,
            scale_routines: [1_000, 10_000],
            scale_settle_s: 3.0,
            scale_window_s: 10.0,
        }
    }
}

async fn benchmark(args: &Args) -> Result<()> {
    procfs::check_tick_rate()?;
    let kinds = match args.list("backends") {
        Some(names) => names
            .iter()
            .map(|name| name.parse())
            .collect::<Result<Vec<Kind>>>()?,
        None => Kind::ALL.to_vec(),
    };
    let parts = args
        .list("only")
        .unwrap_or_else(|| PARTS.iter().map(|p| p.to_string()).collect());
    if let Some(unknown) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("unknown part {unknown:?}; {USAGE}");
    }
    let runs = |part: &str| parts.iter().any(|p| p == part);
    let settings = settings(args.flag("quick"));
    let mut machine = Machine::describe();
    eprintln!("load at start: {}", machine.load_at_start);

    let mut backends = Vec::new();
    for kind in kinds {
        let Some(target) = Target::start(kind).await? else {
            eprintln!("{kind}: server binaries missing, skipped");
            continue;
        };
        let mut report = BackendReport {
            backend: kind.name(),
            ..BackendReport::default()
        };
        macro_rules! part {
            ($name:literal, $field:ident, $call:expr) => {
                if runs($name) {
                    eprintln!("{kind}: {} (load {})", $name, report::load());
                    match $call.await {
                        Ok(figures) => report.$field = Some(figures),
                        Err(error) => {
                            eprintln!("{kind}: {} failed: {error:#}", $name);
                            report.errors.push(format!("{}: {error:#}", $name));
                        }
                    }
                }
            };
        }
        part!(
            "latency",
            latency,
            latency::measure(&target, settings.latency_iterations)
        );
        part!(
            "handover",
            handover,
            handover::measure(&target, settings.handover_rounds)
        );
        part!(
            "crash",
            crash,
            crash::measure(&target, settings.crash_rounds)
        );
        if kind == Kind::Etcd {
            part!(
                "expiry",
                expiry,
                expiry::measure(&target, settings.crash_rounds * 4)
            );
        }
        let plan = scale::Plan {
            counts: settings.scale_routines,
            settle: Duration::from_secs_f64(settings.scale_settle_s),
            window: Duration::from_secs_f64(settings.scale_window_s),
        };
        part!("scale", scale, scale::measure(&target, plan));
        backends.push(report);
    }
    machine.load_at_end = report::load();
    let report = Report {
        finished_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        settings,
        goals: table::goals(&backends),
        backends,
    };
    println!("{}", table::markdown(&report));
    if let Some(path) = args.get("json") {
        let path = PathBuf::from(path);
        report.write_json(&path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
