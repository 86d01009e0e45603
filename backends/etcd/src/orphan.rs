//! Keys a backend took but no lease object holds: dropped leases, and acquires whose
//! caller stopped waiting. They are deleted in the background until that succeeds.
//!
//! Such a key stays attached to its session lease, which the refreshes of every other
//! key of the session keep alive: unless it is deleted, nobody runs its routine for as
//! long as the process lives. One delete is tried at once; if it fails (etcd down or
//! slow), the session deletes the key with each keep-alive it sends from then on, until
//! a delete gets an answer. That needs no timer of its own: keep-alives are sent as long
//! as anything of the session is refreshed or acquired, which is exactly as long as the
//! key can stay alive; once they stop, the session lease expires and takes the key
//! along.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};

use crate::EtcdBackend;
use crate::error::{Failure, timed};
use crate::session::Session;

/// A key to delete, and how to tell that it is still the one we took.
#[derive(Debug)]
pub(crate) struct Orphan {
    key: Vec<u8>,
    owner: Owner,
}

/// What makes a key ours.
#[derive(Debug)]
enum Owner {
    /// The create revision of a key we know we took: unique in the cluster.
    Revision(i64),
    /// An acquire attempt that may or may not have taken the key: the value it wrote
    /// (unique per attempt, see the `holder` module) and the session lease it wrote it
    /// with. Both are compared, so that not even two backends writing equal values could
    /// delete each other's key.
    Attempt { value: String, lease: i64 },
}

impl Orphan {
    /// The key we took with `create_revision`.
    pub(crate) fn revision(key: Vec<u8>, create_revision: i64) -> Self {
        Self {
            key,
            owner: Owner::Revision(create_revision),
        }
    }

    /// The key an acquire attempt wrote `value` into, attached to the session `lease`,
    /// if it did.
    pub(crate) fn attempt(key: Vec<u8>, value: String, lease: i64) -> Self {
        Self {
            key,
            owner: Owner::Attempt { value, lease },
        }
    }

    /// Deletes the key if it is still ours; succeeds whether or not it was.
    fn delete_txn(&self) -> Txn {
        let key = self.key.clone();
        let when = match &self.owner {
            Owner::Revision(revision) => {
                vec![Compare::create_revision(key, CompareOp::Equal, *revision)]
            }
            Owner::Attempt { value, lease } => vec![
                Compare::value(key.clone(), CompareOp::Equal, value.as_str()),
                Compare::lease(key, CompareOp::Equal, *lease),
            ],
        };
        Txn::new()
            .when(when)
            .and_then([TxnOp::delete(self.key.clone(), None)])
    }

    /// Sends the delete once; `Err` gives the orphan back if etcd did not answer.
    pub(crate) async fn delete(self, kv: &mut KvClient, timeout: Duration) -> Result<(), Self> {
        let txn = self.delete_txn();
        match timed(timeout, async { kv.txn(txn).await.map_err(Failure::from) }).await {
            Ok(_) => Ok(()),
            Err(failure) => {
                tracing::debug!(
                    ?failure,
                    "could not delete a key no lease holds; the session retries with its next keep-alive"
                );
                Err(self)
            }
        }
    }
}

/// Deletes `orphan` on a task of its own; if that fails (or there is no runtime),
/// `session` retries with each keep-alive until it succeeds (see the module docs).
pub(crate) fn delete_in_background(backend: &EtcdBackend, orphan: Orphan, session: &Arc<Session>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        session.adopt_orphan(orphan);
        return;
    };
    let mut kv = backend.kv();
    let timeout = backend.request_timeout();
    let session = Arc::clone(session);
    runtime.spawn(async move { delete_or_adopt(&mut kv, orphan, &session, timeout).await });
}

/// [`delete_in_background`] for a caller already in the background: sends the delete
/// once, and hands the orphan to `session` if it fails.
pub(crate) async fn delete_or_adopt(
    kv: &mut KvClient,
    orphan: Orphan,
    session: &Session,
    timeout: Duration,
) {
    if let Err(orphan) = orphan.delete(kv, timeout).await {
        session.adopt_orphan(orphan);
    }
}
