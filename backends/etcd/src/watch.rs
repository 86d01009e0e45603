//! `WatchHub`: one etcd watch stream per backend, with the waiting lines of the names
//! this backend waits for (see the `line` module), waking the local waiters of
//! `released()` by key.
//!
//! The stream carries two watches, for deletes only: the key prefix (a release and an
//! expiry both delete the lock key) and the waiter prefix (a waiter left a line). A
//! backend waiting for a name stands in its line with one waiter key, shared by every
//! local `released()` future of the name and kept between them, so a waiter woken and
//! waiting again keeps its place. Its waiters are woken when the lock key is deleted
//! only while it is first in line; when its predecessor's key is deleted it reads the
//! line again (one transaction, which also reads the lock key). The waiter key goes when
//! this backend acquires the name, or a second after its last `released()` future is
//! dropped (the runner waits again at once when it did not acquire; it stopped waiting
//! otherwise), or with the waiter lease (kept alive while there are lines, revoked when
//! there are none), so a crashed waiter holds up the line for the lease's TTL at most;
//! the runner's expiry polling does not depend on the line.
//!
//! The watch is started, on a task of its own, by the first `released()` call, and
//! restarted by the next call after it fails; there is no reconnect loop. Lines are
//! joined once the watch runs, so no delete after the join is missed. Waiters of a watch
//! or waiter lease that fails (or cannot start), or of a line that cannot be read, get
//! an error, and the runner falls back to polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchStream};
use leasehold_core::{Error, Result};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::error::{Failure, NAME, timed};
use crate::line::{self, Keeper, Place};

/// How long a line outlives its last `released()` future: the runner registers its next
/// one right after a wake-up that did not get it the key.
const LINGER: Duration = Duration::from_secs(1);

/// Why a waiter was woken.
#[derive(Debug, Clone)]
enum Wake {
    /// The key was deleted while this backend was first in line, or found free.
    MayBeFree,
    /// The watch, the waiter lease or the line failed; no notification will come.
    Failed(Failure),
}

/// Removes closed senders of `key` (and the entry, once empty) when a `released` future
/// ends or is dropped, and lets the line go once no future of its key is left.
struct Sweep<'a> {
    shared: &'a Arc<Shared>,
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
        let Some(line) = state.lines.get_mut(&self.key) else {
            return;
        };
        line.users = line.users.saturating_sub(1);
        if line.users > 0 {
            return;
        }
        let serial = line.serial;
        drop(state);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shared = Arc::downgrade(self.shared);
                let key = self.key.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    if let Some(shared) = shared.upgrade() {
                        shared.leave_if_idle(&key, serial);
                    }
                });
            }
            // No runtime to delete the key on: it goes with the waiter lease.
            Err(_) => {
                self.shared.state().lines.remove(&self.key);
            }
        }
    }
}

/// The release watch of one backend, its lines and the waiters it serves.
pub(crate) struct WatchHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("state", &self.shared.state)
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: Client,
    key_prefix: Vec<u8>,
    waiter_prefix: Vec<u8>,
    timeout: Duration,
    state: Mutex<State>,
    /// Held while the waiter lease is granted, so concurrent joins share one.
    granting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<Vec<u8>, Vec<oneshot::Sender<Wake>>>,
    /// This backend's place in the line of each lock key it waits for.
    lines: HashMap<Vec<u8>, Line>,
    watch: Watch,
    /// The waiter lease and the task keeping it alive.
    lease: Option<(i64, AbortHandle)>,
    next_serial: u64,
}

/// This backend's place in one name's line.
#[derive(Debug)]
struct Line {
    /// Tells this line from a later one of the same key, and names its waiter key.
    serial: u64,
    /// The waiter key and its create revision, once joined.
    own: Option<(Vec<u8>, i64)>,
    /// The waiter key just before ours; `None` when first (once joined).
    behind: Option<Vec<u8>>,
    /// A join or a second look is under way.
    busy: bool,
    /// A delete of the lock key or of a waiter key of this name came while busy.
    dirty: bool,
    /// The `released()` futures of the key.
    users: usize,
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
        // Critical sections only move entries in and out of maps; nothing can be left
        // half-done by a panic, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The waiter prefix of the name of `lock_key`: `<waiter prefix><name>/`.
    fn line_prefix(&self, lock_key: &[u8]) -> Vec<u8> {
        let name = lock_key
            .strip_prefix(self.key_prefix.as_slice())
            .unwrap_or(lock_key);
        let mut prefix = self.waiter_prefix.clone();
        prefix.extend_from_slice(name);
        prefix.push(b'/');
        prefix
    }

