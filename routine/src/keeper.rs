//! `Keeper`: refreshes every lease a runner holds, together, on one shared tick.
//!
//! A runner holding 10,000 routines would otherwise run 10,000 refresh loops, each with
//! its own timers and its own request per refresh. Instead each `hold` hands its lease to
//! the runner's keeper, which keeps no timer per lease either. The keeper's one task
//! wakes when the earliest lease is due, takes every lease due within half a refresh
//! interval after it, and refreshes them with one [`LockBackend::refresh_many`] call, so
//! the backend can batch them (one script, one keep-alive, one statement). Leases refreshed together stay due together, so in a
//! steady state there is one batch per refresh interval.
//!
//! What a hold learns from its [`KeptLease`]: its current local deadline (`sent + ttl -
//! safety_margin`, `sent` being when the `refresh_many` call that confirmed the lease was
//! *made*), and, pushed, that its lease was lost or that a refresh failed, or, from the
//! runner's deadline [`watchdog`] (a task of its own, with one timer for all leases),
//! that the grace period before the deadline has begun or that the deadline has passed.
//! The keeper only moves deadlines on; the watchdog and the hold's guard enforce them, so
//! a keeper stuck on a hung backend cannot keep a routine running past its deadline.
//! Batches run concurrently, each bounded by the request timeout, so a hung batch does
//! not delay the leases that are not in it.
//!
//! Each entry keeps a copy of its lease's deadline next to its other fields: putting a
//! refreshed lease back reads it (for the deadline-margin metric) without following the
//! entry's `Arc<Watch>`, which at 100,000 leases missed the cache for every lease at
//! every refresh. A successful refresh is no news: it does not wake the hold. The
//! backend and timing of a lease are kept once per distinct pair (`State::profiles`),
//! not in each entry.
//!
//! Routines may have their own TTL ([`RunOptions::lease_ttl`](crate::RunOptions::lease_ttl)):
//! each lease keeps its own refresh interval and deadline, and a batch holds leases of
//! one backend *and one TTL*, since `refresh_many` takes one TTL for all its leases, and
//! only leases of that TTL join a batch early. A runner whose routines use two TTLs
//! makes one call per TTL, each at its own interval.
//!
//! The task starts with the first lease and ends when there are none left, so an idle
//! runner has no task and no timer.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use leasehold_core::{FencingToken, Lease, LockBackend, LockKey};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::RunnerConfig;
use crate::guard::HasDeadline;
use crate::health::LateLease;
use crate::metrics::{self, Raised};

mod batch;
mod timing;
mod watch;
mod watchdog;

use batch::{Batch, Refreshed, RefreshedLease};
use timing::LeaseTiming;
pub(crate) use watch::RefreshNews;
use watch::Watch;
use watchdog::Watchdog;

/// The runner's lease keeper; see the module documentation.
pub(crate) struct Keeper {
    shared: Arc<Shared>,
}

/// What the keeper task and the holds' [`KeptLease`]s share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the keeper task when a lease is added: its first refresh may be due before
    /// the task's next planned wake-up (a slow acquire sent long before it returned).
    added: Notify,
    config: RunnerConfig,
    abort: CancellationToken,
    /// Tells the holds when their deadlines near and pass, on a task of its own.
    watchdog: Arc<Watchdog>,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    /// The backends and timings of the leases, each once: an entry names its own by
    /// index. A runner has one backend and few TTLs; a copy of both in each entry took
    /// 80 bytes of it. Never shrinks (it holds a handful).
    profiles: Vec<Profile>,
    next_id: u64,
    /// The generation of the keeper task running now, if one is.
    running: Option<u64>,
    generations: u64,
}

/// Hashes the keeper's entry ids, which it makes itself (sequential, never chosen by
/// anyone else): a multiplication spreads them over the table, where SipHash cost a
/// noticeable share of putting 100,000 refreshed leases back every second.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` ids are hashed (`write_u64`); any other input is folded in bytewise.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits, which the table uses too, depend on every bit.
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A backend and a lease timing that entries share.
struct Profile {
    backend: Arc<dyn LockBackend>,
    /// The lease's own timing (its routine's, see [`RunnerConfig::for_routine`]).
    timing: LeaseTiming,
}

