//! `RunOptions`: how a named routine runs, and, for scheduled routines, when.

use std::time::{Duration, SystemTime};

use leasehold_core::Result;

use crate::schedule::spec::{MissedFires, Timing, WallClock};

/// How a named routine runs, for [`Runner::run_named`](crate::Runner::run_named).
///
/// The default runs the routine once, like [`Runner::run`](crate::Runner::run), with a
/// name in its logs. [`RunOptions::keep_running_one_instance`] keeps one instance running
/// across the cluster; [`RunOptions::every`] and [`RunOptions::cron`] run it on a
/// schedule, each fire once across the cluster, and take the builder-style settings
/// below. Every leased routine may also have its own [lease TTL](RunOptions::lease_ttl)
/// and [backoff](RunOptions::backoff), instead of the runner's.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leasehold::{MissedFires, RunOptions};
///
/// let always = RunOptions::keep_running_one_instance();
/// let nightly = RunOptions::cron("0 3 * * *", leasehold::chrono_tz::Europe::Berlin)
///     .expect("a valid expression")
///     .missed_fires(MissedFires::RunOnce)
///     .timeout(Duration::from_secs(3600));
/// let sync = RunOptions::every(Duration::from_secs(60)).skip_if_held();
/// assert_eq!(always, RunOptions::keep_running_one_instance());
/// assert_ne!(sync, RunOptions::every(Duration::from_secs(60)));
/// # let _ = nightly;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub(crate) mode: Mode,
    pub(crate) schedule: ScheduleOptions,
    pub(crate) lease: LeaseOptions,
}

/// A routine's own lease timing, overriding the runner's (see [`RunOptions::lease_ttl`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LeaseOptions {
    pub(crate) ttl: Option<Duration>,
    /// `(min, max)`.
    pub(crate) backoff: Option<(Duration, Duration)>,
}

impl LeaseOptions {
    /// The name of a setting given, for the error of a routine without a lease.
    pub(crate) fn given(&self) -> Option<&'static str> {
        if self.ttl.is_some() {
            Some("lease_ttl")
        } else if self.backoff.is_some() {
            Some("backoff")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Run once, no lease.
    #[default]
    Once,
    /// Run once under the lease, waiting for it first.
    Exclusive,
    /// Run under the lease, restarting forever.
    KeepRunning,
    /// Run on a schedule, each fire once across the cluster.
    Scheduled,
}

/// The settings of a scheduled routine (see the builder methods on [`RunOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleOptions {
    /// `None` unless the routine is scheduled (or the schedule was invalid: `error`).
    pub(crate) timing: Option<Timing>,
    /// Why the schedule could not be used, reported when the routine starts.
    pub(crate) error: Option<String>,
    pub(crate) delay: Duration,
    pub(crate) missed: MissedFires,
    pub(crate) tolerance: Duration,
    pub(crate) catch_up_window: Duration,
    pub(crate) retry_interrupted: Option<Duration>,
    pub(crate) skip_if_held: bool,
    pub(crate) hold_at_least: Duration,
    pub(crate) instances: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) clock: WallClock,
    /// Whether a setting that only a schedule uses was set (an error without one).
    pub(crate) touched: bool,
}

/// The default tolerance: how late a member may get to a fire for it to count as on time.
pub(crate) const DEFAULT_TOLERANCE: Duration = Duration::from_secs(1);
/// The default catch-up window of [`MissedFires::RunOnce`] and [`MissedFires::RunEach`].
pub(crate) const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(3600);

impl Default for ScheduleOptions {
    fn default() -> Self {
        Self {
            timing: None,
            error: None,
            delay: Duration::ZERO,
            missed: MissedFires::Skip,
            tolerance: DEFAULT_TOLERANCE,
            catch_up_window: DEFAULT_CATCH_UP_WINDOW,
            retry_interrupted: None,
            skip_if_held: false,
            hold_at_least: Duration::ZERO,
            instances: 1,
            timeout: None,
            clock: WallClock::default(),
            touched: false,
        }
    }
}

impl ScheduleOptions {
    /// How late after its time a member may still start a fire: the tolerance, or the
    /// catch-up window when missed fires are caught up.
    pub(crate) fn late_limit(&self) -> Duration {
        match self.missed {
            MissedFires::Skip => self.tolerance,
            _ => self.tolerance.max(self.catch_up_window),
        }
    }
}

