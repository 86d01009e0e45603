//! `hold`: runs one instance of a routine while its lease is kept, and stops it when the
//! lease can no longer be vouched for.
//!
//! The local deadline is `sent + ttl - safety_margin`, where `sent` is when the last
//! successful acquire or refresh request was *sent* (tokio's monotonic clock): the server
//! started counting the TTL no earlier than that, so the lease is certainly live until
//! then, whatever the reply's delay. The runner's [`Keeper`](crate::keeper) refreshes the
//! lease, with all others, about every `refresh_interval`, and moves the deadline on; a
//! failed refresh is retried until the deadline rather than treated as a loss.
//! `grace_period` before the deadline the routine's context is cancelled; at the deadline
//! its future is dropped, so it cannot run on a lease that may have passed to someone
//! else, even if it ignores its context. The hold keeps no timer of its own for this: one
//! watchdog task per runner (`keeper::watchdog`), independent of the keeper's refresh
//! requests, tells each hold when its grace period begins and when its deadline passes
//! (a timer per hold cost 100,000 timer-wheel entries, each woken every few seconds only
//! to find the deadline moved on). A timer alone would fire late on a busy runtime, so
//! the routine's [`Guard`] also reads the clock before every poll and does not poll at or
//! after the deadline. A refresh that says the lease
//! is gone ([`Error::Lost`]), or the backend's own word that it dropped what the lease
//! lives on ([`Lease::revoked`]), drops the routine at once: another holder may already
//! be running. Before the routine is dropped its context is cancelled, so that what it drops
//! can tell why.
//!
//! When the instance ends, however it ends, its context is cancelled and the work it
//! spawned through it is dropped before the lease is given back.
//!
//! [`Error::Lost`]: leasehold_core::Error::Lost

use std::sync::Arc;

use leasehold_core::{FencingToken, Lease, LockBackend};
use tokio::time::{Instant, timeout};

use crate::config::RunnerConfig;
use crate::events::EventKind;
use crate::guard::{Expired, Guard};
use crate::keeper::{KeptLease, RefreshNews};
use crate::metrics::{self, LossReason, Operation};
use crate::state::RoutineState;
use crate::task::{EndOnDrop, RoutineFn, RunEnd, Task};

/// How one leased run of the routine ended.
pub(crate) enum HoldEnd {
    /// Returned on its own (also after cancelling its own context).
    Returned,
    /// Panicked.
    Panicked(String),
    /// The lease was lost or could not be refreshed before the local deadline; a
    /// `LeaseLost` event has been emitted.
    LeaseLost,
    /// Cancelled by its handle or by shutdown (returned, or dropped after the drain
    /// timeout).
    Cancelled,
    /// Dropped by `Runner::abort`; the lease was not released.
    Aborted,
}

/// Why the watch over a lease gave it up.
enum LeaseLoss {
    /// A refresh said the lease is no longer ours.
    NotOurs,
    /// The backend dropped what the lease lives on ([`Lease::revoked`]).
    Revoked,
    /// The local deadline passed without a successful refresh.
    DeadlinePassed,
}

