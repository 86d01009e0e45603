//! The lock session: one connection, owned by one task, holding every advisory lock of a
//! backend and hearing release notifications (see the `notify` module) between
//! statements.
//!
//! Acquires, refreshes and releases for all keys are messages to the task, which runs
//! them one at a time on its connection. Refreshes waiting in the queue are answered
//! together by one statement sent after all of them were called: any statement that
//! succeeds proves the session, and so every lock it holds, was alive after the refresh
//! was called, and moves the session's heartbeat on (see the `fencing` module). When the
//! session fails (connection error, timeout, terminated backend), the task drops it, every
//! lease on it is lost and told so at once (its revocation signal fires), and the next
//! acquire opens a new session; each lease remembers the generation and id of the session
//! it was taken on. A session that `force_release` ended (announced on the session, see
//! the `notify` module) is dropped the same way when the announcement arrives, without
//! waiting for a statement to fail on it. A statement that fails on a healthy session (cancelled by
//! `pg_cancel_backend` or `statement_timeout`, a constraint, a missing table) leaves the
//! session and its locks alone.
//!
//! Dropping a session frees its locks on the server at once, but the keys stay guarded by
//! the session's heartbeat until it runs out. When a lost lease is then released (its
//! routine has stopped), the key is recorded here and the next statement on a new session
//! clears the ended session's claim on it, so this process or another can take it at once.
//!
//! A caller on one of the runtime's worker threads (a spawned task, as the runner's) hands
//! its request to the session task on the same worker, which costs little. A caller
//! outside the workers (the future of `Runtime::block_on`, such as a `#[tokio::main]`
//! body) crosses threads twice per request, to a worker and back, where a statement it
//! ran itself would cross once: measured, those extra thread switches are most of the
//! library's time over its own statements for such a caller.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, LeaseInfo, LockKey, Result};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{mpsc, watch};

use crate::config::{CHANNEL, ENDED_CHANNEL, Settings};
use crate::connect::{Live, open};
use crate::epoch::EpochStatements;
use crate::error::{Context, Message, NAME, breaks_session, session_ended, with_timeout};
use crate::fencing::Statements;
use crate::held::{describe_statement, info};
use crate::message::{Command, LeaseId};
use crate::notify::Dispatch;

mod acquire;
mod refresh;

/// What woke the idle session task.
enum Event {
    Command(Command),
    /// Every sender is gone: the backend and its leases.
    Closed,
    /// A notification heard on the session: its channel and payload.
    Notification(String, String),
    /// The session's connection failed while idle.
    Lost(String),
}

/// A lock held on the session.
struct Held {
    serial: u64,
    key: LockKey,
    ttl: Duration,
}

/// Starts the session task on `live` (generation 1), receiving the commands sent on `tx`,
/// and returns `tx`. The task ends when every sender (the backend's and the leases') is
/// gone, closing the connection.
pub(crate) fn spawn(
    settings: Arc<Settings>,
    live: Live,
    dispatch: Arc<Dispatch>,
    waiters: bool,
    (tx, rx): (
        mpsc::UnboundedSender<Command>,
        mpsc::UnboundedReceiver<Command>,
    ),
) -> mpsc::UnboundedSender<Command> {
    let task = Session {
        statements: Statements::new(
            &settings.qualified_table,
            &settings.qualified_sessions,
            &settings.qualified_epochs,
            waiters.then_some(settings.qualified_waiters.as_str()),
        ),
        epochs: EpochStatements::new(&settings.qualified_epochs),
        describe: Arc::from(describe_statement(&settings)),
        settings,
        dispatch,
        rx,
        tx: tx.downgrade(),
        live: Some(live),
        generation: 1,
        next_serial: 0,
        held: HashMap::new(),
        ttls: BTreeMap::new(),
        backlog: VecDeque::new(),
        revoke: watch::channel(false).0,
        forget: Vec::new(),
        dropped: None,
    };
    tokio::spawn(task.run());
    tx
}

