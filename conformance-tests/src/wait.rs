//! Waiting on events and conditions with a deadline (never a bare sleep).

use std::future::Future;
use std::time::Duration;

use leasehold::{Event, EventKind};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Waits for the first event that matches `pred`, panicking after `within`.
pub async fn event(
    events: &mut broadcast::Receiver<Event>,
    within: Duration,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let found = tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(event) if pred(&event) => return Some(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream closed before `{what}`"),
        Err(_) => panic!("no `{what}` event within {within:?}"),
    }
}

/// Polls `check` every few milliseconds until it returns `Some`, panicking after `within`.
pub async fn until<T, Fut>(within: Duration, what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("`{what}` did not happen within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `condition` every 20 ms until it holds, panicking (naming `what`) after
/// `within`. For conditions that need no `.await`, such as a query through
/// `PostgresServer::psql`; see [`until`] for async checks.
///
/// # Examples
///
/// ```no_run
/// # async fn f(done: impl Fn() -> bool) {
/// use std::time::Duration;
///
/// leasehold_conformance::wait::eventually(Duration::from_secs(5), "the job is done", || done())
///     .await;
/// # }
/// ```
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether an event is an acquisition.
pub fn acquired(event: &Event) -> bool {
    matches!(event.kind, EventKind::Acquired { .. })
}

/// A deadline for polling a condition in a loop: [`Deadline::tick`] waits a few
/// milliseconds, or panics (naming what was awaited) once the deadline has passed.
///
/// ```ignore
/// let deadline = Deadline::new(Duration::from_secs(5), "key released");
/// while held().await {
///     deadline.tick().await;
/// }
/// ```
#[derive(Debug)]
pub struct Deadline {
    until: Instant,
    limit: Duration,
    what: String,
}

impl Deadline {
    /// A deadline `limit` from now for the condition `what`.
    pub fn new(limit: Duration, what: impl Into<String>) -> Self {
        Self {
            until: Instant::now() + limit,
            limit,
            what: what.into(),
        }
    }

    /// Waits 10 ms before the next check; panics if the deadline has passed.
    pub async fn tick(&self) {
        assert!(
            Instant::now() < self.until,
            "not within {:?}: {}",
            self.limit,
            self.what
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, panicking if it takes longer than `deadline` (a hang, not slowness).
pub async fn within<T>(deadline: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not complete within {deadline:?}"))
}