pub(crate) async fn hold(
    task: &Task,
    backend: Arc<dyn LockBackend>,
    mut lease: Box<dyn Lease>,
    sent: Instant,
    routine: &mut RoutineFn,
) -> HoldEnd {
    let shared = task.shared();
    let config = task.config();
    let fencing = lease.fencing_token();
    // The lease's own key and backend label the metrics: `lease` and `backend` are handed
    // to the keeper below.
    let key = lease.key().clone();
    let on = Labels {
        name: key.as_str(),
        backend: backend.name(),
    };
    metrics::acquired(on.name, on.backend);
    task.emit(EventKind::Acquired { token: fencing });
    tracing::info!(
        fencing_token = fencing.get(),
        "lease acquired; routine starts"
    );

    if Instant::now() >= config.local_deadline(sent) {
        // The acquire took so long that the lease may already be running out: do not
        // start the routine at all.
        tracing::warn!("lease acquired too late to use; releasing it");
        metrics::lost(on.name, on.backend, LossReason::Deadline);
        task.emit(EventKind::LeaseLost { token: fencing });
        Box::pin(release(task, &mut *lease, config, on, Report::Quietly)).await;
        return HoldEnd::LeaseLost;
    }
    // Taken before the keeper takes the lease: it borrows nothing from it.
    let revoked = lease.revoked();
    let kept = shared.keep(backend, lease, sent, config);
    let holding = metrics::holding(on.name);
    let guard = task.guard(Some(kept.shared_deadline()));
    let end_on_drop = EndOnDrop(&guard);
    let ctx = task.context(&guard, Some(fencing));
    task.set_state(RoutineState::Holding {
        fencing_token: fencing,
        since: sent,
    });
    let end = {
        let watch = watch(task, &kept, &guard, revoked);
        // The guard reads the clock before every poll of the routine: the watchdog's timer
        // may fire late on a busy runtime, while other tasks keep waking the routine.
        let run = guard.run(task.run_routine(routine, ctx));
        // The watch is polled before the routine: when the lease is lost, the routine
        // must not get another poll.
        tokio::select! {
            biased;
            // An abort, or the end of a drain.
            _ = shared.dropping() => {
                if shared.is_aborted() {
                    HoldEnd::Aborted
                } else {
                    task.emit(EventKind::Dropped);
                    HoldEnd::Cancelled
                }
            }
            why = watch => dropped(task, fencing, on, why),
            end = run => match end {
                Err(Expired) => dropped(task, fencing, on, LeaseLoss::DeadlinePassed),
                Ok(RunEnd::Panicked(message)) => HoldEnd::Panicked(message),
                Ok(RunEnd::Returned) if task.cancel().is_cancelled() => HoldEnd::Cancelled,
                // Cancelled by the watch as the deadline neared: the lease is going.
                Ok(RunEnd::Returned) if guard.cancelled_for_lease() => {
                    metrics::lost(on.name, on.backend, LossReason::Deadline);
                    task.emit(EventKind::LeaseLost { token: fencing });
                    HoldEnd::LeaseLost
                }
                // Also when the routine cancelled its own context: that stops this
                // instance only, like a return.
                Ok(RunEnd::Returned) => HoldEnd::Returned,
            },
        }
    };
    // Boxed: this future lives as long as the lease, and these steps only at its end.
    Box::pin(async {
        task.end_instance(&guard).await;
        drop(end_on_drop);
        // The routine has stopped, whether or not the lease is given back.
        drop(holding);
        if let HoldEnd::Aborted = end {
            // A crash, as far as everyone else can tell: the lease runs out by its TTL.
            // Dropping `kept` takes it out of the keeper's care unreleased.
            return;
        }
        // A lease reported lost is still released, in case it is live after all (the
        // deadline passed on a slow backend), but no longer reported.
        let report = match end {
            HoldEnd::LeaseLost => Report::Quietly,
            _ => Report::Events,
        };
        give_back(task, kept, config, on, report).await;
    })
    .await;
    end
}

/// The routine is dropped because its lease was lost or its deadline passed (its context
/// was cancelled before).
fn dropped(task: &Task, fencing: FencingToken, on: Labels<'_>, why: LeaseLoss) -> HoldEnd {
    let reason = match why {
        LeaseLoss::NotOurs => LossReason::Refused,
        LeaseLoss::Revoked => LossReason::Revoked,
        LeaseLoss::DeadlinePassed => LossReason::Deadline,
    };
    metrics::lost(on.name, on.backend, reason);
    task.emit(EventKind::LeaseLost { token: fencing });
    task.emit(EventKind::Dropped);
    match why {
        LeaseLoss::NotOurs => tracing::warn!("lease lost; routine dropped"),
        LeaseLoss::Revoked => tracing::warn!("lease revoked by the backend; routine dropped"),
        LeaseLoss::DeadlinePassed => {
            tracing::warn!(
                "lease could not be refreshed before its local deadline; routine dropped"
            )
        }
    }
    HoldEnd::LeaseLost
}

/// The labels of a lease's metrics: the lease's key (the routine's name, or a scheduled
/// routine's slot `<name>#<i>`) and the backend's name.
#[derive(Clone, Copy)]
struct Labels<'a> {
    name: &'a str,
    backend: &'static str,
}

