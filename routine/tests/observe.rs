//! `observe`: the holders of a lease as they change, for a process that does not compete.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::counting::Counting;
use common::{TTL, idle_singleton, wait_acquired};
use futures::StreamExt;
use leasehold::{LeaseInfo, LockKey, MemoryBackend, Result, Runner};

fn runner_as(backend: &MemoryBackend, identity: &str) -> Runner {
    Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(TTL)
        .with_holder_identity(identity)
        .build()
        .unwrap()
}

async fn next(
    stream: &mut (impl futures::Stream<Item = Result<Option<LeaseInfo>>> + Unpin),
    within: Duration,
    what: &str,
) -> Result<Option<LeaseInfo>> {
    tokio::time::timeout(within, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no change `{what}` within {within:?}"))
        .expect("the stream does not end")
}

fn holder(item: &Result<Option<LeaseInfo>>) -> Option<&str> {
    item.as_ref().ok()?.as_ref()?.holder.as_deref()
}

#[tokio::test(start_paused = true)]
async fn observe_reports_each_holder_once_and_a_release_at_once() {
    let backend = MemoryBackend::new();
    let (a, b) = (runner_as(&backend, "a"), runner_as(&backend, "b"));
    // A long poll interval: what is seen sooner comes from release notifications.
    let poll = Duration::from_secs(30);
    let mut changes = Box::pin(leasehold::observe(
        Arc::new(backend.clone()),
        LockKey::new("job").unwrap(),
        poll,
    ));
    let first = next(&mut changes, TTL, "initial state").await;
    assert!(matches!(first, Ok(None)), "nobody holds it yet: {first:?}");

    let mut a_events = a.subscribe();
    let held = idle_singleton(&a, "job");
    wait_acquired(&mut a_events).await;
    let item = next(&mut changes, poll + TTL, "holder a").await;
    assert_eq!(holder(&item), Some("a"));

    // Many refreshes later: no item, a refresh is no change.
    let quiet = tokio::time::timeout(poll * 2, changes.next()).await;
    assert!(quiet.is_err(), "refreshes must not be reported: {quiet:?}");

    let waiting = idle_singleton(&b, "job");
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.cancel();
    held.join().await;
    // Seen well within the poll interval, through the release notification.
    let mut seen = Vec::new();
    while holder(seen.last().unwrap_or(&Ok(None))) != Some("b") {
        seen.push(
            next(
                &mut changes,
                Duration::from_secs(2),
                "holder b after the release",
            )
            .await,
        );
    }
    for pair in seen.windows(2) {
        let (x, y) = (&pair[0], &pair[1]);
        assert_ne!(
            x.as_ref()
                .ok()
                .map(|i| i.as_ref().map(|i| (&i.holder, i.fencing_token))),
            y.as_ref()
                .ok()
                .map(|i| i.as_ref().map(|i| (&i.holder, i.fencing_token))),
            "only changes are reported: {seen:?}"
        );
    }
    waiting.cancel();
    waiting.join().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_cannot_describe_is_reported_once() {
    let backend = Counting::default();
    backend
        .unsupported
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let runner = Runner::builder()
        .with_backend(backend.clone())
        .with_lease_ttl(TTL)
        .build()
        .unwrap();
    let mut changes = runner.observe("job");
    let first = next(&mut changes, TTL, "the error").await;
    assert!(
        matches!(first, Err(leasehold::Error::Unsupported { .. })),
        "{first:?}"
    );
    let quiet = tokio::time::timeout(TTL * 4, changes.next()).await;
    assert!(quiet.is_err(), "the same error is not repeated: {quiet:?}");
    assert!(
        backend.describes() > 2,
        "it keeps looking at the poll interval"
    );
}

#[tokio::test(start_paused = true)]
async fn observing_an_invalid_name_is_one_error() {
    let runner = Runner::with_backend(MemoryBackend::new());
    let mut changes = runner.observe("");
    assert!(next(&mut changes, TTL, "the error").await.is_err());
    assert!(changes.next().await.is_none(), "and the stream ends");
}

#[tokio::test(start_paused = true)]
async fn a_crashed_holder_is_seen_gone_within_its_ttl_and_a_poll_interval() {
    let backend = MemoryBackend::new();
    let a = runner_as(&backend, "a");
    let poll = Duration::from_secs(1);
    let mut changes = Box::pin(leasehold::observe(
        Arc::new(backend.clone()),
        LockKey::new("job").unwrap(),
        poll,
    ));
    let mut events = a.subscribe();
    let _held = idle_singleton(&a, "job");
    wait_acquired(&mut events).await;
    let mut item = next(&mut changes, TTL, "the holder").await;
    if holder(&item).is_none() {
        item = next(&mut changes, poll * 2, "the holder").await;
    }
    assert_eq!(holder(&item), Some("a"));
    // A crash: nothing is released, the lease runs out by its TTL, no notification.
    a.abort();
    let gone = next(&mut changes, TTL + poll, "the expiry").await;
    assert!(matches!(gone, Ok(None)), "{gone:?}");
}