impl RunOptions {
    /// Runs the routine once, with no lease (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs exactly one instance of the routine across every runner that shares the
    /// backend, and keeps it running.
    ///
    /// Every caller of the same name (tasks in this process or processes on other hosts)
    /// competes for the name's lease; the one that holds it runs the routine, the others
    /// wait. When the routine returns it is started again after the retry interval; when
    /// it panics, after an exponential backoff. When the holder cancels its routine,
    /// shuts down or dies, another caller takes over: at once on a release notification,
    /// or when the lease expires. If the lease is lost, the routine is cancelled and, at
    /// the local lease deadline, dropped. Only callers take over: a process that never
    /// called `run_named` for this name never runs it.
    pub fn keep_running_one_instance() -> Self {
        Self {
            mode: Mode::KeepRunning,
            ..Self::default()
        }
    }

    /// Waits for the name's lease, runs the routine once under it, then releases it.
    /// Not restarted: the handle reports [`Outcome::LeaseLost`](crate::Outcome::LeaseLost)
    /// if the lease is lost while it runs.
    pub fn exclusive() -> Self {
        Self {
            mode: Mode::Exclusive,
            ..Self::default()
        }
    }

    /// Runs the routine at every multiple of `period` since the UNIX epoch (UTC), each
    /// fire once across every runner that shares the backend.
    ///
    /// The fires are the same instants on every member whenever it started: `every(60 s)`
    /// fires at each full minute. A zero period fails the routine at start with
    /// [`Outcome::Failed`](crate::Outcome::Failed).
    ///
    /// # Each fire once
    ///
    /// Every member of the schedule waits until its own wall clock reaches the fire's
    /// time, then takes the name's lease (or one of the
    /// [`instances`](RunOptions::instances) slots), waiting for it until the fire's late
    /// limit (the [tolerance](RunOptions::tolerance), or the
    /// [catch-up window](RunOptions::catch_up_window) when missed fires are caught up) or
    /// the next fire, whichever is later, unless
    /// [`skip_if_held`](RunOptions::skip_if_held). Holding it, the member reads
    /// the name's *record* in the backend
    /// ([`LockBackend::write_record`](crate::LockBackend::write_record)): the fires
    /// claimed (the 16 newest; older ones count as claimed), and the runs going on. If
    /// the fire is not claimed yet, the member claims it by adding it to the record with
    /// a compare-and-set guarded by its lease's fencing token, runs the routine under the lease with the keeper and
    /// the hard local deadline, as for every leased routine, and takes its run out of
    /// the record when the routine ends (still under the lease). Members that come to the
    /// fire later find it claimed and skip it.
    ///
    /// - **At most once, whatever the clocks say**: a fire is claimed only by adding it
    ///   to the record, once, so it starts at most once across the cluster however far
    ///   apart the members' wall clocks are. A member whose clock is ahead runs fires
    ///   early by its offset, one whose clock is behind finds them claimed. The backend
    ///   must keep its writes (see the Guarantees in the README: a backend that loses
    ///   acknowledged writes is outside them). The one exception is opt-in:
    ///   [`retry_interrupted`](RunOptions::retry_interrupted) starts again a fire whose
    ///   run was cut off.
    /// - **At least once**: a fire runs if at least one member is running the schedule,
    ///   can reach the backend, and gets the name's lease in that wait, unless a member
    ///   has claimed 16 later fires before any member got to it (the record lists the 16
    ///   newest claims; older fires count as claimed). With [`MissedFires::RunEach`] the member that
    ///   claims a fire runs the unclaimed fires before it first, oldest first, within
    ///   the late limit. A fire is skipped on purpose when
    ///   [`skip_if_held`](RunOptions::skip_if_held) finds the name held.
    /// - **Runs cut off** (the member died, was paused past its lease, lost its lease or
    ///   was shut down before the routine returned) stay listed in the record; the next
    ///   member to take the name finds them and reports
    ///   [`EventKind::FireInterrupted`](crate::EventKind::FireInterrupted). By default
    ///   the fire is recorded as failed and not run again;
    ///   [`retry_interrupted`](RunOptions::retry_interrupted) runs it again instead.
    /// - **Handover mid-schedule** neither repeats nor skips a fire: the record, not the
    ///   member, knows the last fire claimed.
    ///
    /// Members must use the same schedule for a name. What stays in the backend is one
    /// lease and one record per name (and one lease per slot with several instances); no
    /// key per fire. The record is a line of text of at most about 800 bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasehold::{MemoryBackend, RunOptions, Runner};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Runner::with_backend(MemoryBackend::new());
    /// let sync = runner.run_named(
    ///     "sync",
    ///     |_ctx| async move { /* one sync, once per minute across the cluster */ },
    ///     RunOptions::every(Duration::from_secs(60)),
    /// );
    /// sync.cancel();
    /// sync.join().await;
    /// # }
    /// ```
    pub fn every(period: Duration) -> Self {
        let mut options = Self {
            mode: Mode::Scheduled,
            ..Self::default()
        };
        match Timing::every(period) {
            Ok(timing) => options.schedule.timing = Some(timing),
            Err(error) => options.schedule.error = Some(error.to_string()),
        }
        options
    }

