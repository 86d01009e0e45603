//! One cluster member: `member --backend URL [--name task] [--ttl 2s] [--step 100ms] [--steps N]`.
//!
//! Keeps the routine `--name` running as one instance across all members and prints one
//! JSON object per event (see `routine_examples::member`). SIGTERM drains and releases.

use routine_examples::args::Args;
use routine_examples::member::{self, MemberConfig};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env()?;
    let Some(backend) = args.get("backend") else {
        anyhow::bail!(
            "usage: member --backend URL [--name task] [--ttl 2s] [--step 100ms] [--steps N]"
        );
    };
    member::run(MemberConfig {
        backend: backend.to_owned(),
        name: args.get("name").unwrap_or("task").to_owned(),
        ttl: args.duration("ttl", Duration::from_secs(2))?,
        step: args.duration("step", Duration::from_millis(100))?,
        steps: args.number("steps", 0)?,
    })
    .await
}
