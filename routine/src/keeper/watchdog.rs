//! `Watchdog`: one task per runner that tells each hold when the grace period before its
//! lease's local deadline begins and when the deadline passes.
//!
//! Each hold used to keep a timer of its own, at the grace time of its deadline; since
//! the keeper moves the deadline on at every refresh, every one of them woke every few
//! seconds only to read the new deadline and sleep again: at 100,000 routines a tenth
//! of the runner's CPU went to tokio's timer wheel, and each wake-up also polled the
//! hold's cancellation futures. The watchdog keeps one heap of wake-up times instead,
//! ordered by time, with one timer for the earliest. When an entry is due it reads the
//! lease's current deadline: if the deadline has moved on, the entry goes back into the
//! heap at its new time without waking anyone; otherwise the hold is told (the grace
//! period has begun, or the deadline has passed) and woken. In a steady state a hold's
//! task is never woken at all.
//!
//! **Safety.** The watchdog is independent of the keeper's refreshes: it has its own task
//! and its own lock, and it reads only the deadline that a *successful* refresh moves on.
//! A keeper stuck on a hung backend therefore cannot keep a routine running past its
//! deadline: the deadline simply stops moving and the watchdog fires. It is also not the
//! only line: the routine's [`Guard`](crate::guard::Guard) still reads the clock before
//! every poll, for a watchdog woken late on a busy runtime.
//!
//! Like the keeper, the task starts with the first lease and ends when no lease is left to
//! watch; one dropped with its runtime is started again, on the runtime of the next lease.
//! An entry whose hold and keeper entry are gone (the watchdog holds the last reference)
//! is dropped the next time it is due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use super::watch::Watch;

/// The runner's deadline watchdog; see the module documentation.
pub(super) struct Watchdog {
    state: Mutex<State>,
    /// Wakes the task when an entry is due before its planned wake-up.
    earlier: Notify,
}

#[derive(Default)]
struct State {
    due: BinaryHeap<Due>,
    /// When the running task plans to wake, if it sleeps.
    wake_at: Option<Instant>,
    /// The generation of the task running now, if one is.
    running: Option<u64>,
    generations: u64,
}

/// One lease's next look, ordered earliest first in the heap.
struct Due {
    at: Instant,
    watch: Arc<Watch>,
    /// The hold has been told that the grace period began: look next at the deadline.
    told_near: bool,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest look must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

/// When to look next at a lease whose deadline is `deadline`.
fn next_look(watch: &Watch, deadline: Instant, told_near: bool) -> Instant {
    if told_near {
        deadline
    } else {
        deadline
            .checked_sub(watch.grace_period())
            .unwrap_or(deadline)
    }
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every critical section only pushes and pops heap entries and sets fields: a panic
    // cannot leave them half-updated, so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watchdog {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            earlier: Notify::new(),
        }
    }

    /// Watches the deadline of `watch` from now on. Must be called within a tokio
    /// runtime: it may start the watchdog's task.
    pub(super) fn watch(self: &Arc<Self>, watch: Arc<Watch>) {
        let at = next_look(&watch, watch.deadline(), false);
        let mut state = lock(&self.state);
        state.due.push(Due {
            at,
            watch,
            told_near: false,
        });
        if state.running.is_none() {
            state.generations += 1;
            let generation = state.generations;
            state.running = Some(generation);
            drop(state);
            tokio::spawn(Arc::clone(self).run(generation));
        } else if state.wake_at.is_none_or(|wake_at| at < wake_at) {
            drop(state);
            self.earlier.notify_one();
        }
    }

    /// The watchdog's task: looks at each lease when it is due, until none is left.
    async fn run(self: Arc<Self>, generation: u64) {
        let _running = Running {
            watchdog: &self,
            generation,
        };
        loop {
            let wake_at = {
                let mut state = lock(&self.state);
                self.look(&mut state, Instant::now());
                let Some(next) = state.due.peek() else {
                    state.running = None;
                    state.wake_at = None;
                    return;
                };
                let wake_at = next.at;
                state.wake_at = Some(wake_at);
                wake_at
            };
            // An earlier entry added since the lock was released is not missed:
            // `notify_one` keeps a permit when nobody waits.
            tokio::select! {
                biased;
                () = self.earlier.notified() => {}
                () = sleep_until(wake_at) => {}
            }
        }
    }

    /// Looks at every entry due at `now`: tells its hold what has come, and puts it back
    /// for its next look unless its deadline has passed or nobody is left to tell.
    fn look(&self, state: &mut State, now: Instant) {
        // Entries that go back into the heap: pushed after the loop, so that one is
        // looked at once per call.
        let mut again = Vec::new();
        while state.due.peek().is_some_and(|due| due.at <= now) {
            let Some(Due {
                watch,
                mut told_near,
                ..
            }) = state.due.pop()
            else {
                break;
            };
            if Arc::strong_count(&watch) == 1 {
                // Its hold and its keeper entry are gone.
                continue;
            }
            let deadline = watch.deadline();
            if now >= deadline {
                watch.passed();
                continue;
            }
            if !told_near && now >= next_look(&watch, deadline, false) {
                watch.near();
                told_near = true;
            }
            again.push(Due {
                at: next_look(&watch, deadline, told_near),
                watch,
                told_near,
            });
        }
        state.due.extend(again);
    }
}

/// Marks the watchdog task of `generation` stopped when it ends or is dropped (with its
/// runtime): the next lease watched starts another.
struct Running<'a> {
    watchdog: &'a Watchdog,
    generation: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.watchdog.state);
        if state.running == Some(self.generation) {
            state.running = None;
            state.wake_at = None;
        }
    }
}
