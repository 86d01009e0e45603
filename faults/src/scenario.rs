//! One fault from start to settle ([`inject`]), and the bounds the design promises for
//! it ([`Bounds`], [`judge`]).
//!
//! Every wait is for events with a deadline; the only fixed waits are the faults held on
//! purpose for a set time: a paused server and rotated credentials (longer than the
//! TTL), cancelled statements (a TTL).

use std::time::Duration;

use super::checker::{Report, Takeover, ms};
use super::cluster::Cluster;
use super::inject::FaultId;
use super::log::{EventKind, Fault, FaultKind, between, now};
use super::server::BackendKind;

/// Steps a holder must have done to count as working (before a fault, after a takeover).
const STEPS: usize = 3;

/// Injects `kind` into a running cluster and waits until it has played out: the holder
/// is found first; the fault is held until a new holder has done a few steps (pause,
/// cut, starvation with a cut), for a TTL (cancelled statements) or for 1.5 TTL (server
/// pause, rotated credentials); afterwards the cluster has a holder that has worked for a TTL since the fault
/// ended.
///
/// A killed or terminated member stays gone; add a member to keep the cluster's size.
///
/// # Errors
///
/// If a wait runs out (no holder, no takeover, ...), or a fault cannot be injected.
pub async fn inject(cluster: &mut Cluster, kind: FaultKind) -> anyhow::Result<FaultId> {
    inject_after(cluster, kind, STEPS).await
}

/// Like [`inject`], once the holder has done `steps` steps from now (at least a few):
/// randomized runs vary it so faults hit every point of the refresh cycle.
///
/// # Errors
///
/// As [`inject`].
pub async fn inject_after(
    cluster: &mut Cluster,
    kind: FaultKind,
    steps: usize,
) -> anyhow::Result<FaultId> {
    let ttl = cluster.config().ttl;
    let step = cluster.config().step;
    // Generous: bounds are judged afterwards by the checker; these only end a hung run.
    let patience = ttl * 6 + Duration::from_secs(10);
    let (victim, token) = cluster
        .wait_for_holder(now(), steps.max(STEPS), patience)
        .await?;
    let id = match kind {
        FaultKind::Kill => {
            let id = cluster.kill(victim, token).await?;
            let at = cluster.fault(id).at;
            cluster
                .wait_for_newer_holder(token, at, STEPS, patience)
                .await?;
            id
        }
        FaultKind::Terminate => {
            let id = cluster.terminate(victim, token)?;
            let at = cluster.fault(id).at;
            cluster
                .wait_for_newer_holder(token, at, STEPS, patience)
                .await?;
            cluster
                .wait_for_event(victim, at, patience, "exit", |k| *k == EventKind::Exited)
                .await?;
            id
        }
        FaultKind::Pause | FaultKind::Cut | FaultKind::StarveCut => {
            let id = match kind {
                FaultKind::Pause => cluster.pause(victim, token)?,
                FaultKind::Cut => cluster.cut(victim, token)?,
                _ /* StarveCut */ => cluster.starve_and_cut(victim, token)?,
            };
            let at = cluster.fault(id).at;
            // A takeover implies the fault outlasted the lease; a few steps of the new
            // holder give the victim's stale work, if any, something to be fenced by.
            cluster
                .wait_for_newer_holder(token, at, STEPS, patience)
                .await?;
            match kind {
                FaultKind::Pause => cluster.resume(id)?,
                FaultKind::Cut => cluster.restore(id)?,
                _ /* StarveCut */ => cluster.restore_and_feed(id)?,
            }
            // The victim gives the lease up: its routine is cancelled a grace period
            // before its local deadline (cut: it runs on, cut off), or its future is
            // dropped at once when it runs again past the deadline (pause; starved: when
            // its runtime gets round to it).
            let gave_up = move |k: &EventKind| {
                *k == EventKind::Lost { token } || *k == EventKind::Cancelled { token }
            };
            cluster
                .wait_for_event(victim, at, patience, "`lost` or `cancelled`", gave_up)
                .await?;
            id
        }
        FaultKind::SessionTerminate => {
            let id = cluster.terminate_lock_session(victim, token).await?;
            let at = cluster.fault(id).at;
            // The holder learns at its next refresh and drops its routine; a member,
            // perhaps the same one, takes the lock again with a newer token.
            cluster
                .wait_for_event(victim, at, patience, "`lost`", move |k| {
                    *k == EventKind::Lost { token }
                })
                .await?;
            cluster
                .wait_for_newer_holder(token, at, STEPS, patience)
                .await?;
            id
        }
        FaultKind::StatementCancel => {
            let id = cluster
                .cancel_lock_session_statements(victim, token, ttl)
                .await?;
            wait_for_recovery(cluster, id, patience).await?;
            id
        }
        FaultKind::CredentialsRotated => {
            let id = cluster.rotate_credentials(victim, token).await?;
            // Held on purpose for longer than the TTL: the holder's lease must run out
            // while every member is refused.
            tokio::time::sleep(ttl + ttl / 2).await;
            cluster.restore_credentials(id).await?;
            wait_for_recovery(cluster, id, patience).await?;
            id
        }
        FaultKind::ServerRestart => {
            let id = cluster.restart_server().await?;
            wait_for_recovery(cluster, id, patience).await?;
            id
        }
        FaultKind::ServerPause => {
            let id = cluster.pause_server()?;
            // Held on purpose for longer than the TTL: the holder's lease must run out.
            tokio::time::sleep(ttl + ttl / 2).await;
            cluster.resume_server(id)?;
            wait_for_recovery(cluster, id, patience).await?;
            id
        }
        // The topologies' faults (`FaultKind::TOPOLOGY`), held (where held) on purpose for
        // longer than the TTL.
        _ => {
            let id = cluster.topology_fault(kind, ttl + ttl / 2).await?;
            wait_for_recovery(cluster, id, patience).await?;
            id
        }
    };
    // Settle: a holder works for a whole TTL after the fault ended, so whatever the
    // victim does when it comes back (stale requests, reconnects) happens under watch.
    let settled_from = cluster.fault(id).until;
    let steps = usize::try_from(ttl.as_nanos() / step.as_nanos().max(1)).unwrap_or(STEPS);
    cluster
        .wait_for_holder(settled_from, steps.max(STEPS), patience)
        .await?;
    #[cfg(feature = "postgres")]
    if kind == FaultKind::Failover {
        // The pair is one server now: give it a standby again for the next failover.
        cluster.rebuild_standby().await?;
    }
    Ok(id)
}

