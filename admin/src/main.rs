//! `leasehold-admin`: an operator's command line for `leasehold` leases.
//!
//! ```text
//! leasehold-admin [--url URL] list [PREFIX] [--json]
//! leasehold-admin [--url URL] show NAME [--json]
//! leasehold-admin [--url URL] watch NAME [--interval 1s]
//! leasehold-admin [--url URL] release NAME [--force]
//! ```
//!
//! The backend is named as for the library: `--url`, else `ROUTINE_BACKEND_URL`, else
//! Redis from the Go original's `REDIS_*` variables.
//!
//! Exit codes: 0 the command did what was asked (`show` of a free name included), 1 an
//! error (bad setting, unreachable server, unsupported query), 2 a usage error, including
//! `release` without `--force`.

mod commands;
mod error;
mod render;
mod target;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{AdminError, EXIT_OK};
use crate::target::Target;

/// Inspect and unstick leasehold leases on Redis, etcd or PostgreSQL.
///
/// The backend is named by --url, else by ROUTINE_BACKEND_URL, else Redis is configured
/// from the REDIS_* variables (REDIS_HOSTS, REDIS_PASSWORD, REDIS_DB, ...), as for the
/// leasehold library. A postgres:// URL also takes ROUTINE_POSTGRES_SCHEMA, _TABLE,
/// _NAMESPACE and _REQUEST_TIMEOUT from the environment.
///
/// Exit codes: 0 done (for `show`, held or free), 1 error, 2 usage error or `release`
/// without --force.
#[derive(Debug, Parser)]
#[command(name = "leasehold-admin", version)]
struct Cli {
    /// The lease backend: redis://, rediss://, etcd://, etcds://, http(s):// (etcd),
    /// postgres://, postgresql:// or memory:// [default: $ROUTINE_BACKEND_URL]
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the held leases (all, or those whose name starts with PREFIX).
    List {
        /// Only names starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show who holds one lease, or that it is free (exit code 0 either way).
    Show {
        /// The routine's name.
        name: String,
        /// Print a JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Print each change of a lease's holder until Ctrl-C.
    Watch {
        /// The routine's name.
        name: String,
        /// How often to read the lease, besides the backend's release notifications
        /// (e.g. 500ms, 2s).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Free a lease whoever holds it: refuses without --force and says what forcing does.
    Release {
        /// The routine's name.
        name: String,
        /// Really free it. The holder may keep running until its next refresh while a
        /// waiter starts: run without --force to read what this means on your backend.
        #[arg(long)]
        force: bool,
    },
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(interval) if interval.is_zero() => Err("the interval must be greater than zero".into()),
        Ok(interval) => Ok(interval),
        Err(error) => Err(format!("{error} (expected e.g. 500ms or 2s)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("leasehold-admin: cannot start the async runtime: {error}");
            return ExitCode::from(error::EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(error) => {
            let _ = std::io::stdout().flush();
            eprintln!("leasehold-admin: {}", error.chain());
            error.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<(), AdminError> {
    let target = Target::resolve(cli.url)?;
    let backend = target.connect().await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::List { prefix, json } => commands::list(&*backend, &prefix, json, &mut out).await,
        Command::Show { name, json } => commands::show(&*backend, &name, json, &mut out).await,
        Command::Watch { name, interval } => {
            commands::watch(backend, &name, interval, &mut out).await
        }
        Command::Release { name, force } => {
            commands::release(&*backend, &name, force, &mut out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn intervals_parse_as_durations() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
