//! The tracing span of a routine (its own test binary: tracing caches callsite
//! interest process-wide, so a test without a subscriber running in parallel would hide
//! the span from this one).

use std::sync::{Arc, Mutex};

use leasehold::{MemoryBackend, Outcome, Runner};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A new span: its name, its parent's name, its fields rendered.
type SpanRecord = (String, Option<String>, String);

/// Records every new span.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<SpanRecord>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for SpanLog {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let span = ctx.span(id).unwrap();
        let parent = span.parent().map(|p| p.name().to_owned());
        let mut fields = String::new();
        attrs.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                fields.push_str(&format!("{}={:?} ", field.name(), value));
            },
        );
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_owned(), parent, fields));
    }
}

#[test]
fn a_routine_runs_in_a_span_whose_parent_is_the_callers_span() {
    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    tracing::subscriber::with_default(subscriber, || {
        block_on(async {
            let runner = Runner::with_backend(MemoryBackend::new());
            let handle = {
                let _request = tracing::info_span!("request").entered();
                runner.run_named("sync", |_| async {}, leasehold::RunOptions::new())
            };
            assert!(matches!(handle.join().await, Outcome::Returned));
        })
    });
    let spans = log.0.lock().unwrap();
    let routine = spans
        .iter()
        .find(|(name, ..)| name == "routine")
        .expect("a `routine` span must be created");
    assert_eq!(
        routine.1.as_deref(),
        Some("request"),
        "its parent must be the caller's span"
    );
    assert!(
        routine.2.contains("name=\"sync\""),
        "it records the name: {}",
        routine.2
    );
    assert!(
        routine.2.contains("number="),
        "it records the number: {}",
        routine.2
    );
}
