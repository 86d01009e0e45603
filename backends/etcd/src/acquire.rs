//! Acquiring a key: one transaction that creates it under the session lease if it does
//! not exist, with a keep-alive of the session alongside.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use leasehold_core::{Lease, LockKey, Result};
use tokio::time::Instant;

use crate::EtcdBackend;
use crate::abandon::Attempt;
use crate::error::{Failure, timed};
use crate::lease::EtcdLease;
use crate::orphan::Orphan;
use crate::session::{KeepAlive, Session};

/// The outcome of the acquire transaction.
enum Created {
    Ours(i64),
    Held,
    SessionGone,
}

impl EtcdBackend {
    /// Takes `key` for `ttl` in the name of `identity`, which was checked.
    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        ttl: Duration,
        identity: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        let secs = self.lease_seconds(ttl)?;
        let etcd_key = self.checked_key(key)?;
        let started = Instant::now();
        let timeout = self.operation_timeout(ttl);
        let stamp = self.stamp(identity);
        // Gives the key back if this attempt ends without handing out a lease.
        let mut attempt = Attempt::new(self, &etcd_key, &stamp);
        let created = timed(timeout, async {
            // A session that etcd no longer knows is replaced once: it may have expired
            // while no key was held through it.
            for _ in 0..2 {
                let session = self.session(secs).await?;
                match self
                    .create(&session, &etcd_key, &mut attempt, started)
                    .await?
                {
                    Created::Ours(revision) => return Ok(Some((session, revision))),
                    Created::Held => return Ok(None),
                    Created::SessionGone => session.mark_lost(),
                }
            }
            Ok(None)
        })
        .await
        .map_err(|failure| failure.into_error("acquire", timeout))?;
        attempt.answered();
        if created.is_some() {
            self.left_line(&etcd_key);
        }
        Ok(created.map(|(session, revision)| {
            Box::new(EtcdLease::new(
                self.clone(),
                key.clone(),
                etcd_key,
                revision,
                session,
                stamp,
            )) as Box<dyn Lease>
        }))
    }

    /// Creates `key` under `session` with the value of `attempt` if it does not exist.
    /// Unless the session was granted after `started`, a keep-alive is sent alongside, so
    /// that the lease lives for its TTL from `started` on.
    async fn create(
        &self,
        session: &Arc<Session>,
        key: &[u8],
        attempt: &mut Attempt,
        started: Instant,
    ) -> Result<Created, Failure> {
        let value = attempt.value();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key, value, Some(PutOptions::new().with_lease(session.id()))),
                TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            ]);
        // On a task of its own: if we stop waiting, it gives the key back (see `abandon`).
        let send = attempt.send(session, txn);
        let (response, kept) = if session.granted_since(started) {
            (send.await, KeepAlive::Alive)
        } else {
            tokio::join!(send, session.keep_alive())
        };
        let response = match response {
            Ok(response) => response,
            Err(failure) if failure.is_lease_not_found() => return Ok(Created::SessionGone),
            Err(failure) => return Err(failure),
        };
        if !response.succeeded() {
            return Ok(Created::Held);
        }
        let revision = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(0);
        match kept {
            KeepAlive::Alive => Ok(Created::Ours(revision)),
            // The key went with the lease.
            KeepAlive::Gone => Ok(Created::SessionGone),
            KeepAlive::Failed(failure) => {
                // The key is ours, but for how long is unknown: give it back.
                session.delete_in_background(
                    self.kv(),
                    Orphan::revision(key.to_vec(), revision),
                    self.request_timeout(),
                );
                Err(failure)
            }
        }
    }
}