struct Session {
    settings: Arc<Settings>,
    /// The waiters for releases, woken by the notifications the session hears.
    dispatch: Arc<Dispatch>,
    statements: Statements,
    epochs: EpochStatements,
    /// `describe`'s statement (see the `held` module).
    describe: Arc<str>,
    rx: mpsc::UnboundedReceiver<Command>,
    /// Weak, so the task does not keep its own channel open; upgraded to hand out leases.
    tx: mpsc::WeakUnboundedSender<Command>,
    live: Option<Live>,
    generation: u64,
    next_serial: u64,
    held: HashMap<i64, Held>,
    /// How many leases in `held` have each TTL: every statement needs the longest, and
    /// scanning `held` for it would make each statement cost O(leases) on the client.
    ttls: BTreeMap<Duration, usize>,
    /// Commands received while collecting refreshes, run next in order.
    backlog: VecDeque<Command>,
    /// Set to `true` when the current session is dropped: every lease taken on it watches
    /// this, so its holder learns of the loss at once rather than at its next refresh.
    revoke: watch::Sender<bool>,
    /// Released leases of ended sessions, whose claims on their keys (key and session id)
    /// in the fencing table the next session clears (see the module docs).
    forget: Vec<LeaseId>,
    /// The id of the session dropped last, whose waiter rows the next session deletes
    /// (see the `waiters` module): nobody hears that session's wake channel any more.
    dropped: Option<i64>,
}

