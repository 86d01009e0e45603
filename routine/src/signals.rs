//! SIGINT/SIGTERM handling: a signal shuts the runner down, as in the Go original.
//!
//! A second signal during the drain ends it at once (routines still running are dropped,
//! their leases still released): an operator pressing Ctrl-C twice means "now". Once the
//! runner has shut down, a further signal has its default effect and ends the process,
//! since nothing of the runner's is left to stop and the handler must not swallow it.

use std::sync::Weak;

use crate::runner::Inner;

/// Spawns a task that shuts the runner down on SIGINT or SIGTERM, ends the drain on a
/// second one, and gives signals after the shutdown their default effect. It holds the
/// runner weakly, so a dropped runner is not kept alive by it.
#[cfg(all(unix, feature = "signals"))]
pub(crate) fn install(runner: Weak<Inner>, runtime: &tokio::runtime::Handle) {
    use tokio::signal::unix::{SignalKind, signal};

    if runner.upgrade().is_none() {
        return;
    }
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
        loop {
            let (name, number) = tokio::select! {
                _ = interrupt.recv() => ("SIGINT", signal_hook::consts::SIGINT),
                _ = terminate.recv() => ("SIGTERM", signal_hook::consts::SIGTERM),
            };
            let runner = runner.upgrade().map(|inner| crate::Runner { inner });
            match runner {
                Some(runner) if !runner.is_shut_down() => {
                    if runner.is_shutting_down() {
                        tracing::warn!(
                            signal = name,
                            "second signal during shutdown; dropping the routines still running"
                        );
                        runner.stop_draining();
                    } else {
                        tracing::info!(signal = name, "signal received; shutting down routines");
                        runner.begin_shutdown();
                    }
                }
                // Shut down, or dropped: the signal does what it would without us.
                _ => {
                    tracing::info!(signal = name, "signal after shutdown; default action");
                    if let Err(error) = signal_hook::low_level::emulate_default_handler(number) {
                        tracing::error!(%error, signal = name, "cannot take the signal's default action");
                    }
                    return;
                }
            }
        }
    });
}

/// Without the `signals` feature (or off Unix) signals are the application's business.
#[cfg(not(all(unix, feature = "signals")))]
pub(crate) fn install(_runner: Weak<Inner>, _runtime: &tokio::runtime::Handle) {
    tracing::debug!("signal handling not compiled in (feature `signals`, Unix only)");
}
