//! Metrics (feature `metrics`): one small function per thing that happens, called at the
//! place where it happens, recorded through the [`metrics`](https://docs.rs/metrics)
//! facade into whatever recorder the application installed. Without the feature every
//! function here is empty and every gauge guard is an empty struct, so the calls compile
//! to nothing.
//!
//! They are recorded at the sites rather than derived from the event broadcast: a
//! broadcast receiver that falls behind loses events, and a counter must not.
//!
//! The `name` label is the routine's name; for the lease metrics (taken, lost,
//! released, release failures) of a scheduled routine with several
//! [`instances`](crate::RunOptions::instances) it is the slot's key, `<name>#<i>`.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `leasehold_leases_acquired_total` | counter | `name`, `backend` | leases taken |
//! | `leasehold_leases_lost_total` | counter | `name`, `backend`, `reason` | leases lost while held: `refused` (a refresh said it is no longer ours), `deadline` (the local deadline came first), `revoked` (the backend dropped what it lives on) |
//! | `leasehold_leases_released_total` | counter | `name`, `backend` | leases given back |
//! | `leasehold_release_failures_total` | counter | `name`, `backend` | releases that failed or timed out (the lease expires by its TTL) |
//! | `leasehold_backend_errors_total` | counter | `backend`, `operation` | failed backend calls: `connect`, `acquire`, `refresh` (one per `refresh_many` call), `release`, `notify`, `expires_in` |
//! | `leasehold_routine_restarts_total` | counter | `name`, `reason` | keep-running restarts after the routine `returned`, `panicked` or its lease was `lost` |
//! | `leasehold_routine_holding` | gauge | `name` | 1 while the routine runs under its lease in this process, else 0 |
//! | `leasehold_leases_held` | gauge | `backend` | leases this process keeps refreshed |
//! | `leasehold_acquire_duration_seconds` | histogram | `name`, `backend` | one acquire request, answered or failed |
//! | `leasehold_refresh_duration_seconds` | histogram | `backend` | one batch: a `refresh_many` call |
//! | `leasehold_deadline_margin_seconds` | histogram | `backend` | per lease, time left to its local deadline when a refresh confirmed it (negative: the answer came after it) |

use std::time::Duration;

use leasehold_core::Error;
use tokio::time::Instant;

const LEASES_ACQUIRED: &str = "leasehold_leases_acquired_total";
const LEASES_LOST: &str = "leasehold_leases_lost_total";
const LEASES_RELEASED: &str = "leasehold_leases_released_total";
const RELEASE_FAILURES: &str = "leasehold_release_failures_total";
const BACKEND_ERRORS: &str = "leasehold_backend_errors_total";
const ROUTINE_RESTARTS: &str = "leasehold_routine_restarts_total";
const ROUTINE_HOLDING: &str = "leasehold_routine_holding";
const LEASES_HELD: &str = "leasehold_leases_held";
const ACQUIRE_DURATION: &str = "leasehold_acquire_duration_seconds";
const REFRESH_DURATION: &str = "leasehold_refresh_duration_seconds";
const DEADLINE_MARGIN: &str = "leasehold_deadline_margin_seconds";

/// Why a held lease was given up.
#[derive(Clone, Copy)]
pub(crate) enum LossReason {
    /// A refresh said the lease is no longer ours.
    Refused,
    /// The local deadline came before a successful refresh (or the acquire's answer came
    /// too late to use the lease).
    Deadline,
    /// The backend dropped what the lease lives on ([`Lease::revoked`]).
    ///
    /// [`Lease::revoked`]: leasehold_core::Lease::revoked
    Revoked,
}

/// Why a keep-running routine starts again.
#[derive(Clone, Copy)]
pub(crate) enum RestartReason {
    Returned,
    Panicked,
    Lost,
}

/// The backend call that failed.
#[derive(Clone, Copy)]
pub(crate) enum Operation {
    Connect,
    Acquire,
    Refresh,
    Release,
    /// Waiting for a release notification (`LockBackend::released`).
    Notify,
    ExpiresIn,
}

/// A lease on `name` was taken.
pub(crate) fn acquired(name: &str, backend: &'static str) {
    record::count(LEASES_ACQUIRED, &[("name", name), ("backend", backend)]);
}

/// A held lease on `name` was given up for `reason`.
pub(crate) fn lost(name: &str, backend: &'static str, reason: LossReason) {
    let reason = match reason {
        LossReason::Refused => "refused",
        LossReason::Deadline => "deadline",
        LossReason::Revoked => "revoked",
    };
    record::count(
        LEASES_LOST,
        &[("name", name), ("backend", backend), ("reason", reason)],
    );
}

/// The lease on `name` was given back.
pub(crate) fn released(name: &str, backend: &'static str) {
    record::count(LEASES_RELEASED, &[("name", name), ("backend", backend)]);
}

/// Giving back the lease on `name` failed or timed out.
pub(crate) fn release_failed(name: &str, backend: &'static str) {
    record::count(RELEASE_FAILURES, &[("name", name), ("backend", backend)]);
}