async fn wait_for_recovery(
    cluster: &Cluster,
    id: FaultId,
    patience: Duration,
) -> anyhow::Result<()> {
    let fault = cluster.fault(id).clone();
    let ttl = cluster.config().ttl;
    cluster
        .wait_for(
            fault.at,
            patience,
            "recovery after the server fault",
            |events| super::checker::takeover(events, &fault, ttl).at,
        )
        .await?;
    Ok(())
}

/// What the design promises after each fault, derived from the TTL as the runner's
/// defaults are (refresh, retry and the first backoff every TTL/5).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The lease TTL.
    pub ttl: Duration,
    /// How often holders refresh (TTL/5).
    pub refresh: Duration,
    /// How often waiters retry without a notification, and the first backoff after a
    /// backend error (TTL/5).
    pub retry: Duration,
    /// One work step: recovery counts up to the first step under the new lease.
    pub step: Duration,
    /// How late the server may end an expired lease: etcd revokes expired leases in a
    /// 500 ms loop; Redis and PostgreSQL act on time.
    pub expiry_lag: Duration,
    /// How much longer a lease may live when a topology changes hands: a new etcd leader
    /// renews every lease for its TTL plus the election timeout (1 s); zero elsewhere.
    pub handover_extension: Duration,
    /// For process scheduling on a loaded two-core machine.
    pub slack: Duration,
}

