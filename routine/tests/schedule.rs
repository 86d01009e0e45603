//! Scheduled routines on `MemoryBackend` with paused time: each fire once across
//! members, with and without clock offsets; skip_if_held, hold_at_least, timeout,
//! missed fires and the catch-up window, instances, runs cut off, handover mid-run, lost
//! replies.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasehold::{
    Event, EventKind, FireSkipReason, LockBackend, LockKey, MemoryBackend, MissedFires,
    RoutineHandle, RunOptions, Runner,
};
use tokio::time::Instant;

/// Where every test's wall clocks start: a whole second, so `every(1 s)` fires at once.
fn base() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A wall clock that starts at `base() + offset_ms` when the test starts and follows
/// tokio's paused clock.
fn clock(start: Instant, offset_ms: i64) -> impl Fn() -> SystemTime + Send + Sync + 'static {
    move || {
        let now = base() + start.elapsed();
        if offset_ms >= 0 {
            now + Duration::from_millis(offset_ms as u64)
        } else {
            now - Duration::from_millis(offset_ms.unsigned_abs())
        }
    }
}

/// Seconds from `base()` to a fire (negative before it).
fn second(fire: SystemTime) -> i64 {
    match fire.duration_since(base()) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// The fires each run was for, in the order the runs started, with the member's index.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<(usize, i64)>>>);

impl Runs {
    fn record(&self, member: usize) {
        let fire = leasehold::scheduled_fire().expect("a scheduled routine knows its fire");
        self.0.lock().unwrap().push((member, second(fire)));
    }

    fn fires(&self) -> Vec<i64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, fire)| *fire)
            .collect()
    }

    /// How often each fire ran.
    fn counts(&self) -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for fire in self.fires() {
            *counts.entry(fire).or_default() += 1;
        }
        counts
    }
}

/// Starts a quick scheduled routine on a runner of its own for member `member`.
fn member(
    backend: &MemoryBackend,
    member: usize,
    runs: &Runs,
    options: RunOptions,
) -> (Runner, RoutineHandle) {
    let runner = common::runner(backend);
    let runs = runs.clone();
    let handle = runner.run_named(
        "job",
        move |_ctx| {
            runs.record(member);
            async {}
        },
        options,
    );
    (runner, handle)
}

async fn stop(members: Vec<(Runner, RoutineHandle)>) {
    for (runner, handle) in members {
        handle.cancel();
        handle.join().await;
        runner.shutdown().await;
    }
}

fn every_second(start: Instant, offset_ms: i64) -> RunOptions {
    RunOptions::every(Duration::from_secs(1)).with_wall_clock(clock(start, offset_ms))
}

fn assert_each_once(runs: &Runs, fires: impl IntoIterator<Item = i64>) {
    let counts = runs.counts();
    for fire in fires {
        assert_eq!(
            counts.get(&fire).copied().unwrap_or(0),
            1,
            "fire {fire} must run exactly once across the members: {counts:?}"
        );
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "no fire may run twice: {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn members_sharing_a_backend_run_each_fire_once() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let members = (0..3)
        .map(|i| member(&backend, i, &runs, every_second(start, 0)))
        .collect();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    stop(members).await;
    assert_each_once(&runs, 0..=10);
    assert_eq!(runs.fires().len(), 11, "fires 0 to 10, one run each");
}

#[tokio::test(start_paused = true)]
async fn clock_offsets_of_a_few_seconds_still_run_each_fire_once() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let members = [-3_000, -1_200, 0, 700, 3_000]
        .into_iter()
        .enumerate()
        .map(|(i, offset)| member(&backend, i, &runs, every_second(start, offset)))
        .collect();
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop(members).await;
    // The member 3 s ahead runs fires up to 23; every fire it reaches, someone runs.
    assert_each_once(&runs, 1..=22);
}

