//! `WatchHub`: one etcd watch on the key prefix per backend, waking local waiters of
//! `released()` by key.
//!
//! A watch per waiting key would cost a watcher on the server for every routine waiting
//! for its turn; one watch on the prefix costs one, and the delete events are dispatched
//! here by key. Only deletes are watched: a release and an expiry both delete the key.
//!
//! The watch is started by the first `released()` call and restarted by the next call
//! after it fails; there is no reconnect loop. Waiters registered before the watch was
//! (re)started might have missed a release, so the keys they wait for are read once the
//! watch runs and the waiters of free keys are woken; waiters of a watch that fails get
//! an error and the runner falls back to polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchFilterType, WatchOptions, WatchStream};
use routine_core::{BoxError, Error, Result};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::error::{Failure, NAME, timed};

/// Why a waiter was woken.
#[derive(Debug, Clone)]
enum Wake {
    /// The key was deleted, or found free when the watch started.
    MayBeFree,
    /// The watch failed; no notification will come.
    Failed(Arc<str>),
}

#[derive(Debug)]
pub(crate) struct WatchHub {
    prefix: Vec<u8>,
    shared: Arc<Shared>,
    /// Serializes starting the watch, so concurrent waiters start one.
    starting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<Vec<u8>, Vec<oneshot::Sender<Wake>>>,
    running: Option<AbortHandle>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Critical sections only move senders in and out of the map; nothing can be left
        // half-done by a panic, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the failed watch and wakes every waiter with `wake`.
    fn fail(&self, wake: Wake) {
        let waiters = {
            let mut state = self.state();
            state.running = None;
            std::mem::take(&mut state.waiters)
        };
        for sender in waiters.into_values().flatten() {
            let _ = sender.send(wake.clone());
        }
    }
}

impl WatchHub {
    pub(crate) fn new(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            shared: Arc::default(),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    /// Resolves when `key` may have become free. Registers the waiter before its first
    /// await, so a release after the first poll is never missed.
    pub(crate) async fn released(
        &self,
        client: &Client,
        key: Vec<u8>,
        timeout: Duration,
    ) -> Result<()> {
        let (sender, woken) = oneshot::channel();
        let running = {
            let mut state = self.shared.state();
            let senders = state.waiters.entry(key).or_default();
            // Futures dropped before a wake-up (a waiter that acquired the key instead)
            // leave closed senders behind; they are swept here so the map stays small.
            senders.retain(|sender| !sender.is_closed());
            senders.push(sender);
            state.running.is_some()
        };
        if !running {
            self.start(client, timeout).await?;
        }
        match woken.await {
            Ok(Wake::MayBeFree) => Ok(()),
            Ok(Wake::Failed(reason)) => Err(Error::unavailable(
                NAME,
                "wait for release",
                BoxError::from(reason.to_string()),
            )),
            Err(_) => Err(Error::unavailable(
                NAME,
                "wait for release",
                "the release watch was dropped",
            )),
        }
    }

    /// Starts the watch unless another waiter did meanwhile.
    async fn start(&self, client: &Client, timeout: Duration) -> Result<()> {
        let _starting = self.starting.lock().await;
        if self.shared.state().running.is_some() {
            return Ok(());
        }
        let prefix = self.prefix.clone();
        let mut watch_client = client.watch_client();
        let stream = timed(timeout, async {
            let options = WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut]);
            let mut stream = watch_client.watch(prefix, Some(options)).await?;
            // The first message confirms the watch; events after its revision follow.
            match stream.message().await? {
                Some(response) if response.created() && !response.canceled() => Ok(stream),
                _ => Err(Failure::from(etcd_client::Error::WatchError(
                    "etcd did not create the release watch".to_owned(),
                ))),
            }
        })
        .await
        .map_err(|failure| failure.into_error("wait for release", timeout))?;
        let waiting: Vec<Vec<u8>> = {
            // Held while spawning: a watch that fails at once cannot mark itself stopped
            // before it is marked running.
            let mut state = self.shared.state();
            let task = tokio::spawn(dispatch(stream, Arc::clone(&self.shared)));
            state.running = Some(task.abort_handle());
            state.waiters.keys().cloned().collect()
        };
        tracing::debug!("etcd release watch started");
        self.catch_up(client, waiting, timeout).await;
        Ok(())
    }

    /// Wakes the waiters of every key in `keys` that is free now: it may have been
    /// released after they registered and before the watch started. A key that cannot be
    /// checked wakes its waiters too (a spurious wake-up is harmless, a missed one is not).
    async fn catch_up(&self, client: &Client, keys: Vec<Vec<u8>>, timeout: Duration) {
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
        let woken: Vec<_> = {
            let mut state = self.shared.state();
            keys.iter()
                .zip(free)
                .filter(|(_, free)| *free)
                .flat_map(|(key, _)| state.waiters.remove(key).unwrap_or_default())
                .collect()
        };
        for sender in woken {
            let _ = sender.send(Wake::MayBeFree);
        }
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        if let Some(task) = self.shared.state().running.take() {
            task.abort();
        }
    }
}

/// Reads the watch and wakes the waiters of each deleted key, until the watch fails.
async fn dispatch(mut stream: WatchStream, shared: Arc<Shared>) {
    let reason = loop {
        match stream.message().await {
            Ok(Some(response)) if response.canceled() => {
                break format!("watch canceled by etcd: {}", response.cancel_reason());
            }
            Ok(Some(response)) => {
                let deleted: Vec<Vec<u8>> = response
                    .events()
                    .iter()
                    .filter(|event| event.event_type() == EventType::Delete)
                    .filter_map(|event| event.kv().map(|kv| kv.key().to_vec()))
                    .collect();
                if deleted.is_empty() {
                    continue;
                }
                let mut woken = Vec::new();
                {
                    let mut state = shared.state();
                    for key in deleted {
                        woken.extend(state.waiters.remove(&key).into_iter().flatten());
                    }
                }
                for sender in woken {
                    let _ = sender.send(Wake::MayBeFree);
                }
            }
            Ok(None) => break "watch stream ended".to_owned(),
            Err(err) => break format!("watch stream failed: {err}"),
        }
    };
    tracing::debug!(%reason, "etcd release watch stopped");
    shared.fail(Wake::Failed(Arc::from(reason)));
}
