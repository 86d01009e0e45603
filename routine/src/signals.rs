//! SIGINT/SIGTERM handling: a signal shuts the runner down, so that a service stopped by
//! its supervisor releases its leases and other instances take over at once, not a TTL
//! later.
//!
//! A second signal during the drain ends it at once (routines still running are dropped,
//! their leases still released): an operator pressing Ctrl-C twice means "now". Once the
//! runner has shut down, a further signal has its default effect and ends the process,
//! since nothing of the runner's is left to stop and the handler must not swallow it.

/// What the runner did about a signal, as told by the `respond` callback of [`install`].
pub(crate) enum Response {
    /// It began to shut down.
    ShutdownBegun,
    /// It was shutting down already, and ended the drain at once.
    DrainEnded,
    /// It has shut down, or is gone: the signal takes its default effect.
    Gone,
}

/// Spawns a task that calls `respond` on every SIGINT or SIGTERM: the runner shuts down on
/// the first and ends the drain on a second; once it has shut down, `respond` says so and
/// the signal gets its default effect. `respond` should hold the runner weakly, so that a
/// dropped runner is not kept alive by its handlers.
#[cfg(all(unix, feature = "signals"))]
pub(crate) fn install(
    runtime: &tokio::runtime::Handle,
    respond: impl Fn() -> Response + Send + 'static,
) {
    use tokio::signal::unix::{SignalKind, signal};

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
            match respond() {
                Response::DrainEnded => tracing::warn!(
                    signal = name,
                    "second signal during shutdown; dropping the routines still running"
                ),
                Response::ShutdownBegun => {
                    tracing::info!(signal = name, "signal received; shutting down routines");
                }
                // Shut down, or dropped: the signal does what it would without us.
                Response::Gone => {
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
pub(crate) fn install(
    _runtime: &tokio::runtime::Handle,
    _respond: impl Fn() -> Response + Send + 'static,
) {
    tracing::debug!("signal handling not compiled in (feature `signals`, Unix only)");
}
