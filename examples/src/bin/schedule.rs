//! A scheduled routine on several members: each fire runs once, on one of them.
//!
//! ```text
//! cargo run -p leasehold-examples --bin schedule                       # in-memory, one process
//! cargo run -p leasehold-examples --bin schedule -- --backend redis://127.0.0.1:6379
//! cargo run -p leasehold-examples --bin schedule -- --cron "*/2 * * * * *" --zone Europe/Berlin
//! ```
//!
//! `--members` runners (default 3), each with its own client of the backend (in-memory
//! unless `--backend URL`), run one routine `--every` period (default 2 s) or on a
//! `--cron` expression in `--zone` (default UTC), and print which member ran each fire.
//! The run takes no time, so with a lock held only while the job runs a member whose clock
//! is a little behind would run it again; here each fire is claimed in the name's record
//! in the backend, which the members behind find. After `--fires` fires (default 5) the
//! members shut down and the program checks that no fire ran twice. With `--skew 1s`,
//! member `i`'s clock runs `i` seconds behind: the member ahead runs every fire from its
//! start on, and the ones behind find them claimed (at the start they run the fires from
//! before the one ahead began). Start it in two terminals against one server to see two
//! processes share the fires.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use leasehold::{MemoryBackend, RunOptions, Runner};
use leasehold_examples::args::Args;
use tokio::sync::mpsc;

const NAME: &str = "report";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env()?;
    let members = args.number("members", 3)?.max(1) as usize;
    let fires = args.number("fires", 5)?.max(1) as usize;
    let skew = args.duration("skew", Duration::ZERO)?;
    let options = match args.get("cron") {
        Some(expression) => {
            let zone = args.get("zone").unwrap_or("UTC");
            let zone: leasehold::chrono_tz::Tz = zone
                .parse()
                .map_err(|error| anyhow::anyhow!("--zone {zone:?}: {error}"))?;
            println!("{members} members run `{NAME}` on cron {expression:?} in {zone}");
            RunOptions::cron(expression, zone)?
        }
        None => {
            let every = args.duration("every", Duration::from_secs(2))?;
            println!("{members} members run `{NAME}` every {every:?}");
            RunOptions::every(every)
        }
    };
    let memory = MemoryBackend::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, SystemTime)>();
    let mut runners = Vec::new();
    for member in 0..members {
        let builder = Runner::builder().with_signal_handling(true);
        let runner = match args.get("backend") {
            None => builder.with_backend(memory.clone()).build()?,
            Some(url) => builder
                .with_shared_backend(leasehold::connect(url).await.context("connecting")?)
                .build()?,
        };
        let tx = tx.clone();
        runner.run_named(
            NAME,
            move |_ctx| {
                if let Some(fire) = leasehold::scheduled_fire() {
                    let _ = tx.send((member, fire));
                }
                async {}
            },
            // Member `i`'s wall clock is `i * skew` behind the system's.
            options.clone().with_wall_clock(move || {
                let behind = skew * member as u32;
                SystemTime::now()
                    .checked_sub(behind)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            }),
        );
        runners.push(runner);
    }
    drop(tx);
    let mut ran: BTreeMap<SystemTime, Vec<usize>> = BTreeMap::new();
    while ran.len() < fires {
        let Some((member, fire)) = rx.recv().await else {
            break;
        };
        println!(
            "  fire {} ran on member {member}",
            humantime::format_rfc3339_millis(fire)
        );
        ran.entry(fire).or_default().push(member);
    }
    for runner in &runners {
        runner.shutdown().await;
    }
    let twice: Vec<_> = ran
        .iter()
        .filter(|(_, members)| members.len() > 1)
        .collect();
    if !twice.is_empty() {
        bail!("fires that ran more than once: {twice:?}");
    }
    println!("{} fires, each ran once", ran.len());
    Ok(())
}
