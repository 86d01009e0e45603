//! An HTTP service that also runs a singleton job, and stops cleanly.
//!
//! - `GET /healthz`: `200 ok` while every lease the runner holds is refreshed on time,
//!   `503` naming the late ones otherwise ([`Runner::health`]): a liveness probe that
//!   restarts a replica whose backend or runtime stopped answering.
//! - `GET /leader`: who runs the job now ([`Runner::describe`]), as `holder token`, or
//!   `none`.
//!
//! On SIGTERM or SIGINT the application's one shutdown token is cancelled. The HTTP
//! server stops accepting connections and finishes the requests in flight; the runner,
//! given the same token, cancels the job, drains, and releases every lease. The process
//! exits once both are done, so the next replica takes the job over at once, not a TTL
//! later. The runner does not install signal handlers of its own: the application owns
//! its signals and hands the runner its shutdown.
//!
//! ```text
//! cargo run -p leasehold-examples --bin axum_service -- \
//!     --backend redis://127.0.0.1:6379 --listen 127.0.0.1:8080 --name report
//! ```
//!
//! It prints `listening on ADDR` once it accepts requests, and `stopped` after the
//! leases were released.

use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use leasehold::{RunOptions, Runner};
use leasehold_examples::args::Args;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct App {
    runner: Runner,
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::from_env()?;
    let backend = args.get("backend").unwrap_or("memory://").to_owned();
    let listen = args.get("listen").unwrap_or("127.0.0.1:0").to_owned();
    let name = args.get("name").unwrap_or("report").to_owned();
    let ttl = args.duration("ttl", Duration::from_secs(5))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let runner = Runner::builder()
        .with_backend_url(backend)
        .with_lease_ttl(ttl)
        .with_shutdown_token(shutdown.clone())
        .build()?;
    runner.run_named(
        &name,
        |ctx| async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = ctx.cancelled() => return,
                    _ = tick.tick() => tracing::info!(token = ?ctx.fencing_token(), "job step"),
                }
            }
        },
        RunOptions::keep_running_one_instance(),
    );

    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/leader", get(leader))
        .with_state(App {
            runner: runner.clone(),
            name,
        });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    // The server has stopped; the runner drains and releases on the same token.
    runner.wait_for_shutdown().await;
    println!("stopped");
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}

async fn healthz(State(app): State<App>) -> (StatusCode, String) {
    let health = app.runner.health();
    let status = if health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, health.to_string())
}

async fn leader(State(app): State<App>) -> (StatusCode, String) {
    match app.runner.describe(&app.name).await {
        Ok(Some(info)) => (
            StatusCode::OK,
            format!(
                "{} {}",
                info.holder.as_deref().unwrap_or("unknown"),
                info.fencing_token
                    .map_or_else(|| "-".to_owned(), |token| token.get().to_string())
            ),
        ),
        Ok(None) => (StatusCode::OK, "none".to_owned()),
        Err(error) => (StatusCode::BAD_GATEWAY, error.chain()),
    }
}