#[tokio::test(start_paused = true)]
async fn a_lagging_member_does_not_run_a_quick_job_again() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let options =
        |offset| RunOptions::every(Duration::from_secs(10)).with_wall_clock(clock(start, offset));
    // The job takes no time; the lagging member comes to each fire 2 s after it ran.
    let on_time = member(&backend, 0, &runs, options(0));
    let lagging = member(&backend, 1, &runs, options(-2_000));
    tokio::time::sleep(Duration::from_secs(35)).await;
    stop(vec![on_time, lagging]).await;
    assert_each_once(&runs, [0, 10, 20, 30]);
    assert!(
        runs.0
            .lock()
            .unwrap()
            .iter()
            .all(|(member, _)| *member == 0),
        "the member whose clock is ahead runs every fire; the lagging one finds them claimed"
    );
}

#[tokio::test(start_paused = true)]
async fn the_record_keeps_the_last_fire_and_no_key_is_left_per_fire() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let one = member(
        &backend,
        0,
        &runs,
        RunOptions::every(Duration::from_secs(60)).with_wall_clock(clock(start, 0)),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(runs.fires(), [0], "the fire at the start ran");
    assert!(
        backend.list("").await.unwrap().is_empty(),
        "no lease is left after the run: {:?}",
        backend.list("").await.unwrap()
    );
    let name = LockKey::new("job").unwrap();
    let record = backend.read_record(&name).await.unwrap().expect("a record");
    let record = String::from_utf8(record).unwrap();
    let fire_ns = base().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    assert_eq!(
        record,
        format!("leasehold-schedule v1 floor=- claimed={fire_ns} failed=- run=-"),
        "the record names the fire claimed and no run going on"
    );
    stop(vec![one]).await;
}

#[tokio::test(start_paused = true)]
async fn skip_if_held_skips_fires_while_the_name_is_held() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let name = LockKey::new("job").unwrap();
    let mut other = backend
        .try_acquire(&name, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let runs = Runs::default();
    let one = member(&backend, 0, &runs, every_second(start, 0).skip_if_held());
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        runs.fires().is_empty(),
        "fires 0 to 3 skipped while held: {:?}",
        runs.fires()
    );
    other.release().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(vec![one]).await;
    assert_eq!(runs.fires(), [4, 5], "fires after the release run");
}

#[tokio::test(start_paused = true)]
async fn without_skip_if_held_the_claimer_waits_for_the_name() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let name = LockKey::new("job").unwrap();
    let mut other = backend
        .try_acquire(&name, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let runs = Runs::default();
    let one = member(
        &backend,
        0,
        &runs,
        RunOptions::every(Duration::from_secs(10)).with_wall_clock(clock(start, 0)),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(runs.fires().is_empty(), "fire 0 waits for the name");
    other.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.fires(), [0], "fire 0 runs once the name is released");
    stop(vec![one]).await;
}

#[tokio::test(start_paused = true)]
async fn hold_at_least_keeps_the_name_after_a_quick_run() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let name = LockKey::new("job").unwrap();
    let runs = Runs::default();
    let one = member(
        &backend,
        0,
        &runs,
        RunOptions::every(Duration::from_secs(60))
            .with_wall_clock(clock(start, 0))
            .hold_at_least(Duration::from_secs(8)),
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(runs.fires(), [0], "the quick run is over");
    assert!(
        backend.holder(&name).is_some(),
        "the name is still held 7 s after the start"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        backend.holder(&name).is_none(),
        "the name is released 8 s after the start"
    );
    stop(vec![one]).await;
}

