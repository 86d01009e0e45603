use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use super::*;

fn utc(rfc3339: &str) -> SystemTime {
    SystemTime::from(
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc),
    )
}

fn fires(timing: &Timing, after: &str, n: usize) -> Vec<String> {
    let mut at = utc(after);
    (0..n)
        .map(|_| {
            at = timing.next_after(at).expect("a next fire");
            fire_id(at)
        })
        .collect()
}

#[test]
fn every_fires_at_multiples_of_the_period_since_the_epoch() {
    let timing = Timing::every(Duration::from_secs(60)).unwrap();
    assert_eq!(
        fires(&timing, "2026-12-01T20:00:30.5Z", 2),
        ["2026-12-01T20:01:00Z", "2026-12-01T20:02:00Z"],
        "every minute fires on the minute, whenever the member started"
    );
    assert_eq!(
        fires(&timing, "2026-12-01T20:01:00Z", 1),
        ["2026-12-01T20:02:00Z"],
        "the next fire is strictly after the given instant"
    );
    let fast = Timing::every(Duration::from_millis(250)).unwrap();
    assert_eq!(
        fires(&fast, "2026-12-01T20:00:00Z", 1),
        ["2026-12-01T20:00:00.250Z"],
        "sub-second fires are named with their fraction"
    );
    assert!(
        Timing::every(Duration::ZERO).is_err(),
        "a zero period is refused"
    );
}

#[test]
fn cron_fires_in_its_time_zone() {
    let timing = Timing::cron("0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
    assert_eq!(
        fires(&timing, "2026-12-01T12:00:00Z", 2),
        ["2026-12-02T02:00:00Z", "2026-12-03T02:00:00Z"],
        "03:00 in Berlin in winter (UTC+1) is 02:00 UTC"
    );
    assert_eq!(
        fires(&timing, "2026-07-01T12:00:00Z", 1),
        ["2026-07-02T01:00:00Z"],
        "03:00 in Berlin in summer (UTC+2) is 01:00 UTC"
    );
    assert!(
        Timing::cron("not a cron", chrono_tz::UTC).is_err(),
        "a bad expression is a configuration error"
    );
}

#[test]
fn cron_across_daylight_saving_changes() {
    // Berlin springs forward on 2026-03-29 at 02:00 (to 03:00) and falls back on
    // 2026-10-25 at 03:00 (to 02:00).
    let hourly = Timing::cron("30 * * * *", chrono_tz::Europe::Berlin).unwrap();
    assert_eq!(
        fires(&hourly, "2026-03-29T00:00:00Z", 3),
        // 01:30 CET; 02:30 does not exist; 03:30 CEST; 04:30 CEST.
        [
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-29T02:30:00Z"
        ],
        "fires stay an hour apart in UTC across the spring change"
    );
    let at_two_thirty = Timing::cron("30 2 * * *", chrono_tz::Europe::Berlin).unwrap();
    let spring = fires(&at_two_thirty, "2026-03-28T12:00:00Z", 1);
    assert_eq!(
        spring,
        ["2026-03-29T01:00:00Z"],
        "02:30 does not exist on the spring change day: it fires when the gap ends, 03:00 CEST"
    );
    let autumn = fires(&at_two_thirty, "2026-10-24T12:00:00Z", 2);
    assert_eq!(
        autumn[1], "2026-10-26T01:30:00Z",
        "the day after the autumn change fires once at 02:30 CET"
    );
    assert!(
        autumn[0] == "2026-10-25T00:30:00Z" || autumn[0] == "2026-10-25T01:30:00Z",
        "02:30 on the autumn change day fires once, at one of its two instants: {autumn:?}"
    );
}
