//! Taking a lock on the session: one statement takes the advisory lock and bumps the
//! fencing row; a collision or a failed statement gives the lock back.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, FencingToken, LockKey, Result};
use sqlx::{AssertSqlSafe, Row};

use super::{Held, LeaseId, Session, timed_out};
use crate::error::{Message, NAME, breaks_session};
use crate::message::LeaseLink;

impl Session {
    pub(super) async fn acquire(
        &mut self,
        key: &LockKey,
        hash: i64,
        ttl: Duration,
    ) -> Result<Option<(FencingToken, LeaseLink)>> {
        // Advisory locks are reentrant within a session: a key held here must be refused
        // here, or two leases of this process would share it.
        if let Some(held) = self.held.get(&hash) {
            if held.key == *key {
                return Ok(None);
            }
            let namespace = &self.settings.namespace;
            return Err(self.collision(key, hash, namespace, held.key.as_str()));
        }
        let timeout = self.settings.timeout_for(ttl);
        self.ensure_live(timeout).await?;
        let longest = self.longest_ttl().max(ttl);
        let ctx = self.ctx("acquire");
        let Some(live) = self.live.as_mut() else {
            return Err(Error::unavailable(
                NAME,
                "acquire",
                Message("no session".into()),
            ));
        };
        let (names, values) = live.settings_for(longest);
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.statements.acquire)))
            .bind(hash)
            .bind(&self.settings.namespace)
            .bind(key.as_str())
            .bind(names)
            .bind(values)
            .bind(live.id)
            .bind(super::millis(longest))
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
                return Err(timed_out("acquire", timeout));
            }
        };
        type Decoded = (
            bool,
            Option<i64>,
            Option<(String, String)>,
            Option<(String, String)>,
            Option<i64>,
        );
        let decoded = (|| -> sqlx::Result<Decoded> {
            let got = row.try_get(0)?;
            let token = row.try_get(2)?;
            let bumped = row.try_get::<Option<String>, _>(3)?.zip(row.try_get(4)?);
            let holder = row.try_get::<Option<String>, _>(5)?.zip(row.try_get(6)?);
            let guarded = row.try_get(7)?;
            Ok((got, token, bumped, holder, guarded))
        })();
        let (got, token, bumped, holder, guarded) = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                self.unlock_after_failure(hash, timeout).await;
                return Err(ctx.map(err));
            }
        };
        let settings = Arc::clone(&self.settings);
        let ours = |row: &(String, String)| row.0 == settings.namespace && row.1 == key.as_str();
        if !got {
            return match holder {
                Some(row) if !ours(&row) => Err(self.collision(key, hash, &row.0, &row.1)),
                _ => Ok(None),
            };
        }
        if let Some(left_ms) = guarded {
            // The lock was free, but the session that held it last may have ended
            // before its holder knew: the key stays guarded until that session's
            // heartbeat runs out.
            tracing::debug!(
                %key,
                left_ms,
                "lock free but guarded by an ended session's heartbeat; giving it back"
            );
            self.unlock_after_failure(hash, timeout).await;
            return Ok(None);
        }
        let token = match (token.and_then(|token| u64::try_from(token).ok()), bumped) {
            (Some(token), Some(row)) if ours(&row) => token,
            (_, bumped) => {
                self.unlock_after_failure(hash, timeout).await;
                return Err(match bumped {
                    Some(row) if !ours(&row) => self.collision(key, hash, &row.0, &row.1),
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
            return Err(Error::unavailable(
                NAME,
                "acquire",
                Message("no session".into()),
            ));
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
            return Ok(None);
        };
        self.insert_held(
            hash,
            Held {
                serial: id.serial,
                key: key.clone(),
                ttl,
            },
        );
        Ok(Some((
            FencingToken::new(token),
            LeaseLink::new(id, tx, self.revoke.subscribe()),
        )))
    }

    fn collision(&self, key: &LockKey, hash: i64, other_ns: &str, other: &str) -> Error {
        Error::InvalidName {
            name: key.to_string(),
            reason: format!(
                "its advisory-lock key {hash} (namespace {:?}) collides with routine {other:?} \
                 in namespace {other_ns:?}, recorded in {}; rename one of them",
                self.settings.namespace, self.settings.qualified_table
            ),
        }
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
