//! `RunOptions`: how a named routine runs.

/// How a named routine runs, for [`Runner::run_named`](crate::Runner::run_named).
///
/// The default runs the routine once, like [`Runner::run`](crate::Runner::run), with a
/// name in its logs.
///
/// # Examples
///
/// ```
/// use leasehold::RunOptions;
///
/// let options = RunOptions::keep_running_one_instance();
/// assert_eq!(options, RunOptions::keep_running_one_instance());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub(crate) mode: Mode,
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
        }
    }

    /// Waits for the name's lease, runs the routine once under it, then releases it.
    /// Not restarted: the handle reports [`Outcome::LeaseLost`](crate::Outcome::LeaseLost)
    /// if the lease is lost while it runs.
    pub fn exclusive() -> Self {
        Self {
            mode: Mode::Exclusive,
        }
    }
}
