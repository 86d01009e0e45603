//! The session task's side of the lane (see the `lane` module): the task's loop, the
//! commands it runs, and the lane's entry points for callers, which run an acquire or a
//! release on the session's state themselves when the task is idle.

use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use leasehold_core::{LockKey, Result};
use sqlx::AssertSqlSafe;

use super::Session;
use super::lane::{Lane, Taken};
use crate::connect::Live;
use crate::message::{Acquired, Command, Direct, LeaseId, Reply};

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

/// The sending of a command's answer (see [`Session::handle`]).
type Answer = Box<dyn FnOnce() + Send>;

/// `result`, to send on `reply` later; an answer nobody takes is dropped (a lease in it
/// gives its lock back through its link).
fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Option<Answer> {
    Some(Box::new(move || {
        let _ = reply.send(result);
    }))
}

/// The session task: takes the session's state out of the lane whenever a command, a
/// notification or the connection's loss arrives while it is idle, or a statement a
/// caller gave up on waits to be finished, and puts it back when done.
pub(super) async fn run(lane: Arc<Lane<Session>>) {
    loop {
        let taken = std::future::poll_fn(|cx| lane.poll_task(cx, Session::poll_event)).await;
        let (mut session, event) = match taken {
            Taken::Event(session, event) => (session, event),
            Taken::Orphan(statement) => {
                let session = statement.await;
                lane.put_back(session);
                continue;
            }
            Taken::Closed => return,
        };
        match event {
            Event::Command(command) => {
                let answer = session.handle(command).await;
                // The state goes back before the caller hears its answer, so that its next
                // request finds the lane free.
                lane.put_back(session);
                if let Some(answer) = answer {
                    answer();
                }
                continue;
            }
            Event::Closed => {
                lane.close();
                session.shut_down().await;
                return;
            }
            Event::Notification(channel, payload) => session.notified(&channel, &payload),
            Event::Lost(reason) => session.abandon(&reason),
        }
        lane.put_back(session);
    }
}

impl Direct for Lane<Session> {
    fn acquire(
        self: Arc<Self>,
        key: &LockKey,
        hash: i64,
        ttl: Duration,
        holder: &Arc<str>,
    ) -> Option<BoxFuture<'static, Result<Option<Acquired>>>> {
        let (key, holder) = (key.clone(), Arc::clone(holder));
        let call = self.try_run(Session::is_idle, move |mut session| {
            Box::pin(async move {
                let result = session.acquire(&key, hash, ttl, &holder).await;
                session.drain_notifications();
                (session, result)
            })
        })?;
        Some(Box::pin(call))
    }

    fn release(self: Arc<Self>, id: LeaseId) -> Option<BoxFuture<'static, Result<()>>> {
        let call = self.try_run(Session::is_idle, move |mut session| {
            Box::pin(async move {
                let result = session.release(id).await;
                session.drain_notifications();
                (session, result)
            })
        })?;
        Some(Box::pin(call))
    }

    #[cfg(test)]
    fn lent(&self) -> u64 {
        Lane::lent(self)
    }
}

impl Session {
    /// it, so requests keep their order.
    fn is_idle(&self) -> bool {
        self.backlog.is_empty() && self.rx.is_empty()
    }

    /// Runs one command on the session task; returns the sending of its answer, for the
    /// task to call once the state is back in the lane.
    async fn handle(&mut self, command: Command) -> Option<Answer> {
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
                    return answer(reply, result);
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
                    return answer(reply, result);
                }
            }
            Command::ExpiresIn {
                hash,
                timeout,
                reply,
            } => {
                if !reply.is_closed() {
                    let result = self.expires_in(hash, timeout).await;
                    return answer(reply, result);
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
                    return answer(reply, result);
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
                    return answer(reply, result);
                }
            }
        }
        None
    }

    /// Every sender is gone: stops waiting for releases and closes the session.
    async fn shut_down(&mut self) {
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

    /// Polls for the next event while idle (see the `lane` module): a command queued
    /// (the backlog first), or, while a session is open and no command waits, a
    /// notification it heard (buffered ones first) or its loss. `try_recv` is
    /// cancel-safe, so a fresh one is polled on each wake.
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Event> {
        if let Some(command) = self.backlog.pop_front() {
            return Poll::Ready(Event::Command(command));
        }
        if let Poll::Ready(command) = self.rx.poll_recv(cx) {
            return Poll::Ready(command.map_or(Event::Closed, Event::Command));
        }
        let Some(live) = self.live.as_mut() else {
            return Poll::Pending;
        };
        let heard = std::pin::pin!(live.conn.try_recv());
        heard.poll(cx).map(|heard| match heard {
            Ok(Some(notification)) => Event::Notification(
                notification.channel().to_owned(),
                notification.payload().to_owned(),
            ),
            Ok(None) => Event::Lost("the lock session's connection was closed".into()),
            Err(err) => Event::Lost(format!("the lock session failed: {err}")),
        })
    }

    /// Handles the notifications the listener buffered during a statement on the lane
    /// (a release's own, first of all), so that the task, woken when the state goes
    /// back, does not take the state to handle them just when the caller's next request
    /// wants the lane.
    fn drain_notifications(&mut self) {
        while let Some(live) = self.live.as_mut()
            && let Some(notification) = live.conn.next_buffered()
        {
            let (channel, payload) = (
                notification.channel().to_owned(),
                notification.payload().to_owned(),
            );
            self.notified(&channel, &payload);
        }
    }
}