    /// Runs the routine at the instants the cron `expression` matches in time zone
    /// `zone`, each fire once across the cluster, as [`RunOptions::every`] describes.
    ///
    /// The expression has five fields (minute, hour, day of month, month, day of week)
    /// or six with seconds first, as parsed by the `croner` crate (`L`, `W` and `#` are
    /// supported). A local time that a daylight saving change skips fires when the gap
    /// ends (02:30 on a spring-forward night fires at 03:00); one it repeats fires once.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) if the expression does not parse.
    pub fn cron(expression: &str, zone: chrono_tz::Tz) -> Result<Self> {
        let timing = Timing::cron(expression, zone)?;
        let mut options = Self {
            mode: Mode::Scheduled,
            ..Self::default()
        };
        options.schedule.timing = Some(timing);
        Ok(options)
    }

    fn scheduled(mut self, set: impl FnOnce(&mut ScheduleOptions)) -> Self {
        set(&mut self.schedule);
        self.schedule.touched = true;
        self
    }

    /// Fires before `delay` has passed since the routine was started are not run on this
    /// member (they may run on others). Default zero.
    pub fn delay(self, delay: Duration) -> Self {
        self.scheduled(|s| s.delay = delay)
    }

    /// What to do with fires this member could not start on time; see [`MissedFires`].
    /// Default [`MissedFires::Skip`].
    pub fn missed_fires(self, policy: MissedFires) -> Self {
        self.scheduled(|s| s.missed = policy)
    }