    /// The lock key of the name a waiter key belongs to.
    fn lock_key_of(&self, waiter_key: &[u8]) -> Option<Vec<u8>> {
        let rest = waiter_key.strip_prefix(self.waiter_prefix.as_slice())?;
        let end = rest.iter().position(|byte| *byte == b'/')?;
        let mut key = self.key_prefix.clone();
        key.extend_from_slice(&rest[..end]);
        Some(key)
    }

    /// Marks the watch stopped, drops every line and wakes every waiter with `failure`.
    fn fail(&self, failure: Failure) {
        tracing::debug!(?failure, "etcd release watch stopped");
        let waiters = {
            let mut state = self.state();
            state.watch = Watch::Stopped;
            // Their keys go with the waiter lease, revoked once no line is left.
            state.lines.clear();
            std::mem::take(&mut state.waiters)
        };
        wake_all(waiters.into_values().flatten(), &Wake::Failed(failure));
    }

    /// Wakes the waiters of `key`.
    fn wake(&self, key: &[u8], wake: &Wake) {
        let woken = self.state().waiters.remove(key).unwrap_or_default();
        wake_all(woken, wake);
    }

    /// The lock key was deleted: wakes its waiters if this backend is first in line.
    fn lock_deleted(&self, key: &[u8]) {
        {
            let mut state = self.state();
            if let Some(line) = state.lines.get_mut(key) {
                if line.busy {
                    line.dirty = true;
                    return;
                }
                if line.own.is_none() || line.behind.is_some() {
                    return;
                }
            }
        }
        self.wake(key, &Wake::MayBeFree);
    }

    /// A waiter key was deleted: the line it was in is read again if it was our
    /// predecessor.
    fn waiter_deleted(self: &Arc<Self>, waiter_key: &[u8]) {
        let Some(key) = self.lock_key_of(waiter_key) else {
            return;
        };
        let mut state = self.state();
        let Some(line) = state.lines.get_mut(&key) else {
            return;
        };
        if line.busy {
            line.dirty = true;
        } else if line.behind.as_deref() == Some(waiter_key) {
            line.busy = true;
            drop(state);
            tokio::spawn(look_again(Arc::clone(self), key));
        }
    }

    /// Takes in what a join or a second look read: wakes the waiters if first and the
    /// lock key is absent, reads again if something changed meanwhile.
    fn placed(self: &Arc<Self>, key: Vec<u8>, serial: u64, place: Place, own: Option<Vec<u8>>) {
        let mut state = self.state();
        let current = state
            .lines
            .get_mut(&key)
            .filter(|line| line.serial == serial);
        let Some(line) = current else {
            // The line was left meanwhile: our new key leaves too.
            drop(state);
            if let Some(own) = own {
                tokio::spawn(line::leave(self.client.clone(), own, self.timeout));
            }
            return;
        };
        if let Some(own) = own {
            line.own = Some((own, place.revision));
        }
        line.behind = place.behind;
        if std::mem::take(&mut line.dirty) {
            drop(state);
            tokio::spawn(look_again(Arc::clone(self), key));
            return;
        }
        line.busy = false;
        let first = line.behind.is_none();
        drop(state);
        if first && place.lock_free {
            self.wake(&key, &Wake::MayBeFree);
        }
    }

    /// A join or second look failed: the line is dropped and its waiters told.
    fn unplaced(&self, key: &[u8], serial: u64, failure: Failure) {
        let left = {
            let mut state = self.state();
            match state.lines.get(key) {
                Some(line) if line.serial == serial => state.lines.remove(key),
                _ => None,
            }
        };
        if let Some((own, _)) = left.and_then(|line| line.own) {
            tokio::spawn(line::leave(self.client.clone(), own, self.timeout));
        }
        self.wake(key, &Wake::Failed(failure));
    }

    /// Leaves the line of `key` if it is line `serial` and has had no future since.
    fn leave_if_idle(&self, key: &[u8], serial: u64) {
        let left = {
            let mut state = self.state();
            match state.lines.get(key) {
                Some(line) if line.serial == serial && line.users == 0 => state.lines.remove(key),
                _ => None,
            }
        };
        if let Some((own, _)) = left.and_then(|line| line.own) {
            tokio::spawn(line::leave(self.client.clone(), own, self.timeout));
        }
    }

    /// The waiter lease, granting it (and starting its keep-alives) if there is none.
    async fn lease(self: &Arc<Self>) -> Result<i64, Failure> {
        let _granting = self.granting.lock().await;
        if let Some((lease, _)) = &self.state().lease {
            return Ok(*lease);
        }
        let (lease, ttl) = line::grant(&self.client, self.timeout).await?;
        let keeper = Keeper::open(&self.client, lease, self.timeout).await?;
        let task = tokio::spawn(keep(Arc::downgrade(self), keeper, lease, ttl));
        self.state().lease = Some((lease, task.abort_handle()));
        Ok(lease)
    }