/// A call to `backend` failed (an error or a timeout; contention and `Lost` are answers,
/// not errors).
pub(crate) fn backend_error(backend: &'static str, operation: Operation) {
    let operation = match operation {
        Operation::Connect => "connect",
        Operation::Acquire => "acquire",
        Operation::Refresh => "refresh",
        Operation::Release => "release",
        Operation::Notify => "notify",
        Operation::ExpiresIn => "expires_in",
    };
    record::count(
        BACKEND_ERRORS,
        &[("backend", backend), ("operation", operation)],
    );
}

/// Getting the backend failed with `error`: the backend is named as the error names it
/// (`unknown` if it does not), since there is no backend to ask.
pub(crate) fn connect_failed(error: &Error) {
    let backend = match error {
        Error::Unavailable { backend, .. }
        | Error::Timeout { backend, .. }
        | Error::Auth { backend, .. }
        | Error::PermissionDenied { backend, .. }
        | Error::Misconfigured { backend, .. }
        | Error::Unsupported { backend, .. } => backend,
        _ => "unknown",
    };
    backend_error(backend, Operation::Connect);
}

/// The keep-running routine `name` starts again for `reason`.
pub(crate) fn restart(name: &str, reason: RestartReason) {
    let reason = match reason {
        RestartReason::Returned => "returned",
        RestartReason::Panicked => "panicked",
        RestartReason::Lost => "lost",
    };
    record::count(ROUTINE_RESTARTS, &[("name", name), ("reason", reason)]);
}

/// Marks routine `name` holding its lease until the guard is dropped (also when the hold
/// is dropped with its runtime). Raised and lowered rather than set, so two runners of
/// one process sharing a name cannot leave it at 1 for a lease neither holds.
pub(crate) fn holding(name: &str) -> Raised {
    record::raise(ROUTINE_HOLDING, &[("name", name)])
}

/// Registers routine `name`'s holding gauge, so that a routine that never held its lease
/// shows as not holding rather than not at all.
pub(crate) fn not_holding(name: &str) {
    record::touch(ROUTINE_HOLDING, &[("name", name)]);
}

/// Counts one lease of `backend` as held until the guard is dropped.
pub(crate) fn lease_held(backend: &'static str) -> Raised {
    record::raise(LEASES_HELD, &[("backend", backend)])
}

/// An acquire request for `name` took `elapsed`.
pub(crate) fn acquire_duration(name: &str, backend: &'static str, elapsed: Duration) {
    record::observe(
        ACQUIRE_DURATION,
        &[("name", name), ("backend", backend)],
        elapsed.as_secs_f64(),
    );
}

/// A `refresh_many` call to `backend` took `elapsed`.
pub(crate) fn refresh_duration(backend: &'static str, elapsed: Duration) {
    record::observe(
        REFRESH_DURATION,
        &[("backend", backend)],
        elapsed.as_secs_f64(),
    );
}

/// A refresh confirmed a lease of `backend` at `now`, whose local deadline was `deadline`.
pub(crate) fn deadline_margin(backend: &'static str, deadline: Instant, now: Instant) {
    let margin = if deadline >= now {
        (deadline - now).as_secs_f64()
    } else {
        -(now - deadline).as_secs_f64()
    };
    record::observe(DEADLINE_MARGIN, &[("backend", backend)], margin);
}

/// A gauge raised by one while this lives.
pub(crate) struct Raised {
    #[cfg(feature = "metrics")]
    gauge: ::metrics::Gauge,
}

// Also without the feature, so that dropping the guard reads the same either way.
impl Drop for Raised {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}

/// The calls into the facade, and their empty stand-ins without the feature.
#[cfg(feature = "metrics")]
mod record {
    use ::metrics::{Label, counter, gauge, histogram};

    use super::Raised;

    type Labels<'a> = &'a [(&'static str, &'a str)];

    fn to_labels(labels: Labels<'_>) -> Vec<Label> {
        labels
            .iter()
            .map(|&(key, value)| Label::new(key, value.to_owned()))
            .collect()
    }

    pub(super) fn count(metric: &'static str, labels: Labels<'_>) {
        counter!(metric, to_labels(labels)).increment(1);
    }

    pub(super) fn touch(metric: &'static str, labels: Labels<'_>) {
        gauge!(metric, to_labels(labels)).increment(0.0);
    }

    pub(super) fn raise(metric: &'static str, labels: Labels<'_>) -> Raised {
        let gauge = gauge!(metric, to_labels(labels));
        gauge.increment(1.0);
        Raised { gauge }
    }

    pub(super) fn observe(metric: &'static str, labels: Labels<'_>, value: f64) {
        histogram!(metric, to_labels(labels)).record(value);
    }
}

#[cfg(not(feature = "metrics"))]
mod record {
    use super::Raised;

    type Labels<'a> = &'a [(&'static str, &'a str)];

    pub(super) fn count(_: &'static str, _: Labels<'_>) {}

    pub(super) fn touch(_: &'static str, _: Labels<'_>) {}

    pub(super) fn raise(_: &'static str, _: Labels<'_>) -> Raised {
        Raised {}
    }

    pub(super) fn observe(_: &'static str, _: Labels<'_>, _: f64) {}
}
