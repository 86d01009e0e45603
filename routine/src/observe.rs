//! `observe`: the holders of one lease as they change, for a process that watches
//! without competing (a dashboard, an admin tool, a `/leader` endpoint).

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use leasehold_core::{Error, FencingToken, LeaseInfo, LockBackend, LockKey, Result};
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
///   takes the key then is looked for again 20 ms, 120 ms and 620 ms after the release.
///   On Redis (but a Redis Cluster) and PostgreSQL a release that wakes one waiting
///   process (another process waits for the key) sends the observer nothing: it is seen
///   as any other change;
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
        released: None,
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
    Held(Option<(Option<String>, Option<FencingToken>)>),
    Failed,
}

/// A release notification being waited for.
type Released = BoxFuture<'static, Result<()>>;

struct Observer {
    backend: Arc<dyn LockBackend>,
    key: LockKey,
    poll_interval: Duration,
    last: Option<Seen>,
    /// How many of the quick looks after a release were taken.
    quick_looks: usize,
    first: bool,
    /// The release notification registered before the last look, if the backend gives
    /// them: a release after that look wakes the next wait.
    released: Option<Released>,
}

impl Observer {
    /// Looks until something differs from the last item, and returns it.
    async fn next_change(&mut self) -> Result<Option<LeaseInfo>> {
        loop {
            if !std::mem::take(&mut self.first) {
                self.wait().await;
            }
            self.released = register(Arc::clone(&self.backend), self.key.clone()).await;
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

    /// Waits for a release notification or the next look: soon after a release, the
    /// poll interval otherwise.
    async fn wait(&mut self) {
        let wait = match AFTER_RELEASE.get(self.quick_looks) {
            Some(&quick) => quick.min(self.poll_interval),
            None => self.poll_interval,
        };
        let look_at = Instant::now() + wait;
        let released = async {
            match self.released.take() {
                Some(released) => released.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            woke = released => {
                if woke.is_ok() {
                    self.quick_looks = 0;
                } else {
                    // A failed channel: the poll interval finds changes instead.
                    sleep_until(look_at).await;
                }
            }
            () = sleep_until(look_at) => {
                self.quick_looks = (self.quick_looks + 1).min(AFTER_RELEASE.len());
            }
        }
    }
}

/// Registers for the next release of `key`; `None` if the backend's notification resolved
/// at once (none, spurious or broken): the poll interval finds changes then.
async fn register(backend: Arc<dyn LockBackend>, key: LockKey) -> Option<Released> {
    let mut released: Released = Box::pin(async move { backend.released(&key).await });
    match futures::poll!(released.as_mut()) {
        std::task::Poll::Pending => Some(released),
        std::task::Poll::Ready(_) => None,
    }
}