impl Profile {
    /// The batch a lease of this profile goes into: its backend's and its TTL's.
    fn group(&self) -> (*const (), Duration) {
        (Arc::as_ptr(&self.backend).cast::<()>(), self.timing.ttl)
    }
}

impl State {
    /// The index of the profile of `backend` and `timing`, added if new.
    fn profile(&mut self, backend: Arc<dyn LockBackend>, timing: LeaseTiming) -> u32 {
        let found = self.profiles.iter().position(|profile| {
            Arc::ptr_eq(&profile.backend, &backend) && profile.timing == timing
        });
        let index = found.unwrap_or_else(|| {
            self.profiles.push(Profile { backend, timing });
            self.profiles.len() - 1
        });
        // A handful at most: one per backend and distinct routine timing.
        u32::try_from(index).unwrap_or(u32::MAX)
    }
}

/// One lease in the keeper's care.
struct Entry {
    /// Its backend and timing: an index into [`State::profiles`].
    profile: u32,
    /// `None` while the lease is in a batch being refreshed.
    lease: Option<Box<dyn Lease>>,
    watch: Arc<Watch>,
    /// The local deadline, as last set in `watch`: read here, next to the entry's other
    /// fields, rather than behind the `Arc` (a cache miss per lease per refresh).
    deadline: Instant,
    next_due: Instant,
    /// The lease's key and token, for health reports (the lease itself is away while
    /// it is refreshed).
    key: LockKey,
    fencing: FencingToken,
    /// When the last successful acquire or refresh was sent.
    confirmed_at: Instant,
    /// Refreshed no more: it was lost, or its hold wants it back to release it.
    retired: bool,
    /// Its hold is gone (dropped mid-batch): drop the lease when the batch returns.
    orphaned: bool,
    /// Counts the lease in `leasehold_leases_held` while the entry lives, however it is
    /// removed.
    _held: Raised,
}

impl Entry {
    /// Its profile, in `profiles` (those of its state).
    fn profile<'p>(&self, profiles: &'p [Profile]) -> &'p Profile {
        // Entries are only made with an index into the state's profiles, which never
        // shrink: the index is always in range.
        &profiles[self.profile as usize]
    }
}

/// A hold's handle on its lease while the keeper keeps it. Dropping it without
/// [`take_back`](KeptLease::take_back) drops the lease (as on `Runner::abort`).
pub(crate) struct KeptLease {
    id: u64,
    watch: Arc<Watch>,
    shared: Arc<Shared>,
}

