//! `WatchHub`: one etcd watch on the key prefix per backend, waking local waiters of
//! `released()` by key.
//!
//! A watch per waiting key would cost a watcher on the server for every routine waiting
//! for its turn; one watch on the prefix costs one, and the delete events are dispatched
//! here by key. Only deletes are watched: a release and an expiry both delete the key.
//!
//! The watch is started, on a task of its own, by the first `released()` call, and
//! restarted by the next call after it fails; there is no reconnect loop. Waiters
//! registered before the watch ran might have missed a release, so the keys they wait for
//! are read once it runs and the waiters of free keys are woken. Waiters of a watch that
//! fails (or cannot start) get an error, and the runner falls back to polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchFilterType, WatchOptions, WatchStream};
use leasehold_core::{Error, Result};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::error::{Failure, NAME, timed};

/// Why a waiter was woken.
#[derive(Debug, Clone)]
enum Wake {
    /// The key was deleted, or found free when the watch started.
    MayBeFree,
    /// The watch failed or could not start; no notification will come.
    Failed(Failure),
}

/// Removes closed senders of `key` (and the entry, once empty) when a `released` future
/// ends or is dropped.
struct Sweep<'a> {
    shared: &'a Shared,
    key: Vec<u8>,
}

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if let Some(senders) = state.waiters.get_mut(&self.key) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                state.waiters.remove(&self.key);
            }
        }
    }
}

/// The release watch of one backend and the waiters it serves.
#[derive(Debug)]
pub(crate) struct WatchHub {
    prefix: Vec<u8>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<Vec<u8>, Vec<oneshot::Sender<Wake>>>,
    watch: Watch,
}

#[derive(Debug, Default)]
enum Watch {
    #[default]
    Stopped,
    Starting,
    Running(AbortHandle),
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Critical sections only move senders in and out of the map; nothing can be left
        // half-done by a panic, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the watch stopped and wakes every waiter with `failure`.
    fn fail(&self, failure: Failure) {
        tracing::debug!(?failure, "etcd release watch stopped");
        let waiters = {
            let mut state = self.state();
            state.watch = Watch::Stopped;
            std::mem::take(&mut state.waiters)
        };
        let wake = Wake::Failed(failure);
        for sender in waiters.into_values().flatten() {
            let _ = sender.send(wake.clone());
        }
    }

    /// Wakes the waiters of `keys`.
    fn wake(&self, keys: impl IntoIterator<Item = Vec<u8>>) {
        let woken: Vec<_> = {
            let mut state = self.state();
            keys.into_iter()
                .flat_map(|key| state.waiters.remove(&key).unwrap_or_default())
                .collect()
        };
        for sender in woken {
            let _ = sender.send(Wake::MayBeFree);
        }
    }
}

impl WatchHub {
    pub(crate) fn new(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            shared: Arc::default(),
        }
    }

    /// Resolves when `key` may have become free. Registers the waiter (and starts the
    /// watch if none runs) before its first await, so a release after the first poll is
    /// never missed, and nothing else depends on this future being polled.
    pub(crate) async fn released(
        &self,
        client: &Client,
        key: Vec<u8>,
        timeout: Duration,
    ) -> Result<()> {
        // Takes this waiter's sender out of the map if the future is dropped before a
        // wake-up (a waiter that acquired the key instead), so a process holding many
        // keys keeps no entry per held key. Declared before the channel, so that it runs
        // after the receiver is dropped and the sender shows as closed.
        let _sweep = Sweep {
            shared: &self.shared,
            key: key.clone(),
        };
        let (sender, woken) = oneshot::channel();
        let must_start = {
            let mut state = self.shared.state();
            let senders = state.waiters.entry(key).or_default();
            // Futures dropped before a wake-up (a waiter that acquired the key instead)
            // leave closed senders behind; they are swept here so the map stays small.
            senders.retain(|sender| !sender.is_closed());
            senders.push(sender);
            let start = matches!(state.watch, Watch::Stopped);
            if start {
                state.watch = Watch::Starting;
            }
            start
        };
        if must_start {
            tokio::spawn(start(
                client.clone(),
                self.prefix.clone(),
                Arc::downgrade(&self.shared),
                timeout,
            ));
        }
        match woken.await {
            Ok(Wake::MayBeFree) => Ok(()),
            Ok(Wake::Failed(failure)) => Err(failure.into_error("wait for release", timeout)),
            Err(_) => Err(Error::unavailable(
                NAME,
                "wait for release",
                "the release watch was dropped",
            )),
        }
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        if let Watch::Running(task) = std::mem::take(&mut self.shared.state().watch) {
            task.abort();
        }
    }
}

