//! Taking a lock on the session: one statement takes the advisory lock and bumps the
//! fencing row; a collision or a failed statement gives the lock back. No key is granted
//! while the restart guard runs, and a TTL longer than any stored is stored first (see
//! the `epoch` module).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, FencingToken, LockKey, Result};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Held, LeaseId, Session, no_session};
use crate::error::{Message, NAME, breaks_session, with_timeout};
use crate::message::{Acquired, LeaseLink};

impl Session {
    pub(super) async fn acquire(
        &mut self,
        key: &LockKey,
        hash: i64,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<Acquired>> {
        // Advisory locks are reentrant within a session: a key held here must be refused
        // here, or two leases of this process would share it.
        if let Some(held) = self.held.get(&hash) {
            if held.key == *key {
                return Ok(None);
            }
            let other = Routine {
                namespace: self.settings.namespace.clone(),
                name: held.key.to_string(),
            };
            return Err(self.collision(key, hash, &other));
        }
        let timeout = self.settings.timeout_for(ttl);
        // A session holding nothing keeps the settings of its last lease (see `release`),
        // so the server may have ended it for idleness: then no lease was lost, and a new
        // session takes the key. A timeout is not retried: its time is spent.
        let idle = self.held.is_empty() && self.live.is_some();
        match self
            .acquire_on_session(key, hash, ttl, holder, timeout)
            .await
        {
            Err(err) if idle && self.live.is_none() && !matches!(err, Error::Timeout { .. }) => {
                tracing::debug!(%key, "the idle lock session ended; acquiring on a new one: {err}");
                self.acquire_on_session(key, hash, ttl, holder, timeout)
                    .await
            }
            other => other,
        }
    }

    /// [`acquire`](Self::acquire) on the live session, opening one if there is none.
    async fn acquire_on_session(
        &mut self,
        key: &LockKey,
        hash: i64,
        ttl: Duration,
        holder: &str,
        timeout: Duration,
    ) -> Result<Option<Acquired>> {
        self.ensure_live(timeout).await?;
        match self.acquire_once(key, hash, ttl, holder, timeout).await? {
            Attempt::Done(acquired) => Ok(acquired),
            Attempt::Spent => {
                // The key's tokens reached the end of the newest epoch's range: a new
                // epoch starts above it.
                let ctx = self.ctx("begin a fencing epoch");
                let Some(live) = self.live.as_mut() else {
                    return Err(no_session("acquire"));
                };
                with_timeout(ctx.operation, timeout, self.epochs.begin(live, ctx)).await?;
                match self.acquire_once(key, hash, ttl, holder, timeout).await? {
                    Attempt::Done(acquired) => Ok(acquired),
                    Attempt::Spent => Err(Error::unavailable(
                        NAME,
                        "acquire",
                        Message("the key's fencing tokens used up a new epoch's range".into()),
                    )),
                }
            }
        }
    }

    /// One acquire statement on the live session.
    async fn acquire_once(
        &mut self,
        key: &LockKey,
        hash: i64,
        ttl: Duration,
        holder: &str,
        timeout: Duration,
    ) -> Result<Attempt> {
        let longest = self.longest_ttl().max(ttl);
        let ctx = self.ctx("acquire");
        let Some(live) = self.live.as_mut() else {
            return Err(no_session("acquire"));
        };
        if let Some(left) = live.guard_left() {
            tracing::debug!(%key, ?left, "the server restarted within the longest TTL; not granting");
            return Ok(Attempt::Done(None));
        }
        match tokio::time::timeout(timeout, self.epochs.cover_ttl(live, longest)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) if breaks_session(&err) => {
                self.abandon(&err);
                return Err(ctx.map(err));
            }
            Ok(Err(err)) => return Err(ctx.map(err)),
            Err(_) => {
                self.abandon(&"storing the longest TTL timed out");
                return Err(Error::timeout(NAME, "acquire", timeout));
            }
        }
        let (names, values) = live.settings_for(longest);
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.acquire)))
            .bind(hash)
            .bind(&self.settings.namespace)
            .bind(key.as_str())
            .bind(names)
            .bind(values)
            .bind(live.id)
            .bind(super::millis(longest))
            .bind(holder)
            .bind(live.epoch_floor)
            .fetch_one(&mut live.conn);
        let row = match tokio::time::timeout(timeout, query).await {
            Ok(Ok(row)) => {
                live.applied = Some(longest);
                row
            }
            Ok(Err(err)) if breaks_session(&err) => {
                self.abandon(&err);
                return Err(ctx.map(err));
            }
            Ok(Err(err)) => {
                // Session-level locks survive the failed statement's rollback.
                self.unlock_after_failure(hash, timeout).await;
                return Err(ctx.map(err));
            }
            Err(_) => {
                self.abandon(&"acquire timed out");
                return Err(Error::timeout(NAME, "acquire", timeout));
            }
        };
        let AcquireRow {
            got,
            token,
            bumped,
            holder,
            guarded_ms,
            spent,
        } = match AcquireRow::read(&row) {
            Ok(decoded) => decoded,
            Err(err) => {
                self.unlock_after_failure(hash, timeout).await;
                return Err(ctx.map(err));
            }
        };
        let settings = Arc::clone(&self.settings);
        let ours = |routine: &Routine| {
            routine.namespace == settings.namespace && routine.name == key.as_str()
        };
        if !got {
            return match holder {
                Some(other) if !ours(&other) => Err(self.collision(key, hash, &other)),
                _ => Ok(Attempt::Done(None)),
            };
        }
        if let Some(left_ms) = guarded_ms {
            // The lock was free, but the session that held it last may have ended
            // before its holder knew: the key stays guarded until that session's
            // heartbeat runs out.
            tracing::debug!(
                %key,
                left_ms,
                "lock free but guarded by an ended session's heartbeat; giving it back"
            );
            self.unlock_after_failure(hash, timeout).await;
            return Ok(Attempt::Done(None));
        }
        if spent {
            self.unlock_after_failure(hash, timeout).await;
            return Ok(Attempt::Spent);
        }
        let token = match (token.and_then(|token| u64::try_from(token).ok()), bumped) {
            (Some(token), Some(routine)) if ours(&routine) => token,
            (_, bumped) => {
                self.unlock_after_failure(hash, timeout).await;
                return Err(match bumped {
                    Some(other) if !ours(&other) => self.collision(key, hash, &other),
                    _ => Error::unavailable(
                        NAME,
                        "acquire",
                        Message("the fencing table returned no valid token".into()),
                    ),
                });
            }
        };
        self.next_serial += 1;
        let Some(session) = self.live.as_ref().map(|live| live.id) else {
            return Err(no_session("acquire"));
        };
        let id = LeaseId {
            generation: self.generation,
            session,
            serial: self.next_serial,
            hash,
        };
        let Some(tx) = self.tx.upgrade() else {
            // Nobody is left to hold the lease.
            self.unlock_after_failure(hash, timeout).await;
            return Ok(Attempt::Done(None));
        };
        self.insert_held(
            hash,
            Held {
                serial: id.serial,
                key: key.clone(),
                ttl,
            },
        );
        Ok(Attempt::Done(Some(Acquired {
            token: FencingToken::new(token),
            link: LeaseLink::new(id, tx, self.revoke.subscribe()),
        })))
    }

    fn collision(&self, key: &LockKey, hash: i64, other: &Routine) -> Error {
        Error::invalid_name(
            key,
            format!(
                "its advisory-lock key {hash} (namespace {:?}) collides with routine {:?} \
                 in namespace {:?}, recorded in {}; rename one of them",
                self.settings.namespace, other.name, other.namespace, self.settings.qualified_table
            ),
        )
    }

    /// Gives back a lock a failed statement may have taken; abandons the session if even
    /// that fails, which releases it too.
    pub(super) async fn unlock_after_failure(&mut self, hash: i64, timeout: Duration) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let unlock = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.unlock)))
            .bind(hash)
            .bind(live.id)
            .execute(&mut live.conn);
        match tokio::time::timeout(timeout, unlock).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => self.abandon(&err),
            Err(_) => self.abandon(&"unlock timed out"),
        }
    }
}

