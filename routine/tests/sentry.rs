//! Sentry reporting of routine panics (the `sentry` feature).
#![cfg(feature = "sentry")]

use leasehold::{MemoryBackend, Outcome, Runner};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn a_panic_is_sent_to_the_callers_sentry_hub() {
    let events = sentry_core::test::with_captured_events(|| {
        block_on(async {
            let runner = Runner::with_backend(MemoryBackend::new());
            let handle = runner.run(|_| async { panic!("sentry should see this") });
            assert!(matches!(handle.join().await, Outcome::Panicked(_)));
        })
    });
    assert_eq!(events.len(), 1, "exactly one Sentry event per panic");
    let event = &events[0];
    assert_eq!(event.level, sentry_core::Level::Fatal);
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("sentry should see this"),
        "the event carries the panic message: {:?}",
        event.message
    );
    assert!(
        event.tags.contains_key("routine.number"),
        "the event is tagged with the routine number"
    );
}