/// The batches due now, and when the keeper must look again.
struct Due {
    batches: Vec<Batch>,
    wake_at: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section only moves values in and out of maps and fields, so a panic
    // cannot leave the data half-updated and poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Keeper {
    /// A keeper refreshing on `config`'s schedule, that stops refreshing when `abort`
    /// is cancelled.
    pub(crate) fn new(config: &RunnerConfig, abort: CancellationToken) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                added: Notify::new(),
                config: config.clone(),
                abort,
                watchdog: Arc::new(Watchdog::new()),
            }),
        }
    }

    /// Takes `lease`, acquired (or last refreshed) by a call made at `sent`, into care,
    /// to refresh it on the timing of `config` (its routine's settings). Must be called
    /// within a tokio runtime: it may start the keeper task.
    pub(crate) fn keep(
        &self,
        backend: Arc<dyn LockBackend>,
        lease: Box<dyn Lease>,
        sent: Instant,
        config: &RunnerConfig,
    ) -> KeptLease {
        let timing = LeaseTiming::of(config);
        let deadline = timing.local_deadline(sent);
        let watch = Arc::new(Watch::new(deadline, config.grace_period));
        let backend_name = backend.name();
        let key = lease.key().clone();
        let fencing = lease.fencing_token();
        let mut state = lock(&self.shared.state);
        let id = state.next_id;
        state.next_id += 1;
        let profile = state.profile(backend, timing);
        state.entries.insert(
            id,
            Entry {
                profile,
                lease: Some(lease),
                watch: Arc::clone(&watch),
                deadline,
                next_due: sent + timing.refresh_interval,
                key,
                fencing,
                confirmed_at: sent,
                retired: false,
                orphaned: false,
                _held: metrics::lease_held(backend_name),
            },
        );
        if state.running.is_none() {
            state.generations += 1;
            let generation = state.generations;
            state.running = Some(generation);
            drop(state);
            tokio::spawn(Arc::clone(&self.shared).run(generation));
        } else {
            drop(state);
            self.shared.added.notify_one();
        }
        self.shared.watchdog.watch(Arc::clone(&watch));
        KeptLease {
            id,
            watch,
            shared: Arc::clone(&self.shared),
        }
    }

    /// The held leases whose last confirmation was sent more than a refresh interval
    /// (each lease's own) and a half before `now` (see [`Health`](crate::Health)), most
    /// late first.
    pub(crate) fn late(&self, now: Instant) -> Vec<LateLease> {
        let state = lock(&self.shared.state);
        let mut late: Vec<LateLease> = state
            .entries
            .values()
            .filter(|entry| !entry.retired)
            .filter_map(|entry| {
                let interval = entry.profile(&state.profiles).timing.refresh_interval;
                let allowed = interval + interval / 2;
                let age = now.saturating_duration_since(entry.confirmed_at);
                (age > allowed).then(|| LateLease {
                    name: entry.key.clone(),
                    fencing_token: entry.fencing,
                    confirmed_at: entry.confirmed_at,
                    late_by: age - allowed,
                })
            })
            .collect();
        late.sort_by_key(|lease| std::cmp::Reverse(lease.late_by));
        late
    }
}

impl KeptLease {
    /// The local deadline as the keeper moves it on, for the hold's guard.
    pub(crate) fn shared_deadline(&self) -> Arc<dyn HasDeadline> {
        // The guard's reference counts for the watchdog too (`Arc::strong_count`).
        Arc::clone(&self.watch) as Arc<dyn HasDeadline>
    }

    /// Waits for bad news from the keeper.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub(crate) async fn next_news(&self) -> RefreshNews {
        self.watch.next_news().await
    }

    /// Takes the lease back to release it, waiting for a batch it is in to return.
    /// `None` if the runner was aborted meanwhile (the lease is then dropped unreleased).
    pub(crate) async fn take_back(&mut self) -> Option<Box<dyn Lease>> {
        loop {
            let woken = self.watch.woken();
            {
                let mut state = lock(&self.shared.state);
                let entry = state.entries.get_mut(&self.id)?;
                if entry.lease.is_some() {
                    return state.entries.remove(&self.id).and_then(|entry| entry.lease);
                }
                entry.retired = true;
            }
            tokio::select! {
                biased;
                _ = self.shared.abort.cancelled() => return None,
                _ = woken => {}
            }
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if let Some(entry) = state.entries.get_mut(&self.id) {
            if entry.lease.is_some() {
                state.entries.remove(&self.id);
            } else {
                entry.retired = true;
                entry.orphaned = true;
            }
        }
    }
}

/// Marks the keeper task of `generation` stopped when it ends or is dropped.
struct Running<'a> {
    shared: &'a Shared,
    generation: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if state.running == Some(self.generation) {
            state.running = None;
            // Leases in a batch of this task are gone with it: their holds find their
            // deadline passing and acquire again, and one waiting to take its lease back
            // is woken to find it gone.
            state.entries.retain(|_, entry| {
                let kept = entry.lease.is_some();
                if !kept {
                    entry.watch.wake();
                }
                kept
            });
        }
    }
}

