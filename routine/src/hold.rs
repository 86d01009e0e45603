//! `hold`: runs one instance of a routine while its lease is kept, and stops it when the
//! lease can no longer be vouched for.
//!
//! The local deadline is `sent + ttl - safety_margin`, where `sent` is when the last
//! successful acquire or refresh request was *sent* (tokio's monotonic clock): the server
//! started counting the TTL no earlier than that, so the lease is certainly live until
//! then, whatever the reply's delay. Refreshes run every `refresh_interval`; a failed one
//! is retried until the deadline rather than treated as a loss. `grace_period` before the
//! deadline the routine's context is cancelled; at the deadline its future is dropped, so
//! it cannot run on a lease that may have passed to someone else, even if it ignores its
//! context. A refresh that says the lease is gone ([`Error::Lost`]) drops the routine at
//! once: another holder may already be running.
//!
//! [`Error::Lost`]: routine_core::Error::Lost

use std::time::Duration;

use routine_core::Lease;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::config::RunnerConfig;
use crate::events::EventKind;
use crate::instance::error_chain;
use crate::task::{RoutineFn, RunEnd, Task};

/// How one leased run of the routine ended.
pub(crate) enum HoldEnd {
    /// Returned on its own.
    Returned,
    /// Panicked.
    Panicked(String),
    /// The lease was lost or could not be refreshed before the local deadline.
    LeaseLost,
    /// Cancelled by its handle or by shutdown (returned, or dropped after the drain
    /// timeout).
    Cancelled,
    /// Dropped by `Runner::abort`; the lease was not released.
    Aborted,
}

/// Why the lease keeper stopped.
enum KeeperEnd {
    /// A refresh said the lease is no longer ours.
    Lost,
    /// The local deadline passed without a successful refresh.
    DeadlinePassed,
}

pub(crate) async fn hold(
    task: &Task,
    mut lease: Box<dyn Lease>,
    sent: Instant,
    routine: &mut RoutineFn,
) -> HoldEnd {
    let inner = &task.runner.inner;
    let config = &inner.config;
    let fencing = lease.fencing_token();
    task.emit(EventKind::Acquired { token: fencing });
    tracing::info!(
        fencing_token = fencing.get(),
        "lease acquired; routine starts"
    );

    if Instant::now() >= local_deadline(sent, config) {
        // The acquire took so long that the lease may already be running out: do not
        // start the routine at all.
        tracing::warn!("lease acquired too late to use; releasing it");
        task.emit(EventKind::LeaseLost { token: fencing });
        release(task, &mut *lease, config).await;
        return HoldEnd::LeaseLost;
    }
    let token = task.token.child_token();
    let ctx = task.context(token.clone(), Some(fencing));
    let end = {
        let keeper = keep(task, &mut *lease, sent, &token);
        let run = task.run_routine(routine, ctx);
        // The keeper is polled before the routine: when the deadline has passed, the
        // routine must not get another poll.
        tokio::select! {
            biased;
            _ = inner.abort.cancelled() => HoldEnd::Aborted,
            why = keeper => {
                token.cancel();
                task.emit(EventKind::LeaseLost { token: fencing });
                task.emit(EventKind::Dropped);
                match why {
                    KeeperEnd::Lost => tracing::warn!("lease lost; routine dropped"),
                    KeeperEnd::DeadlinePassed => tracing::warn!(
                        "lease could not be refreshed before its local deadline; routine dropped"
                    ),
                }
                HoldEnd::LeaseLost
            }
            end = run => match end {
                RunEnd::Panicked(message) => HoldEnd::Panicked(message),
                RunEnd::Returned if task.token.is_cancelled() => HoldEnd::Cancelled,
                // Cancelled by the keeper: the lease is going or gone.
                RunEnd::Returned if token.is_cancelled() => {
                    task.emit(EventKind::LeaseLost { token: fencing });
                    HoldEnd::LeaseLost
                }
                RunEnd::Returned => HoldEnd::Returned,
            },
            _ = inner.hard_stop.cancelled() => {
                task.emit(EventKind::Dropped);
                HoldEnd::Cancelled
            }
        }
    };
    if let HoldEnd::Aborted = end {
        // A crash, as far as everyone else can tell: the lease runs out by its TTL.
        return end;
    }
    release(task, &mut *lease, config).await;
    end
}

/// Gives the lease back with a fresh timeout: the routine's own context may already be
/// cancelled, and the release must be sent anyway so the next holder need not wait for
/// the TTL. Releasing a lost lease is harmless (releases compare ownership).
async fn release(task: &Task, lease: &mut dyn Lease, config: &RunnerConfig) {
    let token = lease.fencing_token();
    match timeout(config.release_timeout, lease.release()).await {
        Ok(Ok(())) => {
            tracing::debug!(fencing_token = token.get(), "lease released");
            task.emit(EventKind::Released { token });
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "lease release failed; it expires by its TTL");
            task.emit(EventKind::ReleaseFailed {
                error: error_chain(&error),
            });
        }
        Err(_) => {
            tracing::warn!(timeout = ?config.release_timeout, "lease release timed out; it expires by its TTL");
            task.emit(EventKind::ReleaseFailed {
                error: format!("release timed out after {:?}", config.release_timeout),
            });
        }
    }
}

/// Refreshes the lease until it is lost or the local deadline passes; cancels `token`
/// when the grace period before the deadline begins.
async fn keep(
    task: &Task,
    lease: &mut dyn Lease,
    sent: Instant,
    token: &CancellationToken,
) -> KeeperEnd {
    let config = &task.runner.inner.config;
    let mut deadline = local_deadline(sent, config);
    let mut next_refresh = sent + config.refresh_interval;
    // After a failed refresh, retry sooner than the regular interval: there are several
    // chances left before the grace period if the failure was a blip.
    let retry_after_failure = (config.refresh_interval / 4).max(Duration::from_millis(1));
    loop {
        let grace_at = deadline
            .checked_sub(config.grace_period)
            .unwrap_or(deadline);
        tokio::select! {
            biased;
            _ = sleep_until(deadline) => return KeeperEnd::DeadlinePassed,
            _ = sleep_until(grace_at), if !token.is_cancelled() => {
                tracing::warn!("lease deadline near; cancelling routine");
                token.cancel();
                continue;
            }
            _ = sleep_until(next_refresh) => {}
        }

        let sent = Instant::now();
        // Bounded by the deadline: a hung backend cannot keep us waiting past it.
        let refresh = timeout_at(deadline, lease.refresh(config.lease_ttl));
        tokio::pin!(refresh);
        let result = loop {
            tokio::select! {
                biased;
                result = &mut refresh => break result,
                _ = sleep_until(grace_at), if !token.is_cancelled() => {
                    tracing::warn!("lease deadline near; cancelling routine");
                    token.cancel();
                }
            }
        };
        match result {
            Ok(Ok(())) => {
                deadline = local_deadline(sent, config);
                next_refresh = sent + config.refresh_interval;
            }
            Ok(Err(error)) if error.is_lost() => return KeeperEnd::Lost,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "lease refresh failed; retrying until the deadline");
                task.emit(EventKind::RefreshFailed {
                    error: error_chain(&error),
                });
                next_refresh = Instant::now() + retry_after_failure;
            }
            Err(_) => return KeeperEnd::DeadlinePassed,
        }
    }
}

fn local_deadline(sent: Instant, config: &RunnerConfig) -> Instant {
    sent + config.lease_ttl.saturating_sub(config.safety_margin)
}
