//! CPU starvation of a process's own tokio runtime, on signals: `SIGUSR1` starts it,
//! `SIGUSR2` ends it. The fault harness uses it to play a holder whose service is
//! overloaded (a flood of requests, a CPU quota spent, blocking calls on the workers).
//!
//! Starving means keeping every worker thread busy with tasks that block the thread for
//! a while in each poll and then wake another such task. tokio polls tasks woken by other
//! tasks before it looks at its timers, sockets and the queue of wake-ups from other
//! threads again (it does so only every few dozen polls, or when a worker runs out of
//! tasks), so timers fire late and I/O is read late: the runner's refreshes and its timer
//! at the local deadline run behind, up to seconds with these burners.
//!
//! The load is also work for the routine: each burn hands it a piece ([`Work`]), as a
//! busy service's tasks feed its routines. The routine is then woken by tasks, which a
//! starved runtime still polls, not only by its timer, which fires no earlier than the
//! runner's own timer at the deadline. A runner that polled the routine without reading
//! the clock would let it work on past its deadline, while another member holds the
//! lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

/// How long a burner blocks its worker thread in each poll.
const BURN: Duration = Duration::from_millis(10);

/// Ping-pong pairs of burners started per worker thread: two, so a worker that steals a
/// woken burner from another one still finds its own.
const PAIRS_PER_WORKER: usize = 2;

/// Work handed to the routine while the runtime is starved: a wake-up per burn.
pub type Work = Arc<Notify>;

/// Starves the current runtime of CPU from each `SIGUSR1` to the next `SIGUSR2`, handing
/// `work` a wake-up with every burn, until the runtime shuts down. Spawn it as a task.
///
/// # Errors
///
/// If the signal handlers cannot be installed.
pub async fn on_signals(work: Work) -> std::io::Result<()> {
    let mut start = signal(SignalKind::user_defined1())?;
    let mut stop = signal(SignalKind::user_defined2())?;
    let mut burning: Option<Arc<AtomicBool>> = None;
    loop {
        tokio::select! {
            Some(()) = start.recv() => {
                if burning.is_none() {
                    burning = Some(burn(&work));
                }
            }
            Some(()) = stop.recv() => {
                if let Some(flag) = burning.take() {
                    flag.store(false, Ordering::Release);
                }
            }
            else => return Ok(()),
        }
    }
}

/// Starts the burners; they stop once the returned flag is set to `false`.
fn burn(work: &Work) -> Arc<AtomicBool> {
    let burning = Arc::new(AtomicBool::new(true));
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for _ in 0..workers * PAIRS_PER_WORKER {
        let ping = Arc::new(Notify::new());
        let pong = Arc::new(Notify::new());
        // `ping` holds a permit from the start, so the pair begins at once.
        ping.notify_one();
        let pair = Pair {
            burning: Arc::clone(&burning),
            work: Arc::clone(work),
        };
        tokio::spawn(pair.clone().burner(Arc::clone(&ping), Arc::clone(&pong)));
        tokio::spawn(pair.burner(pong, ping));
    }
    burning
}

/// What both burners of a pair share.
#[derive(Clone)]
struct Pair {
    burning: Arc<AtomicBool>,
    work: Work,
}

impl Pair {
    /// Waits for `mine`, blocks its thread for [`BURN`], hands the routine work, wakes
    /// `partner`; until burning ends.
    async fn burner(self, mine: Arc<Notify>, partner: Arc<Notify>) {
        loop {
            mine.notified().await;
            if !self.burning.load(Ordering::Acquire) {
                // The partner waits for this wake-up; it then sees the flag too.
                partner.notify_one();
                return;
            }
            std::thread::sleep(BURN);
            // Only a routine waiting now: a stored permit would make a later instance,
            // on a fed runtime, do a step at once instead of after its step time.
            self.work.notify_waiters();
            partner.notify_one();
        }
    }
}
