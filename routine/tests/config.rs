//! Bad input to the runner: clear, typed errors.

use std::time::Duration;

use leasehold::{Error, MemoryBackend, Outcome, RunOptions, Runner};

#[test]
fn a_zero_ttl_is_rejected() {
    let err = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_lease_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "got {err:?}");
}

#[test]
fn a_ttl_too_short_to_derive_the_timing_from_is_a_ttl_error() {
    for ttl in [Duration::from_nanos(1), Duration::from_nanos(4)] {
        let err = Runner::builder()
            .with_backend(MemoryBackend::new())
            .with_lease_ttl(ttl)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidTtl { ttl: got, .. } if got == ttl),
            "a {ttl:?} TTL must be reported as the TTL's fault, not a derived setting's: \
             {err:?}"
        );
    }
}

#[test]
fn a_ttl_above_the_backends_maximum_is_rejected() {
    let backend = MemoryBackend::new();
    let max = leasehold::LockBackend::capabilities(&backend).max_ttl;
    if let Some(too_long) = max.checked_add(Duration::from_secs(1)) {
        let err = Runner::builder()
            .with_backend(backend)
            .with_lease_ttl(too_long)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTtl { .. }), "got {err:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lazily_connected_backend_checks_the_runners_ttl_against_its_limits() {
    // The builder cannot check a TTL against a backend it has not connected yet; the
    // routine must then fail with the TTL error rather than retry for ever.
    let too_long = Duration::from_secs(200 * 365 * 24 * 60 * 60);
    let runner = Runner::builder()
        .with_backend_url("memory://")
        .with_lease_ttl(too_long)
        .with_signal_handling(false)
        .build()
        .expect("the builder accepts the TTL before it knows the backend");
    let handle = runner.run_named(
        "job",
        |ctx| async move { ctx.cancelled().await },
        RunOptions::keep_running_one_instance(),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.join())
        .await
        .expect("the routine must end, not retry a TTL the backend cannot honour");
    assert!(
        matches!(&outcome, Outcome::Failed(error) if matches!(**error, Error::InvalidTtl { .. })),
        "the routine fails with InvalidTtl, got {outcome:?}"
    );
    runner.shutdown().await;
}

#[test]
fn a_refresh_interval_too_long_for_the_ttl_names_the_setting() {
    let err = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_lease_ttl(Duration::from_secs(5))
        .with_refresh_interval(Duration::from_secs(4))
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
        .with_backend(MemoryBackend::new())
        .with_lease_ttl(Duration::from_secs(10))
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
        let handle = runner.run_named(name, |_| async {}, RunOptions::keep_running_one_instance());
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
    let handle = runner.run_named("job", |_| async {}, RunOptions::keep_running_one_instance());
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