impl Bounds {
    /// The bounds for `backend` with lease TTL `ttl` and work steps of `step`.
    pub fn new(backend: BackendKind, ttl: Duration, step: Duration) -> Self {
        let expiry_lag = if backend.is_etcd() {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        };
        let handover_extension = if backend.is_etcd() && backend != BackendKind::Etcd {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        Self {
            ttl,
            refresh: ttl / 5,
            retry: ttl / 5,
            step,
            expiry_lag,
            handover_extension,
            slack: Duration::from_millis(300),
        }
    }

    /// The earliest and latest takeover (faults that end the holder's lease, from the
    /// fault) or recovery (server faults, cancelled statements and rotated credentials,
    /// from the fault's end) the design allows after `fault`.
    ///
    /// - Graceful stop: a release and a notification, well under the TTL (TTL/2); see
    ///   [`takeover_among`](Self::takeover_among) for a stop shortly after a waiter
    ///   crashed.
    /// - Crash, pause, cut, CPU starvation with a cut: the lease runs out at most a TTL
    ///   after its last refresh, then a waiter retries (at the expiry on backends that
    ///   report it, else within a retry interval): TTL + retry + expiry lag + slack. Not
    ///   earlier than the TTL after the last refresh, which was at most a refresh interval
    ///   before the fault (another refresh interval of slack for scheduling): TTL - 2 x
    ///   refresh. On PostgreSQL a crash ends the lock session and frees the lock at once,
    ///   but the session's heartbeat keeps other clients off the key until about a TTL
    ///   after the last refresh, so the same bounds hold.
    /// - Lock session terminated (PostgreSQL): at most as long as a crash; no lower bound,
    ///   because the holder learns of it at its next refresh, releases, and its own
    ///   process may take the key again at once.
    /// - Server restart or pause of length D, the holder's statements cancelled for D, or
    ///   the members' credentials rotated for D (every call refused, like a server that is
    ///   down but answers): a lease that outlived the fault ends within a TTL of its end (etcd renews leases
    ///   to their full TTL when its leader restarts). Waiters that met errors back off
    ///   with doubling waits from the retry interval, jittered by ±25 %: a wait begun
    ///   within D after the first error is at most 5/3 D + 5/4 retry long. Whichever ends
    ///   later, a retry interval and a step follow: max(TTL + expiry lag, 5/3 D + 5/4
    ///   retry) + retry + step + slack. A holder whose cancelled refreshes succeeded
    ///   again before its deadline recovers with its next step after the TTL.
    /// - A topology's failover (a Sentinel master or the Redis Cluster master of the
    ///   lock's slot killed, paused or cut off, until a replica has taken over and the old
    ///   master is back as a replica) counts as a server down for D, that whole time: the
    ///   same bound, so a holder again within the failover time plus a TTL.
    pub fn takeover(&self, fault: &Fault) -> (Duration, Duration) {
        self.takeover_among(fault, &[])
    }

    /// How long a waiter's registration may outlive its process: a backend that wakes one
    /// waiting process per release keeps it for max(10 s, 2 × TTL) (Redis, PostgreSQL) or
    /// under a 10 s waiter lease (etcd's line).
    fn registration_life(&self) -> Duration {
        Duration::from_secs(10).max(self.ttl * 2)
    }

    /// [`takeover`](Self::takeover) for `fault` among the run's `faults`. A release wakes
    /// one waiting process (README, Guarantees), and the one it picks may be a member
    /// that crashed, was paused or cut off shortly before, whose registration is still
    /// there: then the others find the key free at their next poll, within the released
    /// lease's TTL. So after such a fault within a registration's life, a graceful stop
    /// is allowed as long as a crash: TTL + retry + expiry lag + slack (plus a topology's
    /// handover extension).
    pub fn takeover_among(&self, fault: &Fault, faults: &[Takeover]) -> (Duration, Duration) {
        let (min, max) = self.takeover_alone(fault);
        if fault.kind != FaultKind::Terminate {
            return (min, max);
        }
        let life = self.registration_life();
        let waiter_lost = faults.iter().map(|t| &t.fault).any(|other| {
            matches!(
                other.kind,
                FaultKind::Kill | FaultKind::Pause | FaultKind::Cut | FaultKind::StarveCut
            ) && other.at <= fault.at
                && between(other.until, fault.at) <= life
        });
        if !waiter_lost {
            return (min, max);
        }
        let picked_lost =
            self.ttl + self.retry + self.expiry_lag + self.handover_extension + self.slack;
        (min, max.max(picked_lost))
    }

    fn takeover_alone(&self, fault: &Fault) -> (Duration, Duration) {
        let crash_max = self.ttl + self.retry + self.expiry_lag + self.slack;
        let crash_min = self.ttl.saturating_sub(self.refresh * 2);
        match fault.kind {
            FaultKind::Terminate => (Duration::ZERO, self.ttl / 2),
            FaultKind::Kill | FaultKind::Pause | FaultKind::Cut | FaultKind::StarveCut => {
                (crash_min, crash_max)
            }
            FaultKind::SessionTerminate => (Duration::ZERO, crash_max),
            // The server faults, cancelled statements, rotated credentials and the
            // topologies' faults: those that need not end the holder's lease.
            _ => {
                let down = between(fault.at, fault.until);
                let lease = self.ttl + self.expiry_lag + self.handover_extension;
                let backoff = down * 5 / 3 + self.retry * 5 / 4;
                let max = lease.max(backoff) + self.retry + self.step + self.slack;
                (Duration::ZERO, max)
            }
        }
    }
}

/// Everything in `report` that breaks the design's promises; empty if none.
///
/// - Fencing tokens grow with every acquisition.
/// - No overlap, except stale steps of a paused holder done after its pause began,
///   each fenced (a step with a newer token came before it).
/// - Every fault is followed by a takeover or recovery within [`Bounds::takeover`].
/// - No time without a holder outside fault windows (up to `gap_tolerance`).
pub fn judge(report: &Report, bounds: &Bounds, gap_tolerance: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    for (at, token, before) in &report.token_regressions {
        problems.push(format!(
            "token {token} acquired at {at} is not above the earlier {before}"
        ));
    }
    let paused = |member: usize, at: u64| {
        report.takeovers.iter().any(|t| {
            t.fault.kind == FaultKind::Pause && t.fault.member == Some(member) && t.fault.at <= at
        })
    };
    for stale in &report.stale_steps {
        if !stale.fenced || !paused(stale.member, stale.at) {
            problems.push(format!(
                "member {} worked with token {} at {} while a newer holder held the lease \
                 ({})",
                stale.member,
                stale.token,
                stale.at,
                if stale.fenced {
                    "fenced, but it was not paused"
                } else {
                    "unfenced"
                }
            ));
        }
    }
    if report.stale_steps.is_empty() && !report.overlap.is_zero() {
        problems.push(format!("overlap of {:.1} ms", ms(report.overlap)));
    }
    for takeover in &report.takeovers {
        let (min, max) = bounds.takeover_among(&takeover.fault, &report.takeovers);
        match takeover.after() {
            None => problems.push(format!("no takeover after {}", takeover.fault.kind)),
            Some(after) if after > max || after < min => problems.push(format!(
                "takeover after {} took {:.0} ms, outside {:.0}..={:.0} ms",
                takeover.fault.kind,
                ms(after),
                ms(min),
                ms(max)
            )),
            Some(_) => {}
        }
    }
    if report.gap_max > gap_tolerance {
        problems.push(format!(
            "{:.1} ms without a holder outside fault windows (longest {:.1} ms)",
            ms(report.gap_total),
            ms(report.gap_max)
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn takeover(kind: FaultKind, at: u64) -> Takeover {
        Takeover {
            fault: Fault {
                kind,
                member: Some(0),
                token: Some(1),
                at,
                until: at,
            },
            from: at,
            at: None,
            by: None,
            token: None,
        }
    }

    #[test]
    fn a_graceful_stop_soon_after_a_waiter_crashed_may_take_as_long_as_a_crash() {
        let bounds = Bounds::new(
            BackendKind::Redis,
            Duration::from_secs(1),
            Duration::from_millis(50),
        );
        let stop = takeover(FaultKind::Terminate, 100 * SECOND);
        let alone = bounds.takeover(&stop.fault).1;
        assert_eq!(
            alone,
            Duration::from_millis(500),
            "TTL/2 without a lost waiter"
        );

        // A member killed 5 s before: its registration may still be picked.
        let killed = takeover(FaultKind::Kill, 95 * SECOND);
        let widened = bounds
            .takeover_among(&stop.fault, &[killed, stop.clone()])
            .1;
        assert_eq!(widened, Duration::from_millis(1000 + 200 + 300));

        // One killed a minute before is long gone from every waiter list.
        let long_ago = takeover(FaultKind::Kill, 40 * SECOND);
        assert_eq!(
            bounds
                .takeover_among(&stop.fault, &[long_ago, stop.clone()])
                .1,
            alone
        );

        // A graceful stop before does not widen it, nor does a kill after.
        let earlier_stop = takeover(FaultKind::Terminate, 99 * SECOND);
        let later_kill = takeover(FaultKind::Kill, 101 * SECOND);
        assert_eq!(
            bounds
                .takeover_among(&stop.fault, &[earlier_stop, later_kill])
                .1,
            alone
        );
    }
}