impl Session {
    async fn run(mut self) {
        loop {
            let command = match self.backlog.pop_front() {
                Some(command) => command,
                None => match self.next_event().await {
                    Event::Command(command) => command,
                    Event::Closed => break,
                    Event::Notification(channel, payload) => {
                        self.notified(&channel, &payload);
                        continue;
                    }
                    Event::Lost(reason) => {
                        self.abandon(&reason);
                        continue;
                    }
                },
            };
            match command {
                Command::Acquire {
                    key,
                    hash,
                    ttl,
                    holder,
                    reply,
                } => {
                    // A caller that gave up while queued is skipped. One that gives up
                    // during the acquire is not answered; the link in the undeliverable
                    // reply then gives the lock back.
                    if !reply.is_closed() {
                        let result = self.acquire(&key, hash, ttl, &holder).await;
                        let _ = reply.send(result);
                    }
                }
                Command::Refresh(request) => {
                    let mut batch = vec![request];
                    self.collect_refreshes(&mut batch);
                    self.refresh(batch).await;
                }
                Command::Release { id, reply } => {
                    let result = self.release(id).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Command::ExpiresIn {
                    hash,
                    timeout,
                    reply,
                } => {
                    if !reply.is_closed() {
                        let result = self.expires_in(hash, timeout).await;
                        let _ = reply.send(result);
                    }
                }
                Command::Describe {
                    key,
                    hash,
                    timeout,
                    reply,
                } => {
                    if !reply.is_closed() {
                        let result = self.describe(key, hash, timeout).await;
                        let _ = reply.send(result);
                    }
                }
                Command::Unwait { hash } => self.unwait(hash).await,
                Command::Listen { reply } => {
                    if !reply.is_closed() {
                        let result = self.ensure_live(self.settings.request_timeout).await;
                        if let Err(error) = &result {
                            self.dispatch
                                .down(format!("cannot open a lock session: {}", error.chain()));
                        }
                        let _ = reply.send(result);
                    }
                }
            }
        }
        if self.dispatch.has_registrations()
            && let Some(statements) = &self.statements.waiters
            && let Some(live) = self.live.as_ref()
        {
            // Best effort: releases that would pick this session wake nobody from now on.
            let forget = sqlx::query(AssertSqlSafe(Arc::clone(&statements.forget))).bind(live.id);
            let timeout = self.settings.request_timeout;
            if let Err(err) = self.run_tidy(forget, "stop waiting", timeout).await {
                tracing::debug!(error = %err.chain(), "the lock session's waits stay registered");
            }
        }
        if let Some(live) = self.live.take() {
            // Best effort: the server ends the session (releasing every lock) on close,
            // and also notices a dropped connection.
            let Live { conn, pool, .. } = live;
            drop(conn);
            let _ = tokio::time::timeout(self.settings.request_timeout, pool.close()).await;
        }
    }

    /// The next command, or, while a session is open and no command waits, a
    /// notification it heard (buffered ones first) or its loss.
    async fn next_event(&mut self) -> Event {
        let Some(live) = self.live.as_mut() else {
            return self.rx.recv().await.map_or(Event::Closed, Event::Command);
        };
        tokio::select! {
            biased;
            command = self.rx.recv() => command.map_or(Event::Closed, Event::Command),
            heard = live.conn.try_recv() => match heard {
                Ok(Some(notification)) => Event::Notification(
                    notification.channel().to_owned(),
                    notification.payload().to_owned(),
                ),
                Ok(None) => Event::Lost("the lock session's connection was closed".into()),
                Err(err) => Event::Lost(format!("the lock session failed: {err}")),
            },
        }
    }

    /// A notification the session heard: a release (for every waiter on the shared
    /// channel, or for this session alone on its wake channel, which is the only other
    /// one it listens on), or a session an operator ended.
    fn notified(&mut self, channel: &str, payload: &str) {
        if channel != ENDED_CHANNEL {
            if channel != CHANNEL
                && let Ok(hash) = payload.parse::<i64>()
            {
                // Picked: the release deleted this session's row for the key.
                self.dispatch.unregistered(hash);
            }
            self.dispatch.released(payload);
            return;
        }
        match payload.parse::<i64>() {
            Ok(session) => self.session_ended(session),
            Err(_) => tracing::debug!(
                payload,
                "ignoring a foreign notification on {ENDED_CHANNEL}"
            ),
        }
    }

    /// `force_release` announced it ended `session`.
    fn session_ended(&mut self, session: i64) {
        // The server has ended it (or will in a moment): its locks are gone, and its
        // holders must stop now, not at their next refresh.
        if self.live.as_ref().is_some_and(|live| live.id == session) {
            self.abandon(&"an operator ended the session (force_release)");
        }
    }

    fn is_current(&self, id: LeaseId) -> bool {
        id.generation == self.generation
            && self.live.is_some()
            && self
                .held
                .get(&id.hash)
                .is_some_and(|held| held.serial == id.serial)
    }

    fn longest_ttl(&self) -> Duration {
        self.ttls.keys().next_back().copied().unwrap_or_default()
    }

    fn count_ttl(&mut self, ttl: Duration) {
        *self.ttls.entry(ttl).or_default() += 1;
    }

    fn uncount_ttl(&mut self, ttl: Duration) {
        if let Some(count) = self.ttls.get_mut(&ttl) {
            *count -= 1;
            if *count == 0 {
                self.ttls.remove(&ttl);
            }
        }
    }

    /// Records a lock taken on the session.
    fn insert_held(&mut self, hash: i64, held: Held) {
        self.count_ttl(held.ttl);
        if let Some(replaced) = self.held.insert(hash, held) {
            self.uncount_ttl(replaced.ttl);
        }
    }

    /// Forgets a lock given back.
    fn remove_held(&mut self, hash: i64) -> Option<Held> {
        let held = self.held.remove(&hash)?;
        self.uncount_ttl(held.ttl);
        Some(held)
    }

    fn ctx(&self, operation: &'static str) -> Context {
        Context {
            operation,
            url_setting: self.settings.url_setting,
        }
    }

    /// Drops the session: the server ends it and releases all its locks (at once, or when
    /// it notices the closed connection), so every lease on it is lost, and each is told
    /// so now. Other clients still cannot take the keys before the session's heartbeat
    /// runs out, which outlasts every lease's local deadline.
    fn abandon(&mut self, why: &dyn std::fmt::Display) {
        if let Some(live) = self.live.take() {
            self.dropped = Some(live.id);
            if self.held.is_empty() {
                tracing::debug!(
                    pid = live.pid,
                    "dropping the idle PostgreSQL lock session: {why}"
                );
            } else {
                tracing::warn!(
                    pid = live.pid,
                    leases = self.held.len(),
                    "abandoning the PostgreSQL lock session, its leases are lost: {why}"
                );
            }
        }
        // Releases announced from now on go unheard until a new session listens.
        self.dispatch
            .down(format!("the lock session was dropped: {why}"));
        self.held.clear();
        self.ttls.clear();
        self.revoke.send_replace(true);
        self.revoke = watch::channel(false).0;
    }

    /// The open session, opening one (a new generation) if there is none.
    async fn ensure_live(&mut self, timeout: Duration) -> Result<()> {
        if self.live.is_none() {
            let mut live = open(&self.settings, timeout).await?;
            // A session hands out no token before it has an epoch of its own.
            let ctx = self.ctx("begin a fencing epoch");
            with_timeout(ctx.operation, timeout, self.epochs.begin(&mut live, ctx)).await?;
            self.live = Some(live);
            self.generation += 1;
            // It listens: waiters may have missed releases while there was none.
            self.dispatch.up();
            // Rows of sessions whose heartbeat ran out guard nothing any more.
            let forget = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.forget_sessions)));
            self.run_tidy(forget, "forget ended sessions", timeout)
                .await?;
            // Waiter rows of the dropped session would take wake-ups nobody hears. Only
            // wake-ups: a failure costs no request its answer.
            if let Some(statements) = &self.statements.waiters {
                let forget =
                    sqlx::query(AssertSqlSafe(Arc::clone(&statements.forget))).bind(self.dropped);
                match self
                    .run_tidy(forget, "forget the dropped session's waits", timeout)
                    .await
                {
                    Ok(()) => self.dropped = None,
                    Err(err) => {
                        tracing::debug!(error = %err.chain(), "the dropped session's waits stay registered");
                    }
                }
            }
        }
        if !self.forget.is_empty() {
            let keys: Vec<i64> = self.forget.iter().map(|id| id.hash).collect();
            let sessions: Vec<i64> = self.forget.iter().map(|id| id.session).collect();
            let forget = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.forget_holders)))
                .bind(keys)
                .bind(sessions);
            self.run_tidy(forget, "forget stopped holders", timeout)
                .await?;
            self.forget.clear();
        }
        Ok(())
    }

    /// Runs a housekeeping statement on the live session.
    async fn run_tidy(
        &mut self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        operation: &'static str,
        timeout: Duration,
    ) -> Result<()> {
        let ctx = self.ctx(operation);
        let Some(live) = self.live.as_mut() else {
            return Err(no_session(operation));
        };
        match tokio::time::timeout(timeout, query.execute(&mut live.conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => {
                if breaks_session(&err) {
                    self.abandon(&err);
                }
                Err(ctx.map(err))
            }
            Err(_) => {
                self.abandon(&format_args!("{operation} timed out"));
                Err(Error::timeout(NAME, operation, timeout))
            }
        }
    }

    async fn expires_in(&mut self, hash: i64, timeout: Duration) -> Result<Option<Duration>> {
        self.ensure_live(timeout).await?;
        self.drop_idle_settings(timeout).await?;
        let ctx = self.ctx("expires_in");
        let Some(live) = self.live.as_mut() else {
            return Err(no_session("expires_in"));
        };
        // Until the restart guard has passed, no key is granted, whatever its rows say.
        let guard = live.guard_left();
        // A waiter of this process asks: the same statement registers the session as a
        // waiter for the key, so that a release can wake it alone (see the `waiters`
        // module). Anyone else only asks.
        let register = self.statements.waiters.is_some() && self.dispatch.is_waiting(hash);
        let query = match &self.statements.waiters {
            Some(waiters) if register => {
                sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(Arc::clone(&waiters.register)))
                    .bind(hash)
                    .bind(live.id)
                    .bind(guard.map_or(0, millis))
            }
            _ => sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(Arc::clone(
                &self.statements.expires_in,
            )))
            .bind(hash),
        }
        .fetch_one(&mut live.conn);
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(left)) => {
                let left = left.map(|ms| Duration::from_millis(ms.max(1).unsigned_abs()));
                if register {
                    self.dispatch.registered(hash);
                    // The last waiter may have stopped during the statement, too early to
                    // ask for the row to go.
                    if !self.dispatch.is_waiting(hash) {
                        self.unwait(hash).await;
                    }
                }
                Ok(left.max(guard))
            }
            Ok(Err(err)) => {
                if breaks_session(&err) {
                    self.abandon(&err);
                }
                Err(ctx.map(err))
            }
            Err(_) => {
                self.abandon(&"expires_in timed out");
                Err(Error::timeout(NAME, "expires_in", timeout))
            }
        }
    }

    /// The holder of `key` (lock key `hash`), read on the lock session, so that a waiter
    /// naming the holder of its key opens no other connection.
    async fn describe(
        &mut self,
        key: LockKey,
        hash: i64,
        timeout: Duration,
    ) -> Result<Option<LeaseInfo>> {
        self.ensure_live(timeout).await?;
        self.drop_idle_settings(timeout).await?;
        let ctx = self.ctx("describe");
        let Some(live) = self.live.as_mut() else {
            return Err(no_session("describe"));
        };
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.describe)))
            .bind(&self.settings.namespace)
            .bind(hash)
            .bind(key.as_str())
            .fetch_optional(&mut live.conn);
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(row)) => row
                .map(|row| info(key, &row).map_err(|err| ctx.map(err)))
                .transpose(),
            Ok(Err(err)) => {
                if breaks_session(&err) {
                    self.abandon(&err);
                }
                Err(ctx.map(err))
            }
            Err(_) => {
                self.abandon(&"describe timed out");
                Err(Error::timeout(NAME, "describe", timeout))
            }
        }
    }

    /// The last waiter of `hash` in this process stopped waiting without being woken
    /// (see [`Command::Unwait`]): deletes the session's registration for the key, so
    /// that no release picks a process that no longer waits. A failure only leaves the
    /// row to expire.
    async fn unwait(&mut self, hash: i64) {
        // A waiter came back meanwhile (its `expires_in` renews the row), or the key is
        // held here now (no release picks the holder's own row, and its release deletes
        // it): nothing to do.
        if self.dispatch.is_waiting(hash) || self.held.contains_key(&hash) {
            return;
        }
        let Some(statements) = &self.statements.waiters else {
            return;
        };
        let unwait = Arc::clone(&statements.unwait);
        let Some(session) = self.live.as_ref().map(|live| live.id) else {
            return;
        };
        if !self.dispatch.unregistered(hash) {
            return;
        }
        let query = sqlx::query(AssertSqlSafe(unwait)).bind(hash).bind(session);
        let timeout = self.settings.request_timeout;
        if let Err(err) = self.run_tidy(query, "stop waiting", timeout).await {
            tracing::debug!(error = %err.chain(), "the waiter row stays until it expires");
        }
    }

    /// A session that holds nothing but keeps the settings of its last lease (see the
    /// `ttl` module) would be ended by the server after that lease's TTL without a
    /// statement; a waiter asks about once per TTL, so the session it listens on could be
    /// ended between two questions. Its settings go back to the server's defaults with the
    /// first question, once per hold-then-wait.
    async fn drop_idle_settings(&mut self, timeout: Duration) -> Result<()> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        if !self.held.is_empty() || live.applied.is_none_or(|ttl| ttl.is_zero()) {
            return Ok(());
        }
        let (names, values) = live.ttl.settings(Duration::ZERO);
        let reset = sqlx::query(
            "SELECT count(set_config(k, v, false)) FROM unnest($1::text[], $2::text[]) AS s(k, v)",
        )
        .bind(names)
        .bind(values);
        self.run_tidy(reset, "reset idle session settings", timeout)
            .await?;
        if let Some(live) = self.live.as_mut() {
            live.applied = Some(Duration::ZERO);
        }
        Ok(())
    }

    async fn release(&mut self, id: LeaseId) -> Result<()> {
        if !self.is_current(id) {
            // Released already, or lost with its session: nothing of ours to give back.
            // A lease of an ended session still guards its key in the fencing table until
            // the session's heartbeat runs out; its holder has stopped now, so the next
            // session clears that claim.
            if id.generation != self.generation || self.live.is_none() {
                self.forget.push(id);
            }
            return Ok(());
        }
        let Some(held) = self.remove_held(id.hash) else {
            return Ok(());
        };
        let timeout = self.settings.timeout_for(held.ttl);
        let longest = self.longest_ttl();
        let ctx = self.ctx("release");
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        // The last lease released keeps its settings: sending them costs the server more
        // than the rest of the release, and the next acquire most likely wants them back.
        // If the server ends the idle session for it, the next acquire opens a new one.
        let keep = longest.is_zero();
        let (names, values) = if keep {
            (Vec::new(), Vec::new())
        } else {
            live.settings_for(longest)
        };
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.release)))
            .bind(id.hash)
            .bind(CHANNEL)
            .bind(names)
            .bind(values)
            .bind(live.id)
            .fetch_one(&mut live.conn);
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(row)) => {
                if !keep {
                    live.applied = Some(longest);
                }
                // The release deleted the session's own row for the key, if any.
                self.dispatch.unregistered(id.hash);
                if !row.try_get::<bool, _>("unlocked").unwrap_or(true) {
                    tracing::warn!(key = %held.key, "the lock session did not hold the lock it released");
                }
                Ok(())
            }
            Ok(Err(err)) if session_ended(&err) => {
                // The server ended the session (idle timeout, terminated): the lock
                // expired, which a release accepts.
                self.abandon(&err);
                self.forget.push(id);
                Ok(())
            }
            Ok(Err(err)) if breaks_session(&err) => {
                self.abandon(&err);
                self.forget.push(id);
                Err(ctx.map(err))
            }
            Ok(Err(err)) => {
                tracing::warn!(key = %held.key, "release failed, unlocking without notification: {err}");
                self.unlock_after_failure(id.hash, timeout).await;
                if self.live.is_some() {
                    Ok(())
                } else {
                    Err(ctx.map(err))
                }
            }
            Err(_) => {
                self.abandon(&"release timed out");
                self.forget.push(id);
                Err(Error::timeout(NAME, "release", timeout))
            }
        }
    }
}

/// A TTL in whole milliseconds, rounded up, for the heartbeat.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// The error of a statement that found no open session to run on.
pub(super) fn no_session(operation: &'static str) -> Error {
    Error::unavailable(NAME, operation, Message("no session".into()))
}
