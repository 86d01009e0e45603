//! `observe`: the holders of one lease as they change, for a process that watches
//! without competing (a dashboard, an admin tool, a `/leader` endpoint).

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use leasehold_core::{Error, LeaseInfo, LockBackend, LockKey, Result};
use tokio::time::{Instant, sleep_until};

/// How soon to look again after a release notification, in turn: the next holder usually
/// acquires within milliseconds of a release, so a free key is looked at a few more times
/// before the poll interval takes over again.
const AFTER_RELEASE: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(500),
];

/// The holders of `key` on `backend` as they change: `Ok(Some(info))` when someone holds
/// it, `Ok(None)` when nobody does, `Err` when the backend cannot tell.
///
/// The first item is the state at the start. After it, an item comes only when the
/// holder's identity or fencing token differs from the last item (a refresh is no
/// change), and an error only when the last item was not one. The stream never ends;
/// drop it to stop watching. A `describe` that takes longer than the poll interval (at
/// least a second) counts as an error. It takes nothing and wakes no waiter:
/// [`LockBackend::describe`] and [`LockBackend::released`] only read.
///
/// How fast a change is seen:
/// - **a release** (the holder gives the key back) on a backend with release
///   notifications: at once, one `describe` after the notification; a new holder that
///   takes the key then is looked for again 20 ms, 120 ms and 620 ms after the release;
/// - **any other change** (a new holder after those looks, a holder whose lease ran out,
///   a takeover, every change on a backend without release notifications): within
///   `poll_interval` plus one `describe` round trip.
///
/// Use [`Runner::observe`](crate::Runner::observe) to watch with a runner's backend
/// and retry interval.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use futures::StreamExt;
/// use leasehold::{LockBackend, LockKey, MemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let backend = MemoryBackend::new();
/// let key = LockKey::new("report").unwrap();
/// let watch = leasehold::observe(Arc::new(backend.clone()), key.clone(), Duration::from_secs(1));
/// let mut watch = Box::pin(watch);
/// assert!(watch.next().await.unwrap().unwrap().is_none(), "nobody holds it yet");
/// let _lease = backend.try_acquire_as(&key, Duration::from_secs(5), "web-7").await.unwrap();
/// let info = watch.next().await.unwrap().unwrap().unwrap();
/// assert_eq!(info.holder.as_deref(), Some("web-7"));
/// # }
/// ```
pub fn observe(
    backend: Arc<dyn LockBackend>,
    key: LockKey,
    poll_interval: Duration,
) -> impl Stream<Item = Result<Option<LeaseInfo>>> + Send + 'static {
    let state = Observer {
        backend,
        key,
        poll_interval,
        last: None,
        quick_looks: AFTER_RELEASE.len(),
        first: true,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next_change().await;
        Some((item, state))
    })
}

/// The shortest time a `describe` may take before it counts as failed.
const MIN_DESCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What was last reported.
#[derive(PartialEq, Eq)]
enum Seen {
    Held(Option<(Option<String>, Option<leasehold_core::FencingToken>)>),
    Failed,
}

struct Observer {
    backend: Arc<dyn LockBackend>,
    key: LockKey,
    poll_interval: Duration,
    last: Option<Seen>,
    /// How many of the quick looks after a release were taken.
    quick_looks: usize,
    first: bool,
}

impl Observer {
    /// Looks until something differs from the last item, and returns it.
    async fn next_change(&mut self) -> Result<Option<LeaseInfo>> {
        loop {
            // Registered before looking, so that a release after the look wakes us.
            let mut released = self.backend.released(&self.key);
            // Resolved before anything happened means spurious or broken: poll instead.
            let notifications =
                matches!(futures::poll!(released.as_mut()), std::task::Poll::Pending);
            if !std::mem::take(&mut self.first) {
                let wait = match AFTER_RELEASE.get(self.quick_looks) {
                    Some(&quick) => quick.min(self.poll_interval),
                    None => self.poll_interval,
                };
                let look_at = Instant::now() + wait;
                tokio::select! {
                    woke = released, if notifications => {
                        // A failed channel: the poll interval finds changes instead.
                        if woke.is_ok() {
                            self.quick_looks = 0;
                        } else {
                            sleep_until(look_at).await;
                        }
                    }
                    () = sleep_until(look_at) => {
                        self.quick_looks = (self.quick_looks + 1).min(AFTER_RELEASE.len());
                    }
                }
            } else {
                drop(released);
            }
            // Bounded, so that a hung backend shows as an error rather than as silence.
            let limit = self.poll_interval.max(MIN_DESCRIBE_TIMEOUT);
            let answer = tokio::time::timeout(limit, self.backend.describe(&self.key))
                .await
                .unwrap_or_else(|_| Err(Error::timeout(self.backend.name(), "describe", limit)));
            let seen = match &answer {
                Ok(info) => Seen::Held(
                    info.as_ref()
                        .map(|info| (info.holder.clone(), info.fencing_token)),
                ),
                Err(_) => Seen::Failed,
            };
            if self.last.as_ref() != Some(&seen) {
                self.last = Some(seen);
                return answer;
            }
        }
    }
}