    /// The waiter lease was lost: every line with it.
    fn lease_lost(&self, lease: i64, failure: Failure) {
        let waiters = {
            let mut state = self.state();
            if state.lease.as_ref().is_some_and(|(id, _)| *id == lease) {
                state.lease = None;
            }
            let keys: Vec<_> = state.lines.drain().map(|(key, _)| key).collect();
            keys.into_iter()
                .flat_map(|key| state.waiters.remove(&key).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        wake_all(waiters, &Wake::Failed(failure));
    }
}

fn wake_all(senders: impl IntoIterator<Item = oneshot::Sender<Wake>>, wake: &Wake) {
    for sender in senders {
        let _ = sender.send(wake.clone());
    }
}

/// Keeps the waiter lease alive every third of its TTL while there are lines; revokes
/// it once there are none.
async fn keep(shared: Weak<Shared>, mut keeper: Keeper, lease: i64, ttl_secs: i64) {
    let every = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(1)) / 3;
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let idle = {
            let mut state = shared.state();
            let idle = state.lines.is_empty();
            if idle {
                state.lease = None;
            }
            idle
        };
        if idle {
            line::revoke(&shared.client, lease, shared.timeout).await;
            return;
        }
        match keeper.keep(shared.timeout).await {
            Ok(true) => {}
            Ok(false) => {
                let gone =
                    etcd_client::Error::LeaseKeepAliveError("the waiter lease expired".into());
                return shared.lease_lost(lease, Failure::from(gone));
            }
            Err(failure) => return shared.lease_lost(lease, failure),
        }
    }
}

/// Joins the line of `key` (line `serial`).
async fn join(shared: Arc<Shared>, key: Vec<u8>, serial: u64) {
    let joined = async {
        let lease = shared.lease().await?;
        let mut own = shared.line_prefix(&key);
        own.extend_from_slice(format!("{lease:016x}-{serial}").as_bytes());
        let prefix = shared.line_prefix(&key);
        let place =
            line::join(&shared.client, (&prefix, &own, &key), lease, shared.timeout).await?;
        Ok::<_, Failure>((own, place))
    }
    .await;
    match joined {
        Ok((own, place)) => shared.placed(key, serial, place, Some(own)),
        Err(failure) => shared.unplaced(&key, serial, failure),
    }
}

/// Reads the line of `key` again from our own key on.
async fn look_again(shared: Arc<Shared>, key: Vec<u8>) {
    let (serial, revision) = {
        let state = shared.state();
        match state.lines.get(&key) {
            Some(Line {
                serial,
                own: Some((_, revision)),
                ..
            }) => (*serial, *revision),
            _ => return,
        }
    };
    let prefix = shared.line_prefix(&key);
    match line::look_again(&shared.client, (&prefix, &key), revision, shared.timeout).await {
        Ok(place) => shared.placed(key, serial, place, None),
        Err(failure) => shared.unplaced(&key, serial, failure),
    }
}

