//! Release notifications: one `LISTEN` connection per backend, dispatching to per-key
//! waiters.
//!
//! A release runs `pg_notify('routine_lock_released', '<lock key>')` in the statement that
//! unlocks. The listener task receives every notification on the channel and wakes the
//! waiters of that key. When the listener connection is lost, notifications may be missed,
//! so every waiter is woken (spurious wake-ups are allowed); the task then stays down
//! until a `released()` call asks it to reconnect (no retry timer of its own: the runner
//! sets the pace), and wakes every waiter again once it is back.
//!
//! The same connection hears `force_release` announce the lock session it ended
//! (`routine_lock_session_ended`, payload the session id): the task passes it on to this
//! backend's session task, which drops that session if it is its own, so its holders are
//! revoked at once instead of at their next refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leasehold_core::{Error, Result};
use sqlx::ConnectOptions as _;
use sqlx::Row as _;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::{CHANNEL, ENDED_CHANNEL, Settings};
use crate::error::{Context, Message, NAME, with_timeout};
use crate::hosts::{Target, not_writable};
use crate::message::Command;

/// `application_name` of listener connections.
pub(crate) const LISTENER_APPLICATION_NAME: &str = "routine listener";

/// The listener connection's state.
#[derive(Debug, Clone)]
enum Status {
    Up,
    /// `attempt` counts the losses and failed reconnects, so a waiter can tell a fresh
    /// outcome from the one that made it ask.
    Down {
        attempt: u64,
        reason: Arc<str>,
    },
}

type Waiters = Arc<Mutex<HashMap<i64, Arc<Notify>>>>;

fn lock(waiters: &Waiters) -> MutexGuard<'_, HashMap<i64, Arc<Notify>>> {
    // Every critical section is one insert, remove or drain: nothing is left half done.
    waiters
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops the waiters' entry of `hash` with the last waiter (see `Notifier::released`).
struct Sweep<'a> {
    waiters: &'a Waiters,
    hash: i64,
    notify: Arc<Notify>,
}

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        let mut waiters = lock(self.waiters);
        // Counts only change under this lock: the two references are the map's and
        // ours. A wake-up removes the entry, and a later waiter may have put a new one
        // in its place: that one is not ours to remove.
        if waiters.get(&self.hash).is_some_and(|notify| {
            Arc::ptr_eq(notify, &self.notify) && Arc::strong_count(notify) == 2
        }) {
            waiters.remove(&self.hash);
        }
    }
}

/// The backend's side of the listener task. Dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Notifier {
    waiters: Waiters,
    status: watch::Receiver<Status>,
    reconnect: Arc<Notify>,
    timeout: Duration,
    _stop: oneshot::Sender<()>,
}

impl Notifier {
    /// Connects the listener and starts its task; returns it with the listener's server
    /// backend pid and server index in the URL (to compare with the lock session's).
    /// Ended sessions are reported to `session`, the session task (weak: the listener
    /// does not keep it running).
    pub(crate) async fn start(
        settings: Arc<Settings>,
        session: mpsc::WeakUnboundedSender<Command>,
    ) -> Result<(Self, i32, usize)> {
        let ((listener, pid), server) = connect(&settings).await?;
        let waiters = Waiters::default();
        let (status_tx, status) = watch::channel(Status::Up);
        let reconnect = Arc::new(Notify::new());
        let (stop, stopped) = oneshot::channel();
        let task = ListenerTask {
            timeout: settings.request_timeout,
            settings,
            listener: Some(listener),
            waiters: Arc::clone(&waiters),
            status: status_tx,
            reconnect: Arc::clone(&reconnect),
            attempt: 0,
            session,
        };
        let timeout = task.timeout;
        tokio::spawn(task.run(stopped));
        let notifier = Self {
            waiters,
            status,
            reconnect,
            timeout,
            _stop: stop,
        };
        Ok((notifier, pid, server))
    }

    /// Resolves when a release of `hash` is announced, or when the listener reconnects
    /// (a notification may have been missed). Interest is registered on the first poll.
    pub(crate) async fn released(&self, hash: i64) -> Result<()> {
        // Removes the entry when the last waiter of `hash` is gone (a waiter that
        // acquired the key instead), so a process holding many keys keeps none per key.
        let sweep = Sweep {
            waiters: &self.waiters,
            hash,
            notify: Arc::clone(lock(&self.waiters).entry(hash).or_default()),
        };
        let notified = sweep.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut status = self.status.clone();
        let seen = match &*status.borrow_and_update() {
            Status::Up => None,
            Status::Down { attempt, .. } => Some(*attempt),
        };
        if let Some(seen) = seen {
            self.reconnect.notify_one();
            let outcome = with_timeout("wait for release", self.timeout, async {
                status
                    .wait_for(|s| match s {
                        Status::Up => true,
                        Status::Down { attempt, .. } => *attempt > seen,
                    })
                    .await
                    .map(|s| s.clone())
                    .map_err(|_| listener_error("the listener task has stopped".into()))
            })
            .await?;
            if let Status::Down { reason, .. } = outcome {
                return Err(listener_error(reason.to_string()));
            }
        }
        notified.await;
        Ok(())
    }
}

