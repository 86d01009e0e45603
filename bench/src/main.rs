//! `leasehold-bench`: benchmarks of `leasehold` on the memory, Redis, etcd and PostgreSQL
//! backends, each against the raw operations of the same server in the same run.
//!
//! ```text
//! cargo run --release -p leasehold-bench -- [--backends memory,redis,etcd,postgres]
//!     [--only latency,handover,crash,expiry,scale,contention] [--waiters 2,10,50,100]
//!     [--routines 1000,10000,100000] [--quick] [--json bench/results/latest.json]
//! ```
//!
//! `--backends` may also name `redis-cluster` (three masters with a replica each, the
//! Redis backend's cluster mode), which only the `scale` part measures; it is not in
//! the default run.
//!
//! `contention` (W member processes waiting for one name) runs only when named in
//! `--only`: it starts up to a hundred processes per backend and takes minutes.
//!
//! It starts its own throwaway servers (the conformance crate's), re-executes itself as
//! member processes (`member`) and as the process holding many routines (`hold`), prints
//! Markdown tables and, with `--json`, writes every figure. Nothing here fails on speed:
//! the goals are reported as met or not. See `BENCHMARKS.md` for how to read the tables.

// `member`'s future nests the backends' connect futures deeply enough to pass the
// default limit of 128 when rustc computes its layout ("queries overflow the depth
// limit").
#![recursion_limit = "256"]

mod args;
mod child;
mod contention;
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

use anyhow::{Context as _, Result, bail};

use crate::args::Args;
use crate::report::{BackendReport, Machine, Report, Settings};
use crate::targets::{Kind, Target};

const USAGE: &str = "usage: leasehold-bench \
                     [--backends memory,redis,redis-cluster,etcd,postgres,postgres-nondurable] \
                     [--only latency,handover,crash,expiry,scale,contention] \
                     [--waiters 2,10,50,100] [--routines 1000,10000] [--quick] [--json PATH]";
/// The parts a run without `--only` runs.
const DEFAULT_PARTS: [&str; 5] = ["latency", "handover", "crash", "expiry", "scale"];
/// Every part, `contention` included.
const PARTS: [&str; 6] = [
    "latency",
    "handover",
    "crash",
    "expiry",
    "scale",
    "contention",
];

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
    // `--lean` members (the contention benchmark starts up to a hundred) run on one
    // thread.
    let runtime = if args.flag("lean") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
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

fn settings(quick: bool, waiters: Vec<u64>, routines: Option<Vec<u64>>) -> Settings {
    let mut settings = if quick {
        Settings {
            quick,
            latency_iterations: 200,
            handover_rounds: 10,
            crash_rounds: 3,
            scale_routines: vec![100, 1_000],
            scale_settle_s: 2.0,
            scale_window_s: 3.0,
            contention_waiters: waiters,
            contention_rounds: 5,
            contention_window_s: 4.0,
        }
    } else {
        Settings {
            quick,
            latency_iterations: 2_000,
            handover_rounds: 100,
            crash_rounds: 10,
            scale_routines: vec![1_000, 10_000],
            scale_settle_s: 3.0,
            scale_window_s: 10.0,
            contention_waiters: waiters,
            contention_rounds: 20,
            contention_window_s: 10.0,
        }
    };
    if let Some(routines) = routines {
        settings.scale_routines = routines;
    }
    settings
}

/// A comma-separated list of positive counts, or `None` if the option is absent.
fn counts(args: &Args, name: &str) -> Result<Option<Vec<u64>>> {
    args.list(name)
        .map(|counts| {
            counts
                .iter()
                .map(|count| {
                    count
                        .parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .with_context(|| format!("--{name} {count:?}: a positive count"))
                })
                .collect()
        })
        .transpose()
}

async fn benchmark(args: &Args) -> Result<()> {
    procfs::check_tick_rate()?;
    let kinds = match args.list("backends") {
        Some(names) => names
            .iter()
            .map(|name| name.parse())
            .collect::<Result<Vec<Kind>>>()?,
        None => Kind::DEFAULT.to_vec(),
    };
    let parts = args
        .list("only")
        .unwrap_or_else(|| DEFAULT_PARTS.iter().map(|p| p.to_string()).collect());
    if let Some(unknown) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("unknown part {unknown:?}; {USAGE}");
    }
    let runs = |part: &str| parts.iter().any(|p| p == part);
    let waiters = counts(args, "waiters")?.unwrap_or_else(|| vec![2, 10, 50, 100]);
    let settings = settings(args.flag("quick"), waiters, counts(args, "routines")?);
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
            counts: settings.scale_routines.clone(),
            settle: Duration::from_secs_f64(settings.scale_settle_s),
            window: Duration::from_secs_f64(settings.scale_window_s),
        };
        part!("scale", scale, scale::measure(&target, &plan));
        if kind != Kind::Memory {
            let plan = contention::Plan {
                waiters: settings.contention_waiters.clone(),
                rounds: settings.contention_rounds,
                window: Duration::from_secs_f64(settings.contention_window_s),
            };
            part!(
                "contention",
                contention,
                contention::measure(&target, &plan)
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(args: &[&str]) -> Args {
        Args::parse(args.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn routines_replace_the_default_scale_counts() {
        let given = counts(&args(&["--routines", "1000,100000"]), "routines").unwrap();
        assert_eq!(
            settings(false, vec![2], given).scale_routines,
            [1_000, 100_000]
        );
        assert_eq!(
            settings(false, vec![2], None).scale_routines,
            [1_000, 10_000]
        );
        assert_eq!(settings(true, vec![2], None).scale_routines, [100, 1_000]);
    }

    #[test]
    fn a_count_that_is_not_positive_is_an_error() {
        assert!(counts(&args(&["--routines", "1000,0"]), "routines").is_err());
        assert!(counts(&args(&["--waiters", "ten"]), "waiters").is_err());
        assert_eq!(counts(&args(&[]), "routines").unwrap(), None);
    }

    #[test]
    fn redis_cluster_is_named_but_not_run_by_default() {
        assert_eq!("redis-cluster".parse::<Kind>().unwrap(), Kind::RedisCluster);
        assert!(!Kind::DEFAULT.contains(&Kind::RedisCluster));
    }
}