impl WatchHub {
    pub(crate) fn new(client: Client, key_prefix: &str, timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                key_prefix: key_prefix.as_bytes().to_vec(),
                waiter_prefix: crate::key::waiter_prefix(key_prefix).into_bytes(),
                timeout,
                state: Mutex::default(),
                granting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Resolves when `key` may have become free: it was deleted while this backend was
    /// first in its line, or found free. Registers the waiter (joining the line, and
    /// starting the watch if none runs) before its first await, so a release after the
    /// first poll is never missed by the line, and nothing else depends on this future
    /// being polled.
    pub(crate) async fn released(&self, key: Vec<u8>) -> Result<()> {
        let timeout = self.shared.timeout;
        // Takes this waiter's sender out of the map if the future is dropped before a
        // wake-up, and lets the line go once no future of the key is left. Declared
        // before the channel, so that it runs after the receiver is dropped and the
        // sender shows as closed.
        let _sweep = Sweep {
            shared: &self.shared,
            key: key.clone(),
        };
        let (sender, woken) = oneshot::channel();
        let (must_start, must_join) = {
            let mut state = self.shared.state();
            let senders = state.waiters.entry(key.clone()).or_default();
            // Futures dropped before a wake-up leave closed senders behind; they are
            // swept here so the map stays small.
            senders.retain(|sender| !sender.is_closed());
            senders.push(sender);
            let running = matches!(state.watch, Watch::Running(_));
            let start = matches!(state.watch, Watch::Stopped);
            if start {
                state.watch = Watch::Starting;
            }
            let serial = state.next_serial;
            let line = state.lines.entry(key.clone()).or_insert_with(|| Line {
                serial,
                own: None,
                behind: None,
                busy: running,
                dirty: false,
                users: 0,
            });
            line.users += 1;
            let join = (line.serial == serial && running).then_some(serial);
            if line.serial == serial {
                state.next_serial += 1;
            }
            (start, join)
        };
        if must_start {
            tokio::spawn(start(Arc::downgrade(&self.shared)));
        }
        if let Some(serial) = must_join {
            tokio::spawn(join(Arc::clone(&self.shared), key, serial));
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

    /// This backend acquired `key`: it leaves the key's line. Other local waiters of the
    /// key are woken (they join again).
    pub(crate) fn acquired(&self, key: &[u8]) {
        let left = self.shared.state().lines.remove(key);
        if let Some((own, _)) = left.and_then(|line| line.own) {
            tokio::spawn(line::leave(
                self.shared.client.clone(),
                own,
                self.shared.timeout,
            ));
        }
        self.shared.wake(key, &Wake::MayBeFree);
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if let Watch::Running(task) = std::mem::take(&mut state.watch) {
            task.abort();
        }
        if let Some((lease, task)) = state.lease.take() {
            task.abort();
            // Best effort: the keys go with the lease's TTL otherwise.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let client = self.shared.client.clone();
                let timeout = self.shared.timeout;
                runtime.spawn(async move { line::revoke(&client, lease, timeout).await });
            }
        }
    }
}

/// Creates the two watches, hands the stream to [`dispatch`], then joins the lines of
/// the waiters registered so far. Holds the hub weakly: if the backend is dropped
/// meanwhile, the watch is dropped too.
async fn start(shared: Weak<Shared>) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let (client, timeout) = (strong.client.clone(), strong.timeout);
    let prefixes = [strong.key_prefix.clone(), strong.waiter_prefix.clone()];
    drop(strong);
    let created = timed(timeout, async {
        let [key_prefix, waiter_prefix] = prefixes;
        // Two streams: on one, the other watch's events could come before the answer
        // that creates the second.
        let locks = open_watch(&client, key_prefix).await?;
        let waiters = open_watch(&client, waiter_prefix).await?;
        Ok((locks, waiters))
    })
    .await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let streams = match created {
        Ok(streams) => streams,
        Err(failure) => return shared.fail(failure),
    };
    let joins: Vec<(Vec<u8>, u64)> = {
        // Held while spawning: a watch that fails at once cannot mark itself stopped
        // before it is marked running.
        let mut state = shared.state();
        let task = tokio::spawn(dispatch(streams, Arc::downgrade(&shared)));
        state.watch = Watch::Running(task.abort_handle());
        state
            .lines
            .iter_mut()
            .filter(|(_, line)| line.own.is_none() && !line.busy)
            .map(|(key, line)| {
                line.busy = true;
                (key.clone(), line.serial)
            })
            .collect()
    };
    tracing::debug!("etcd release watch started");
    for (key, serial) in joins {
        tokio::spawn(join(Arc::clone(&shared), key, serial));
    }
}

/// A watch of the deletes under `prefix`, once etcd confirmed it: events after its
/// revision follow.
async fn open_watch(client: &Client, prefix: Vec<u8>) -> Result<WatchStream, Failure> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoPut]);
    let mut stream = client.watch_client().watch(prefix, Some(options)).await?;
    match stream.message().await? {
        Some(response) if response.created() && !response.canceled() => Ok(stream),
        _ => Err(watch_error("etcd did not create the release watch")),
    }
}

/// Reads both watches and dispatches each deleted key, until one fails.
async fn dispatch((mut locks, mut waiters): (WatchStream, WatchStream), shared: Weak<Shared>) {
    let failure = loop {
        let (message, of_waiters) = tokio::select! {
            message = locks.message() => (message, false),
            message = waiters.message() => (message, true),
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match message {
            Ok(Some(response)) if response.canceled() => {
                let reason = response.cancel_reason();
                break watch_error(&format!("watch canceled by etcd: {reason}"));
            }
            Ok(Some(response)) => {
                let deleted = response
                    .events()
                    .iter()
                    .filter(|event| event.event_type() == EventType::Delete)
                    .filter_map(|event| event.kv().map(|kv| kv.key()));
                for key in deleted {
                    if of_waiters {
                        shared.waiter_deleted(key);
                    } else {
                        shared.lock_deleted(key);
                    }
                }
            }
            Ok(None) => break watch_error("watch stream ended"),
            Err(err) => break Failure::from(err),
        }
    };
    if let Some(shared) = shared.upgrade() {
        shared.fail(failure);
    }
}

fn watch_error(message: &str) -> Failure {
    Failure::from(etcd_client::Error::WatchError(message.to_owned()))
}
