//! Bad input to the runner: clear, typed errors.

use std::time::Duration;

use routine::{Error, MemoryBackend, Outcome, RunOptions, Runner};

#[test]
fn a_zero_ttl_is_rejected() {
    let err = Runner::builder()
        .backend(MemoryBackend::new())
        .lease_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "got {err:?}");
}

#[test]
fn a_refresh_interval_too_long_for_the_ttl_names_the_setting() {
    let err = Runner::builder()
        .backend(MemoryBackend::new())
        .lease_ttl(Duration::from_secs(5))
        .refresh_interval(Duration::from_secs(4))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { setting, .. } if setting == "refresh_interval"),
        "got {err:?}"
    );
}

#[test]
fn defaults_follow_the_ttl_as_in_go() {
    let runner = Runner::builder()
        .backend(MemoryBackend::new())
        .lease_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let config = runner.config();
    assert_eq!(config.refresh_interval, Duration::from_secs(2));
    assert_eq!(config.retry_interval, Duration::from_secs(2));
    assert_eq!(config.backoff_min, Duration::from_secs(2));
    assert_eq!(config.backoff_max, Duration::from_secs(600));
    assert_eq!(
        Runner::with_backend(MemoryBackend::new())
            .config()
            .lease_ttl,
        Duration::from_secs(5)
    );
}

#[tokio::test]
async fn invalid_names_fail_the_routine_with_the_reason() {
    let runner = Runner::with_backend(MemoryBackend::new());
    for (name, needle) in [
        ("", "empty"),
        ("a\nb", "control character"),
        (&*"x".repeat(500), "500 bytes"),
    ] {
        let handle = runner.run_named(name, |_| async {}, RunOptions::singleton());
        match handle.join().await {
            Outcome::Failed(error) => {
                assert!(matches!(*error, Error::InvalidName { .. }), "{error:?}");
                assert!(error.to_string().contains(needle), "{error}");
            }
            other => panic!("name {name:?} must fail, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_leased_routine_without_a_backend_fails_clearly() {
    let runner = Runner::without_backend();
    let handle = runner.run_named("job", |_| async {}, RunOptions::singleton());
    match handle.join().await {
        Outcome::Failed(error) => {
            assert!(error.to_string().contains("no lease backend"), "{error}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let plain = runner.run_named("plain", |_| async {}, RunOptions::new());
    assert!(
        matches!(plain.join().await, Outcome::Returned),
        "plain named routines need no backend"
    );
}
