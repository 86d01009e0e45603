//! Refreshing the leases of the session: refreshes queued together are answered by one
//! statement, which moves the session's heartbeat on (see the module docs of `session`).

use std::collections::VecDeque;
use std::sync::Arc;

use leasehold_core::Error;
use sqlx::AssertSqlSafe;

use super::Session;
use crate::error::{Message, NAME, breaks_session};
use crate::message::{Command, RefreshRequest};

impl Session {
    /// Moves every refresh already queued into `batch`; they were all called before the
    /// statement that will answer them is sent.
    pub(super) fn collect_refreshes(&mut self, batch: &mut Vec<RefreshRequest>) {
        let mut others = VecDeque::new();
        let queued = std::mem::take(&mut self.backlog)
            .into_iter()
            .chain(std::iter::from_fn(|| self.rx.try_recv().ok()));
        for command in queued {
            match command {
                Command::Refresh(request) => batch.push(request),
                other => others.push_back(other),
            }
        }
        self.backlog = others;
    }

    pub(super) async fn refresh(&mut self, batch: Vec<RefreshRequest>) {
        let mut current = Vec::with_capacity(batch.len());
        for request in batch {
            if self.is_current(request.id) {
                let ttl = request.ttl;
                let previous = self.held.get_mut(&request.id.hash).map(|held| {
                    let previous = held.ttl;
                    held.ttl = ttl;
                    previous
                });
                if let Some(previous) = previous.filter(|&previous| previous != ttl) {
                    self.uncount_ttl(previous);
                    self.count_ttl(ttl);
                }
                current.push(request);
            } else {
                let _ = request.reply.send(Err(Error::lost(&request.key)));
            }
        }
        let Some(shortest) = current.iter().map(|request| request.ttl).min() else {
            return;
        };
        let timeout = self.settings.timeout_for(shortest);
        let longest = self.longest_ttl();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        // A longer TTL than any stored must be stored before a heartbeat uses it, or the
        // restart guard could end before this holder's deadline.
        let covered =
            match tokio::time::timeout(timeout, self.epochs.cover_ttl(live, longest)).await {
                Ok(Ok(())) => None,
                Ok(Err(err)) if !breaks_session(&err) => {
                    Some(RefreshFailure::Statement(err.to_string()))
                }
                Ok(Err(err)) => Some(RefreshFailure::Session(err.to_string())),
                Err(_) => Some(RefreshFailure::Session(format!(
                    "storing the longest TTL timed out after {timeout:?}"
                ))),
            };
        if covered.is_some() {
            self.answer_refreshes(current, covered);
            return;
        }
        let (names, values) = live.settings_for(longest);
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.refresh)))
            .bind(names)
            .bind(values)
            .bind(live.id)
            .bind(super::millis(longest))
            .execute(&mut live.conn);
        let failure = match tokio::time::timeout(timeout, query).await {
            Ok(Ok(_)) => {
                live.applied = Some(longest);
                None
            }
            Ok(Err(err)) if !breaks_session(&err) => {
                Some(RefreshFailure::Statement(err.to_string()))
            }
            Ok(Err(err)) => Some(RefreshFailure::Session(err.to_string())),
            Err(_) => Some(RefreshFailure::Session(format!(
                "refresh timed out after {timeout:?}"
            ))),
        };
        self.answer_refreshes(current, failure);
    }

    /// Answers the refreshes of one statement with its outcome.
    fn answer_refreshes(&mut self, current: Vec<RefreshRequest>, failure: Option<RefreshFailure>) {
        if let Some(RefreshFailure::Session(why)) = &failure {
            // The session can no longer prove its locks: drop it, which makes the server
            // release them, and report every lease on it lost.
            self.abandon(why);
        }
        for request in current {
            let result = match &failure {
                None => Ok(()),
                Some(RefreshFailure::Session(_)) => Err(Error::lost(&request.key)),
                Some(RefreshFailure::Statement(why)) => {
                    Err(Error::unavailable(NAME, "refresh", Message(why.clone())))
                }
            };
            let _ = request.reply.send(result);
        }
    }
}

/// Why a refresh statement vouches for none of the leases waiting on it.
enum RefreshFailure {
    /// The statement failed on a healthy session (cancelled, a missing table): the locks
    /// are still held, but unconfirmed. The holders retry until their deadlines.
    Statement(String),
    /// The session broke or did not answer in time: it is dropped, and every lease on it
    /// is lost.
    Session(String),
}
