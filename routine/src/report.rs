//! Reporting a routine's panic: one `tracing` error, and with the `sentry` feature one
//! Sentry event on the hub of the code that started the routine.

use std::future::Future;

/// Binds `future` to the Sentry hub current *now* (the caller that starts the routine), so
/// that its panics reach that hub whichever thread polls it. Without the `sentry` feature,
/// `future` itself.
#[cfg(feature = "sentry")]
pub(crate) fn bind_caller_hub<F: Future>(future: F) -> impl Future<Output = F::Output> {
    use sentry_core::{Hub, SentryFutureExt as _};
    let hub = std::sync::Arc::new(Hub::new_from_top(Hub::current()));
    future.bind_hub(hub)
}

/// Binds `future` to the Sentry hub current now (without the `sentry` feature: `future`).
#[cfg(not(feature = "sentry"))]
pub(crate) fn bind_caller_hub<F: Future>(future: F) -> F {
    future
}

/// Reports the panic of routine `number` (named `name`, if named) with `message`.
pub(crate) fn panic(number: u64, name: Option<&str>, message: &str) {
    #[cfg(feature = "sentry")]
    {
        // An application that forwards `tracing` errors to Sentry (`sentry-tracing`) would
        // turn the log line into a second event for the same panic: log it on a hub without
        // a client, and send the one event, tagged with the routine, ourselves.
        let quiet = std::sync::Arc::new(sentry_core::Hub::new(None, Default::default()));
        sentry_core::Hub::run(quiet, || log(message));
        sentry_core::with_scope(
            |scope| {
                scope.set_tag("routine.number", number);
                if let Some(name) = name {
                    scope.set_tag("routine.name", name);
                }
            },
            || {
                sentry_core::capture_message(
                    &format!("routine panicked: {message}"),
                    sentry_core::Level::Fatal,
                )
            },
        );
    }
    #[cfg(not(feature = "sentry"))]
    {
        let _ = (number, name);
        log(message);
    }
}

fn log(message: &str) {
    tracing::error!(panic = message, "routine panicked");
}
