//! SIGINT/SIGTERM handling: a signal shuts the runner down, as in the Go original.

use std::sync::Weak;

use crate::runner::Inner;

/// Spawns a task that shuts the runner down on SIGINT or SIGTERM. It holds the runner
/// weakly, so a dropped runner is not kept alive by it, and ends with the runner's
/// shutdown.
#[cfg(all(unix, feature = "signals"))]
pub(crate) fn install(runner: Weak<Inner>, runtime: &tokio::runtime::Handle) {
    use tokio::signal::unix::{SignalKind, signal};

    let Some(shutdown) = runner.upgrade().map(|inner| inner.shutdown.clone()) else {
        return;
    };
    // Registered now, in the caller's runtime context, so that a signal arriving right
    // after the first routine started is already handled.
    let _context = runtime.enter();
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot install SIGINT/SIGTERM handlers; routines ignore signals");
            return;
        }
    };
    runtime.spawn(async move {
        let signal = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
            _ = shutdown.cancelled() => return,
        };
        if let Some(inner) = runner.upgrade() {
            tracing::info!(signal, "signal received; shutting down routines");
            crate::Runner { inner }.shutdown().await;
        }
    });
}

/// Without the `signals` feature (or off Unix) signals are the application's business.
#[cfg(not(all(unix, feature = "signals")))]
pub(crate) fn install(_runner: Weak<Inner>, _runtime: &tokio::runtime::Handle) {
    tracing::debug!("signal handling not compiled in (feature `signals`, Unix only)");
}