/// Whether a release is reported with events.
#[derive(Clone, Copy)]
enum Report {
    Events,
    /// The lease was already reported lost: a `Released` after it would say the lease
    /// was held until then.
    Quietly,
}

/// Takes the lease back from the keeper (after a refresh it is in returns) and releases
/// it.
async fn give_back(
    task: &Task,
    mut kept: KeptLease,
    config: &RunnerConfig,
    on: Labels<'_>,
    report: Report,
) {
    if let Some(mut lease) = kept.take_back().await {
        release(task, &mut *lease, config, on, report).await;
    }
}

/// Gives the lease back with a fresh timeout: the routine's own context may already be
/// cancelled, and the release must be sent anyway so the next holder need not wait for
/// the TTL. Releasing a lost lease is harmless (releases compare ownership).
async fn release(
    task: &Task,
    lease: &mut dyn Lease,
    config: &RunnerConfig,
    on: Labels<'_>,
    report: Report,
) {
    let fencing = lease.fencing_token();
    let result = timeout(config.release_timeout, lease.release()).await;
    if !matches!(result, Ok(Ok(()))) {
        metrics::backend_error(on.backend, Operation::Release);
    }
    if let Report::Quietly = report {
        tracing::debug!(
            fencing_token = fencing.get(),
            ok = matches!(result, Ok(Ok(()))),
            "lease reported lost released"
        );
        return;
    }
    match result {
        Ok(Ok(())) => {
            metrics::released(on.name, on.backend);
            tracing::debug!(fencing_token = fencing.get(), "lease released");
            task.emit(EventKind::Released { token: fencing });
        }
        Ok(Err(error)) => {
            metrics::release_failed(on.name, on.backend);
            tracing::warn!(error = %error.chain(), "lease release failed; it expires by its TTL");
            task.emit(EventKind::ReleaseFailed {
                error: error.chain(),
            });
        }
        Err(_) => {
            metrics::release_failed(on.name, on.backend);
            tracing::warn!(timeout = ?config.release_timeout, "lease release timed out; it expires by its TTL");
            task.emit(EventKind::ReleaseFailed {
                error: format!("release timed out after {:?}", config.release_timeout),
            });
        }
    }
}

/// Waits until the lease is lost or its local deadline passes, reporting failed
/// refreshes on the way; cancels the context when the grace period before the deadline
/// begins, and when it returns. The hold keeps no timer: the runner's deadline watchdog
/// (see `keeper::watchdog`) tells it when the grace period begins and when the deadline
/// passes, so in a steady state this future is never woken.
async fn watch(
    task: &Task,
    kept: &KeptLease,
    guard: &Guard,
    revoked: Option<Revoked>,
) -> LeaseLoss {
    let end = watch_lease(task, kept, guard, revoked).await;
    // Before the routine is dropped, so that it can tell why.
    guard.cancel_for_lease();
    end
}

/// The backend's own word that a lease is gone ([`Lease::revoked`]).
type Revoked = futures::future::BoxFuture<'static, ()>;

async fn watch_lease(
    task: &Task,
    kept: &KeptLease,
    guard: &Guard,
    revoked: Option<Revoked>,
) -> LeaseLoss {
    let revoked = async move {
        match revoked {
            Some(revoked) => revoked.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(revoked);
    loop {
        tokio::select! {
            biased;
            // The backend dropped what the lease lives on (a PostgreSQL lock session).
            () = &mut revoked => return LeaseLoss::Revoked,
            news = kept.next_news() => match news {
                RefreshNews::Lost => return LeaseLoss::NotOurs,
                RefreshNews::DeadlinePassed => return LeaseLoss::DeadlinePassed,
                RefreshNews::DeadlineNear => {
                    if !guard.cancel().is_cancelled() {
                        tracing::warn!("lease deadline near; cancelling routine");
                        guard.cancel_for_lease();
                    }
                }
                RefreshNews::Failed(error) => {
                    tracing::warn!(error = %error, "lease refresh failed; retrying until the deadline");
                    task.emit(EventKind::RefreshFailed { error });
                }
            },
        }
    }
}
