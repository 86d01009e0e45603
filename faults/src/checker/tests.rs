//! The checker on synthetic event logs.

use std::time::Duration;

use super::*;
use crate::log::FaultKind;

const TTL: Duration = Duration::from_secs(1);

/// Milliseconds as a clock reading.
fn t(ms: u64) -> Mono {
    ms * 1_000_000
}

fn ev(member: usize, ms: u64, kind: EventKind) -> Event {
    Event {
        member,
        at: t(ms),
        kind,
    }
}

fn acquired(member: usize, ms: u64, token: u64) -> Event {
    ev(member, ms, EventKind::Acquired { token })
}

fn work(member: usize, ms: u64, token: u64) -> Event {
    ev(member, ms, EventKind::Work { token, step: 0 })
}

fn released(member: usize, ms: u64, token: u64) -> Event {
    ev(member, ms, EventKind::Released { token })
}

fn fault(kind: FaultKind, member: Option<usize>, token: Option<u64>, at: u64, until: u64) -> Fault {
    Fault {
        kind,
        member,
        token,
        at: t(at),
        until: t(until),
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

#[test]
fn graceful_handover_has_no_overlap_and_its_takeover_is_measured_from_the_fault() {
    let events = [
        acquired(0, 0, 1),
        work(0, 50, 1),
        work(0, 100, 1),
        ev(0, 121, EventKind::Cancelled { token: 1 }),
        released(0, 125, 1),
        acquired(1, 130, 2),
        work(1, 180, 2),
        ev(0, 140, EventKind::Exited),
    ];
    let faults = [fault(FaultKind::Terminate, Some(0), Some(1), 120, 120)];
    let report = check(&events, &faults, t(200), TTL);
    assert_eq!(report.overlap, Duration::ZERO, "{report:?}");
    assert!(report.stale_steps.is_empty(), "{report:?}");
    assert_eq!(report.takeovers[0].after(), Some(Duration::from_millis(10)));
    assert_eq!(report.takeovers[0].by, Some(1));
    assert_eq!(
        report.gap_total,
        Duration::ZERO,
        "the window covers the handover"
    );
    assert!(report.token_regressions.is_empty());
    assert_eq!(report.tenures.len(), 2);
    assert_eq!(report.tenures[0].end, Some(t(125)));
}

#[test]
fn overlap_is_the_time_two_work_spans_share() {
    let events = [
        acquired(0, 0, 1),
        work(0, 300, 1),
        acquired(1, 200, 2),
        work(1, 250, 2),
        work(1, 400, 2),
    ];
    let report = check(&events, &[], t(500), TTL);
    assert_eq!(millis(report.overlap), 100, "{report:?}");
    // Member 0's step at 300 ran while member 1 held token 2, and member 1 had stepped
    // with token 2 at 250: a fencing store would reject it.
    assert_eq!(report.stale_steps.len(), 1);
    assert!(report.stale_steps[0].fenced);
}

#[test]
fn a_stale_step_of_a_paused_holder_after_a_newer_step_is_fenced() {
    let events = [
        acquired(0, 0, 1),
        work(0, 50, 1),
        work(0, 100, 1),
        // Paused at 120; member 1 takes over after the TTL.
        acquired(1, 1100, 2),
        work(1, 1150, 2),
        work(1, 1200, 2),
        // SIGCONT at 1500: member 0 finishes the step it was in.
        work(0, 1501, 1),
        ev(0, 1502, EventKind::Lost { token: 1 }),
        work(1, 1550, 2),
    ];
    let faults = [fault(FaultKind::Pause, Some(0), Some(1), 120, 1500)];
    let report = check(&events, &faults, t(1600), TTL);
    assert_eq!(report.stale_steps.len(), 1, "{report:?}");
    assert!(report.stale_steps[0].fenced);
    assert_eq!(report.unfenced(), 0);
    assert_eq!(
        millis(report.overlap),
        401,
        "from token 2's acquisition to the stale step"
    );
    assert_eq!(millis(report.takeovers[0].after().unwrap()), 980);
}

#[test]
fn a_stale_step_before_any_newer_step_is_unfenced() {
    let events = [
        acquired(0, 0, 1),
        work(0, 100, 1),
        acquired(1, 1100, 2),
        work(0, 1120, 1),
        work(1, 1150, 2),
    ];
    let report = check(&events, &[], t(1200), TTL);
    assert_eq!(report.unfenced(), 1, "{report:?}");
    assert_eq!(report.stale_steps[0].at, t(1120));
}

#[test]
fn a_step_with_a_newer_token_is_never_stale() {
    let events = [
        acquired(0, 0, 1),
        work(0, 100, 1),
        acquired(1, 50, 2),
        work(1, 90, 2),
    ];
    let report = check(&events, &[], t(200), TTL);
    // Member 1's step at 90 falls inside member 0's tenure, but carries the newer token.
    assert!(
        report.stale_steps.iter().all(|s| s.member == 0),
        "{report:?}"
    );
}

#[test]
fn takeover_after_a_holder_fault_needs_a_newer_token() {
    let events = [
        acquired(0, 0, 5),
        work(0, 50, 5),
        ev(0, 60, EventKind::Exited),
        acquired(1, 900, 6),
    ];
    let faults = [fault(FaultKind::Kill, Some(0), Some(5), 60, 60)];
    let report = check(&events, &faults, t(1000), TTL);
    assert_eq!(millis(report.takeovers[0].after().unwrap()), 840);
    let no_takeover = check(&events[..3], &faults, t(1000), TTL);
    assert_eq!(no_takeover.takeovers[0].after(), None);
}

#[test]
fn recovery_after_a_server_fault_counts_a_kept_lease_only_once_it_outlived_the_fault() {
    // The holder keeps working through a short restart (100..300); its first step after
    // the restart counts because it also stepped after fault + TTL (1100).
    let kept = [
        acquired(0, 0, 1),
        work(0, 50, 1),
        work(0, 350, 1),
        work(0, 1200, 1),
    ];
    let restart = [fault(FaultKind::ServerRestart, None, None, 100, 300)];
    let report = check(&kept, &restart, t(1300), TTL);
    assert_eq!(
        millis(report.takeovers[0].after().unwrap()),
        50,
        "{report:?}"
    );

    // A holder that stepped after the restart but then lost the lease does not count;
    // the next acquisition does.
    let lost = [
        acquired(0, 0, 1),
        work(0, 350, 1),
        ev(0, 400, EventKind::Lost { token: 1 }),
        acquired(1, 700, 2),
        work(1, 750, 2),
    ];
    let report = check(&lost, &restart, t(1300), TTL);
    assert_eq!(
        millis(report.takeovers[0].after().unwrap()),
        450,
        "{report:?}"
    );
    assert_eq!(report.takeovers[0].by, Some(1));
}

#[test]
fn time_without_a_holder_outside_fault_windows_is_a_gap() {
    let events = [
        acquired(0, 0, 1),
        released(0, 500, 1),
        acquired(1, 800, 2),
        // A fault window covers 900..1200, whatever the tenures do.
        released(1, 1000, 2),
        acquired(2, 1150, 3),
        released(2, 1300, 3),
    ];
    let faults = [fault(FaultKind::Terminate, Some(1), Some(2), 900, 900)];
    let report = check(&events, &faults, t(1400), TTL);
    // 500..800 and 1300..1400.
    assert_eq!(millis(report.gap_total), 400, "{report:?}");
    assert_eq!(millis(report.gap_max), 300);
    assert_eq!(
        report.gap_max_at,
        t(500),
        "the longest gap begins at the release"
    );
}

#[test]
fn a_token_not_above_an_earlier_one_is_a_regression() {
    let events = [acquired(0, 0, 7), acquired(1, 100, 8), acquired(2, 200, 3)];
    let report = check(&events, &[], t(300), TTL);
    assert_eq!(report.token_regressions, vec![(t(200), 3, 8)]);
}

mod fires {
    use std::time::{Duration, SystemTime};

    use super::{ev, fault, t};
    use crate::checker::fires::{FireParams, FireReport, check};
    use crate::log::{Event, EventKind, FaultKind};

    /// Wall-clock second 1000 (fire 1_000_000 ms) is monotonic 0.
    const ORIGIN: u64 = 1_000_000;

    /// Fire `second` (from the origin) in UNIX milliseconds.
    fn fire(second: u64) -> u64 {
        ORIGIN + second * 1000
    }

    /// The window from 500 ms to 4500 ms (fires 1 to 4 on clocks with no offset), a late
    /// limit of 1 s.
    fn params() -> FireParams {
        FireParams {
            period: Duration::from_secs(1),
            late_limit: Duration::from_secs(1),
            from: t(500),
            until: t(4500),
            origin: (SystemTime::UNIX_EPOCH + Duration::from_secs(1000), t(0)),
        }
    }

    fn scheduled(member: usize, offset: i64) -> Event {
        ev(
            member,
            0,
            EventKind::Scheduled {
                clock_offset_ms: offset,
            },
        )
    }

    fn started(member: usize, second: u64, at: u64) -> Event {
        let fire_ms = fire(second);
        ev(member, at, EventKind::FireStarted { fire_ms, token: 1 })
    }

    fn done(member: usize, second: u64, from: u64, to: u64) -> Event {
        ev(
            member,
            to,
            EventKind::FireDone {
                fire_ms: fire(second),
                started: t(from),
                cancelled: false,
            },
        )
    }

    /// A completed run of fire `second` by `member` from `from` to `to` ms.
    fn run(member: usize, second: u64, from: u64, to: u64) -> [Event; 2] {
        [
            started(member, second, from),
            done(member, second, from, to),
        ]
    }

    /// Two members, every fire from 1 to 4 run once by member 1 at its time, except
    /// `except`.
    fn healthy(except: &[u64]) -> Vec<Event> {
        let mut events = vec![scheduled(0, 0), scheduled(1, 0)];
        for second in 1..=4 {
            if !except.contains(&second) {
                events.extend(run(1, second, second * 1000, second * 1000 + 250));
            }
        }
        events
    }

    fn interrupted() -> Event {
        ev(
            1,
            0,
            EventKind::FireInterrupted {
                fire_ms: fire(2),
                retried: true,
            },
        )
    }

    fn clean(report: &FireReport) -> bool {
        report.duplicates.is_empty() && report.lost.is_empty() && report.overlaps.is_empty()
    }

    #[test]
    fn every_fire_in_the_window_run_once_is_clean() {
        let report = check(&healthy(&[]), &[], t(6000), &params());
        assert_eq!(report.window, [fire(1), fire(2), fire(3), fire(4)]);
        assert_eq!(report.completed, report.window);
        assert!(clean(&report), "{report:?}");
        assert!(report.interrupted.is_empty());
    }

    #[test]
    fn the_window_ends_a_late_limit_before_the_stop() {
        let report = check(&healthy(&[]), &[], t(4500), &params());
        assert_eq!(report.window, [fire(1), fire(2), fire(3)]);
        // A clock 1 s ahead reaches fire 1 at 0 ms, before the window opens.
        let mut events = healthy(&[]);
        events.push(scheduled(2, 1000));
        let report = check(&events, &[], t(6000), &params());
        assert_eq!(report.window[0], fire(2));
    }

    #[test]
    fn a_fire_completed_by_two_members_is_a_duplicate() {
        let mut events = healthy(&[]);
        events.extend(run(0, 2, 2500, 2750));
        let report = check(&events, &[], t(6000), &params());
        assert_eq!(report.duplicates, [fire(2)]);
        assert!(report.lost.is_empty() && report.overlaps.is_empty());
        assert!(!report.completed.contains(&fire(2)));
    }

    #[test]
    fn a_fire_started_again_after_a_run_not_cut_off_is_a_duplicate() {
        // Member 0 starts fire 2 again after member 1 completed it, and is killed.
        let mut events = healthy(&[]);
        events.push(started(0, 2, 2500));
        let kill = fault(FaultKind::Kill, Some(0), Some(1), 2600, 2600);
        let report = check(&events, &[kill], t(6000), &params());
        assert_eq!(report.duplicates, [fire(2)]);
    }

    #[test]
    fn a_fire_never_completed_is_lost() {
        let mut events = healthy(&[3]);
        // Cancelled is not completed.
        events.push(started(1, 3, 3000));
        events.push(ev(
            1,
            3100,
            EventKind::FireDone {
                fire_ms: fire(3),
                started: t(3000),
                cancelled: true,
            },
        ));
        let report = check(&events, &[], t(6000), &params());
        assert_eq!(report.lost, [fire(3)]);
        assert_eq!(report.interrupted, [fire(3)]);
        assert_eq!(report.cut_without_fault, [fire(3)]);
        assert!(report.retried.is_empty() && report.duplicates.is_empty());

        let report = check(&healthy(&[2]), &[], t(6000), &params());
        assert_eq!(report.lost, [fire(2)]);
        assert!(report.interrupted.is_empty());
    }

    #[test]
    fn a_run_cut_off_and_reported_not_retried_is_recorded_failed() {
        let mut events = healthy(&[2]);
        events.push(started(0, 2, 2000));
        events.push(ev(0, 2120, EventKind::Exited));
        events.push(ev(
            1,
            3200,
            EventKind::FireInterrupted {
                fire_ms: fire(2),
                retried: false,
            },
        ));
        let kill = fault(FaultKind::Kill, Some(0), Some(1), 2100, 2100);
        let report = check(&events, &[kill], t(6000), &params());
        assert_eq!(report.interrupted, [fire(2)]);
        assert!(report.retried.is_empty(), "{report:?}");
        assert_eq!(report.recorded_failed, [fire(2)], "{report:?}");
        assert!(report.unreported.is_empty(), "{report:?}");
    }

    #[test]
    fn a_run_cut_off_that_no_member_reports_is_unreported() {
        let mut events = healthy(&[2]);
        events.push(started(0, 2, 2000));
        events.push(ev(0, 2120, EventKind::Exited));
        events.extend(run(1, 2, 2600, 2850));
        let kill = fault(FaultKind::Kill, Some(0), Some(1), 2100, 2100);
        let report = check(&events, &[kill], t(6000), &params());
        assert_eq!(report.interrupted, [fire(2)]);
        assert_eq!(report.unreported, [fire(2)], "{report:?}");
    }

    #[test]
    fn a_run_killed_mid_run_and_retried_elsewhere_is_interrupted_not_duplicate() {
        let mut events = healthy(&[2]);
        events.push(started(0, 2, 2000));
        events.push(ev(0, 2120, EventKind::Exited));
        events.push(interrupted());
        events.extend(run(1, 2, 2600, 2850));
        let kill = fault(FaultKind::Kill, Some(0), Some(1), 2100, 2100);
        let report = check(&events, &[kill], t(6000), &params());
        assert!(clean(&report), "{report:?}");
        assert_eq!(report.interrupted, [fire(2)]);
        assert_eq!(report.retried, [fire(2)]);
        assert_eq!(report.interrupted_reported, 1);
        assert!(report.unreported.is_empty(), "{report:?}");
        assert!(report.cut_without_fault.is_empty());
        assert!(report.completed.contains(&fire(2)));
        assert_eq!(
            report.takeovers,
            [(FaultKind::Kill, Duration::from_millis(500))]
        );
    }

    #[test]
    fn a_paused_run_is_open_until_the_pause_and_its_later_done_overlaps_the_retry() {
        // Member 0 paused mid-run at 2100 for 2 s; member 1 retries fire 2 at 2600.
        let mut events = healthy(&[2]);
        events.push(started(0, 2, 2000));
        events.extend(run(1, 2, 2600, 2850));
        let pause = [fault(FaultKind::Pause, Some(0), Some(1), 2100, 4100)];
        let report = check(&events, &pause, t(6000), &params());
        assert!(clean(&report), "{report:?}");
        assert_eq!(report.retried, [fire(2)]);

        // Had the resumed routine been polled again, it would have printed its end: the
        // run went on until then, across the retry and the runs of fires 3 and 4.
        events.push(done(0, 2, 2000, 4150));
        let report = check(&events, &pause, t(6000), &params());
        assert_eq!(report.duplicates, [fire(2)]);
        assert_eq!(report.overlaps.len(), 3, "{:?}", report.overlaps);
        let retry = &report.overlaps[0];
        assert_eq!((retry.first, retry.second), ((fire(2), 0), (fire(2), 1)));
        assert_eq!(retry.overlap, Duration::from_millis(250));
    }

    #[test]
    fn runs_of_different_fires_at_once_overlap() {
        let mut events = healthy(&[]);
        events.extend(run(0, 5, 3100, 3400));
        let report = check(&events, &[], t(6000), &params());
        assert!(report.duplicates.is_empty());
        assert_eq!(report.overlaps.len(), 1);
        assert_eq!(report.overlaps[0].overlap, Duration::from_millis(150));
    }
}