    /// How late after its time, on its own clock, a member may get to a fire for it to
    /// count as on time (default 1 s). Later, the fire is missed on that member, and
    /// [`MissedFires`] decides.
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.scheduled(|s| s.tolerance = tolerance)
    }

    /// How far back [`MissedFires::RunOnce`] and [`MissedFires::RunEach`] look for missed
    /// fires (default 1 h): a member still tries a fire this long after its time.
    pub fn catch_up_window(self, window: Duration) -> Self {
        self.scheduled(|s| s.catch_up_window = window)
    }

    /// Runs again a fire whose run was cut off (its member died, was paused past its
    /// lease, lost its lease, or was shut down before the routine returned), if the next
    /// member to take the name finds it within `within` of the fire's time on its own
    /// clock. Without it (the default) such a fire is recorded as failed and reported
    /// ([`EventKind::FireInterrupted`](crate::EventKind::FireInterrupted)), never run
    /// again.
    ///
    /// This trades "at most once" for "at least once" in that one case: the fire starts a
    /// second time, and also when the first run did finish but its end could not be
    /// recorded before its lease was lost. Use it for idempotent work.
    pub fn retry_interrupted(self, within: Duration) -> Self {
        self.scheduled(|s| s.retry_interrupted = Some(within))
    }

    /// Tries the name's lease once per fire: if another member holds it (a run that
    /// outlasted the period, or [`hold_at_least`](RunOptions::hold_at_least)), this fire
    /// is skipped, as ShedLock does. Without it, a member waits for the lease until the
    /// fire's late limit or the next fire (see [`RunOptions::every`]), then gives the
    /// fire up on its side
    /// ([`FireSkipReason::NoLeaseInTime`](crate::FireSkipReason)).
    pub fn skip_if_held(self) -> Self {
        self.scheduled(|s| s.skip_if_held = true)
    }

    /// After a run shorter than `duration`, keeps the name's lease until `duration` has
    /// passed since the run started, instead of releasing it at once (it is still
    /// refreshed, and released early if the routine is cancelled). With
    /// [`skip_if_held`](RunOptions::skip_if_held), other runs of the name are skipped
    /// meanwhile. Measured on this member's monotonic clock, not on wall clocks.
    pub fn hold_at_least(self, duration: Duration) -> Self {
        self.scheduled(|s| s.hold_at_least = duration)
    }

    /// Up to `n` runs at once across the cluster (default 1): each run takes one of `n`
    /// lease slots, `<name>#0` to `<name>#<n-1>` (for `n` = 1, the name itself). Fires
    /// still run once each; this only lets a fire start while earlier runs go on. Zero
    /// counts as one; more than 8 fails the routine at start with an
    /// [`Error::Config`](crate::Error::Config) naming `instances` (the name's record lists
    /// every run going on). With several instances a run takes the name's own lease only
    /// for the moment it claims its fire and records its end.
    pub fn instances(self, n: u32) -> Self {
        self.scheduled(|s| s.instances = n.max(1))
    }

    /// Bounds each run: after `timeout` its context is cancelled, and a grace period
    /// (the runner's) later its future is dropped if it has not returned.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.scheduled(|s| s.timeout = Some(timeout))
    }

    /// This routine's lease TTL, instead of the runner's
    /// ([`RunnerBuilder::with_lease_ttl`](crate::RunnerBuilder::with_lease_ttl)), for
    /// [`keep_running_one_instance`](RunOptions::keep_running_one_instance),
    /// [`exclusive`](RunOptions::exclusive) and scheduled routines.
    ///
    /// Everything a runner derives from its TTL is derived from this one, the same way:
    /// the refresh and retry intervals (a fifth), the safety margin (a tenth), the grace
    /// period (a fifth) and the request timeout (a half). This holds also where the
    /// runner's were set explicitly: they were chosen against the runner's TTL. The
    /// backoff (unless [`backoff`](RunOptions::backoff) is set) and the release and
    /// drain timeouts stay the runner's. The runner's keeper still refreshes this lease
    /// with the others, in a `refresh_many` call of its own for each distinct TTL, at
    /// this routine's own refresh interval.
    ///
    /// The TTL is checked when the routine starts: zero, too short to derive the timing
    /// from (the runner's own rule), or outside the backend's TTL bounds, the routine
    /// ends with [`Outcome::Failed`](crate::Outcome::Failed) and an
    /// [`Error::Config`](crate::Error::Config) naming `lease_ttl`; so does setting it on a
    /// routine without a lease. A backend the runner connects lazily (from a URL) is
    /// checked when it connects: a TTL outside its bounds then fails the routine with
    /// [`Error::InvalidTtl`](crate::Error::InvalidTtl).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasehold::RunOptions;
    ///
    /// // A leader that hands over within seconds on a runner whose TTL is a minute.
    /// let leader = RunOptions::keep_running_one_instance().lease_ttl(Duration::from_secs(3));
    /// # let _ = leader;
    /// ```
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease.ttl = Some(ttl);
        self
    }

    /// This routine's backoff, instead of the runner's
    /// ([`RunnerBuilder::with_backoff_min`](crate::RunnerBuilder::with_backoff_min) and
    /// [`with_backoff_max`](crate::RunnerBuilder::with_backoff_max)): the first
    /// wait after a panic or a backend error is `min`, doubling up to `max` while they
    /// repeat. For the same routines as [`lease_ttl`](RunOptions::lease_ttl) (a scheduled
    /// routine backs off only after backend errors: a panicking run is followed by the
    /// next fire).
    ///
    /// Checked when the routine starts: a zero `min`, or `max` below `min`, ends the
    /// routine with [`Outcome::Failed`](crate::Outcome::Failed) and an
    /// [`Error::Config`](crate::Error::Config) naming `backoff`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.lease.backoff = Some((min, max));
        self
    }

    /// The wall clock the schedule reads, instead of the system clock: for tests and
    /// simulations (for example a clock offset from tokio's paused time, to run members
    /// whose clocks disagree).
    pub fn with_wall_clock(self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        let clock = WallClock::new(now);
        self.scheduled(|s| s.clock = clock)
    }
}