fn listener_error(reason: String) -> Error {
    Error::unavailable(NAME, "wait for release", Message(reason))
}

/// Opens a listener connection on the first usable server of the URL (see the `hosts`
/// module), `LISTEN`s, and reads its server backend pid; returns them and the server's
/// index.
async fn connect(settings: &Settings) -> Result<((PgListener, i32), usize)> {
    settings
        .hosts
        .connect(
            "listen for releases",
            settings.request_timeout,
            |target, share| connect_on(settings, target, share),
        )
        .await
}

/// [`connect`] on one server.
async fn connect_on(
    settings: &Settings,
    target: &Target,
    timeout: Duration,
) -> Result<(PgListener, i32)> {
    let ctx = Context {
        operation: "listen for releases",
        url_setting: settings.url_setting,
    };
    with_timeout("listen for releases", timeout, async {
        let options = settings
            .options_for(target, LISTENER_APPLICATION_NAME)
            .disable_statement_logging();
        // A pool of one, as PgListener wants; a fresh one per connection so that a broken
        // connection is never handed back.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|err| ctx.map(err))?;
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener
            .listen_all([CHANNEL, ENDED_CHANNEL])
            .await
            .map_err(|err| ctx.map(err))?;
        // A server-wide idle_session_timeout would end the listener between releases.
        // A standby would take the LISTEN but never hear a release: the primary's NOTIFY
        // is not replicated.
        let row = sqlx::query(
            "SELECT pg_backend_pid() AS pid, pg_is_in_recovery() AS in_recovery,
                    (SELECT set_config('idle_session_timeout', '0', false)
                     WHERE current_setting('server_version_num')::int4 >= 140000)",
        )
        .fetch_one(&mut listener)
        .await
        .map_err(|err| ctx.map(err))?;
        let pid: i32 = row.try_get("pid").map_err(|err| ctx.map(err))?;
        let in_recovery: bool = row.try_get("in_recovery").map_err(|err| ctx.map(err))?;
        if in_recovery {
            return Err(not_writable("listen for releases", true));
        }
        Ok((listener, pid))
    })
    .await
}

struct ListenerTask {
    settings: Arc<Settings>,
    timeout: Duration,
    listener: Option<PgListener>,
    waiters: Waiters,
    status: watch::Sender<Status>,
    reconnect: Arc<Notify>,
    attempt: u64,
    session: mpsc::WeakUnboundedSender<Command>,
}

/// What woke the task.
enum Event {
    Stop,
    /// The channel and the payload.
    Notification(String, String),
    Lost(String),
    ReconnectRequested,
}

impl ListenerTask {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let event = match self.listener.as_mut() {
                Some(listener) => tokio::select! {
                    _ = &mut stop => Event::Stop,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            Event::Notification(
                                notification.channel().to_owned(),
                                notification.payload().to_owned(),
                            )
                        }
                        Ok(None) => Event::Lost("the listener connection was closed".into()),
                        Err(err) => Event::Lost(err.to_string()),
                    },
                },
                None => tokio::select! {
                    _ = &mut stop => Event::Stop,
                    () = self.reconnect.notified() => Event::ReconnectRequested,
                },
            };
            match event {
                Event::Stop => return,
                Event::Notification(channel, payload) if channel == ENDED_CHANNEL => {
                    self.session_ended(&payload)
                }
                Event::Notification(_, payload) => self.dispatch(&payload),
                Event::Lost(reason) => {
                    tracing::warn!("release notifications interrupted: {reason}");
                    self.listener = None;
                    self.down(reason);
                    self.wake_all();
                }
                Event::ReconnectRequested => match connect(&self.settings).await {
                    Ok(((listener, _pid), _server)) => {
                        self.listener = Some(listener);
                        self.status.send_replace(Status::Up);
                        self.wake_all();
                    }
                    Err(err) => {
                        self.down(format!("cannot reconnect the listener: {}", err.chain()))
                    }
                },
            }
        }
    }

    fn down(&mut self, reason: String) {
        self.attempt += 1;
        self.status.send_replace(Status::Down {
            attempt: self.attempt,
            reason: Arc::from(reason),
        });
    }

    fn dispatch(&self, payload: &str) {
        let Ok(hash) = payload.parse::<i64>() else {
            tracing::debug!(payload, "ignoring a foreign notification on {CHANNEL}");
            return;
        };
        if let Some(notify) = lock(&self.waiters).remove(&hash) {
            notify.notify_waiters();
        }
    }

    fn session_ended(&self, payload: &str) {
        let Ok(session) = payload.parse::<i64>() else {
            tracing::debug!(
                payload,
                "ignoring a foreign notification on {ENDED_CHANNEL}"
            );
            return;
        };
        if let Some(tx) = self.session.upgrade() {
            let _ = tx.send(Command::SessionEnded { session });
        }
    }

    fn wake_all(&self) {
        for (_, notify) in lock(&self.waiters).drain() {
            notify.notify_waiters();
        }
    }
}