/// What one acquire statement came to.
enum Attempt {
    /// Taken, or not (contention, a guard).
    Done(Option<Acquired>),
    /// The key's tokens used up the newest epoch's range: the lock was given back.
    Spent,
}

/// The one row of the acquire statement (see `Statements::acquire`), by column name.
struct AcquireRow {
    /// Whether the advisory lock was taken.
    got: bool,
    /// The key's new fencing token, if its row was bumped.
    token: Option<i64>,
    /// The routine the bumped row names.
    bumped: Option<Routine>,
    /// The routine the key's row names, read when the lock was not got.
    holder: Option<Routine>,
    /// Milliseconds left on the heartbeat of another session that may still believe it
    /// holds the key.
    guarded_ms: Option<i64>,
    /// Whether the key's tokens used up the newest epoch's range.
    spent: bool,
}

/// A routine as the fencing table records it.
struct Routine {
    namespace: String,
    name: String,
}

impl AcquireRow {
    fn read(row: &PgRow) -> sqlx::Result<Self> {
        let routine = |namespace: &str, name: &str| -> sqlx::Result<Option<Routine>> {
            let namespace = row.try_get::<Option<String>, _>(namespace)?;
            let name = row.try_get::<Option<String>, _>(name)?;
            Ok(namespace
                .zip(name)
                .map(|(namespace, name)| Routine { namespace, name }))
        };
        Ok(Self {
            got: row.try_get("got")?,
            token: row.try_get("token")?,
            bumped: routine("bumped_namespace", "bumped_name")?,
            holder: routine("holder_namespace", "holder_name")?,
            guarded_ms: row.try_get("guarded_ms")?,
            spent: row.try_get("spent")?,
        })
    }
}