#[tokio::test(start_paused = true)]
async fn timeout_cancels_then_drops_a_long_run() {
    struct Dropped(Arc<Mutex<Option<Instant>>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runner = common::runner(&backend);
    let cancelled_at = Arc::new(Mutex::new(None));
    let dropped_at = Arc::new(Mutex::new(None));
    let handle = runner.run_named(
        "job",
        {
            let cancelled_at = Arc::clone(&cancelled_at);
            let dropped_at = Arc::clone(&dropped_at);
            move |ctx| {
                let cancelled_at = Arc::clone(&cancelled_at);
                let guard = Dropped(Arc::clone(&dropped_at));
                async move {
                    let _guard = guard;
                    ctx.cancelled().await;
                    *cancelled_at.lock().unwrap() = Some(Instant::now());
                    // Ignores the cancellation.
                    std::future::pending::<()>().await;
                }
            }
        },
        RunOptions::every(Duration::from_secs(60))
            .with_wall_clock(clock(start, 0))
            .timeout(Duration::from_secs(3)),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cancelled = cancelled_at.lock().unwrap().expect("the run was cancelled");
    let dropped = dropped_at.lock().unwrap().expect("the run was dropped");
    assert_eq!(
        cancelled - start,
        Duration::from_secs(3),
        "cancelled at the timeout"
    );
    assert_eq!(
        dropped - start,
        Duration::from_secs(4),
        "dropped a grace period (TTL/5 = 1 s) after the timeout"
    );
    assert!(
        backend.holder(&LockKey::new("job").unwrap()).is_none(),
        "the name is released after the dropped run"
    );
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
}

/// One member whose runs take 2.5 s of a 1 s period, with a tolerance of 0.2 s.
async fn slow_runs(policy: MissedFires, delay: Duration) -> Vec<i64> {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runner = common::runner(&backend);
    let runs = Runs::default();
    let handle = runner.run_named(
        "job",
        {
            let runs = runs.clone();
            move |_ctx| {
                runs.record(0);
                tokio::time::sleep(Duration::from_millis(2_500))
            }
        },
        every_second(start, 0)
            .tolerance(Duration::from_millis(200))
            .missed_fires(policy)
            .delay(delay),
    );
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
    runs.fires()
}

#[tokio::test(start_paused = true)]
async fn missed_fires_are_skipped_by_default() {
    assert_eq!(
        slow_runs(MissedFires::Skip, Duration::ZERO).await,
        [0, 3, 6, 9],
        "fires that come during a run are skipped; the next on-time fire runs"
    );
}

#[tokio::test(start_paused = true)]
async fn run_once_catches_up_the_latest_missed_fire() {
    assert_eq!(
        slow_runs(MissedFires::RunOnce, Duration::ZERO).await,
        [0, 2, 5, 7],
        "after each run, the latest missed fire runs once"
    );
}

#[tokio::test(start_paused = true)]
async fn run_each_catches_up_every_missed_fire() {
    assert_eq!(
        // The delay keeps the member from catching up fires before it started.
        slow_runs(MissedFires::RunEach(100), Duration::from_millis(1)).await,
        [1, 2, 3, 4],
        "each missed fire runs, oldest first"
    );
    assert_eq!(
        slow_runs(MissedFires::RunEach(1), Duration::ZERO).await,
        [0, 2, 5, 7],
        "a limit of one catches up only the latest"
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_started_late_catches_up_only_with_a_catch_up_policy() {
    for (policy, expected) in [
        (MissedFires::Skip, vec![10]),
        (MissedFires::RunOnce, vec![0, 10]),
    ] {
        let start = Instant::now();
        let backend = MemoryBackend::new();
        let runs = Runs::default();
        // The member starts 3 s after the fire at 0.
        let one = member(
            &backend,
            0,
            &runs,
            RunOptions::every(Duration::from_secs(10))
                .with_wall_clock(clock(start, 3_000))
                .missed_fires(policy),
        );
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop(vec![one]).await;
        assert_eq!(runs.fires(), expected, "{policy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn instances_caps_concurrent_runs_across_members() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let concurrency = common::Concurrency::default();
    let runs = Runs::default();
    let members: Vec<_> = (0..3)
        .map(|i| {
            let runner = common::runner(&backend);
            let (concurrency, runs) = (concurrency.clone(), runs.clone());
            let handle = runner.run_named(
                "job",
                move |_ctx| {
                    runs.record(i);
                    let running = concurrency.enter();
                    async move {
                        let _running = running;
                        tokio::time::sleep(Duration::from_millis(3_500)).await;
                    }
                },
                every_second(start, 0).instances(2),
            );
            (runner, handle)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop(members).await;
    assert_eq!(concurrency.max(), 2, "two runs at once, never three");
    assert!(
        runs.counts().values().all(|&n| n == 1),
        "each fire still runs once: {:?}",
        runs.counts()
    );
}

#[tokio::test(start_paused = true)]
async fn schedule_settings_without_a_schedule_fail_the_routine() {
    let runner = common::runner(&MemoryBackend::new());
    let handle = runner.run_named(
        "job",
        |_ctx| async {},
        RunOptions::keep_running_one_instance().skip_if_held(),
    );
    assert!(
        matches!(handle.join().await, leasehold::Outcome::Failed(_)),
        "skip_if_held on a routine that is not scheduled is a configuration error"
    );
    let handle = runner.run_named("job", |_ctx| async {}, RunOptions::every(Duration::ZERO));
    assert!(
        matches!(handle.join().await, leasehold::Outcome::Failed(_)),
        "a zero period is a configuration error"
    );
}

#[tokio::test(start_paused = true)]
async fn fires_go_on_when_a_member_shuts_down() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let ahead = member(&backend, 0, &runs, every_second(start, 300));
    let behind = member(&backend, 1, &runs, every_second(start, 0));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        runs.0
            .lock()
            .unwrap()
            .iter()
            .all(|(member, _)| *member == 0),
        "the member ahead runs the fires while it is there"
    );
    stop(vec![ahead]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop(vec![behind]).await;
    assert_each_once(&runs, 0..=7);
    assert!(
        runs.0
            .lock()
            .unwrap()
            .iter()
            .any(|(member, fire)| *member == 1 && *fire >= 4),
        "the other member runs the fires after the first one shut down"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_run_does_not_stop_the_schedule() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runner = common::runner(&backend);
    let runs = Runs::default();
    let handle = runner.run_named(
        "job",
        {
            let runs = runs.clone();
            move |_ctx| {
                runs.record(0);
                async { panic!("this run fails") }
            }
        },
        every_second(start, 0),
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
    assert_eq!(
        runs.fires(),
        [0, 1, 2],
        "every fire runs, though each run panics"
    );
}

#[tokio::test(start_paused = true)]
async fn clock_offsets_of_any_size_run_each_fire_once() {
    // Members 6 s and 45 s behind a quick job's member, with a 20 s period: each comes to
    // every fire long after it ran, and finds it in the record.
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let options =
        |offset| RunOptions::every(Duration::from_secs(20)).with_wall_clock(clock(start, offset));
    let ahead = member(&backend, 0, &runs, options(0));
    let behind = member(&backend, 1, &runs, options(-6_000));
    let far_behind = member(&backend, 2, &runs, options(-45_000));
    tokio::time::sleep(Duration::from_secs(70)).await;
    stop(vec![ahead, behind, far_behind]).await;
    assert_each_once(&runs, [0, 20, 40, 60]);
}

#[tokio::test(start_paused = true)]
async fn members_with_clocks_spread_over_the_bound_run_each_fire_once_for_a_minute() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    // Offsets from -5 s to +5 s: any two members are at most 10 s apart, the default
    // bound. Runs take up to 0.9 s of the 1 s period (a member busy waiting for the name
    // when a fire comes does not get to it on time; at least one must be free).
    let offsets = [
        -5_000, -3_700, -2_100, -450, 0, 90, 1_300, 2_800, 4_400, 5_000,
    ];
    let members = offsets
        .into_iter()
        .enumerate()
        .map(|(i, offset)| {
            let runner = common::runner(&backend);
            let runs = runs.clone();
            let handle = runner.run_named(
                "job",
                move |_ctx| {
                    runs.record(i);
                    tokio::time::sleep(Duration::from_millis(((i as u64) * 377) % 900))
                },
                every_second(start, offset),
            );
            (runner, handle)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop(members).await;
    assert_each_once(&runs, 0..=60);
}

#[tokio::test(start_paused = true)]
async fn skip_if_held_with_instances_skips_only_when_every_slot_is_held() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let ttl = Duration::from_secs(60);
    let slot0 = LockKey::new("job#0").unwrap();
    let slot1 = LockKey::new("job#1").unwrap();
    let mut held0 = backend.try_acquire(&slot0, ttl).await.unwrap().unwrap();
    let mut held1 = backend.try_acquire(&slot1, ttl).await.unwrap().unwrap();
    let runs = Runs::default();
    let one = member(
        &backend,
        0,
        &runs,
        every_second(start, 0).instances(2).skip_if_held(),
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        runs.fires().is_empty(),
        "both slots held: fires 0 and 1 skipped"
    );
    held1.release().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.fires(), [2], "one slot free: fire 2 runs in it");
    held0.release().await.unwrap();
    stop(vec![one]).await;
}

#[tokio::test(start_paused = true)]
async fn cron_schedules_run_each_fire_once_across_members() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let members = [0, -700, 1_500]
        .into_iter()
        .enumerate()
        .map(|(i, offset)| {
            let options = RunOptions::cron("*/2 * * * * *", leasehold::chrono_tz::Asia::Kolkata)
                .unwrap()
                .with_wall_clock(clock(start, offset));
            member(&backend, i, &runs, options)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    stop(members).await;
    assert_each_once(&runs, [0, 2, 4, 6, 8]);
    assert!(
        runs.fires().iter().all(|fire| fire % 2 == 0),
        "fires only at even seconds: {:?}",
        runs.fires()
    );
}

/// The fire events of `events` received so far, as (fire second, kind) pairs.
fn fire_events(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<(i64, FireEvent)> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event.kind {
            EventKind::FireClaimed { fire } => seen.push((second(fire), FireEvent::Claimed)),
            EventKind::FireSkipped { fire, reason } => {
                seen.push((second(fire), FireEvent::Skipped(reason)))
            }
            EventKind::FireMissed { fire } => seen.push((second(fire), FireEvent::Missed)),
            EventKind::FireInterrupted { fire, retried } => {
                seen.push((second(fire), FireEvent::Interrupted { retried }))
            }
            _ => {}
        }
    }
    seen
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FireEvent {
    Claimed,
    Skipped(FireSkipReason),
    Missed,
    Interrupted { retried: bool },
}

#[tokio::test(start_paused = true)]
async fn the_claimer_reports_fire_claimed_and_a_later_member_claimed_elsewhere() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let first = member(&backend, 0, &runs, every_second(start, 0));
    let mut first_events = first.0.subscribe();
    // Its clock is behind: it comes to each fire after the first member claimed it.
    let second_member = member(&backend, 1, &runs, every_second(start, -300));
    let mut second_events = second_member.0.subscribe();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop(vec![first, second_member]).await;
    let first_seen = fire_events(&mut first_events);
    let second_seen = fire_events(&mut second_events);
    for fire in [0, 1, 2] {
        assert!(
            first_seen.contains(&(fire, FireEvent::Claimed)),
            "the member on time claims fire {fire}: {first_seen:?}"
        );
        assert!(
            second_seen.contains(&(fire, FireEvent::Skipped(FireSkipReason::ClaimedElsewhere))),
            "the member behind finds fire {fire} claimed elsewhere: {second_seen:?}"
        );
    }
    assert!(
        !second_seen
            .iter()
            .any(|(fire, kind)| *fire >= 0 && *kind == FireEvent::Claimed),
        "the member behind claims none of the fires from 0 on: {second_seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn skip_if_held_reports_fire_skipped_held() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let name = LockKey::new("job").unwrap();
    let _other = backend
        .try_acquire(&name, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let runs = Runs::default();
    let one = member(&backend, 0, &runs, every_second(start, 0).skip_if_held());
    let mut events = one.0.subscribe();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop(vec![one]).await;
    let seen = fire_events(&mut events);
    assert_eq!(
        seen,
        [
            (0, FireEvent::Skipped(FireSkipReason::Held)),
            (1, FireEvent::Skipped(FireSkipReason::Held)),
        ],
        "each fire is skipped because the name is held, without a claim"
    );
    assert!(
        runs.fires().is_empty(),
        "nothing runs while the name is held"
    );
}

#[tokio::test(start_paused = true)]
async fn fires_passed_during_a_long_run_are_reported_missed() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runner = common::runner(&backend);
    let mut events = runner.subscribe();
    let handle = runner.run_named(
        "job",
        |_ctx| tokio::time::sleep(Duration::from_millis(3_500)),
        every_second(start, 0),
    );
    tokio::time::sleep(Duration::from_millis(3_700)).await;
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
    let seen = fire_events(&mut events);
    assert_eq!(
        seen.first(),
        Some(&(0, FireEvent::Claimed)),
        "fire 0 is claimed: {seen:?}"
    );
    assert!(
        seen.contains(&(1, FireEvent::Missed)) && seen.contains(&(2, FireEvent::Missed)),
        "fires 1 and 2 pass during the run of fire 0 (0 to 3.5 s) and are reported missed: {seen:?}"
    );
    assert!(
        !seen.contains(&(1, FireEvent::Claimed)) && !seen.contains(&(2, FireEvent::Claimed)),
        "missed fires are not claimed: {seen:?}"
    );
    assert!(
        seen.contains(&(3, FireEvent::Claimed)),
        "fire 3, reached within the tolerance, is claimed: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_gives_up_a_name_held_by_a_keep_running_routine_at_the_next_fire() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let keeper_runner = common::runner(&backend);
    let mut held = keeper_runner.subscribe();
    let always = keeper_runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    common::wait_acquired(&mut held).await;
    let runs = Runs::default();
    let one = member(
        &backend,
        0,
        &runs,
        RunOptions::every(Duration::from_secs(30)).with_wall_clock(clock(start, 0)),
    );
    let mut events = one.0.subscribe();
    // The wait ends at the next fire (30 s), later than the late limit (1 s).
    tokio::time::sleep(Duration::from_millis(29_900)).await;
    assert_eq!(
        fire_events(&mut events),
        [],
        "the member still waits for the name until the next fire"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fire_events(&mut events),
        [(0, FireEvent::Skipped(FireSkipReason::NoLeaseInTime))],
        "the member gives the fire up at the next fire"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        fire_events(&mut events),
        [(30, FireEvent::Skipped(FireSkipReason::NoLeaseInTime))],
        "the next fire is waited for, and given up again"
    );
    assert!(
        runs.fires().is_empty(),
        "no fire runs while the name is held"
    );
    stop(vec![one]).await;
    always.cancel();
    always.join().await;
    keeper_runner.shutdown().await;
}

/// A member whose run of a fire is cut off by its crash ([`Runner::abort`]: the lease is
/// not released) and a second member that takes the name after the TTL, with `options`.
/// Returns the runs and the second member's fire events.
async fn crash_mid_run(options: RunOptions) -> (Runs, Vec<(i64, FireEvent)>) {
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    let crashing = common::runner(&backend);
    let started = Arc::new(tokio::sync::Notify::new());
    let _long = crashing.run_named(
        "job",
        {
            let runs = runs.clone();
            let started = Arc::clone(&started);
            move |_ctx| {
                runs.record(0);
                started.notify_one();
                std::future::pending::<()>()
            }
        },
        options.clone(),
    );
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the first member starts fire 0");
    crashing.abort();
    let other = member(&backend, 1, &runs, options);
    let mut events = other.0.subscribe();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let seen = fire_events(&mut events);
    stop(vec![other]).await;
    (runs, seen)
}

#[tokio::test(start_paused = true)]
async fn a_fire_whose_run_was_cut_off_is_recorded_failed_by_default() {
    let start = Instant::now();
    let options = RunOptions::every(Duration::from_secs(5)).with_wall_clock(clock(start, 0));
    let (runs, seen) = crash_mid_run(options).await;
    assert!(
        seen.contains(&(0, FireEvent::Interrupted { retried: false })),
        "the member taking the name reports fire 0 cut off and not retried: {seen:?}"
    );
    assert_eq!(
        runs.counts().get(&0),
        Some(&1),
        "fire 0 is not run again: {:?}",
        runs.counts()
    );
    assert_each_once(&runs, [0, 5, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_fire_whose_run_was_cut_off_is_run_again_with_retry_interrupted() {
    let start = Instant::now();
    let options = RunOptions::every(Duration::from_secs(5))
        .with_wall_clock(clock(start, 0))
        .retry_interrupted(Duration::from_secs(30));
    let (runs, seen) = crash_mid_run(options).await;
    assert!(
        seen.contains(&(0, FireEvent::Interrupted { retried: true })),
        "the member taking the name reports fire 0 cut off and retried: {seen:?}"
    );
    let members_of_zero: Vec<usize> = runs
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, fire)| *fire == 0)
        .map(|(member, _)| *member)
        .collect();
    assert_eq!(
        members_of_zero,
        [0, 1],
        "fire 0 started on the crashed member and ran again on the other"
    );
    let counts = runs.counts();
    for fire in [5, 10] {
        assert_eq!(counts.get(&fire), Some(&1), "fire {fire} once: {counts:?}");
    }
}

/// A memory backend that declares no records (and so has none).
#[derive(Debug)]
struct NoRecords(MemoryBackend);

#[async_trait::async_trait]
impl LockBackend for NoRecords {
    fn name(&self) -> &'static str {
        "no-records"
    }
    fn capabilities(&self) -> leasehold::Capabilities {
        let mut capabilities = self.0.capabilities();
        capabilities.records = false;
        capabilities
    }
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> leasehold::Result<Option<Box<dyn leasehold::Lease>>> {
        self.0.try_acquire_as(key, ttl, holder).await
    }
    async fn released(&self, key: &LockKey) -> leasehold::Result<()> {
        self.0.released(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_without_records_fails_a_scheduled_routine_with_unsupported() {
    let runner = Runner::with_backend(NoRecords(MemoryBackend::new()));
    let handle = runner.run_named(
        "job",
        |_ctx| async {},
        RunOptions::every(Duration::from_secs(1)),
    );
    match handle.join().await {
        leasehold::Outcome::Failed(error) => assert!(
            matches!(*error, leasehold::Error::Unsupported { .. }),
            "the error says records are unsupported: {error:?}"
        ),
        other => panic!("a backend without records cannot run a schedule: {other:?}"),
    }
    runner.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn more_instances_than_a_record_lists_fail_the_routine() {
    let runner = common::runner(&MemoryBackend::new());
    let handle = runner.run_named(
        "job",
        |_ctx| async {},
        RunOptions::every(Duration::from_secs(1)).instances(9),
    );
    match handle.join().await {
        leasehold::Outcome::Failed(error) => assert!(
            error.to_string().contains("instances"),
            "the error names the setting: {error}"
        ),
        other => panic!("9 instances must fail the routine: {other:?}"),
    }
    runner.shutdown().await;
}

/// A memory backend whose first record write goes through but answers with a timeout,
/// as when the reply is lost on the way back.
#[derive(Debug)]
struct LostReply {
    inner: MemoryBackend,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl LockBackend for LostReply {
    fn name(&self) -> &'static str {
        "lost-reply"
    }
    fn capabilities(&self) -> leasehold::Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire_as(
        &self,
        key: &LockKey,
        ttl: Duration,
        holder: &str,
    ) -> leasehold::Result<Option<Box<dyn leasehold::Lease>>> {
        self.inner.try_acquire_as(key, ttl, holder).await
    }
    async fn released(&self, key: &LockKey) -> leasehold::Result<()> {
        self.inner.released(key).await
    }
    async fn read_record(&self, key: &LockKey) -> leasehold::Result<Option<Vec<u8>>> {
        self.inner.read_record(key).await
    }
    async fn write_record(
        &self,
        key: &LockKey,
        token: leasehold::FencingToken,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> leasehold::Result<leasehold::RecordWrite> {
        let written = self.inner.write_record(key, token, expected, value).await?;
        if !self.lost.swap(true, Ordering::SeqCst) {
            return Err(leasehold::Error::timeout(
                "lost-reply",
                "write_record",
                Duration::from_millis(1),
            ));
        }
        Ok(written)
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_reply_was_lost_still_runs_its_fire_once() {
    let start = Instant::now();
    let backend = LostReply {
        inner: MemoryBackend::new(),
        lost: Default::default(),
    };
    let runner = Runner::builder()
        .with_backend(backend)
        .with_lease_ttl(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut events = runner.subscribe();
    let runs = Runs::default();
    let handle = runner.run_named(
        "job",
        {
            let runs = runs.clone();
            move |_ctx| {
                runs.record(0);
                async {}
            }
        },
        RunOptions::every(Duration::from_secs(5)).with_wall_clock(clock(start, 0)),
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    handle.cancel();
    handle.join().await;
    runner.shutdown().await;
    let seen = fire_events(&mut events);
    assert_eq!(runs.fires(), [0, 5], "each fire runs once: {seen:?}");
    assert!(
        !seen
            .iter()
            .any(|(_, kind)| matches!(kind, FireEvent::Interrupted { .. })),
        "the claim is found as ours, not as a run cut off: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_catch_up_window_bounds_how_far_back_a_starting_member_catches_up() {
    for (window_ms, expected) in [(3_500, vec![-3, -2, -1, 0]), (1_500, vec![-1, 0])] {
        let start = Instant::now();
        let backend = MemoryBackend::new();
        let runs = Runs::default();
        let one = member(
            &backend,
            0,
            &runs,
            every_second(start, 0)
                .missed_fires(MissedFires::RunEach(100))
                .catch_up_window(Duration::from_millis(window_ms)),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop(vec![one]).await;
        assert_eq!(
            runs.fires(),
            expected,
            "a member started at fire 0 with a {window_ms} ms window catches up the fires \
             no member ran within it, oldest first"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_handover_in_the_middle_of_a_run_neither_repeats_nor_skips_a_fire() {
    let start = Instant::now();
    let backend = MemoryBackend::new();
    let runs = Runs::default();
    // Runs take 600 ms and end early when cancelled, as a well-behaved job does.
    let slow_member = |member: usize, offset_ms: i64| {
        let runner = common::runner(&backend);
        let runs = runs.clone();
        let handle = runner.run_named(
            "job",
            move |ctx: leasehold::Context| {
                runs.record(member);
                async move {
                    tokio::select! {
                        () = ctx.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(600)) => {}
                    }
                }
            },
            every_second(start, offset_ms),
        );
        (runner, handle)
    };
    let first = slow_member(0, 0);
    let second = slow_member(1, -100);
    // Shut the first member down 300 ms into its run of fire 3.
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    stop(vec![first]).await;
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    stop(vec![second]).await;
    assert_each_once(&runs, 0..=7);
    let members: Vec<(usize, i64)> = runs.0.lock().unwrap().clone();
    assert!(
        members.iter().all(|&(m, fire)| (m == 0) == (fire <= 3)),
        "the first member runs fires 0 to 3, the second takes over from 4: {members:?}"
    );
}
