//! A singleton job whose lease metrics are scraped by Prometheus at `/metrics`.
//!
//! The `metrics` feature of `leasehold` records, where things happen, through the
//! [`metrics`](https://docs.rs/metrics) facade; any recorder collects them. Here it is
//! `metrics-exporter-prometheus` with its own HTTP listener: leases acquired, lost,
//! released, backend errors, restarts, the holding gauges, and acquire, refresh and
//! deadline-margin histograms (with buckets, so Prometheus can aggregate them across
//! replicas).
//!
//! ```text
//! cargo run -p leasehold-examples --bin prometheus -- redis://127.0.0.1:6379 \
//!     --listen 127.0.0.1:9000 --name report
//! curl -s 127.0.0.1:9000/metrics | grep leasehold_
//! ```
//!
//! The backend URL defaults to `memory://`. It prints `metrics on http://ADDR/metrics`
//! once the listener is bound. SIGINT or SIGTERM stops the job and releases its lease.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use leasehold::{RunOptions, Runner};
use leasehold_examples::args::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Bucket bounds, in seconds, for the `_seconds` histograms: request durations from a
/// millisecond up, and deadline margins up to a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::from_env()?;
    let backend = args
        .words
        .first()
        .map(String::as_str)
        .or(args.get("backend"))
        .unwrap_or("memory://")
        .to_owned();
    let listen: SocketAddr = args
        .get("listen")
        .unwrap_or("127.0.0.1:9000")
        .parse()
        .context("--listen takes an address such as 127.0.0.1:9000")?;
    let name = args.get("name").unwrap_or("report").to_owned();
    let ttl = args.duration("ttl", Duration::from_secs(5))?;

    // Installed before the runner starts, so nothing it records is missed.
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)?
        .install()
        .with_context(|| format!("cannot serve metrics on {listen}"))?;
    println!("metrics on http://{listen}/metrics");

    let runner = Runner::builder()
        .with_backend_url(backend)
        .with_lease_ttl(ttl)
        .with_signal_handling(true)
        .build()?;
    runner.run_named(
        &name,
        |ctx| async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = ctx.cancelled() => return,
                    _ = tick.tick() => tracing::info!(token = ?ctx.fencing_token(), "job step"),
                }
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    runner.wait_for_shutdown().await;
    println!("stopped");
    Ok(())
}
