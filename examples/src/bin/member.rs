//! One cluster member:
//! `member --backend URL [--name task] [--ttl 2s] [--step 100ms] [--steps N]
//! [--format json|go] [--exit-with-stdin true] [--every 1s [--clock-offset -2000]
//! [--missed skip|run-once|run-each:N] [--catch-up-window 10s] [--retry-interrupted 10s]]]`.
//!
//! Keeps the routine `--name` running as one instance across all members and prints one
//! JSON object per event (see `leasehold_examples::member`), or with `--format go` only the
//! `task run N` lines of the Go package's cluster example. SIGTERM drains and releases;
//! SIGUSR1 starves the member's runtime of CPU until SIGUSR2 (for fault tests).
//!
//! With `--every` it runs the routine on that schedule instead, each run one `--step`
//! long, its wall clock `--clock-offset` milliseconds (signed) off the system's, missed
//! fires handled by `--missed` (`RunOptions::missed_fires`, default skip) within
//! `--catch-up-window` (`RunOptions::catch_up_window`, default the library's), and runs
//! found cut off run again within `--retry-interrupted` of their fire
//! (`RunOptions::retry_interrupted`; default: recorded failed, not run again).
//!
//! With `--exit-with-stdin true` the member exits at once, without releasing, when its
//! standard input reaches end of file: a test harness that starts members with a pipe on
//! their stdin takes them down with it, even if the harness itself is killed.

use std::time::Duration;

use anyhow::bail;
use leasehold::MissedFires;
use leasehold_examples::args::Args;
use leasehold_examples::member::{self, MemberConfig, Output, Schedule};
use std::io::Read as _;

const USAGE: &str = "usage: member --backend URL [--name task] [--ttl 2s] [--step 100ms] \
                     [--steps N] [--format json|go] [--exit-with-stdin true] \
                     [--every 1s [--clock-offset MS] [--missed skip|run-once|run-each:N] \
                     [--catch-up-window 10s] [--retry-interrupted 10s]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env()?;
    let Some(backend) = args.get("backend") else {
        bail!(USAGE);
    };
    let output = match args.get("format") {
        None | Some("json") => Output::Json,
        Some("go") => Output::Go,
        Some(other) => bail!("--format {other:?} is not json or go; {USAGE}"),
    };
    match args.get("exit-with-stdin") {
        None | Some("false") => {}
        Some("true") => {
            // A plain thread: a blocking read in tokio's pool would keep the runtime
            // from shutting down when `main` returns.
            std::thread::spawn(exit_when_stdin_closes);
        }
        Some(other) => bail!("--exit-with-stdin {other:?} is not true or false; {USAGE}"),
    }
    let config = MemberConfig {
        backend: backend.to_owned(),
        name: args.get("name").unwrap_or("task").to_owned(),
        ttl: args.duration("ttl", Duration::from_secs(2))?,
        step: args.duration("step", Duration::from_millis(100))?,
        steps: args.number("steps", 0)?,
    };
    let schedule = match args.get("every") {
        None => None,
        Some(_) => Some(Schedule {
            clock_offset_ms: match args.get("clock-offset") {
                None => 0,
                Some(ms) => ms.trim().parse().map_err(|_| {
                    anyhow::anyhow!("--clock-offset {ms:?} is not whole milliseconds; {USAGE}")
                })?,
            },
            missed: match args.get("missed") {
                None => MissedFires::Skip,
                Some(text) => member::parse_missed(text)
                    .map_err(|error| anyhow::anyhow!("--missed: {error}; {USAGE}"))?,
            },
            catch_up_window: match args.get("catch-up-window") {
                None => None,
                Some(_) => Some(args.duration("catch-up-window", Duration::ZERO)?),
            },
            retry_interrupted: match args.get("retry-interrupted") {
                None => None,
                Some(_) => Some(args.duration("retry-interrupted", Duration::ZERO)?),
            },
            ..Schedule::every(args.duration("every", Duration::from_secs(1))?)
        }),
    };
    match schedule {
        Some(schedule) => member::run_scheduled(config, schedule, output).await,
        None => member::run_with(config, output).await,
    }
}

/// Reads stdin until end of file (or an error), then exits like a crash: the parent is
/// gone, so nobody will stop this member any more.
fn exit_when_stdin_closes() {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    std::process::exit(3);
}