/// Creates the watch, hands it to [`dispatch`], then catches up on releases the waiters
/// registered so far might have missed. Holds the hub weakly: if the backend is dropped
/// meanwhile, the watch is dropped too.
async fn start(client: Client, prefix: Vec<u8>, shared: Weak<Shared>, timeout: Duration) {
    let mut watch_client = client.watch_client();
    let created = timed(timeout, async {
        let options = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]);
        let mut stream = watch_client.watch(prefix, Some(options)).await?;
        // The first message confirms the watch; events after its revision follow.
        match stream.message().await? {
            Some(response) if response.created() && !response.canceled() => Ok(stream),
            _ => Err(watch_error("etcd did not create the release watch")),
        }
    })
    .await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let stream = match created {
        Ok(stream) => stream,
        Err(failure) => return shared.fail(failure),
    };
    let waiting: Vec<Vec<u8>> = {
        // Held while spawning: a watch that fails at once cannot mark itself stopped
        // before it is marked running.
        let mut state = shared.state();
        let task = tokio::spawn(dispatch(stream, Arc::clone(&shared)));
        state.watch = Watch::Running(task.abort_handle());
        state.waiters.keys().cloned().collect()
    };
    tracing::debug!("etcd release watch started");
    catch_up(&client, &shared, waiting, timeout).await;
}

/// Wakes the waiters of every key in `keys` that is free now: it may have been released
/// after they registered and before the watch started. A key that cannot be checked wakes
/// its waiters too (a spurious wake-up is harmless, a missed one is not).
async fn catch_up(client: &Client, shared: &Shared, keys: Vec<Vec<u8>>, timeout: Duration) {
    let checks = keys.iter().map(|key| {
        let mut kv = client.kv_client();
        async move {
            let found = kv
                .get(key.clone(), Some(GetOptions::new().with_count_only()))
                .await;
            found.map_or(true, |found| found.count() == 0)
        }
    });
    let free = tokio::time::timeout(timeout, futures::future::join_all(checks))
        .await
        .unwrap_or_else(|_elapsed| vec![true; keys.len()]);
    shared.wake(
        keys.into_iter()
            .zip(free)
            .filter_map(|(key, free)| free.then_some(key)),
    );
}

/// Reads the watch and wakes the waiters of each deleted key, until the watch fails.
async fn dispatch(mut stream: WatchStream, shared: Arc<Shared>) {
    let failure = loop {
        match stream.message().await {
            Ok(Some(response)) if response.canceled() => {
                let reason = response.cancel_reason();
                break watch_error(&format!("watch canceled by etcd: {reason}"));
            }
            Ok(Some(response)) => shared.wake(
                response
                    .events()
                    .iter()
                    .filter(|event| event.event_type() == EventType::Delete)
                    .filter_map(|event| event.kv().map(|kv| kv.key().to_vec())),
            ),
            Ok(None) => break watch_error("watch stream ended"),
            Err(err) => break Failure::from(err),
        }
    };
    shared.fail(failure);
}

fn watch_error(message: &str) -> Failure {
    Failure::from(etcd_client::Error::WatchError(message.to_owned()))
}
