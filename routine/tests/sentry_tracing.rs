//! One Sentry event per routine panic when the application forwards `tracing` errors to
//! Sentry too (`sentry-tracing`).
#![cfg(feature = "sentry")]

use leasehold::{MemoryBackend, Outcome, Runner};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Runs a routine that panics under `layer`, which forwards `tracing` errors to Sentry as
/// events; returns the Sentry events of one application error logged first and the panic.
fn events_with_layer<L>(layer: L) -> Vec<sentry_core::protocol::Event<'static>>
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;

    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        sentry_core::test::with_captured_events(|| {
            // The layer does forward the application's own errors.
            tracing::error!("an application error");
            block_on(async {
                let runner = Runner::with_backend(MemoryBackend::new());
                let handle = runner.run(|_| async { panic!("reported once") });
                assert!(matches!(handle.join().await, Outcome::Panicked(_)));
            })
        })
    })
}

/// The application's error and exactly one event for the panic: the runner's, tagged.
fn assert_one_event_per_panic(events: &[sentry_core::protocol::Event<'static>]) {
    let panics: Vec<_> = events
        .iter()
        .filter(|event| {
            let message = event.message.as_deref().unwrap_or_default();
            message.contains("reported once") || message.contains("panicked")
        })
        .collect();
    assert_eq!(
        events.len(),
        2,
        "the application's own error and one event for the panic, got {events:#?}"
    );
    assert_eq!(panics.len(), 1, "one event for the panic, got {panics:#?}");
    assert!(
        panics[0].tags.contains_key("routine.number"),
        "the runner's event (tagged with the routine) is the one kept: {panics:#?}"
    );
}

/// An application that also forwards `tracing` errors to Sentry gets one Sentry event per
/// panic, not one from the runner and a second from its log line: with the layer that
/// `sentry-tracing` recommends for error events, and with its legacy combined layer, which
/// many applications still install.
///
/// One test, so that no other test of this binary registers `tracing` call sites without a
/// subscriber while it runs (their cached interest would hide the runner's log line).
#[test]
fn one_panic_is_one_event_with_the_sentry_tracing_layers() {
    use tracing_subscriber::Layer as _;

    let layer = sentry_tracing::ErrorLayer::new()
        .with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
    assert_one_event_per_panic(&events_with_layer(layer));
    #[allow(deprecated)]
    let legacy = sentry_tracing::layer();
    assert_one_event_per_panic(&events_with_layer(legacy));
}