impl Shared {
    /// The keeper task: refreshes due leases in batches until none are left.
    async fn run(self: Arc<Self>, generation: u64) {
        // Also when the task is dropped with its runtime (a runner used from one runtime
        // after another, as the process-wide default runner is in tests): the next lease
        // then starts a keeper on its own runtime.
        let _running = Running {
            shared: &self,
            generation,
        };
        let mut in_flight = FuturesUnordered::new();
        loop {
            let wake_at = {
                let mut state = lock(&self.state);
                if state.entries.is_empty() && in_flight.is_empty() {
                    state.running = None;
                    return;
                }
                let due = self.take_due(&mut state, Instant::now());
                for batch in due.batches {
                    in_flight.push(batch.refresh());
                }
                due.wake_at
            };
            tokio::select! {
                biased;
                // A crash, as far as everyone else can tell: refresh nothing more.
                _ = self.abort.cancelled() => return,
                Some(refreshed) = in_flight.next(), if !in_flight.is_empty() => {
                    self.apply(refreshed);
                }
                () = self.added.notified() => {}
                _ = sleep_until(wake_at) => {}
            }
        }
    }

    /// When a lease is due, takes it and every lease due within half its own refresh
    /// interval out of their entries, in one batch per backend and TTL; says when the
    /// next one is due.
    fn take_due(&self, state: &mut State, now: Instant) -> Due {
        let mut due = Due {
            batches: Vec::new(),
            wake_at: now + self.config.refresh_interval,
        };
        let waiting = |entry: &Entry| !entry.retired && entry.lease.is_some();
        // A batch starts only when one of its leases is due; it then takes the leases of
        // its backend and TTL due soon too, so that they stay aligned. Leases of another
        // TTL wait for their own batch: joining this one early every time would refresh
        // them at this TTL's pace rather than their own.
        let State {
            entries, profiles, ..
        } = state;
        let mut starting: Vec<(*const (), Duration)> = Vec::new();
        for entry in entries.values().filter(|entry| waiting(entry)) {
            let group = entry.profile(profiles).group();
            if entry.next_due <= now && !starting.contains(&group) {
                starting.push(group);
            }
        }
        for (&id, entry) in entries {
            if !waiting(entry) {
                continue;
            }
            let profile = entry.profile(profiles);
            let joins = starting.contains(&profile.group())
                && entry.next_due <= now + profile.timing.refresh_interval / 2;
            if !joins {
                due.wake_at = due.wake_at.min(entry.next_due);
                continue;
            }
            let Some(lease) = entry.lease.take() else {
                continue;
            };
            // A runner has one backend and few TTLs; the search is over a handful at most.
            let timing = profile.timing;
            match due
                .batches
                .iter_mut()
                .find(|batch| batch.is_for(&profile.backend, timing.ttl))
            {
                Some(batch) => batch.push(id, lease, timing.request_timeout),
                None => due.batches.push(Batch::new(
                    &profile.backend,
                    timing.ttl,
                    timing.request_timeout,
                    id,
                    lease,
                )),
            }
        }
        due
    }

    /// Puts a returned batch's leases back and tells their holds what happened.
    fn apply(&self, refreshed: Refreshed) {
        let now = Instant::now();
        let sent = refreshed.sent;
        let mut state = lock(&self.state);
        let State {
            entries, profiles, ..
        } = &mut *state;
        for RefreshedLease { id, lease, result } in refreshed.into_leases() {
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            if entry.orphaned {
                entries.remove(&id);
                continue;
            }
            entry.lease = Some(lease);
            let profile = entry.profile(profiles);
            let timing = profile.timing;
            let news = match result {
                Ok(()) => {
                    metrics::deadline_margin(profile.backend.name(), entry.deadline, now);
                    entry.deadline = timing.local_deadline(sent);
                    entry.watch.confirmed(entry.deadline);
                    entry.next_due = sent + timing.refresh_interval;
                    entry.confirmed_at = sent;
                    false
                }
                Err(error) if error.is_lost() => {
                    entry.watch.lost();
                    entry.retired = true;
                    true
                }
                Err(error) => {
                    entry.watch.failed(error.chain());
                    entry.next_due =
                        now + (timing.refresh_interval / 4).max(Duration::from_millis(1));
                    true
                }
            };
            // A retired entry's hold may be waiting to take its lease back. A success is
            // no news: the hold is not woken for it.
            if news || entry.retired {
                entry.watch.wake();
            }
        }
    }
}
